"""The README's Python example runs as written, on simulated frames and a simulated dark."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from conftest import REPO

DARK_SIGNAL_ADU = 48.0


def readme_python_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python use") :]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match, "no python block under '## Python use'"
    return match.group(1)


def test_readme_api_example_runs(sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    shutil.copytree(sim.raw_dir, tmp_path / "raw")
    shutil.copy(sim.truth_dir / "hot_pixel_mask.fits", tmp_path / "hot_pixels.fits")
    # A 30 s dark at the first frame's temperature: the true bias there plus a flat dark signal.
    with fits.open(sim.frame_paths[0]) as hdul:
        header = hdul[0].header.copy()
        bias_at = float(header["TEMPERATURE"])
    true_bias = sim.bias_adu(bias_at)
    dark = np.rint(true_bias + DARK_SIGNAL_ADU).astype(np.uint16)
    header["TEMPERATURE"] = bias_at
    header["EXPOSURE"] = 30.0
    fits.PrimaryHDU(dark, header).writeto(tmp_path / "dark_0001.fits")

    monkeypatch.chdir(tmp_path)
    exec(compile(readme_python_example(), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    used = int(printed.split()[0])
    assert used == len(sim.frame_paths)
    median = float(re.search(r"median dark signal (-?[\d.]+) ADU", printed).group(1))
    # The model's bias at the dark's temperature is right to within a few ADU.
    assert median == pytest.approx(DARK_SIGNAL_ADU, abs=3.0), printed
    assert (tmp_path / "photsat_bias_model_v3.fits").is_file()
    assert (tmp_path / "results" / "report.html").is_file()


def _flags(text: str) -> set[str]:
    """The options named in ``text`` (``--no-X`` counted as ``--X``)."""
    flags = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", text))
    return {f"--{flag[5:]}" if flag.startswith("--no-") else flag for flag in flags}


def test_the_options_table_and_help_name_exactly_the_schemas_options() -> None:
    from bias_pipeline.cli import COMMAND_LINE_ONLY, build_run_parser
    from bias_pipeline.config import options

    schema = {opt.flag for opt in options().values()}
    command_line_only = {flag for flags, _ in COMMAND_LINE_ONLY.values() for flag in flags if flag != "--verbose"}
    command_line_only -= {"--quiet"}
    expected = schema | command_line_only  # the README writes -v / -q by their short names

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Running the pipeline") :]
    rows = re.findall(r"^\| (`-[^|]*)\|", section[: section.index("\n\n", section.index("| option |"))], re.M)
    in_table = set().union(*(_flags(first_cell) for first_cell in rows))
    assert in_table == expected, (in_table - expected, expected - in_table)

    in_help = set()
    for line in build_run_parser().format_help().splitlines():
        match = re.match(r"^  (-\S.*?)(?:\s{2,}|$)", line)
        if match:
            in_help |= set(re.findall(r"(?:^|, )(--?[\w-]+)", match.group(1)))
    in_help = {f"--{flag[5:]}" if flag.startswith("--no-") else flag for flag in in_help}
    assert in_help - {"-h", "--help", "--version", "--verbose", "--quiet"} == expected

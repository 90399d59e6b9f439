"""Determinism and resource limits: products do not depend on how files are listed or on the
number of threads, and a group larger than the open-file limit is combined."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

from bias_pipeline import PipelineConfig, run_bias_pipeline

from conftest import REPO, bias_pixels, write_frame


def _write_set(raw: Path, order: list[tuple[float, int]]) -> None:
    raw.mkdir(parents=True)
    for temperature, index in order:
        data = bias_pixels(level=200 + int(temperature), seed=index + int(10 * (temperature + 10)))
        write_frame(raw / f"frame_{temperature:+.1f}_{index}.fits", data, temperature=temperature)


def _fits_data(folder: Path) -> dict[str, list[np.ndarray]]:
    out = {}
    for path in sorted(folder.rglob("*.fits")):
        with fits.open(path) as hdul:
            out[str(path.relative_to(folder))] = [np.array(h.data) for h in hdul if h.data is not None]
    return out


def test_products_do_not_depend_on_listing_order_or_threads(tmp_path):
    frames = [(t, i) for t in (-5.0, 5.0, 15.0) for i in range(5)]
    _write_set(tmp_path / "a" / "raw", frames)
    _write_set(tmp_path / "b" / "raw", frames[::-1])  # created, and so listed, in reverse
    results = {}
    for name, threads in (("a", 1), ("b", 2)):
        config = PipelineConfig(show_progress=False, threads=threads, evaluate=False)
        run_bias_pipeline(tmp_path / name / "raw", tmp_path / name / "out", config=config)
        results[name] = _fits_data(tmp_path / name / "out")
    assert results["a"].keys() == results["b"].keys() and len(results["a"]) >= 6
    for product, arrays in results["a"].items():
        for mine, theirs in zip(arrays, results["b"][product], strict=True):
            if mine.dtype.names:  # tables: compare field by field
                for field in mine.dtype.names:
                    np.testing.assert_array_equal(mine[field], theirs[field], err_msg=f"{product} {field}")
            else:
                np.testing.assert_array_equal(mine, theirs, err_msg=product)  # bit for bit


def test_group_larger_than_the_open_file_limit(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    limit = 48
    per_group = 60  # more frames in one group than files the process may hold open
    for temperature in (0.0, 10.0):
        for index in range(per_group):
            data = bias_pixels((8, 12), level=200 + int(temperature), seed=index)
            write_frame(raw / f"f_{temperature:+.0f}_{index:02d}.fits", data, temperature=temperature)

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "run_pipeline.py"),
            "--basepath",
            str(raw),
            "--output-dir",
            str(out),
            "--no-evaluation",
            "-q",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=lower_limit,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    manifest = (out / "frames_manifest.csv").read_text()
    assert manifest.count(",used,") == 2 * per_group
    with fits.open(out / "bias_grouped_by_temp" / "master_bias_0.0C.fits") as hdul:
        assert hdul[0].header["NCOMBINE"] == per_group

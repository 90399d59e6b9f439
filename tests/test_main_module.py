"""``python -m bias_pipeline COMMAND``: every command run for real in a subprocess.

The calls that need nothing but the session's pipeline run are started together (a few at a
time) by one fixture so their interpreter start-ups overlap; the tests then look at their results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import __version__
from bias_pipeline.errors import InputDataError
from bias_pipeline.inspection import inspect_facts, inspect_summary
from bias_pipeline.quality import describe

from conftest import REPO, run_cli, write_frame

COMMANDS = ("run", "generate", "simulate", "inspect", "verify", "compare")
GIVE = "give a model file (bias_model.fits or bias_a_map.fits) or a pipeline output folder"


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bias_pipeline args``, output captured."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "bias_pipeline", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int | None, *fragments: str) -> None:
    assert done.returncode != 0 if code is None else done.returncode == code, (done.returncode, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def simulate_then_run(tmp: Path) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """``simulate`` (with faulty files), then ``run`` on its output, both as commands."""
    simulated = run_module(
        "simulate", str(tmp / "sim"), "--shape", "24", "32", "--temperatures", "0", "10", "20",
        "--frames-per-temperature", "3", "--seed", "3", "--faults",
    )  # fmt: skip
    if simulated.returncode != 0:
        return simulated, simulated
    ran = run_module(
        "run", "--basepath", str(tmp / "sim" / "raw"), "--output-dir", str(tmp / "out"), "--no-evaluation",
        "--hot-pixel-mask", str(tmp / "sim" / "truth" / "hot_pixel_mask.fits"),
    )  # fmt: skip
    return simulated, ran


@pytest.fixture(scope="module")
def calls(pipeline_run, tmp_path_factory):
    """Results of the module's commands by name, started a few at a time so that their
    interpreter start-ups overlap; ``"tmp"`` is their scratch folder."""
    tmp = tmp_path_factory.mktemp("main_module")
    out = pipeline_run.output_dir
    model_dir = out / "bias_model"
    (tmp / "generated").mkdir()
    wanted = {
        "none": (),
        "unknown": ("frobnicate", "--demo"),
        "compat_help": ("--demo", "--help"),
        "inspect_folder": ("inspect", str(out)),
        "inspect_json": ("inspect", str(out), "--json"),
        "inspect_model": ("inspect", str(model_dir / "bias_model.fits")),
        "inspect_missing": ("inspect", str(tmp / "no_such_run")),
        "generate": (
            "generate", "--a-map", str(model_dir / "bias_a_map.fits"), "--b-map", str(model_dir / "bias_b_map.fits"),
            "--temperature", "12.5", "--output", str(tmp / "generated"),
        ),
    }  # fmt: skip
    with ThreadPoolExecutor(max_workers=4) as pool:
        chain = pool.submit(simulate_then_run, tmp)  # the longest: first
        futures = {name: pool.submit(run_module, *args) for name, args in wanted.items()}
        results: dict[str, object] = {name: future.result() for name, future in futures.items()}
        results["simulate"], results["run"] = chain.result()
    results["tmp"] = tmp
    return results


# ------------------------------------------------------------------------ the dispatcher
def listed_commands(text: str) -> list[str]:
    rows = [line.split() for line in text.splitlines() if line.startswith("  ") and line.strip()]
    assert all(len(row) > 3 for row in rows), rows  # each with a one-line description
    return [row[0] for row in rows]


def test_no_arguments_lists_the_commands(calls):
    done = calls["none"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m bias_pipeline COMMAND")
    assert listed_commands(done.stdout) == list(COMMANDS)


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_the_commands(capsys, flag):
    from bias_pipeline.__main__ import main

    assert main([flag]) == 0
    assert listed_commands(capsys.readouterr().out) == list(COMMANDS)


def test_version(capsys):
    from bias_pipeline.__main__ import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"bias_pipeline {__version__}"


def test_unknown_command_is_one_line_naming_the_valid_ones(calls):
    assert_one_line_error(calls["unknown"], 2, "'frobnicate'", "run, generate, simulate, inspect, verify, compare")


def test_options_without_a_command_run_the_pipeline_as_before(calls):
    done = calls["compat_help"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m bias_pipeline [-h]")
    assert "--basepath" in done.stdout and "--demo" in done.stdout


# -------------------------------------------------------------------- run and simulate
def test_simulate_then_run(calls):
    tmp, simulated, ran = calls["tmp"], calls["simulate"], calls["run"]
    assert simulated.returncode == 0 and ran.returncode == 0, (simulated.stderr, ran.stderr)
    assert "wrote 9 frames" in simulated.stdout
    assert len(list((tmp / "sim" / "raw").glob("bias_*C_*.fits"))) == 9
    assert (tmp / "sim" / "truth" / "bias_b_true.fits").is_file()
    assert "9 frames used in 3 masters" in ran.stdout and "3 rejected, 1 ignored" in ran.stdout
    config = json.loads((tmp / "out" / "run_config.json").read_text())
    assert config["command_line"][0] == "python -m bias_pipeline run"
    assert not (tmp / "out" / "evaluation" / "evaluation_summary.csv").exists()


def test_simulate_errors_name_the_subcommand(capsys, tmp_path):
    from bias_pipeline.simulate import main

    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "sim"), "--shape", "0", "4"], prog="python -m bias_pipeline simulate")
    assert stop.value.code == 2
    assert "python -m bias_pipeline simulate: error: --shape" in capsys.readouterr().err


def test_generate_writes_the_model_at_the_temperature(calls, pipeline_run):
    done = calls["generate"]
    assert done.returncode == 0, done.stderr
    path = calls["tmp"] / "generated" / "synthetic_bias_12.5C.fits"
    assert f"wrote {path}" in done.stdout
    np.testing.assert_allclose(fits.getdata(path), pipeline_run.model.predict(12.5), rtol=1e-6, equal_nan=True)


# ----------------------------------------------------------------------------- inspect
def test_inspect_folder_reports_the_run(calls, pipeline_run):
    done = calls["inspect_folder"]
    assert done.returncode == 0, done.stderr
    text = done.stdout
    model = pipeline_run.model
    low, high = model.temperature_range
    used = pipeline_run.count("used")
    assert f"{len(pipeline_run.records)} files in frames_manifest.csv: {used} used" in text
    assert f"fitted     {low:.2f} .. {high:.2f} deg C: {len(model.group_frames)} groups, {used} frames" in text
    assert f"masked     {int(model.mask.sum())} pixels" in text
    assert "(matches run_config.json)" in text
    lines = text.splitlines()
    for row in pipeline_run.summary:  # the evaluation table, one line per master
        cells = [f"{float(row['temperature']):.2f}", str(row["n_frames"]), f"{float(row['mae_mean']):.2f}"]
        assert any(line.split()[:3] == cells for line in lines if line.startswith("    ")), cells
    for product in ("bias_grouped_by_temp/", "bias_model/", "evaluation/", "frames_manifest.csv", "run_config.json"):
        assert any(line.split()[:1] == [product] for line in lines), product


def test_inspect_json_has_the_run_s_numbers(calls, pipeline_run):
    done = calls["inspect_json"]
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    model = pipeline_run.model
    assert facts["kind"] == "output folder"
    assert facts["frames"]["status"] == dict(Counter(r.status for r in pipeline_run.records))
    facts_model = facts["model"]
    assert facts_model["shape"] == list(model.shape)
    assert facts_model["temperature_range"] == pytest.approx(list(model.temperature_range))
    assert [g["frames"] for g in facts_model["groups"]] == list(model.group_frames)
    assert [g["temperature"] for g in facts_model["groups"]] == pytest.approx(list(model.group_temperatures))
    assert {b["name"]: b["pixels"] for b in facts_model["dq"]["bits"]} == describe(model.dq)
    good = ~model.flagged
    assert facts_model["unflagged_pixels"] == int(good.sum())
    assert facts_model["stats"]["a"]["median"] == pytest.approx(float(np.median(model.a_map[good])), rel=1e-6)
    assert facts_model["stats"]["b"]["p95"] == pytest.approx(float(np.percentile(model.b_map[good], 95)), rel=1e-5)
    assert facts_model["stats"]["read_noise"]["median"] == pytest.approx(float(np.median(model.read_noise[good])))
    assert facts_model["matches_run_config"] is True
    summary = sorted(pipeline_run.summary, key=lambda r: r["temperature"])
    assert [r["mae_mean"] for r in facts["evaluation"]] == pytest.approx([r["mae_mean"] for r in summary], rel=1e-4)
    assert facts["run"]["inputs"]["count"] == facts_model["header"]["NINPUTS"] >= pipeline_run.count("used")


def test_inspect_model_file(calls, pipeline_run):
    done = calls["inspect_model"]
    assert done.returncode == 0, done.stderr
    text = done.stdout
    model = pipeline_run.model
    rows, columns = model.shape
    assert f"shape      {rows} x {columns} pixels" in text
    assert f"degree 1, T in deg C; TREF {model.tref:.2f} deg C" in text
    for temperature, frames in zip(model.group_temperatures, model.group_frames, strict=True):
        assert f"{temperature:9.3f}   {frames:6d}" in text
    for name, count in describe(model.dq).items():
        assert any(line.split()[2:4] == [name, str(count)] for line in text.splitlines()), name
    assert "a [ADU]" in text and "b [ADU/deg C]" in text and "read noise [ADU]" in text
    header = fits.getheader(pipeline_run.output_dir / "bias_model" / "bias_model.fits")
    assert f"NINPUTS {header['NINPUTS']}, INPUTSHA {header['INPUTSHA']}" in text
    assert f"bias_pipeline {header['BPVERS']}" in text
    assert "frames_manifest" not in text  # a file alone: no run facts


def test_inspect_folder_counts_rejections_by_reason(calls):
    assert calls["run"].returncode == 0, calls["run"].stderr
    text = inspect_summary(calls["tmp"] / "out")
    assert "13 files in frames_manifest.csv: 9 used, 3 rejected, 1 ignored" in text
    assert "rejected     1  exposure N s is longer than a bias frame (--max-exposure N s)  (e.g. dark_10s.fits)" in text
    assert "rejected     1  truncated  (e.g. bias_cut_short.fits)" in text
    assert "ignored      1  not a FITS file name (.txt)" in text
    assert "fitted     0.0" in text and ": 3 groups, 9 frames" in text
    assert "no evaluation/evaluation_summary.csv" in text
    assert "command    python -m bias_pipeline run --basepath" in text


def test_inspect_a_map_alone_says_where_the_flags_are(pipeline_run, tmp_path):
    for name in ("bias_a_map.fits", "bias_b_map.fits"):
        shutil.copy(pipeline_run.output_dir / "bias_model" / name, tmp_path / name)
    text = inspect_summary(tmp_path / "bias_b_map.fits")  # the b-map finds its a-map
    assert "DQ flags   not in this file (see bias_model.fits)" in text
    assert f"{int(pipeline_run.model.mask.sum())} pixels" in text


def test_inspect_error_is_one_line(calls):
    path = calls["tmp"] / "no_such_run"
    assert_one_line_error(calls["inspect_missing"], 3, f"python -m bias_pipeline inspect: error: {path}", GIVE)


@pytest.mark.parametrize(
    "case",
    [
        "master", "empty_folder", "text_file", "b_map_alone", "a_map_alone", "truncated_model", "broken_run_config",
        "manifest_without_status",
    ],
)  # fmt: skip
def test_inspect_errors_name_the_file(pipeline_run, tmp_path, case):
    if case == "master":
        target = next((pipeline_run.output_dir / "bias_grouped_by_temp").glob("*.fits"))
        expected = "is not a bias model (a MASTER_BIAS product"
    elif case == "empty_folder":
        target = tmp_path
        expected = "is a folder but not a pipeline output folder"
    elif case == "text_file":
        target = tmp_path / "notes.fits"
        target.write_text("not FITS")
        expected = "cannot be read as FITS"
    elif case == "b_map_alone":
        target = tmp_path / "bias_b_map.fits"
        shutil.copy(pipeline_run.output_dir / "bias_model" / target.name, target)
        expected = "is a b-map and no bias_a_map.fits is beside it"
    elif case == "a_map_alone":
        target = tmp_path / "bias_a_map.fits"
        shutil.copy(pipeline_run.output_dir / "bias_model" / target.name, target)
        expected = "is an a-map and no bias_b_map.fits is beside it"
    elif case == "truncated_model":
        target = tmp_path / "bias_model.fits"
        whole = (pipeline_run.output_dir / "bias_model" / target.name).read_bytes()
        target.write_bytes(whole[: len(whole) // 2])  # a copy interrupted half-way
        expected = "is incomplete: no MASK"
    else:
        target = tmp_path / "out"
        target.mkdir()
        if case == "broken_run_config":
            (target / "run_config.json").write_text("{not json")
            expected = "run_config.json is not valid JSON"
        else:
            (target / "frames_manifest.csv").write_text("name,state\na.fits,used\n")
            expected = "frames_manifest.csv has no path and status columns"
    with pytest.raises(InputDataError) as error:
        inspect_facts(target)
    message = str(error.value)
    assert str(target) in message and expected in message and "\n" not in message
    assert message.endswith(GIVE) or "re-run the pipeline" in message or "give bias_model.fits" in message


def test_reason_kinds_group_like_rejections():
    from bias_pipeline.inspection import reason_kind

    assert reason_kind("exposure 10 s is too long") == reason_kind("exposure 2.5 s is too long")
    assert reason_kind("12-bit values up to 65520") == "12-bit values up to N"
    assert reason_kind("") == "no reason recorded"


def test_simulate_into_an_unwritable_place_is_one_line(capsys, tmp_path):
    from bias_pipeline.simulate import main

    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    code = main([str(blocker / "sim"), "--shape", "8", "8"], prog="python -m bias_pipeline simulate")
    err = capsys.readouterr().err
    assert code == 4 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "python -m bias_pipeline simulate: error: cannot write" in err and "a_file" in err


def test_inspect_a_folder_whose_only_run_stopped(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        write_frame(raw / f"f{i}.fits", seed=i)  # one temperature only: the run stops
    assert run_cli("run_pipeline.py", "--basepath", str(raw), "--output-dir", str(tmp_path / "out")).returncode == 3
    done = subprocess.run(
        [sys.executable, "-m", "bias_pipeline", "inspect", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert "holds no finished run; the last run stopped: InputDataError" in done.stderr
    assert "stopped_run/pipeline.log" in done.stderr


def test_the_inspect_module_under_its_old_name_still_runs(pipeline_run, tmp_path):
    """``python -m bias_pipeline.inspect PATH`` worked before the module became ``inspection``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("bias_pipeline.inspect", "bias_pipeline.inspection"):
        done = subprocess.run(
            [sys.executable, "-W", "ignore", "-m", name, str(pipeline_run.output_dir)],
            capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0 and "output folder" in done.stdout, (name, done.stderr)
        missing = subprocess.run(
            [sys.executable, "-W", "ignore", "-m", name, str(tmp_path / "nothing")],
            capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
        )  # fmt: skip
        assert missing.returncode == 3 and "does not exist" in missing.stderr, (name, missing.stderr)


def test_the_console_script_runs_the_other_commands_too(tmp_path: Path) -> None:
    """``bias-pipeline inspect PATH`` is ``python -m bias_pipeline inspect PATH``: one installed
    command for everything (the installed script, beside this interpreter)."""
    script = Path(sys.executable).with_name("bias-pipeline")
    if not script.exists():
        pytest.skip("bias-pipeline is not installed beside this interpreter (pip install -e .)")
    done = subprocess.run(
        [str(script), "inspect", str(tmp_path / "no_such_run")], capture_output=True, text=True, timeout=300
    )
    assert_one_line_error(done, 3, "bias-pipeline inspect: error:", GIVE)
    listed = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and listed.stdout.startswith("bias_pipeline "), listed

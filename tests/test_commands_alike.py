"""Every command behaves alike: -v, -q (nothing on stdout but what was asked for), --version,
examples at the end of --help, "did you mean", Ctrl-C messages of its own; ``simulate`` writes
its data set all or nothing.

The subprocesses (a real ``-q`` of every command on one tiny simulated set) start a few at a
time from one module fixture; everything else runs in this process through ``entry.dispatch``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bias_pipeline import __version__, simulate
from bias_pipeline.entry import COMMANDS, dispatch
from bias_pipeline.errors import InputDataError
from bias_pipeline.simulate import SimulationSpec, simulate_dataset
from bias_pipeline.steps.step3_fit_bias_model import load_hot_pixel_mask

from conftest import REPO, sigint_as_usual

PROG = "python -m bias_pipeline"
TINY = ["--shape", "16", "24", "--temperatures", "0", "10", "20", "--frames-per-temperature", "3", "--seed", "5"]


def module(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``python -m bias_pipeline args``, output captured."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "bias_pipeline", *args], capture_output=True, text=True, env=env, timeout=300, **kwargs
    )  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    """Every command run with ``-q``: simulate, then run on its frames, then the others on
    that run's model and frames, four at a time. Returns ``(folder, {name: result})``."""
    tmp = tmp_path_factory.mktemp("alike")
    done = {"simulate": module("simulate", str(tmp / "sim"), *TINY, "-q")}
    if done["simulate"].returncode != 0:
        return tmp, done
    raw = str(tmp / "sim" / "raw")
    done["run"] = module("run", "--basepath", raw, "--output-dir", str(tmp / "out"), "--no-evaluation", "-q")
    if done["run"].returncode != 0:
        return tmp, done
    out = str(tmp / "out")
    (tmp / "afile").write_text("in the way")
    later = {
        "generate": ("generate", "--model", out, "--temperature", "5", "--output", str(tmp / "gen") + "/", "-q"),
        "inspect": ("inspect", out, "-q"),
        "inspect_json": ("inspect", out, "-q", "--json"),
        "verify": ("verify", out, "--basepath", raw, "--output-dir", str(tmp / "ver"), "-q"),
        "compare": ("compare", out, out, "--output-dir", str(tmp / "cmp"), "-q"),
        "into_a_file": ("generate", "--model", out, "--temperature", "5", "--output", str(tmp / "afile") + "/"),
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(module, *args) for name, args in later.items()}
        done |= {name: future.result() for name, future in futures.items()}
    return tmp, done


# ------------------------------------------------------------------------------- -q
@pytest.mark.parametrize("name", ["simulate", "run", "generate", "inspect", "verify", "compare"])
def test_quiet_prints_nothing_on_stdout(quiet, name):
    tmp, done = quiet
    result = done[name]
    verdicts = (0, 1) if name in ("verify", "compare") else (0,)  # their exit code is the verdict
    assert result.returncode in verdicts, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_quiet_commands_still_did_their_work(quiet):
    tmp, done = quiet
    assert len(list((tmp / "sim" / "raw").glob("*.fits"))) == 9
    assert (tmp / "out" / "bias_model" / "bias_model.fits").is_file()
    assert (tmp / "gen" / "synthetic_bias_5.0C.fits").is_file()
    assert (tmp / "ver" / "verification.csv").is_file() and (tmp / "cmp" / "comparison.json").is_file()


def test_quiet_keeps_what_was_asked_for(quiet):
    tmp, done = quiet
    result = done["inspect_json"]
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "output folder"


# ------------------------------------------------------------------ shared options and help
def dispatched(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m bias_pipeline args`` in this process: exit code, stdout, stderr."""
    try:
        code = dispatch(list(args), PROG)
    except SystemExit as stop:
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_version_on_every_command(capsys, name):
    code, out, _ = dispatched(capsys, name, "--version")
    assert code == 0 and out.strip() == f"bias_pipeline {__version__}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_shows_the_shared_options_and_ends_with_examples(capsys, name):
    code, out, _ = dispatched(capsys, name, "--help")
    assert code == 0
    for flag in ("-v, --verbose", "-q, --quiet", "--version"):
        assert flag in out, (name, flag)
    blocks = out.rstrip().split("\n\n")
    heading = next(i for i, block in enumerate(blocks) if block.startswith(("example:", "examples:")))
    assert all(not block.startswith(("options:", "messages:")) for block in blocks[heading:])  # the last section
    typed = ("  python ", "  bias-pipeline ")
    command_lines = [line for line in blocks[heading].splitlines() if line.startswith(typed)]
    assert 2 <= len(command_lines) <= 3, blocks[heading]


def test_simulate_help_has_named_metavars(capsys):
    _, out, _ = dispatched(capsys, "simulate", "--help")
    assert "--shape ROWS COLUMNS" in out and "--temperatures T [T ...]" in out
    assert "--frames-per-temperature N" in out and "SHAPE" not in out and "TEMPERATURES" not in out


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("run", ["--basepath", "{tmp}/none", "--output-dir", "{tmp}/o"]),
        ("generate", ["--model", "{tmp}/none", "--temperature", "1", "--output", "{tmp}/g.fits"]),
        ("simulate", ["{tmp}/afile/sim"]),
        ("inspect", ["{tmp}/none"]),
        ("verify", ["{tmp}/none", "--basepath", "{tmp}", "--output-dir", "{tmp}/v"]),
        ("compare", ["{tmp}/none", "{tmp}/none", "--output-dir", "{tmp}/c"]),
    ],
)
def test_verbose_is_accepted_by_every_command(capsys, tmp_path, name, args):
    """-v parses (exit 3 or 4 for the missing input, not 2 for a usage error)."""
    (tmp_path / "afile").write_text("in the way")
    code, out, err = dispatched(capsys, name, "-v", *(arg.format(tmp=tmp_path) for arg in args))
    assert code in (3, 4), err
    assert "Traceback" not in err and "unrecognized" not in err


# ---------------------------------------------------------------------- did you mean
@pytest.mark.parametrize(
    ("name", "args", "typo", "meant"),
    [
        ("run", ["--output-dir", "o"], "--basepth", "--basepath"),
        ("generate", ["--temperature", "1", "--output", "o"], "--modle", "--model"),
        ("simulate", ["sim"], "--frames-per-temprature", "--frames-per-temperature"),
        ("inspect", ["out"], "--jsno", "--json"),
        ("verify", ["out", "--basepath", "raw", "--output-dir", "v"], "--tolerence", "--tolerance"),
        ("compare", ["a", "b", "--output-dir", "c"], "--sigam", "--sigma"),
    ],
)
def test_a_mistyped_option_gets_did_you_mean(capsys, name, args, typo, meant):
    code, out, err = dispatched(capsys, name, *args, typo, "3")
    assert code == 2 and out == ""
    assert err == f"{PROG} {name}: error: unrecognized arguments: {typo} 3 (did you mean {meant}?)\n"


def test_a_mistyped_choice_gets_did_you_mean(capsys):
    code, _, err = dispatched(capsys, "run", "--combine-method", "medain", "--output-dir", "o")
    assert code == 2 and len(err.splitlines()) == 1
    assert "invalid choice: 'medain'" in err and err.rstrip().endswith("(did you mean median?)")


def test_a_far_typo_gets_the_usual_hint(capsys):
    code, _, err = dispatched(capsys, "inspect", "out", "--frobnicate")
    assert code == 2 and err.rstrip().endswith("--frobnicate (see --help)") and "did you mean" not in err


def test_a_mistyped_command_gets_did_you_mean(capsys, monkeypatch):
    code, out, err = dispatched(capsys, "verfy", "out")
    assert code == 2 and out == ""
    assert err == f"{PROG}: error: unknown command 'verfy' (did you mean verify?)\n"
    from bias_pipeline import entry

    monkeypatch.setattr(sys, "argv", ["bias-pipeline", "simulat", "sim"])  # the console script
    assert entry.run() == 2
    assert capsys.readouterr().err == "bias-pipeline: error: unknown command 'simulat' (did you mean simulate?)\n"
    monkeypatch.setattr(sys, "argv", ["bias-pipeline", "raw/"])  # a path is no mistyped command: the run says
    with pytest.raises(SystemExit) as stop:
        entry.run()
    assert stop.value.code == 2
    assert capsys.readouterr().err == "bias-pipeline: error: unrecognized arguments: raw/ (see --help)\n"
    code, _, err = dispatched(capsys, "frobnicate")
    assert code == 2 and "give one of run, generate, simulate" in err and "did you mean" not in err


# ------------------------------------------------------------------- simulate, all or nothing
def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])
def test_simulate_stopped_midway_leaves_no_partial_folder(capsys, tmp_path, monkeypatch, stop):
    made = []
    real = simulate.make_frame

    def make_frame(*args, **kwargs):
        made.append(1)
        if len(made) == 4:
            raise stop("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(simulate, "make_frame", make_frame)
    code, out, err = dispatched(capsys, "simulate", str(tmp_path / "sim"), "--shape", "8", "8")
    assert len(made) == 4 and out == ""
    assert leftovers(tmp_path) == []  # neither sim/ nor its hidden staging folder
    if stop is KeyboardInterrupt:
        assert code == 130
        assert err == f"{PROG} simulate: interrupted; no data set was written ({tmp_path / 'sim'} is left as it was)\n"
    else:
        assert code == 70 and len(err.splitlines()) == 1


def test_simulate_refuses_a_folder_that_is_not_empty(capsys, tmp_path):
    out = tmp_path / "sim"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, _, err = dispatched(capsys, "simulate", str(out), "--shape", "8", "8")
    assert code == 4
    assert err == f"{PROG} simulate: error: OUT {out} exists and is not empty; give a new folder or remove it\n"
    assert leftovers(out) == ["mine.txt"] and leftovers(tmp_path) == ["sim"]


def test_simulate_fills_an_empty_folder_and_its_truth_points_there(capsys, tmp_path):
    out = tmp_path / "sim"
    out.mkdir()
    code, stdout, _ = dispatched(capsys, "simulate", str(out), "--shape", "8", "8", "--frames-per-temperature", "1")
    assert code == 0 and stdout == f"wrote 5 frames to {out / 'raw'} and the truth to {out / 'truth'}\n"
    assert leftovers(tmp_path) == ["sim"] and leftovers(out) == ["raw", "truth"]
    truth = simulate.write_dataset(tmp_path / "again", SimulationSpec(shape=(4, 4), frames_per_temperature=1))
    assert all(path.is_file() and path.parent == tmp_path / "again" / "raw" for path in truth.frame_paths)


def test_simulate_interrupted_by_sigint_leaves_nothing(tmp_path):
    """A real Ctrl-C in the middle of writing the frames."""
    out = tmp_path / "big"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["simulate", str(out), "--shape", "512", "512", "--frames-per-temperature", "40"]
    process = subprocess.Popen(
        [sys.executable, "-m", "bias_pipeline", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=sigint_as_usual,  # Ctrl-C as at a terminal, even when the tests run in a background job
    )
    deadline = time.monotonic() + 120
    staged = []
    while time.monotonic() < deadline and process.poll() is None:
        staged = list(tmp_path.glob(".big.partial-*/raw/*.fits"))
        if len(staged) >= 2:
            break
        time.sleep(0.05)
    assert len(staged) >= 2 and process.poll() is None, "the simulation did not get under way"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stdout == ""
    assert stderr == f"{PROG} simulate: interrupted; no data set was written ({out} is left as it was)\n"
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------ progress and Ctrl-C
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_simulate_shows_a_progress_bar_on_a_terminal_only(capsys, tmp_path, monkeypatch):
    spec = SimulationSpec(shape=(4, 4), temperatures=(0.0, 10.0), frames_per_temperature=2)
    monkeypatch.setattr(sys, "stderr", Terminal())
    simulate_dataset(tmp_path / "a", spec, show_progress=True)
    assert "simulating" in sys.stderr.getvalue() and "0/4" in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stderr", Terminal())
    dispatch(["simulate", str(tmp_path / "b"), "--shape", "4", "4", "-q"], PROG)
    assert "simulating" not in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    simulate_dataset(tmp_path / "c", spec, show_progress=True)
    assert sys.stderr.getvalue() == ""


def test_inspect_interrupted_says_it_wrote_nothing(capsys, tmp_path, monkeypatch):
    from bias_pipeline import inspection

    def stopped(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(inspection, "inspect_summary", stopped)
    code, _, err = dispatched(capsys, "inspect", str(tmp_path))
    assert code == 130 and err == f"{PROG} inspect: interrupted; nothing was written (inspect only reads)\n"


# -------------------------------------------------------------------------- two messages
def test_a_mask_that_is_not_fits_is_one_line_saying_what_to_give(tmp_path):
    mask = tmp_path / "hot_pixels.fits"
    mask.write_text("x" * 4000)  # a text file under a FITS name, longer than one FITS block
    with pytest.raises(InputDataError) as error:
        load_hot_pixel_mask(mask, (16, 24))
    message = str(error.value)
    assert str(mask) in message and "give a 2-D FITS image, non-zero = hot pixel" in message
    assert "ignore_missing_simple" not in message and "\n" not in message
    good = tmp_path / "good.fits"
    from astropy.io import fits

    fits.PrimaryHDU(np.eye(16, 24, dtype=np.uint8)).writeto(good)
    assert load_hot_pixel_mask(good, (16, 24)).sum() == 16


def test_a_mask_that_is_not_fits_stops_the_run_in_one_line(quiet, capsys, tmp_path):
    folder, _ = quiet
    mask = tmp_path / "mask.fits"
    mask.write_text("not a mask\n")
    args = ["--basepath", str(folder / "sim" / "raw"), "--output-dir", str(tmp_path / "o"), "--no-evaluation"]
    code, _, err = dispatched(capsys, "run", *args, "--hot-pixel-mask", str(mask), "-q")
    assert code == 3 and len(err.splitlines()) == 1
    assert f"--hot-pixel-mask {mask}" in err and "give a 2-D FITS image" in err and "ignore_missing_simple" not in err


def test_generate_into_a_file_as_a_folder_says_so(quiet):
    folder, done = quiet
    result = done["into_a_file"]
    assert result.returncode == 4 and result.stdout == ""
    afile = folder / "afile"
    assert result.stderr == (
        f"{PROG} generate: error: --output {afile}/: {afile} is a file, not a folder; give a folder or a file name\n"
    )
    assert "File exists" not in result.stderr and afile.read_text() == "in the way"

"""A run stopped part-way (SIGINT, SIGTERM, SIGKILL, a full disk) publishes nothing: a first run
leaves no product under a final name, a rerun leaves the earlier products exactly as they were,
and the next run completes with the same result. Two runs into one folder do not mix."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from conftest import REPO, run_cli, sigint_as_usual, snapshot, two_temperature_set, write_frame

GROUPS = 8
SHAPE = (1024, 1024)  # large enough that combining 8 groups takes a good fraction of a second
STAGING = ".staging.bias_pipeline.tmp"


def _write_set(folder: Path, shape: tuple[int, int]) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for group in range(GROUPS):
        temperature = -10.0 + 5.0 * group
        for index in range(6):
            data = (np.clip(rng.normal(200 + group, 2.0, shape).round(), 1, 4095) * 16).astype(np.uint16)
            write_frame(folder / f"f_{group}_{index}.fits", data, temperature=temperature)
    return folder


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_set(tmp_path_factory.mktemp("interrupt") / "raw", SHAPE)


@pytest.fixture(scope="module")
def raw_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frames of 512 x 512: plotting 32 maps of them takes a second or two, time to stop it."""
    return _write_set(tmp_path_factory.mktemp("interrupt_small") / "raw", (512, 512))


_sigint_as_usual = sigint_as_usual


def _start(raw: Path, out: Path, *options: str, preexec_fn=_sigint_as_usual) -> subprocess.Popen[str]:
    command = [sys.executable, str(REPO / "run_pipeline.py"), "--basepath", str(raw), "--output-dir", str(out),
               "-q", *options]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=preexec_fn
    )


def _products(out: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for path in sorted(out.rglob("*.fits")):
        if any(part.startswith(".") for part in path.relative_to(out).parts):
            continue
        with fits.open(path) as hdul:  # every file under its final name is whole
            arrays[str(path.relative_to(out))] = np.array(hdul[0].data)
    return arrays


def _wait_for(process: subprocess.Popen[str], folder: Path, pattern: str) -> None:
    """Poll until a file matching ``pattern`` appears under ``folder`` (the run's phase has begun)."""
    deadline = time.monotonic() + 120
    while not list(folder.glob(pattern)) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)


@pytest.fixture(scope="module")
def reference(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("reference")
    process = _start(raw, out, "--no-evaluation", "--threads", "1")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return _products(out)


@pytest.fixture(scope="module")
def finished(raw_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete output folder, evaluation included (copied by each test that reruns into it)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    done = run_cli("run_pipeline.py", "--basepath", str(raw_small), "--output-dir", str(out), "-q")
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated"), (signal.SIGKILL, -9, None)],
)
def test_killed_while_combining(raw, reference, tmp_path, signum, code, word):
    out = tmp_path / "out"
    process = _start(raw, out, "--no-evaluation", "--threads", "1")
    # Stop it once the first master is written (in the staging folder): mid-combining.
    _wait_for(process, out, f"{STAGING}/bias_grouped_by_temp/*master_bias_*")
    sent = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    stopped_after = time.monotonic() - sent
    assert process.returncode == code, err
    assert process.returncode != 0, "the run finished before it could be stopped"
    assert not _products(out), "a product under its final name"
    assert not (out / "run_config.json").exists()
    if word is not None:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and word in err, err
        assert "nothing of this run was published" in err and "stopped_run/pipeline.log" in err, err
        assert stopped_after < 5.0, stopped_after  # in practice well under a second
        assert sorted(p.name for p in out.iterdir()) == ["stopped_run"], "staging, lock or temporary files left"
        assert "run stopped: " in (out / "stopped_run" / "pipeline.log").read_text()
    again = _start(raw, out, "--no-evaluation", "--threads", "1")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert not [p for p in out.rglob(".*")], "hidden leftovers after a finished run"
    result = _products(out)
    assert result.keys() == reference.keys()
    for name, data in reference.items():
        np.testing.assert_array_equal(result[name], data, err_msg=name)


# Phases of a rerun, each recognised by a file of the staging folder: combining (a master),
# plotting (an evaluation PNG) and writing the report (run_config.json comes just before it).
PHASES = {
    "combining": f"{STAGING}/bias_grouped_by_temp/*master_bias_*",
    "plotting": f"{STAGING}/evaluation/*.png*",
    "report": f"{STAGING}/run_config.json",
}


@pytest.mark.parametrize(
    ("phase", "signum"),
    [
        ("combining", signal.SIGINT),
        ("plotting", signal.SIGTERM),
        ("report", signal.SIGTERM),
        ("combining", signal.SIGKILL),
    ],  # fmt: skip
)
def test_a_stopped_rerun_leaves_the_earlier_products_as_they_were(raw_small, finished, tmp_path, phase, signum):
    raw = raw_small
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = snapshot(out, stopped=False)
    # Other options, so that every product of the rerun would differ from the earlier ones.
    process = _start(raw, out, "--combine-method", "median", "--generate-set", "--save-eval-fits")
    _wait_for(process, out, PHASES[phase])
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0, "the rerun finished before it could be stopped"
    assert snapshot(out, stopped=False) == before, "the earlier products changed"
    if signum != signal.SIGKILL:
        assert f"{out} holds the earlier run's products as they were" in err, err
        inspected = subprocess.run(
            [sys.executable, "-m", "bias_pipeline", "inspect", str(out), "--json"],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
        )  # fmt: skip
        assert inspected.returncode == 0 and '"combine_method": "sigma-clip"' in inspected.stdout
    # The next run replaces the earlier products with its own complete set.
    again = run_cli("run_pipeline.py", "--basepath", str(raw), "--output-dir", str(out), "-q", "--no-evaluation",
                    "--combine-method", "median")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert fits.getheader(out / "bias_grouped_by_temp" / "master_bias_0.0C.fits")["COMBMETH"] == "median"
    assert not list((out / "evaluation").iterdir()), "the earlier run's evaluation left beside the new run"
    assert not [p for p in out.rglob(".*")] and not (out / "stopped_run").exists()


def test_a_full_disk_at_the_report_fails_the_run_and_keeps_the_earlier_one(tmp_path):
    raw = tmp_path / "raw"
    two_temperature_set(raw)
    out = tmp_path / "out"
    assert run_cli("run_pipeline.py", "--basepath", str(raw), "--output-dir", str(out), "-q").returncode == 0
    before = snapshot(out, stopped=False)
    largest_other = max(len(data) for name, data in before.items() if name != "report.html")
    assert len(before["report.html"]) > largest_other  # so a file-size limit between them hits the report

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing us
        limit = (largest_other + len(before["report.html"])) // 2
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    process = _start(raw, out, "--generate-set", preexec_fn=small_disk)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 4, err
    assert "cannot write" in err and "report.html" in err and "free some space" in err, err
    assert snapshot(out, stopped=False) == before


def test_two_runs_into_one_folder(raw, tmp_path):
    out = tmp_path / "out"
    first = _start(raw, out, "--no-evaluation", "--threads", "1")
    _wait_for(first, out, f"{STAGING}/bias_grouped_by_temp/*master_bias_*")
    second = run_cli("run_pipeline.py", "--basepath", str(raw), "--output-dir", str(out), "-q")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 4, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "another run is writing there (pid" in lines[0], second.stderr
    assert str(first.pid) in lines[0]
    assert len(list((out / "bias_grouped_by_temp").glob("*.fits"))) == GROUPS  # only the first run's
    assert not (out / ".bias_pipeline.lock").exists()
    # The lock of a run killed outright ends with it: the next run is not blocked.
    killed = _start(raw, out, "--no-evaluation", "--threads", "1")
    _wait_for(killed, out, f"{STAGING}/bias_grouped_by_temp/*master_bias_*")
    killed.kill()
    killed.communicate(timeout=60)
    assert (out / ".bias_pipeline.lock").exists() and (out / STAGING).is_dir()  # left behind; the lock not held
    again = run_cli("run_pipeline.py", "--basepath", str(raw), "--output-dir", str(out), "-q", "--no-evaluation")
    assert again.returncode == 0, again.stderr
    assert not [p for p in out.rglob(".*")]


def test_killed_while_plotting_leaves_no_process_behind(raw_small, tmp_path):
    """SIGKILL of the run while its forked workers draw the plots: the workers die with it, and a
    caller reading the run's output is not left waiting."""
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "run_pipeline.py"), "--basepath", str(raw_small), "--output-dir", str(out),
               "--threads", "2", "-q"]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    _wait_for(process, out, f"{STAGING}/evaluation/*.png*")
    assert process.poll() is None, "the run ended before it could be killed while plotting"
    process.kill()
    process.communicate(timeout=30)  # returns only once nobody holds the run's stdout and stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # anything left of the run's session?
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("plot workers outlived the killed run")


DRIVER = """
import os, signal, sys
import concurrent.futures.process as pool_module
spawn, fired = pool_module.ProcessPoolExecutor._spawn_process, []
def spawn_then_signal(self):
    spawn(self)
    if not fired:  # the signal lands in the parent while its plot workers start
        fired.append(1)
        os.kill(os.getpid(), signal.{signame})
pool_module.ProcessPoolExecutor._spawn_process = spawn_then_signal
from bias_pipeline.cli import run_main
sys.exit(run_main(sys.argv[1:], prog="run_pipeline.py"))
"""


@pytest.mark.parametrize(("signame", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_while_the_plot_workers_start_ends_the_run(tmp_path, signame, code):
    two_temperature_set(tmp_path / "raw", temperatures=(0.0, 10.0, 20.0))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.replace("{signame}", signame))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(driver), "--basepath", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "out"),
         "-q", "--threads", "2"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
        preexec_fn=_sigint_as_usual,
    )  # fmt: skip
    assert done.returncode == code, done.stderr
    assert time.monotonic() - started < 60  # not a worker waiting on its queue for ever
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr


def test_ctrl_c_while_starting_is_one_line(tmp_path):
    two_temperature_set(tmp_path / "raw")
    for delay in (0.3, 0.8):  # during the imports, and about when the run begins
        process = _start(tmp_path / "raw", tmp_path / f"out_{delay}")
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        if process.returncode == 0:
            continue  # finished first on a fast machine: nothing to check
        assert process.returncode == 130, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_an_interrupt_wrapped_by_python_is_still_an_interrupt():
    """Python wraps an exception raised inside a class body's __set_name__ (matplotlib's, while
    it is imported) in a RuntimeError: a SIGTERM there must still read as a SIGTERM."""
    from bias_pipeline.command import guarded
    from bias_pipeline.interrupts import Terminated

    def body() -> int:
        try:
            raise Terminated
        except Terminated as exc:
            raise RuntimeError("Error calling __set_name__ on 'x' instance 'locs'") from exc

    assert guarded("run_pipeline.py", body) == 143


def test_product_folders_that_cannot_be_written_are_refused_at_the_start(tmp_path):
    """A read-only product folder (or stopped_run/) is found before any work, and named; the
    earlier products stay. As root, the command runs without the capabilities that bypass
    file permissions (setpriv), as an ordinary user would."""
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("root without setpriv: permissions cannot be made to count")
    two_temperature_set(tmp_path / "raw")
    out = tmp_path / "out"
    assert run_cli("run_pipeline.py", "--basepath", str(tmp_path / "raw"), "--output-dir", str(out), "-q",
                   "--no-evaluation").returncode == 0  # fmt: skip
    before = snapshot(out, stopped=False)
    (out / "bias_model").chmod(0o555)
    try:
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [*prefix, sys.executable, str(REPO / "run_pipeline.py"), "--basepath", str(tmp_path / "raw"),
             "--output-dir", str(out), "-q", "--no-evaluation"],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
        )  # fmt: skip
    finally:
        (out / "bias_model").chmod(0o755)
    assert done.returncode == 4, done.stderr
    assert "bias_model is not writable" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert snapshot(out, stopped=False) == before

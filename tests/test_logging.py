"""Messages: OUT_DIR/pipeline.log holds the whole record whatever the console shows; -v shows
per-file decisions, -q only warnings; progress bars on a terminal, none with -q."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from bias_pipeline.provenance import run_log

from conftest import REPO, run_cli


def test_log_file_holds_debug_records_while_console_is_quiet(sim, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli("run_pipeline.py", "--basepath", str(sim.raw_dir), "--output-dir", str(out), "-q")
    assert done.returncode == 0, done.stderr
    assert "INFO" not in done.stderr and "DEBUG" not in done.stderr
    log = (out / "pipeline.log").read_text(encoding="utf-8")
    # Every frame's decision, the step summaries, and where the products went.
    for path in sim.frame_paths:
        assert f"accepted {path}" in log
    assert "frames used in 5 masters" in log
    assert "report: " in log and "report.html" in log
    assert " DEBUG " in log and " INFO " in log


def test_verbose_shows_per_file_decisions(sim, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli("run_pipeline.py", "--basepath", str(sim.raw_dir), "--output-dir", str(out), "-v", "--no-evaluation")
    assert done.returncode == 0, done.stderr
    accepted = [line for line in done.stderr.splitlines() if line.startswith("DEBUG: accepted ")]
    assert len(accepted) == len(sim.frame_paths)


def test_run_log_leaves_a_library_callers_logging_as_it_was(tmp_path: Path) -> None:
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    root = logging.getLogger()
    package = logging.getLogger("bias_pipeline")
    collector = Collect()
    saved_root_level = root.level
    root.addHandler(collector)
    root.setLevel(logging.WARNING)  # as logging.basicConfig(level=WARNING) would
    before = (package.level, package.propagate, list(package.handlers))
    try:
        with run_log(tmp_path) as log_path:
            child = logging.getLogger("bias_pipeline.steps.example")
            child.debug("a debug detail")
            child.info("an info line")
            child.warning("a warning")
    finally:
        root.removeHandler(collector)
        root.setLevel(saved_root_level)
    assert [r.getMessage() for r in seen if r.name.startswith("bias_pipeline")] == ["a warning"]
    assert (package.level, package.propagate, list(package.handlers)) == before
    text = log_path.read_text(encoding="utf-8")
    assert "a debug detail" in text and "an info line" in text and "a warning" in text


def test_run_log_records_why_a_run_stopped(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), run_log(tmp_path) as log_path:
        1 / 0  # noqa: B018
    text = log_path.read_text(encoding="utf-8")
    assert "run stopped: ZeroDivisionError" in text and "Traceback" in text


def _run_on_terminal(*args: str) -> str:
    """Run the pipeline with stdout and stderr on a pseudo-terminal and return what it drew."""
    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, and tqdm draws a bar to fit: give it 120.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "run_pipeline.py"), *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            process.kill()
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return b"".join(chunks).decode(errors="replace")


def test_progress_bars_on_a_terminal_and_none_with_quiet(sim, tmp_path: Path) -> None:
    common = ("--basepath", str(sim.raw_dir))
    drawn = _run_on_terminal(*common, "--output-dir", str(tmp_path / "bars"))
    for bar in ("scanning", "combining", "fitting", "evaluating", "plotting"):
        assert f"{bar}" in drawn, (bar, drawn[-3000:])
    assert "frame/s" in drawn or "frames/s" in drawn or "frame]" in drawn  # combining counts frames
    quiet = _run_on_terminal(*common, "--output-dir", str(tmp_path / "quiet"), "-q")
    for bar in ("scanning", "combining", "fitting", "evaluating", "plotting"):
        assert bar not in quiet


def test_parallel_runs_restore_the_logger_when_the_last_ends(tmp_path: Path) -> None:
    import threading

    package = logging.getLogger("bias_pipeline")
    before = (package.level, package.propagate, list(package.handlers))
    first_in, second_done = threading.Event(), threading.Event()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    def first() -> None:
        with run_log(tmp_path / "a"):
            first_in.set()
            second_done.wait(30)
            logging.getLogger("bias_pipeline.x").debug("first run, after the second ended")

    def second() -> None:
        first_in.wait(30)
        with run_log(tmp_path / "b"):
            pass
        second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert (package.level, package.propagate, list(package.handlers)) == before
    # The second run ending did not cut the first run's log short.
    assert "first run, after the second ended" in (tmp_path / "a" / "pipeline.log").read_text()


def test_a_log_file_that_cannot_be_written_warns_once(tmp_path: Path, capsys, caplog) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    (tmp_path / "pipeline.log").symlink_to("/dev/full")
    with run_log(tmp_path):
        for index in range(5):
            logging.getLogger("bias_pipeline.x").warning("message %d", index)
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    warned = [r for r in caplog.records if "the rest of this run is not logged there" in r.getMessage()]
    assert len(warned) == 1
    assert [r.getMessage() for r in caplog.records if r.name == "bias_pipeline.x"] == [f"message {i}" for i in range(5)]


def test_the_command_line_logs_by_handler_levels(tmp_path: Path, capsys) -> None:
    """Under the command line the package logger makes every record and each handler keeps its
    own level: the console the -q level, pipeline.log everything; a run changes nothing on the
    logger but adding and removing its file handler."""
    from bias_pipeline.command import setup_logging

    package = logging.getLogger("bias_pipeline")
    warnings_logger = logging.getLogger("py.warnings")
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in (package, warnings_logger)]
    try:
        setup_logging(quiet=True)
        (console,) = package.handlers
        assert package.level == logging.DEBUG and console.level == logging.WARNING
        before = (package.level, package.propagate, list(package.handlers), list(console.filters))
        with run_log(tmp_path) as log_path:
            assert package.level == logging.DEBUG and list(console.filters) == before[3]
            assert len(package.handlers) == 2  # the console and this run's file, nothing else
            child = logging.getLogger("bias_pipeline.steps.example")
            child.debug("a debug detail")
            child.info("an info line")
            child.warning("a warning")
        assert (package.level, package.propagate, list(package.handlers), list(console.filters)) == before
    finally:
        for lg, level, propagate, handlers in saved:
            lg.setLevel(level)
            lg.propagate = propagate
            lg.handlers[:] = handlers
        logging.captureWarnings(False)
    err = capsys.readouterr().err
    assert "a warning" in err and "an info line" not in err and "a debug detail" not in err
    text = log_path.read_text(encoding="utf-8")
    assert "a debug detail" in text and "an info line" in text and "a warning" in text

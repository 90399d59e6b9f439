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

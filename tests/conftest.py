"""Shared fixtures: one small simulated data set (48 x 64, deliberately non-square so a
transposed axis fails) and a helper that writes single frames with chosen faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import PipelineConfig, run_bias_pipeline
from bias_pipeline.simulate import SimulationSpec, SimulationTruth, simulate_dataset

REPO = Path(__file__).resolve().parents[1]
SHAPE = (48, 64)
SPEC = SimulationSpec(
    shape=SHAPE,
    temperatures=(-10.0, 0.0, 10.0, 20.0, 30.0),
    frames_per_temperature=5,
    seed=1,
)


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimulationTruth:
    """A simulated raw data set (do not modify its files)."""
    return simulate_dataset(tmp_path_factory.mktemp("sim"), SPEC)


@pytest.fixture(scope="session")
def pipeline_run(sim: SimulationTruth, tmp_path_factory: pytest.TempPathFactory):
    """The full pipeline run once on ``sim`` with every product switched on."""
    return full_run(sim, tmp_path_factory.mktemp("run"))


def full_run(sim: SimulationTruth, out: Path, **options):
    """The pipeline on ``sim`` into ``out`` with every product switched on (``options``: more
    keyword arguments of :func:`run_bias_pipeline`)."""
    assert sim.truth_dir is not None
    return run_bias_pipeline(
        sim.raw_dir,
        out,
        sim.truth_dir / "hot_pixel_mask.fits",
        generate_set=True,
        eval_save_fits=True,
        config=PipelineConfig(show_progress=False),
        **options,
    )


def sigint_as_usual() -> None:
    """For ``preexec_fn``: in the child, Ctrl-C's default action, even when the tests were started
    from a background job (which ignores SIGINT, and Python then installs no KeyboardInterrupt for
    it)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def bias_pixels(shape: tuple[int, int] = SHAPE, level: int = 200, seed: int = 0) -> np.ndarray:
    """A plausible raw bias frame: 12-bit values x16 in uint16."""
    rng = np.random.default_rng(seed)
    return (np.clip(rng.normal(level, 2.0, shape).round(), 1, 4095) * 16).astype(np.uint16)


def write_frame(
    path: Path,
    data: np.ndarray | None = None,
    *,
    temperature: object = 5.0,
    exposure: object = 0.0,
    temperature_key: str = "TEMPERATURE",
    exposure_key: str = "EXPOSURE",
    seed: int = 0,
) -> Path:
    """Write one raw frame with the given header values (``None`` leaves a card out)."""
    header = fits.Header()
    if temperature is not None:
        header[f"HIERARCH {temperature_key}" if len(temperature_key) > 8 else temperature_key] = temperature
    if exposure is not None:
        header[f"HIERARCH {exposure_key}" if len(exposure_key) > 8 else exposure_key] = exposure
    fits.PrimaryHDU(bias_pixels(seed=seed) if data is None else data, header=header).writeto(path)
    return path


@pytest.fixture
def frame_writer(tmp_path: Path) -> Callable[..., Path]:
    """``frame_writer(name, data=None, **header_values)`` writes a frame into ``tmp_path/raw``."""
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)

    def make(name: str, data: np.ndarray | None = None, **kwargs: object) -> Path:
        return write_frame(raw / name, data, **kwargs)  # type: ignore[arg-type]

    return make


def two_temperature_set(raw: Path, frames: int = 3, temperatures: tuple[float, ...] = (0.0, 10.0)) -> None:
    """Write ``frames`` good frames at each temperature into ``raw`` (a minimal usable set)."""
    raw.mkdir(parents=True, exist_ok=True)
    for t in temperatures:
        for i in range(frames):
            data = bias_pixels(level=200 + int(t), seed=1000 + 100 * temperatures.index(t) + i)  # distinct noise
            write_frame(raw / f"good_{t:+.1f}_{i}.fits", data, temperature=t)


def run_cli(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python SCRIPT args`` (a root script of the repository) and capture its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=300,
    )


def snapshot(out: Path, *, stopped: bool = True) -> dict[str, bytes]:
    """Every file of an output folder under a final name (relative path -> bytes): hidden names
    (the lock, a staging folder) left out, and ``stopped_run/`` too unless ``stopped``."""
    files = {}
    for path in sorted(out.rglob("*")):
        parts = path.relative_to(out).parts
        if (
            path.is_file()
            and not any(part.startswith(".") for part in parts)
            and (stopped or parts[0] != "stopped_run")
        ):
            files[str(path.relative_to(out))] = path.read_bytes()
    return files


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """Assert that a command failed with ``code`` and one line on stderr (warnings and info aside)
    holding every fragment; return the line."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1 and "error:" in lines[0], done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(autouse=True)
def _package_logging_restored():
    """A test that calls a command's ``main`` in-process (verify, compare) lets it configure the
    console logging, bound to that test's captured stderr; restore the loggers afterwards so the
    next test sees logging as a library caller left it."""
    import logging

    saved = {}
    for name in ("bias_pipeline", "py.warnings"):
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    logging.captureWarnings(False)

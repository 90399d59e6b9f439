"""A run killed while combining (SIGINT, SIGTERM, SIGKILL) leaves no product under its final
name and a second run completes with the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from conftest import REPO, write_frame

GROUPS = 8
SHAPE = (1024, 1024)  # large enough that combining 8 groups takes a good fraction of a second


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("interrupt") / "raw"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for group in range(GROUPS):
        temperature = -10.0 + 5.0 * group
        for index in range(6):
            data = (np.clip(rng.normal(200 + group, 2.0, SHAPE).round(), 1, 4095) * 16).astype(np.uint16)
            write_frame(folder / f"f_{group}_{index}.fits", data, temperature=temperature)
    return folder


def _start(raw: Path, out: Path) -> subprocess.Popen[str]:
    command = [sys.executable, str(REPO / "run_pipeline.py"), "--basepath", str(raw), "--output-dir", str(out),
               "--no-evaluation", "--threads", "1", "-q"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _products(out: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for path in sorted(out.rglob("*.fits")):
        with fits.open(path) as hdul:  # every file under its final name is whole
            arrays[str(path.relative_to(out))] = np.array(hdul[0].data)
    return arrays


@pytest.fixture(scope="module")
def reference(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("reference")
    process = _start(raw, out)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return _products(out)


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated"), (signal.SIGKILL, -9, None)],
)
def test_killed_while_combining(raw, reference, tmp_path, signum, code, word):
    out = tmp_path / "out"
    process = _start(raw, out)
    masters = out / "bias_grouped_by_temp"
    deadline = time.monotonic() + 120
    # Stop it once the first master is written (under its staging name): mid-combining.
    while not list(masters.glob(".master_bias_*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    sent = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    stopped_after = time.monotonic() - sent
    assert process.returncode == code, err
    assert process.returncode != 0, "the run finished before it could be stopped"
    assert not list(out.rglob("*.fits")), "a product under its final name"
    assert not (out / "run_config.json").exists()
    if word is not None:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and word in err, err
        assert stopped_after < 5.0, stopped_after  # in practice well under a second
        assert not list(out.rglob(".*.tmp")), "temporary files left behind"
    _products(out)  # whatever is there opens cleanly
    again = _start(raw, out)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert not list(out.rglob(".*.tmp"))
    result = _products(out)
    assert result.keys() == reference.keys()
    for name, data in reference.items():
        np.testing.assert_array_equal(result[name], data, err_msg=name)

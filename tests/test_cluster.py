"""Step 2's blocks on a Dask cluster (--dask-scheduler): the same products as a local run, a
worker that dies, a frame a worker cannot read, Ctrl-C, and the user's mistakes."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import distributed  # the test extra installs dask[distributed]: these tests run, never skip
import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import PipelineConfig, block_combine, cluster
from bias_pipeline.block_combine import CombineReadError, combine_records
from bias_pipeline.errors import ConfigError
from bias_pipeline.frames import inspect_frame as _inspect

from conftest import REPO, SPEC, full_run

# Products that name the run itself (its options, times, log), not what it made.
RUN_OWN = {"pipeline.log", "run_config.json", "report.html"}
SMALL_BLOCK_ROWS = 8  # several blocks per group (the frames have 48 rows), so several tasks


@pytest.fixture(scope="module")
def local_cluster():
    """Two worker processes of one thread each, started by the test itself."""
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as started,
        distributed.Client(started) as client,
    ):
        yield started, client


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(block_combine, "MAX_BLOCK_ROWS", SMALL_BLOCK_ROWS)


def inspect_frame(path: Path):
    return _inspect(path, ["TEMPERATURE"], ["EXPOSURE"])


def _records(sim, temperature_index: int = 0):
    per = SPEC.frames_per_temperature
    paths = sim.frame_paths[temperature_index * per : (temperature_index + 1) * per]
    return [inspect_frame(path) for path in paths]


def _assert_same_arrays(one: block_combine.GroupResult, other: block_combine.GroupResult) -> None:
    for name in ("master", "noise", "error", "n_used"):
        np.testing.assert_array_equal(getattr(one.combined, name), getattr(other.combined, name))
    np.testing.assert_array_equal(one.outlier_fraction, other.outlier_fraction)
    assert one.fingerprint == other.fingerprint


def test_products_through_a_cluster_are_bit_identical_to_a_local_run(sim, pipeline_run, local_cluster, small_blocks):
    started, client = local_cluster
    out = pipeline_run.output_dir.parent / "through_dask"
    full_run(sim, out, dask_scheduler=started.scheduler_address)
    local = pipeline_run.output_dir
    products = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file() and p.name not in RUN_OWN)
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.name not in RUN_OWN) == products
    fits_files = [p for p in products if p.suffix == ".fits"]
    assert len([p for p in fits_files if p.name.startswith("master_bias_")]) == len(SPEC.temperatures)
    for name in fits_files:
        with fits.open(local / name) as mine, fits.open(out / name) as theirs:
            assert len(mine) == len(theirs)
            for a, b in zip(mine, theirs, strict=True):
                if a.data is None:
                    continue
                if isinstance(a, fits.BinTableHDU):
                    assert a.data.tobytes() == b.data.tobytes(), name
                else:
                    np.testing.assert_array_equal(a.data, b.data, err_msg=str(name))
    for name in (p for p in products if p.suffix == ".csv"):
        assert (local / name).read_bytes() == (out / name).read_bytes(), name
    log = (out / "pipeline.log").read_text(encoding="utf-8")
    assert f"combining on the Dask scheduler {started.scheduler_address}" in log


def test_a_worker_killed_mid_group_has_its_blocks_run_again(sim, local_cluster, small_blocks):
    started, client = local_cluster
    records = _records(sim)
    reference = combine_records(records, "sigma-clip", threads=1)
    killed = []

    def kill_a_worker(rows: int) -> None:
        if not killed:  # at the first block back: some blocks are still queued on each worker
            pids = client.run(os.getpid)
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    with cluster.block_cluster(started.scheduler_address) as blocks:
        assert blocks is not None
        result = combine_records(records, "sigma-clip", threads=1, cluster=blocks, on_rows=kill_a_worker)
    assert killed
    _assert_same_arrays(result, reference)
    # The nanny starts a new worker in the dead one's place (for the tests after this one).
    deadline = time.monotonic() + 60
    while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)


def test_a_frame_a_worker_cannot_read_is_rejected_with_its_reason(sim, tmp_path, local_cluster):
    from bias_pipeline.grouping import FrameGroup
    from bias_pipeline.steps.step2_generate_master_bias_by_temp import combine_group

    started, _ = local_cluster
    copies = []
    for index, record in enumerate(_records(sim, 1)):
        copy = tmp_path / f"frame_{index}.fits"
        copy.write_bytes(record.path.read_bytes())
        copies.append(copy)
    records = [inspect_frame(path) for path in copies]
    # Truncated after the scan: the worker's read fails as a local one would.
    copies[2].write_bytes(copies[2].read_bytes()[:4000])
    config = PipelineConfig(show_progress=False, min_frames_per_group=3)
    with cluster.block_cluster(started.scheduler_address) as blocks:
        outcome = combine_group(FrameGroup("0.0", records), config, cluster=blocks)
    assert outcome.combined is not None
    decision = outcome.decisions[copies[2]]
    assert decision.status == "rejected"
    assert "became unreadable while combining" in decision.reason and copies[2].name in decision.reason
    assert [r.path for r in outcome.group.records] == [p for p in copies if p != copies[2]]


def test_the_read_error_pickles_with_its_record(sim):
    import pickle

    record = _records(sim)[0]
    again = pickle.loads(pickle.dumps(CombineReadError("cannot read", record)))
    assert isinstance(again, CombineReadError) and str(again) == "cannot read" and again.record == record


def test_an_interrupt_cancels_the_tasks_on_the_cluster(sim, local_cluster, small_blocks):
    started, client = local_cluster

    def interrupted(rows: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), cluster.block_cluster(started.scheduler_address) as blocks:
        combine_records(_records(sim), "median", cluster=blocks, on_rows=interrupted)

    def tasks_left(dask_scheduler) -> int:
        return len(dask_scheduler.tasks)

    deadline = time.monotonic() + 10
    while client.run_on_scheduler(tasks_left) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.run_on_scheduler(tasks_left) == 0


def test_an_unreachable_scheduler_is_one_line(monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1.0)
    expected = r"^--dask-scheduler tcp://127.0.0.1:9: no scheduler answered within 1 s"
    with pytest.raises(cluster.ClusterError, match=expected), cluster.block_cluster("tcp://127.0.0.1:9"):
        pass


def test_without_the_extra_the_option_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'bias_pipeline\[dask\]'"):
        PipelineConfig(dask_scheduler="local:2")


@pytest.mark.parametrize("address", ["local:0", "local:x", "nowhere", ""])
def test_a_malformed_address_is_refused(address):
    with pytest.raises(ConfigError, match="--dask-scheduler"):
        PipelineConfig(dask_scheduler=address)


def test_the_command_line_runs_on_a_local_cluster_and_refuses_a_bad_address(sim, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "bias_pipeline", "run", "--basepath", str(sim.raw_dir), "-q", "--no-evaluation"]
    bad = subprocess.run(
        [*command, "--output-dir", str(tmp_path / "bad"), "--dask-scheduler", "local:none"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert "--dask-scheduler local:none" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    good = subprocess.run(
        [*command, "--output-dir", str(tmp_path / "good"), "--dask-scheduler", "local:2"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert good.stdout == ""
    assert len(list((tmp_path / "good").rglob("master_bias_*.fits"))) == len(SPEC.temperatures)


def test_the_option_is_recorded_and_read_back_from_a_config_file(tmp_path):
    from bias_pipeline.config_file import load_config_file

    path = tmp_path / "run.toml"
    path.write_text('dask-scheduler = "tcp://10.0.0.5:8786"\n', encoding="utf-8")
    values, _ = load_config_file(path)
    assert values["dask_scheduler"] == "tcp://10.0.0.5:8786"
    config = dataclasses.replace(PipelineConfig(), dask_scheduler="tcp://10.0.0.5:8786")
    assert config.options_record()["dask_scheduler"] == "tcp://10.0.0.5:8786"

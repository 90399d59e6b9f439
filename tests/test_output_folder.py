"""The output folder's protocol, through its functions: staging, publishing all or nothing, the
recovery of a publish cut short, and the lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bias_pipeline.errors import OutputError
from bias_pipeline.output_folder import (
    PREVIOUS_NAME,
    STAGING_NAME,
    is_product,
    keep_stopped_run,
    locked_by,
    output_lock,
    publish,
    stage_run,
)

EARLIER = {
    "run_config.json": "earlier",
    "report.html": "earlier",
    "frames_manifest.csv": "earlier",
    "bias_model/bias_a_map.fits": "earlier",
    "bias_grouped_by_temp/master_bias_5.0C.fits": "earlier",  # a temperature the new run has not
    "evaluation/mae_5.0C.png": "earlier",
}
USER = {"evaluation/notes.txt": "mine", "demo_data/raw/a.fits": "mine", "latest.txt": "mine"}
NEW = {
    "run_config.json": "new",
    "report.html": "new",
    "frames_manifest.csv": "new",
    "pipeline.log": "new",
    "bias_model/bias_a_map.fits": "new",
    "bias_grouped_by_temp/master_bias_0.0C.fits": "new",
    "bias_grouped_by_temp/master_bias_10.0C.fits": "new",
}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def _read(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


@pytest.fixture
def earlier_run(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    _write(out, {**EARLIER, **USER})
    return out


def test_publish_replaces_the_earlier_products_and_keeps_the_users_files(earlier_run):
    run = stage_run(earlier_run)
    assert _read(earlier_run) == {**EARLIER, **USER}  # staging touched nothing
    _write(run.staging, NEW)
    publish(run)
    assert _read(earlier_run) == {**NEW, **USER}
    assert not (earlier_run / STAGING_NAME).exists() and not (earlier_run / PREVIOUS_NAME).exists()


def test_a_stopped_run_keeps_its_log_and_manifest_only(earlier_run):
    run = stage_run(earlier_run)
    _write(
        run.staging, {"frames_manifest.csv": "stopped", "pipeline.log": "stopped", "bias_model/bias_a_map.fits": "x"}
    )
    assert keep_stopped_run(run, note="run stopped: because") == earlier_run / "stopped_run"
    assert _read(earlier_run) == {
        **EARLIER,
        **USER,
        "stopped_run/frames_manifest.csv": "stopped",
        "stopped_run/pipeline.log": "stopped" + "run stopped: because\n",
    }


class _Killed(BaseException):
    """Stands for SIGKILL: an end that runs no clean-up (not an OSError, so no roll-back)."""


@pytest.mark.parametrize("moves_before_kill", [0, 1, 3, 6, 9])
def test_a_publish_killed_part_way_is_finished_by_the_next_run(earlier_run, monkeypatch, moves_before_kill):
    run = stage_run(earlier_run)
    _write(run.staging, NEW)
    real_replace = os.replace
    count = {"moves": 0}

    def replace(source, target):
        if count["moves"] == moves_before_kill:
            raise _Killed
        count["moves"] += 1
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(_Killed):
        publish(run)
    monkeypatch.setattr(os, "replace", real_replace)
    # Whatever the moment, the folder never shows a finished run made of two runs' files.
    state = _read(earlier_run)
    if "run_config.json" in state:
        mine = {name: text for name, text in state.items() if name not in USER}
        assert mine in ({**EARLIER}, {**NEW}), mine
    fresh = stage_run(earlier_run)  # the next run's start
    assert not [p for p in fresh.staging.rglob("*") if p.is_file()], "the next run's staging is not empty"
    if moves_before_kill == 0:  # killed before the publishing began: a stopped run, the earlier one kept
        stopped = {"stopped_run/frames_manifest.csv": "new", "stopped_run/pipeline.log": "new"}
        assert _read(earlier_run).items() >= {**EARLIER, **USER}.items()
        assert set(_read(earlier_run)) == set(EARLIER) | set(USER) | set(stopped)
    else:
        assert _read(earlier_run) == {**NEW, **USER}
    assert not (earlier_run / PREVIOUS_NAME).exists()


def test_a_publish_that_cannot_place_a_file_puts_everything_back(earlier_run):
    (earlier_run / "bias_grouped_by_temp" / "master_bias_10.0C.fits").mkdir()  # a folder in the way
    run = stage_run(earlier_run)
    _write(run.staging, NEW)
    with pytest.raises(OutputError, match="master_bias_10.0C.fits.*remove what is in the way"):
        publish(run)
    assert _read(earlier_run) == {**EARLIER, **USER}


def test_the_lock_keeps_a_second_run_out_and_names_the_first(tmp_path):
    with output_lock(tmp_path):
        assert f"pid {os.getpid()}" in (locked_by(tmp_path) or "")
        with (
            pytest.raises(OutputError, match=rf"another run is writing there \(pid {os.getpid()} on "),
            output_lock(tmp_path),
        ):
            pass
    assert locked_by(tmp_path) is None and not (tmp_path / ".bias_pipeline.lock").exists()
    with output_lock(tmp_path):  # free again
        pass


def test_product_names():
    assert is_product(Path("stopped_run/pipeline.log")) and is_product(Path("evaluation/heldout_mae_-5.0C.fits"))
    assert not is_product(Path("bias_model/my_notes.fits")) and not is_product(Path("raw/bias_0.fits"))


def test_a_publish_killed_while_clearing_up_keeps_the_new_run_config(earlier_run, monkeypatch):
    """Killed after the last rename, while the earlier set is being removed: the next run's start
    must not take the new run_config.json for an earlier one."""
    import shutil

    run = stage_run(earlier_run)
    _write(run.staging, NEW)

    def killed(*args, **kwargs):
        raise _Killed

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(_Killed):
        publish(run)
    monkeypatch.undo()
    assert _read(earlier_run) == {**NEW, **USER}
    stage_run(earlier_run)
    assert _read(earlier_run) == {**NEW, **USER}


@pytest.mark.parametrize("marker", ["", "[]", "not json", '["../../outside.txt", "run_config.json"]'])
def test_a_leftover_staging_folder_with_a_bad_marker_is_not_published(earlier_run, marker):
    (earlier_run.parent / "outside.txt").write_text("keep me")
    staging = earlier_run / STAGING_NAME
    (staging / "bias_model").mkdir(parents=True)
    (staging / "bias_model" / "bias_a_map.fits").write_text("junk")
    (staging / ".publishing").write_text(marker)
    run = stage_run(earlier_run)
    assert _read(earlier_run) == {**EARLIER, **USER}
    assert (earlier_run.parent / "outside.txt").read_text() == "keep me"
    _write(run.staging, NEW)
    publish(run)
    assert _read(earlier_run) == {**NEW, **USER}


def test_the_lock_never_writes_through_a_link(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".bias_pipeline.lock").symlink_to(precious)
    with output_lock(out):
        pass
    assert precious.read_text() == "precious"


def test_a_lock_file_that_cannot_be_opened_is_named(tmp_path, monkeypatch):
    lock = tmp_path / ".bias_pipeline.lock"
    lock.write_text("")
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path) == str(lock):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(OutputError, match="belongs to another user and cannot be opened; if no run is writing"):
        with output_lock(tmp_path):
            pass

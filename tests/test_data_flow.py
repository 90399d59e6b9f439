"""One-way data flow: steps return decisions and change no record they were given, and the run
writes ``frames_manifest.csv`` once, from the final decisions (or once on the way out when it
stops, saying so for the frames not decided)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from bias_pipeline import InputDataError, PipelineConfig, main_pipeline, run_bias_pipeline
from bias_pipeline.frames import apply_decisions
from bias_pipeline.steps import step2_generate_master_bias_by_temp as step2
from bias_pipeline.steps.step1_load_data import scan_frames

from conftest import bias_pixels, two_temperature_set, write_frame

QUIET = PipelineConfig(show_progress=False)


@pytest.fixture
def manifest_writes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every ``write_manifest`` call of the run, by the path written."""
    calls: list[Path] = []
    real = main_pipeline.write_manifest

    def spy(records, path, base=None):
        calls.append(Path(path))
        return real(records, path, base)

    monkeypatch.setattr(main_pipeline, "write_manifest", spy)
    return calls


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


@pytest.mark.parametrize("evaluate", [True, False])
def test_a_run_writes_the_manifest_once(tmp_path, manifest_writes, evaluate):
    two_temperature_set(tmp_path / "raw", frames=3, temperatures=(0.0, 10.0, 20.0))
    write_frame(tmp_path / "raw" / "long.fits", bias_pixels(seed=9), temperature=0.0, exposure=9.0)
    config = dataclasses.replace(QUIET, evaluation=evaluate)
    result = run_bias_pipeline(tmp_path / "raw", tmp_path / "out", config=config)
    assert len(manifest_writes) == 1
    rows = _rows(tmp_path / "out" / "frames_manifest.csv")
    assert [rows[str(r.path.relative_to(tmp_path / "raw"))]["status"] for r in result.records] == [
        r.status for r in result.records
    ]
    assert rows["long.fits"]["status"] == "rejected"
    assert {row["status"] for name, row in rows.items() if name != "long.fits"} == {"used"}
    assert all(row["group"] for name, row in rows.items() if name != "long.fits")
    assert all(row["temperature_est"] for name, row in rows.items() if name != "long.fits") == evaluate


def test_a_run_stopped_at_one_temperature_says_so_in_its_manifest(tmp_path, manifest_writes):
    two_temperature_set(tmp_path / "raw", frames=3, temperatures=(5.0,))
    with pytest.raises(InputDataError, match="all usable frames are at one temperature"):
        run_bias_pipeline(tmp_path / "raw", tmp_path / "out", config=QUIET)
    assert len(manifest_writes) == 1
    rows = _rows(tmp_path / "out" / "stopped_run" / "frames_manifest.csv")
    assert len(rows) == 3
    for row in rows.values():
        assert row["status"] == "accepted"
        assert row["reason"].startswith("not combined: the run stopped: --basepath ")
        assert "all usable frames are at one temperature" in row["reason"]


def test_a_run_interrupted_while_combining_writes_its_manifest_on_the_way_out(tmp_path, manifest_writes, monkeypatch):
    """Before, a Ctrl-C while combining left no manifest at all in stopped_run/."""
    two_temperature_set(tmp_path / "raw")
    calls = []
    real = step2.combine_group

    def interrupted_second_group(group, *args, **kwargs):
        calls.append(group.label)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(group, *args, **kwargs)

    monkeypatch.setattr(step2, "combine_group", interrupted_second_group)
    with pytest.raises(KeyboardInterrupt):
        run_bias_pipeline(tmp_path / "raw", tmp_path / "out", config=QUIET)
    assert len(manifest_writes) == 1
    rows = _rows(tmp_path / "out" / "stopped_run" / "frames_manifest.csv")
    assert len(rows) == 6
    assert {row["reason"] for row in rows.values()} == {"not combined: the run stopped: interrupted (Ctrl-C)"}
    assert not (tmp_path / "out" / "frames_manifest.csv").exists()


def test_a_run_stopped_after_step_2_keeps_step_2s_decisions(tmp_path, manifest_writes, monkeypatch):
    two_temperature_set(tmp_path / "raw")

    def broken_fit(*args, **kwargs):
        raise InputDataError("the fit broke")

    monkeypatch.setattr(main_pipeline, "fit_model", broken_fit)
    with pytest.raises(InputDataError, match="the fit broke"):
        run_bias_pipeline(tmp_path / "raw", tmp_path / "out", config=QUIET)
    assert len(manifest_writes) == 1
    rows = _rows(tmp_path / "out" / "stopped_run" / "frames_manifest.csv")
    assert {(row["status"], row["reason"]) for row in rows.values()} == {("used", "")}
    assert {row["group"] for row in rows.values()} == {"0.0", "10.0"}


def test_steps_leave_the_records_they_are_given_unchanged(tmp_path):
    """As jwst's step tests check their input models: every field of every record is the same
    after steps 2 and 3 as before (the decisions come back in the steps' results)."""
    two_temperature_set(tmp_path / "raw", frames=4)
    (tmp_path / "raw" / "good_+0.0_1.fits").write_bytes(b"")  # rejected by step 1
    records, bits = scan_frames(tmp_path / "raw", QUIET)
    before = [dataclasses.asdict(r) for r in records]
    grouping = step2.make_groups(records, QUIET)
    groups_before = [(g.label, list(g.records)) for g in grouping.groups]
    made = step2.build_masters(grouping, tmp_path / "m", QUIET, input_bits=bits)
    final = apply_decisions(records, made.decisions)
    from bias_pipeline.steps.step3_fit_bias_model import fit_model, fit_model_on_frames

    fit_model(made.masters, None, QUIET)
    used = [r for r in final if r.status == "used"]
    used_before = [dataclasses.asdict(r) for r in used]
    fit_model_on_frames(used, made.masters, None, QUIET, input_bits=bits)
    assert [dataclasses.asdict(r) for r in records] == before
    assert [(g.label, list(g.records)) for g in grouping.groups] == groups_before
    assert [dataclasses.asdict(r) for r in used] == used_before
    assert len(used) == 7 and {r.group for r in used} == {"0.0", "10.0"}
    assert [r.status for r in records].count("accepted") == 7

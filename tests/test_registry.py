"""The product registry: every file a run writes has a registered name, and a rerun with fewer
temperatures leaves none of the earlier run's files behind."""

from __future__ import annotations

from pathlib import Path

from bias_pipeline import PipelineConfig, run_bias_pipeline
from bias_pipeline.registry import (
    LABELLED_STEMS,
    RUN_FILES,
    SUBDIRS,
    is_product,
    labelled_name,
)

from conftest import snapshot, two_temperature_set


def test_every_file_of_a_full_run_is_a_registered_product(pipeline_run) -> None:
    out = pipeline_run.output_dir
    written = [Path(name) for name in snapshot(out)]
    assert written, "the run wrote nothing"
    unregistered = [str(p) for p in written if not is_product(p)]
    assert unregistered == []
    # ... and the registry names exist: each folder, each run-level file, each per-temperature stem.
    assert {p.parts[0] for p in written if len(p.parts) == 2} == set(SUBDIRS.values())
    assert {p.name for p in written if len(p.parts) == 1} == set(RUN_FILES)
    stems = {p.name.rsplit("_", 1)[0] for p in written if p.name.endswith(("C.fits", "C.png"))}
    assert stems == set(LABELLED_STEMS)


def test_a_rerun_with_fewer_temperatures_leaves_no_product_of_the_earlier_run(tmp_path: Path) -> None:
    config = PipelineConfig(show_progress=False)
    out = tmp_path / "out"
    two_temperature_set(tmp_path / "raw3", temperatures=(0.0, 10.0, 20.0))
    run_bias_pipeline(tmp_path / "raw3", out, generate_set=True, eval_save_fits=True, config=config)
    earlier = snapshot(out)
    for stem in ("heldout_mae", "mae", "mape", "synthetic_bias"):
        assert f"evaluation/{labelled_name(stem, '20.0')}" in earlier, stem
    two_temperature_set(tmp_path / "raw2", temperatures=(0.0, 10.0))
    run_bias_pipeline(tmp_path / "raw2", out, generate_set=True, eval_save_fits=True, config=config)
    left = sorted(name for name in snapshot(out) if "20.0C" in name)
    assert left == []

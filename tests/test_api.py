"""The names other PhotSat code calls (shared/design.md) work with their old call forms,
and a full run writes every product under the seed's names."""

from __future__ import annotations

import csv
import inspect
import json
import os

import numpy as np
from astropy.io import fits

import bias_pipeline
from bias_pipeline import BiasModel, PipelineConfig, run_bias_pipeline
from bias_pipeline.main_pipeline import run_bias_pipeline as run_from_main
from bias_pipeline.registry import DIAGNOSTIC_PLOTS
from bias_pipeline.steps import (
    step0_create_dirs,
    step1_load_data,
    step2_generate_master_bias_by_temp,
    step3_fit_bias_model,
    step4_generate_synthetic_bias,
    step5_evaluate_model,
    utils_scaling,
)

from conftest import two_temperature_set


def test_public_names():
    assert bias_pipeline.__version__
    assert run_bias_pipeline is run_from_main
    params = list(inspect.signature(run_bias_pipeline).parameters)
    assert params[:5] == [
        "observations_dir",
        "output_dir",
        "hot_pixel_mask_path",
        "generate_set",
        "eval_save_fits",
    ]
    assert isinstance(PipelineConfig(), PipelineConfig)
    # Every public name resolves, each from the module the lazy table names.
    assert {"BiasLibrary", "BiasModel", "subtract_bias", "run_bias_pipeline"} <= set(bias_pipeline.__all__)
    for name in bias_pipeline.__all__:
        assert getattr(bias_pipeline, name) is not None, name
    from bias_pipeline.library import BiasLibrary
    from bias_pipeline.subtract import subtract_bias

    assert bias_pipeline.BiasLibrary is BiasLibrary and bias_pipeline.subtract_bias is subtract_bias
    # The design's call form subtract_bias(frame, model_or_library, temperature=None), the
    # former keyword model= kept.
    params = inspect.signature(subtract_bias).parameters
    assert list(params)[:3] == ["frame_or_path", "model_or_library", "temperature"]
    assert params["temperature"].default is None and params["model"].kind is inspect.Parameter.KEYWORD_ONLY


def test_the_switches_default_as_in_the_first_version_and_follow_a_config(tmp_path):
    """``run_bias_pipeline(raw, out)`` writes synthetic frames and no evaluation FITS, as the first
    version did; a config's switches are used when the arguments are left out, and the arguments
    win when given."""
    two_temperature_set(tmp_path / "raw")
    first = run_bias_pipeline(tmp_path / "raw", tmp_path / "first")
    assert len(first.synthetic_paths) == 2 and not list((tmp_path / "first" / "evaluation").glob("*.fits"))
    config = PipelineConfig(generate_set=False, save_eval_fits=True, show_progress=False)
    from_config = run_bias_pipeline(tmp_path / "raw", tmp_path / "config", config=config)
    assert from_config.synthetic_paths == [] and list((tmp_path / "config" / "evaluation").glob("mae_*.fits"))
    recorded = json.loads((tmp_path / "config" / "run_config.json").read_text())["options"]
    assert recorded["generate_set"] is False and recorded["save_eval_fits"] is True
    given = run_bias_pipeline(tmp_path / "raw", tmp_path / "given", generate_set=True, config=config)
    assert len(given.synthetic_paths) == 2


def test_legacy_step_chain(tmp_path):
    """The chain a dark pipeline script wrote against the old modules, call by call."""
    two_temperature_set(tmp_path / "raw")
    dirs = step0_create_dirs.create_directories(tmp_path / "out")
    assert {"masters", "model", "synthetic", "evaluation"} <= set(dirs)
    assert dirs["masters"].name == "bias_grouped_by_temp" and dirs["masters"].is_dir()
    entries = step1_load_data.load_bias_files(tmp_path / "raw")
    assert len(entries) == 6
    groups = step2_generate_master_bias_by_temp.group_by_temperature(entries, round_decimals=1)
    assert sorted(groups) == [0.0, 10.0]
    master = step2_generate_master_bias_by_temp.combine_frames(groups[0.0], method="median")
    assert master.shape == (48, 64)
    masters = step2_generate_master_bias_by_temp.generate_master_bias_by_temp(entries, dirs["masters"], method="median")
    a_map, b_map = step3_fit_bias_model.fit_bias_model(masters, hot_pixel_mask=None)
    step3_fit_bias_model.save_bias_model(a_map, b_map, dirs["model"])
    frame = step4_generate_synthetic_bias.generate_synthetic_bias(a_map, b_map, 5.0)
    np.testing.assert_allclose(frame, a_map + 5.0 * b_map, rtol=1e-6)
    step4_generate_synthetic_bias.generate_multiple_synthetic_biases(a_map, b_map, [0.0, 10.0], dirs["synthetic"])
    rows = step5_evaluate_model.evaluate_model(a_map, b_map, masters, dirs["evaluation"], save_fits=False)
    assert len(rows) == 2
    loaded = utils_scaling.load_fits_as_adu16(entries[0].path)
    assert loaded.dtype == np.float32 and loaded.shape == (48, 64)
    model = BiasModel.load(tmp_path / "out")
    np.testing.assert_array_equal(model.b_map, b_map)


def test_every_output_name(pipeline_run, sim):
    out = pipeline_run.output_dir
    labels = ["-10.0", "0.0", "10.0", "20.0", "30.0"]
    expected = {"frames_manifest.csv", "bias_model/bias_a_map.fits", "bias_model/bias_b_map.fits"}
    expected.add("bias_model/bias_model.fits")
    expected |= {"evaluation/evaluation_summary.png", "evaluation/evaluation_summary.csv"}
    expected |= {"evaluation/temperature_check.png", "run_config.json", "pipeline.log", "report.html"}
    expected |= {f"evaluation/{name}" for name in DIAGNOSTIC_PLOTS}
    for label in labels:
        expected |= {
            f"bias_grouped_by_temp/master_bias_{label}C.fits",
            f"bias_masks_by_temp/synthetic_bias_{label}C.fits",
        }
        stems = ("real_bias", "synthetic_bias", "residual", "mape", "significance")
        expected |= {f"evaluation/{stem}_{label}C.png" for stem in stems}
        expected |= {f"evaluation/{stem}_{label}C.fits" for stem in ("synthetic_bias", "mae", "mape", "heldout_mae")}
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    # Written through temporary files, yet readable like any new file (not mkstemp's 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert {(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()} == {0o666 & ~umask}
    assert written == expected
    for name in expected:
        if name.endswith(".fits") and not name.endswith("bias_model.fits"):
            header = fits.getheader(out / name)
            assert header["BUNIT"] in ("adu", "adu / deg C", "%") and header["BPVERS"] == bias_pipeline.__version__
            assert fits.getdata(out / name).dtype == np.dtype(">f4")
    with open(out / "frames_manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:6] == ["path", "status", "reason", "temperature", "exposure", "group"]
    assert len(rows) == len(sim.frame_paths) and {r["status"] for r in rows} == {"used"}
    assert {r["group"] for r in rows} == set(labels)


def test_legacy_forms_live_in_one_module():
    """Each step module shows one path: its legacy call forms are bias_pipeline.legacy's,
    found under the old import paths."""
    from bias_pipeline import legacy

    for module, names in (
        (
            step2_generate_master_bias_by_temp,
            ["group_by_temperature", "combine_frames", "generate_master_bias_by_temp"],
        ),
        (step3_fit_bias_model, ["fit_bias_model", "save_bias_model"]),
        (step0_create_dirs, ["create_directories"]),
        (step1_load_data, ["load_bias_files"]),
        (step4_generate_synthetic_bias, ["generate_multiple_synthetic_biases"]),
    ):
        for name in names:
            assert getattr(module, name) is getattr(legacy, name), name
            assert name not in vars(module), name  # not defined in the step module itself
            assert name in module.__all__

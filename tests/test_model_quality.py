"""Issue 3: robust masters, honest uncertainties, flags, degree 2, frames fit, thermometry."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import BiasModel, PipelineConfig, run_bias_pipeline
from bias_pipeline.combine import combine_block
from bias_pipeline.quality import NONLINEAR
from bias_pipeline.simulate import SCALE, SimulationSpec, make_frame, make_truth, simulate_dataset

from conftest import run_cli

QUIET = PipelineConfig(show_progress=False)
FIT_ONLY = PipelineConfig(show_progress=False, evaluation=False)  # no plots: these tests look at the model
# Wider range and more set points than the shared fixture: enough to see a quadratic term.
WIDE = SimulationSpec(
    shape=(40, 56),
    temperatures=(-20.0, -10.0, 0.0, 10.0, 20.0, 30.0, 40.0),
    frames_per_temperature=8,
    quadratic_fraction=0.01,
    cosmic_rate=2e-3,
    seed=7,
)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return simulate_dataset(tmp_path_factory.mktemp("wide"), WIDE)


def test_sigma_clip_beats_median_and_mean_at_equal_frames():
    """The default combine has the smallest error against the truth (cosmic rays included)."""
    rng = np.random.default_rng(3)
    spec = SimulationSpec(shape=(64, 64), cosmic_rate=2e-3)
    population = make_truth(spec, rng)
    normal = ~(population.hot_mask | population.dead_mask | (population.noise_factor > 1))
    stack = np.stack([make_frame(population, 0.0, spec, rng) for _ in range(8)]).astype(np.float32)
    errors = {}
    for method in ("sigma-clip", "median", "mean"):
        master = combine_block(stack, method).master
        errors[method] = float(np.sqrt(np.mean((master - population.a_map)[normal] ** 2)))
    assert errors["sigma-clip"] < errors["median"] < errors["mean"], errors


def test_cosmic_ray_pixels_stay_within_noise(wide, tmp_path):
    result = run_bias_pipeline(wide.raw_dir, tmp_path / "out", config=FIT_ONLY)
    sigma_master = math.hypot(WIDE.read_noise_dn * SCALE, SCALE / math.sqrt(12)) / math.sqrt(8)
    for master in result.masters:
        stack = np.stack(
            [
                fits.getdata(p).astype(float)
                for p, t in zip(wide.frame_paths, wide.frame_temperatures, strict=True)
                if abs(t - master.temperature) < 1
            ]
        )
        hit = (stack - wide.bias_adu(master.temperature)[None] > 2000).any(axis=0) & ~wide.abnormal_mask
        assert hit.sum() > 5  # the data set really has cosmic rays in this group
        error = (master.load() - wide.bias_adu(master.temperature))[hit]
        assert np.abs(error).max() < 5 * sigma_master, (master.label, np.abs(error).max())


def test_frame_disagreeing_with_its_master_is_rejected(tmp_path):
    spec = SimulationSpec(shape=(40, 56), temperatures=(0.0, 20.0), frames_per_temperature=6, seed=4)
    truth = simulate_dataset(tmp_path / "sim", spec)
    leaky = truth.frame_paths[2]
    with fits.open(leaky, mode="update") as hdul:  # a light leak: a ramp of up to 40 DN
        ramp = np.linspace(0, 40, hdul[0].data.shape[1])[None, :] * SCALE
        hdul[0].data = np.clip(hdul[0].data + ramp, 0, 65520).astype(np.uint16)
    result = run_bias_pipeline(truth.raw_dir, tmp_path / "out", config=QUIET)
    record = next(r for r in result.records if r.path.name == leaky.name)
    assert record.status == "rejected" and "disagrees with its group's master" in record.reason
    master = next(m for m in result.masters if m.label == "0.0")
    assert master.n_frames == 5
    assert fits.getheader(master.path)["NCOMBINE"] == 5


def test_quadratic_pixels_recovered_by_degree_two(wide, tmp_path):
    quadratic = wide.c_map != 0
    linear = run_bias_pipeline(wide.raw_dir, tmp_path / "d1", config=FIT_ONLY).model
    assert np.mean(linear.dq[quadratic] & NONLINEAR.value > 0) > 0.9  # the linear model fails them
    config = PipelineConfig(degree=2, show_progress=False, evaluation=False)
    model = run_bias_pipeline(wide.raw_dir, tmp_path / "d2", config=config).model
    sigma_c = np.sqrt(model.covariance[2, 2])
    pull = (model.c_map - wide.c_map) / sigma_c
    normal = ~wide.abnormal_mask
    assert np.abs(pull[quadratic]).max() < 5
    assert 0.8 < pull[normal].std() < 1.2
    assert np.all(np.abs(model.c_map[quadratic]) / sigma_c[quadratic] > 3.29)  # warranted there
    assert np.mean(model.dq[quadratic] & NONLINEAR.value > 0) < 0.1
    loaded = BiasModel.load(tmp_path / "d2")
    assert loaded.degree == 2
    np.testing.assert_allclose(loaded.predict(15.0), model.predict(15.0), rtol=1e-6)


def test_fit_on_frames_matches_masters_fit(wide, tmp_path):
    masters = run_bias_pipeline(wide.raw_dir, tmp_path / "m", config=FIT_ONLY).model
    frames = run_bias_pipeline(
        wide.raw_dir, tmp_path / "f", config=PipelineConfig(fit_on="frames", show_progress=False, evaluation=False)
    ).model
    good = ~wide.abnormal_mask & (wide.c_map == 0)
    error_masters = np.std((masters.b_map - wide.b_map)[good])
    error_frames = np.std((frames.b_map - wide.b_map)[good])
    sigma_b = float(np.median(np.sqrt(frames.covariance[1, 1][good])))
    # Same data, same information: the two fits agree within a fraction of their error.
    assert abs(error_frames - error_masters) < 0.15 * error_masters
    assert 0.85 < error_frames / sigma_b < 1.15
    assert np.std((frames.b_map - masters.b_map)[good]) < 0.3 * sigma_b


def test_temperatures_from_the_bias(tmp_path):
    spec = SimulationSpec(shape=(96, 128), temperatures=(-5.0, 15.0, 35.0), frames_per_temperature=4, seed=5)
    truth = simulate_dataset(tmp_path / "sim", spec)
    wrong = truth.frame_paths[5]
    with fits.open(wrong, mode="update") as hdul:  # a mislabelled header: 2 deg C off
        hdul[0].header["TEMPERATURE"] = hdul[0].header["TEMPERATURE"] + 2.0
    result = run_bias_pipeline(truth.raw_dir, tmp_path / "out", config=QUIET)
    by_name = {r.path.name: r for r in result.records}
    for path, true_t in zip(truth.frame_paths, truth.frame_temperatures, strict=True):
        record = by_name[path.name]
        assert abs(record.temperature_est - true_t) < 0.2, (path.name, record.temperature_est, true_t)
        assert record.temperature_est_err < 0.1
        assert (record.flag == "temperature_mismatch") == (path == wrong)
    # Two degrees off its set point's other frames, the frame is rejected (not settled) and flagged.
    assert (
        by_name[wrong.name].status == "rejected"
        and "from the other frames at set point 15" in by_name[wrong.name].reason
    )
    manifest = (tmp_path / "out" / "frames_manifest.csv").read_text()
    assert "temperature_mismatch" in manifest
    assert (tmp_path / "out" / "evaluation" / "temperature_check.png").stat().st_size > 10000


def test_model_file_is_self_describing(pipeline_run):
    path = pipeline_run.output_dir / "bias_model" / "bias_model.fits"
    with fits.open(path) as hdul:
        names = [h.name for h in hdul]
        for name in ("A", "B", "SIGMA_A", "SIGMA_B", "COV_AB", "RMS", "CHI2", "NGROUPS", "MASK", "DQ_DEF"):
            assert name in names
        header = hdul[0].header
        assert header["TREF"] == pytest.approx(pipeline_run.model.tref)
        assert header["TMIN"] < header["TMAX"] and header["NFRAMES"] == 25 and header["SCALEFAC"] == 16
        assert list(hdul["DQ_DEF"].data["NAME"]) == ["HOT_MASK", "NONLINEAR", "NOISY", "DEAD", "SATURATED", "TELEGRAPH"]
        # A is the bias at 0 deg C, as in bias_a_map.fits.
        np.testing.assert_array_equal(hdul["A"].data, fits.getdata(path.with_name("bias_a_map.fits")))
    model = BiasModel.load(pipeline_run.output_dir)
    value, sigma = model.predict(5.0, return_sigma=True)
    assert np.nanmedian(sigma) > 0 and value.shape == sigma.shape


def test_generate_with_noise(pipeline_run, tmp_path):
    model_dir = pipeline_run.output_dir / "bias_model"
    args = ["--a-map", str(model_dir / "bias_a_map.fits"), "--b-map", str(model_dir / "bias_b_map.fits")]
    args += ["--temperature", "12", "--noise", "--seed", "3"]
    one = run_cli("generate_bias.py", *args, "--output", str(tmp_path / "one.fits"))
    two = run_cli("generate_bias.py", *args, "--output", str(tmp_path / "two.fits"))
    assert one.returncode == 0 and two.returncode == 0, one.stderr
    data = fits.getdata(tmp_path / "one.fits")
    np.testing.assert_array_equal(data, fits.getdata(tmp_path / "two.fits"))  # the seed reproduces
    good = np.isfinite(data)
    assert np.all(data[good] % 16 == 0)
    residual = (data - pipeline_run.model.predict(12.0))[good & ~pipeline_run.model.flagged]
    assert 0.9 < residual.std() / float(np.median(pipeline_run.model.read_noise)) < 1.1
    shutil.copy(model_dir / "bias_a_map.fits", tmp_path / "a.fits")
    shutil.copy(model_dir / "bias_b_map.fits", tmp_path / "b.fits")
    lonely = run_cli(
        "generate_bias.py", "--a-map", str(tmp_path / "a.fits"), "--b-map", str(tmp_path / "b.fits"),
        "--temperature", "12", "--noise", "--output", str(tmp_path / "x.fits"),
    )  # fmt: skip
    assert lonely.returncode == 3 and "--noise-map" in lonely.stderr and "Traceback" not in lonely.stderr


def test_evaluating_a_frames_fit_raises_no_numpy_warning(sim, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # `python -W error` must not end the run
        result = run_bias_pipeline(
            sim.raw_dir, tmp_path / "out", config=PipelineConfig(fit_on="frames", show_progress=False)
        )
    assert all(np.isfinite(float(row["heldout_mae_per_read_noise"])) for row in result.summary)

"""The pipeline recovers the simulator's true a and b maps within the noise the data allow."""

from __future__ import annotations

import math

import numpy as np
from astropy.io import fits

from bias_pipeline import BiasModel, PipelineConfig, run_bias_pipeline
from bias_pipeline.simulate import SCALE

from conftest import SPEC


def expected_errors(temps: np.ndarray, frames_per_group: int, method: str = "sigma-clip") -> tuple[float, float, float]:
    """Standard errors of the master, of b and of a (at 0 deg C) the data allow.

    One frame's noise: read noise (``read_noise_dn`` x16 ADU) plus 12-bit quantisation, a
    uniform step of 16 ADU (variance 16^2/12). The default sigma-clipped mean of n frames has
    variance sigma^2 / n (a 3-sigma clip of Gaussian values changes it by under 1 %); a median
    at most (pi/2) sigma^2 / n (the large-n limit; 1.43 for n=5). The fit with equal weights
    gives var(b) = s_m^2 / sum (T - Tbar)^2 and var(a) = s_m^2 (1/K + Tbar^2 / sum (T - Tbar)^2).
    """
    sigma_frame = math.hypot(SPEC.read_noise_dn * SCALE, SCALE / math.sqrt(12))
    efficiency = math.sqrt(math.pi / 2) if method == "median" else 1.0
    sigma_master = efficiency * sigma_frame / math.sqrt(frames_per_group)
    sxx = float(np.sum((temps - temps.mean()) ** 2))
    sigma_b = sigma_master / math.sqrt(sxx)
    sigma_a = sigma_master * math.sqrt(1 / temps.size + temps.mean() ** 2 / sxx)
    return sigma_master, sigma_a, sigma_b


def test_recovers_true_maps_within_noise(pipeline_run, sim):
    model = pipeline_run.model
    temps = np.array(model.group_temperatures)
    sigma_master, sigma_a, sigma_b = expected_errors(temps, SPEC.frames_per_temperature)
    good = ~sim.abnormal_mask  # hot, noisy and stuck pixels do not follow the noise budget
    b_err = (model.b_map - sim.b_map)[good]
    a_err = (model.a_map - sim.a_map)[good]
    # Every pixel within 5 sigma (3000 pixels: a chance of ~1e-3 that one honest pixel exceeds).
    assert np.abs(b_err).max() < 5 * sigma_b, (np.abs(b_err).max(), sigma_b)
    assert np.abs(a_err).max() < 5 * sigma_a, (np.abs(a_err).max(), sigma_a)
    # The scatter is what the noise predicts: not larger (a bug) and not smaller.
    assert 0.9 < b_err.std() / sigma_b < 1.1
    assert 0.9 < a_err.std() / sigma_a < 1.1
    # No systematic offset beyond 5 standard errors of the mean.
    assert abs(b_err.mean()) < 5 * sigma_b / math.sqrt(b_err.size)
    assert abs(a_err.mean()) < 5 * sigma_a / math.sqrt(a_err.size)
    # Per pixel the slope noise is as large as the true pixel-to-pixel spread, but the column
    # pattern of the slope (48 rows averaged: 7x less noise) must come out clearly.
    fitted_columns = np.mean(model.b_map, axis=0, where=good)
    true_columns = np.mean(sim.b_map, axis=0, where=good)
    assert np.corrcoef(fitted_columns, true_columns)[0, 1] > 0.9


def test_hot_pixels_are_nan_and_counted(pipeline_run, sim):
    model = pipeline_run.model
    assert np.array_equal(model.mask, sim.hot_mask)
    assert np.isnan(model.a_map[sim.hot_mask]).all() and np.isnan(model.b_map[sim.hot_mask]).all()
    assert np.isfinite(model.a_map[~sim.hot_mask]).all()
    header = fits.getheader(pipeline_run.output_dir / "bias_model" / "bias_a_map.fits")
    assert header["NMASKED"] == int(sim.hot_mask.sum())


def test_group_temperatures_are_frame_means(pipeline_run, sim):
    temps = np.array(sim.frame_temperatures).reshape(len(SPEC.temperatures), -1)
    assert np.allclose(sorted(m.temperature for m in pipeline_run.masters), temps.mean(axis=1))
    assert [m.label for m in pipeline_run.masters] == ["-10.0", "0.0", "10.0", "20.0", "30.0"]
    assert all(m.n_frames == SPEC.frames_per_temperature for m in pipeline_run.masters)


def test_evaluation_matches_master_noise(pipeline_run):
    temps = np.array(pipeline_run.model.group_temperatures)
    sigma_master, _, _ = expected_errors(temps, 5)
    leverage = 1 / temps.size + (temps - temps.mean()) ** 2 / np.sum((temps - temps.mean()) ** 2)
    for row, h in zip(sorted(pipeline_run.summary, key=lambda r: r["temperature"]), leverage, strict=True):
        # A fit residual at master k has variance sigma^2 (1 - h_k) (h_k its leverage: the end
        # temperatures pull the line towards themselves), and |Gaussian| has mean sqrt(2/pi) sigma.
        expected = math.sqrt(2 / math.pi) * sigma_master * math.sqrt(1 - h)
        assert 0.85 * expected < row["mae_mean"] < 1.05 * expected, (row["label"], row["mae_mean"], expected)
        assert row["mae_median"] < row["mae_p95"]
        assert row["n_pixels"] == 48 * 64 - int(pipeline_run.model.flagged.sum())
        assert 0 < row["mape_mean"] < 1.0


def test_model_loads_back_and_predicts_master_temperature(pipeline_run):
    model = BiasModel.load(pipeline_run.output_dir)
    assert model.shape == (48, 64)
    assert np.array_equal(model.mask, pipeline_run.model.mask)
    master = pipeline_run.masters[2]
    synthetic = fits.getdata(pipeline_run.output_dir / "bias_masks_by_temp" / f"synthetic_bias_{master.label}C.fits")
    np.testing.assert_allclose(synthetic, model.predict(master.temperature), rtol=0, atol=1e-3)
    assert model.temperature_range == (min(model.group_temperatures), max(model.group_temperatures))


def test_uncertainties_are_honest(pipeline_run, sim):
    """Pulls (fit - truth) / sigma have unit spread over unflagged pixels."""
    model = pipeline_run.model
    good = ~model.flagged & ~sim.abnormal_mask
    sigma_a = np.sqrt(model.covariance[0, 0])
    sigma_b = np.sqrt(model.covariance[1, 1])
    pull_a = ((model.a_map - sim.a_map) / sigma_a)[good]
    pull_b = ((model.b_map - sim.b_map) / sigma_b)[good]
    assert 0.85 < pull_a.std() < 1.15 and 0.85 < pull_b.std() < 1.15, (pull_a.std(), pull_b.std())
    assert abs(pull_a.mean()) < 0.15 and abs(pull_b.mean()) < 0.15
    # The model's own error at a master temperature matches its covariance.
    _, sigma = model.predict(10.0, return_sigma=True)
    expected = np.sqrt(model.covariance[0, 0] + 100 * model.covariance[1, 1] + 20 * model.covariance[0, 1])
    np.testing.assert_allclose(sigma, expected, rtol=1e-4)


def test_flags_find_the_abnormal_pixels(pipeline_run, sim):
    from bias_pipeline.quality import DEAD, HOT_MASK, NOISY

    dq = pipeline_run.model.dq
    assert np.all(dq[sim.hot_mask] & HOT_MASK.value)  # the user's mask is bit 0
    normal = ~sim.abnormal_mask
    assert np.count_nonzero(dq[normal]) < 0.01 * normal.sum()
    assert np.all(dq[sim.noisy_mask] & NOISY.value)
    assert np.all(dq[sim.dead_mask] & DEAD.value)


def test_nonlinear_hot_pixels_are_flagged_without_a_mask(sim, tmp_path):
    from bias_pipeline.quality import NONLINEAR

    result = run_bias_pipeline(
        sim.raw_dir, tmp_path / "out", config=PipelineConfig(show_progress=False, evaluation=False)
    )
    dq = result.model.dq
    assert np.mean(dq[sim.hot_mask] & NONLINEAR.value > 0) >= 0.95
    normal = ~sim.abnormal_mask
    assert np.mean(dq[normal] != 0) < 0.01
    assert np.isfinite(result.model.a_map).all()  # nothing masked: every pixel fitted


def test_heldout_error_is_not_below_in_sample(pipeline_run):
    for row in pipeline_run.summary:
        assert row["heldout_mae_mean"] >= row["mae_mean"]
        assert 0 < row["mae_per_read_noise"] < row["heldout_mae_per_read_noise"] < 2

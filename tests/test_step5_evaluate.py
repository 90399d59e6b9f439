"""Step 5: error maps, statistics and plots; the pure comparison, the writer, the held-out errors
and the legacy call form."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import BiasModel, PipelineConfig
from bias_pipeline.steps.step3_fit_bias_model import fit_model
from bias_pipeline.steps.step5_evaluate_model import (
    SUMMARY_COLUMNS,
    downsample,
    error_maps,
    evaluate,
    evaluate_masters,
    evaluate_model,
    robust_limits,
    summarize,
)


def test_error_maps():
    real = np.array([[100.0, 200.0, 0.0]])
    model = np.array([[110.0, 190.0, 3.0]])
    mae, mape = error_maps(real, model)
    assert mae.tolist() == [[10.0, 10.0, 3.0]]
    assert mape[0, :2].tolist() == [10.0, 5.0] and np.isnan(mape[0, 2])


def test_summary_leaves_out_masked_and_nan():
    values = np.array([[1.0, 2.0, 3.0, np.nan, 1e6]])
    valid = np.array([[True, True, True, True, False]])
    stats = summarize(values, valid)
    assert stats["mean"] == 2.0 and stats["median"] == 2.0
    assert stats["p95"] == pytest.approx(np.percentile([1, 2, 3], 95))


def test_downsample_keeps_orientation_and_ignores_nan():
    image = np.zeros((1024, 2048), dtype=np.float32)
    image[:4, :4] = 8.0
    image[0, 0] = np.nan
    small, factor = downsample(image)
    assert factor == 4 and small.shape == (256, 512)
    assert small[0, 0] == 8.0 and small[0, 1] == 0.0


def test_robust_limits_ignore_a_hot_pixel():
    image = np.random.default_rng(0).normal(3000, 10, (48, 64))
    image[0, 0] = 60000
    low, high = robust_limits(image)
    assert 2950 < low < high < 3050


def test_evaluate_model_writes_everything(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.normal(3000, 20, (48, 64)).astype(np.float32)
    b = np.full((48, 64), 3.0, dtype=np.float32)
    b[7, 9] = np.nan  # a masked pixel
    masters = {t: a + 3.0 * t + rng.normal(0, 5, (48, 64)) for t in (-5.0, 5.0)}
    rows = evaluate_model(a, b, masters, tmp_path, save_fits=True, frames_per_master={-5.0: 4, 5.0: 6})
    assert [r["label"] for r in rows] == ["-5.0", "5.0"] and rows[1]["n_frames"] == 6
    assert rows[0]["n_pixels"] == 48 * 64 - 1
    assert 3 < rows[0]["mae_mean"] < 5  # |N(0, 5)| has mean 4
    for label in ("-5.0", "5.0"):
        for stem in ("real_bias", "synthetic_bias", "residual", "mape"):
            assert (tmp_path / f"{stem}_{label}C.png").stat().st_size > 5000
        assert not (tmp_path / f"mae_{label}C.png").exists()  # the signed residual map replaces it
        for stem in ("synthetic_bias", "mae", "mape"):
            data = fits.getdata(tmp_path / f"{stem}_{label}C.fits")
            assert data.shape == (48, 64) and data.dtype == np.dtype(">f4")
    assert fits.getheader(tmp_path / "mape_5.0C.fits")["BUNIT"] == "%"
    assert fits.getheader(tmp_path / "mae_5.0C.fits")["TEMPERATURE"] == 5.0
    with open(tmp_path / "evaluation_summary.csv") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == SUMMARY_COLUMNS and len(table) == 2
    assert float(table[0]["mae_mean"]) == pytest.approx(rows[0]["mae_mean"], rel=1e-5)
    assert (tmp_path / "evaluation_summary.png").stat().st_size > 10000


def test_maps_drawn_in_parallel_processes_are_written(tmp_path):
    from bias_pipeline.steps.step5_evaluate_model import ImagePlot, draw_plots

    rng = np.random.default_rng(0)
    plots = [
        ImagePlot.of(rng.normal(100, 3, (48, 64)).astype(np.float32), tmp_path / f"map{i}.png", f"map {i}", "ADU")
        for i in range(4)
    ]
    written = draw_plots(plots, workers=2)
    assert written == [p.path for p in plots]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Master:
    """A master in memory, as step 3 and step 5 read one (no noise map: weights by frames)."""

    method = "mean"

    def __init__(self, temperature: float, data: np.ndarray, n_frames: int = 4) -> None:
        self.label, self.temperature, self.n_frames, self.data = f"{temperature:.1f}", temperature, n_frames, data
        self.loads = 0

    def load(self) -> np.ndarray:
        self.loads += 1
        return self.data.astype(np.float32)

    def load_extension(self, name: str) -> None:
        return None


TEMPERATURES = (-10.0, 0.0, 10.0, 20.0, 30.0)
MASTER_NOISE = 2.0  # [ADU]


def _masters(seed: int = 3) -> tuple[list[_Master], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(3000, 20, (48, 64))
    b = rng.normal(3.0, 0.2, (48, 64))
    masters = [_Master(t, a + b * t + rng.normal(0, MASTER_NOISE, a.shape)) for t in TEMPERATURES]
    return masters, a, b


def test_evaluate_masters_is_pure_and_reads_one_master_at_a_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    masters, a, b = _masters()
    model = BiasModel.from_maps(a, b)
    results = evaluate_masters(model, masters)
    assert [m.loads for m in masters] == [0] * 5  # nothing read before it is asked for
    first = next(results)
    assert [m.loads for m in masters] == [1, 0, 0, 0, 0]
    assert first.row["label"] == "-10.0" and first.mae.shape == (48, 64)
    np.testing.assert_allclose(first.predicted, a - 10.0 * b, rtol=1e-6)
    np.testing.assert_allclose(first.mae, np.abs(first.real - first.predicted), rtol=1e-6)
    rest = list(results)
    assert [m.loads for m in masters] == [1] * 5 and len(rest) == 4
    assert list(tmp_path.iterdir()) == []  # no file written


def test_heldout_errors_come_from_the_masters_fit_and_match_a_refit_without_the_master(tmp_path):
    """A model fitted without a master predicts it with the error the noise allows: the master's
    noise plus the prediction's, sigma^2 (1 + 1/(n-1) + (T - mean T)^2 / Sxx) over the others.
    The held-out columns are filled from the masters fit given as ``heldout_model``; a model
    without leverages (from maps, or fitted on frames) alone leaves them NaN."""
    masters, _, _ = _masters()
    fit = fit_model(masters, config=PipelineConfig(show_progress=False))
    plain = BiasModel.from_maps(fit.a_map, fit.b_map)  # the same maps, no leverages
    alone = evaluate(plain, masters, tmp_path / "alone", plots=False, show_progress=False)
    columns = [c for c in SUMMARY_COLUMNS if c.startswith("heldout_")]
    for row in alone:
        assert math.isfinite(row["mae_mean"])
        assert all(math.isnan(row[c]) for c in columns), row
    rows = evaluate(plain, masters, tmp_path / "out", plots=False, show_progress=False, heldout_model=fit)
    temps = np.array(TEMPERATURES)
    for k, row in enumerate(rows):
        # No noise maps here: the noise-floor ratio needs the pooled read noise (tests/test_verdict.py).
        assert all(math.isfinite(row[c]) for c in columns if "read_noise" not in c and "per_error" not in c), row
        others = [m for j, m in enumerate(masters) if j != k]
        refit = fit_model(others, config=PipelineConfig(show_progress=False))
        real = masters[k].load()
        refit_mae = np.abs(real - refit.predict(masters[k].temperature)).astype(np.float64).mean()
        assert row["heldout_mae_mean"] == pytest.approx(refit_mae, rel=1e-3)  # leave-one-out, exactly
        rest = np.delete(temps, k)
        spread = 1 + 1 / rest.size + (temps[k] - rest.mean()) ** 2 / np.sum((rest - rest.mean()) ** 2)
        expected = math.sqrt(2 / math.pi) * MASTER_NOISE * math.sqrt(spread)  # mean of |N(0, s)|
        assert row["heldout_mae_mean"] == pytest.approx(expected, rel=0.05)
        assert row["heldout_mae_mean"] > row["mae_mean"]
    # The masters fit itself gives the same held-out numbers through its own leverages.
    own = evaluate(fit, masters, tmp_path / "own", plots=False, show_progress=False)
    for mine, theirs in zip(own, rows, strict=True):
        assert mine["heldout_mae_mean"] == pytest.approx(theirs["heldout_mae_mean"], rel=1e-4)


def test_map_plots_show_a_signed_residual_and_share_the_real_and_model_colour_limits(tmp_path):
    """The residual map is real - model (its block means) with limits symmetric about 0; the real
    and model maps of one temperature have the same limits; titles say which frames are whose."""
    from bias_pipeline.evaluation import map_plots

    masters, a, b = _masters()
    fit = fit_model(masters, config=PipelineConfig(show_progress=False))
    evaluation = next(evaluate_masters(fit, masters))
    plots = {plot.path.name.split("_-10.0C")[0]: plot for plot in map_plots(evaluation, tmp_path)}
    assert set(plots) == {"real_bias", "synthetic_bias", "residual", "mape"}
    real, model, residual = plots["real_bias"], plots["synthetic_bias"], plots["residual"]
    assert real.limits == model.limits and real.limits is not None
    low, high = residual.limits
    assert low == -high and high > 0 and residual.cmap == "RdBu_r"
    signed = evaluation.real - evaluation.predicted
    np.testing.assert_allclose(residual.shown, signed, atol=1e-3)  # 48 x 64: every pixel shown
    assert (signed < 0).mean() == pytest.approx(0.5, abs=4 * 0.5 / math.sqrt(signed.size))  # signed, not |r|
    assert "(4 frames)" in real.title and "all 20 frames of 5 masters" in model.title

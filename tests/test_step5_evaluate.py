"""Step 5: error maps, statistics and plots."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline.steps.step5_evaluate_model import (
    SUMMARY_COLUMNS,
    downsample,
    error_maps,
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
        for stem in ("real_bias", "synthetic_bias", "mae", "mape"):
            assert (tmp_path / f"{stem}_{label}C.png").stat().st_size > 5000
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

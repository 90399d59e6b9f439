"""Step 5's and the report's compiled kernels against their numpy reference: the same rows
(medians and percentiles to the bit, means and deviations to float64 summation order), the
same plot maps, the same map statistics, on even and odd sizes, ties, NaN, zeros, flagged and
dead pixels, and a quadratic model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bias_pipeline import BiasModel
from bias_pipeline.eval_kernels import key_value, percentile_ranks
from bias_pipeline.evaluation import SUMMARY_COLUMNS, evaluate_master
from bias_pipeline.plots import HISTOGRAM_BINS, MapStats

pytest.importorskip("numba")

EXACT = ("n_pixels", "n_flagged", "n_frames", "label", "temperature")
ORDER = ("median", "p95")  # order statistics: bit-identical


class _Master:
    def __init__(self, temperature: float, data: np.ndarray) -> None:
        self.label, self.temperature, self.n_frames, self.data = f"{temperature:.1f}", temperature, 3, data

    def load(self) -> np.ndarray:
        return self.data


def _case(shape, seed, *, quantised=False, quadratic=False, noise=True, flag_all=False):
    rng = np.random.default_rng(seed)
    a = rng.normal(3000, 20, shape).astype(np.float32)
    b = rng.normal(3, 0.2, shape).astype(np.float32)
    more = {}
    if quadratic:
        more["c_map"] = rng.normal(0, 0.01, shape).astype(np.float32)
    if noise:
        read_noise = rng.uniform(1, 3, shape).astype(np.float32)
        read_noise.flat[:: max(1, read_noise.size // 3)] = 0  # dead pixels
        more["read_noise"] = read_noise
    mask = np.zeros(shape, dtype=bool)
    if flag_all:
        mask[:] = True
    elif a.size > 4:
        mask.flat[1] = True
        a.flat[2] = np.nan  # a masked pixel of the fit
    model = BiasModel.from_maps(a, b, mask, group_leverage=(0.3, 0.25), **more)
    real = a + b * 10 + rng.normal(0, 5, shape)
    if quantised:  # many ties, as a median of integer frames gives
        real = np.round(real / 8) * 8
    real = np.nan_to_num(real.astype(np.float32), nan=3000.0)
    if real.size > 4:
        real.flat[3] = 0.0  # the percentage error is NaN there
    return model, real


def _rows(monkeypatch, model, real, **kwargs):
    out = {}
    for engine in ("numpy", "numba"):
        monkeypatch.setenv("BIAS_PIPELINE_KERNELS", engine)
        out[engine] = evaluate_master(model, _Master(10.0, real), **kwargs)
    return out["numpy"], out["numba"]


def _assert_rows_match(reference, compiled):
    for key in SUMMARY_COLUMNS:
        ref, got = reference.row[key], compiled.row[key]
        if key in EXACT:
            assert got == ref, key
        elif isinstance(ref, float) and math.isnan(ref):
            assert math.isnan(got), key
        elif key.endswith(ORDER):
            assert got == ref, key  # the order statistics are the reference's to the bit
        else:
            assert got == pytest.approx(ref, rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("shape", [(48, 64), (47, 63), (1, 1), (2, 3), (5, 7), (1, 9)])
@pytest.mark.parametrize("quantised", [False, True])
def test_kernel_rows_and_maps_match_numpy(monkeypatch, shape, quantised):
    model, real = _case(shape, seed=sum(shape), quantised=quantised)
    reference, compiled = _rows(monkeypatch, model, real, leverage=0.3)
    _assert_rows_match(reference, compiled)
    for stem, (shown, factor) in reference.shown.items():
        got, got_factor = compiled.shown[stem]
        assert got_factor == factor
        np.testing.assert_allclose(got, shown, rtol=1e-6, equal_nan=True)


def test_kernel_quadratic_model_and_a_separate_heldout_fit(monkeypatch):
    model, real = _case((33, 40), seed=5, quadratic=True, quantised=True)
    heldout, _ = _case((33, 40), seed=6)
    reference, compiled = _rows(monkeypatch, model, real, leverage=0.4, heldout_model=heldout)
    _assert_rows_match(reference, compiled)
    assert math.isfinite(compiled.row["heldout_mae_median"])
    # The maps the FITS are written from are the ones the row was computed with.
    np.testing.assert_array_equal(compiled.mae, reference.mae)
    np.testing.assert_array_equal(compiled.heldout_mae, reference.heldout_mae)


@pytest.mark.parametrize("leverage", [math.nan, 0.999999999999])
def test_kernel_unknown_leverage_gives_nan_heldout(monkeypatch, leverage):
    model, real = _case((16, 17), seed=7, noise=False)
    heldout, _ = _case((16, 17), seed=8, noise=False)
    for kwargs in ({}, {"heldout_model": heldout}):
        reference, compiled = _rows(monkeypatch, model, real, leverage=leverage, **kwargs)
        _assert_rows_match(reference, compiled)
        assert math.isnan(compiled.row["heldout_mae_mean"]) and math.isnan(compiled.row["mae_per_read_noise"])


def test_kernel_every_pixel_flagged(monkeypatch):
    model, real = _case((8, 9), seed=9, flag_all=True)
    reference, compiled = _rows(monkeypatch, model, real, leverage=0.2)
    _assert_rows_match(reference, compiled)
    assert compiled.row["n_pixels"] == 0 and math.isnan(compiled.row["mae_median"])


def test_kernel_on_extreme_values(monkeypatch):
    """Saturated masters, a model far off, a pixel at the float32 limit: the keys still order."""
    model, real = _case((20, 21), seed=10)
    real[0, :] = 65535.0
    real[1, 0] = np.float32(3e38)
    real[2, :5] = -1.0
    reference, compiled = _rows(monkeypatch, model, real, leverage=0.1)
    _assert_rows_match(reference, compiled)


def _map_stats(monkeypatch, image, valid):
    out = {}
    for engine in ("numpy", "numba"):
        monkeypatch.setenv("BIAS_PIPELINE_KERNELS", engine)
        out[engine] = MapStats.of(image, valid)
    return out["numpy"], out["numba"]


@pytest.mark.parametrize("shape", [(48, 64), (31, 29), (1, 1), (2, 2), (3, 1)])
@pytest.mark.parametrize("kind", ["normal", "ties", "signed", "constant"])
def test_map_statistics_match_numpy(monkeypatch, shape, kind):
    rng = np.random.default_rng(len(kind) + shape[0])
    image = {
        "normal": rng.normal(3000, 20, shape),
        "ties": np.round(rng.normal(0, 2, shape)),
        "signed": rng.normal(0, 1e-3, shape) * rng.choice([-1e6, 1, 1e-6], shape),
        "constant": np.full(shape, -2.5),
    }[kind].astype(np.float32)
    valid = np.ones(shape, dtype=bool)
    if image.size > 3:
        image.flat[0] = np.nan
        image.flat[1] = -0.0
        valid.flat[2] = False
    reference, compiled = _map_stats(monkeypatch, image, valid)
    assert compiled.count == reference.count
    for name in ("low", "p16", "median", "p84", "high", "minimum", "maximum"):
        ref, got = getattr(reference, name), getattr(compiled, name)
        assert (math.isnan(ref) and math.isnan(got)) or got == ref, name
    ref_counts, ref_edges = reference.histogram
    got_counts, got_edges = compiled.histogram
    np.testing.assert_allclose(got_edges, ref_edges, rtol=1e-6)
    # numpy bins in float32 here, the kernel in float64: a value on an edge may fall either side.
    assert got_counts.sum() == ref_counts.sum()
    assert np.abs(got_counts - ref_counts).sum() <= max(2, image.size // 1000)
    np.testing.assert_allclose(compiled.shown[0], reference.shown[0], rtol=1e-6, equal_nan=True)


def test_map_statistics_with_no_pixel(monkeypatch):
    image = np.ones((4, 5), dtype=np.float32)
    reference, compiled = _map_stats(monkeypatch, image, np.zeros((4, 5), dtype=bool))
    assert compiled.count == reference.count == 0 and math.isnan(compiled.median)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 10, 101, 1000, 4097])
def test_percentile_ranks_and_interpolation_are_numpys(count):
    from bias_pipeline.eval_kernels import interpolate

    rng = np.random.default_rng(count)
    values = np.sort(rng.normal(0, 1, count).astype(np.float32))
    quantiles = [0.0, 0.1, 16.0, 50.0, 84.0, 95.0, 99.9, 100.0]
    previous, following, gamma = percentile_ranks(count, quantiles)
    got = interpolate(values[previous], values[following], gamma)
    np.testing.assert_array_equal(got, np.percentile(values, quantiles))


def test_sort_key_orders_floats_and_inverts():
    from bias_pipeline.eval_kernels import sort_key

    values = np.array([-np.inf, -3e38, -1.5, -1e-40, 0.0, 1e-40, 2.0, 3e38, np.inf], dtype=np.float32)
    keys = [int(sort_key(v)) for v in values]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert [key_value(k) for k in keys] == list(values)


@pytest.mark.parametrize("shape", [(48, 64), (5, 3), (1, 1)])
def test_worst_pixels_kernel_matches_numpy(monkeypatch, shape):
    from bias_pipeline.report import worst_pixels

    rng = np.random.default_rng(shape[0])
    rms = rng.gamma(2.0, 3.0, shape).astype(np.float32)
    mask = np.zeros(shape, dtype=bool)
    if rms.size > 4:
        rms.flat[0] = np.nan
        rms.flat[1] = 1e30  # masked: never listed
        mask.flat[1] = True
        rms.flat[2] = np.inf
    found = {}
    for engine in ("numpy", "numba"):
        monkeypatch.setenv("BIAS_PIPELINE_KERNELS", engine)
        found[engine] = worst_pixels(rms, mask, 20)
    np.testing.assert_array_equal(found["numba"], found["numpy"])
    assert found["numba"].size == min(20, rms.size - (3 if rms.size > 4 else 0))
    assert np.all(np.diff(rms.ravel()[found["numba"]]) <= 0)


def _empty_between_full(counts: np.ndarray) -> int:
    """Bins with no pixel between bins that have some: the comb of equal bins over quanta."""
    full = np.flatnonzero(counts)
    inner = counts[full[0] : full[-1] + 1]
    return int(np.count_nonzero(inner == 0))


def test_quantised_maps_get_bins_a_whole_number_of_quanta_wide(monkeypatch):
    """Masters of 12-bit values x16 lie on a 16 ADU lattice: equal bins straddle it and draw a
    comb; the histogram's bins hold whole quanta, edges half-way between lattice values."""
    rng = np.random.default_rng(5)
    image = (3200.0 + 16.0 * np.rint(rng.normal(0.0, 6.0, (48, 64)))).astype(np.float32)
    valid = np.ones(image.shape, dtype=bool)
    naive, _ = np.histogram(image, bins=HISTOGRAM_BINS, range=(float(image.min()), float(image.max())))
    assert _empty_between_full(naive) > 10  # what the equal bins drew
    for stats in _map_stats(monkeypatch, image, valid):
        counts, edges = stats.histogram
        widths = np.diff(edges)
        np.testing.assert_allclose(widths / 16.0, np.rint(widths / 16.0), atol=1e-6)
        np.testing.assert_allclose((edges - 3200.0) / 16.0 % 1.0, 0.5, atol=1e-6)
        assert _empty_between_full(counts) == 0
        assert counts.sum() >= 0.99 * image.size


def test_continuous_maps_keep_equal_bins(monkeypatch):
    image = np.random.default_rng(6).normal(0.0, 1.0, (48, 64)).astype(np.float32)
    for stats in _map_stats(monkeypatch, image, np.ones(image.shape, dtype=bool)):
        counts, edges = stats.histogram
        assert counts.size == HISTOGRAM_BINS
        np.testing.assert_allclose(edges[[0, -1]], [stats.low, stats.high])

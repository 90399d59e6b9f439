"""Step 3: the weighted per-pixel linear fit."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st

from bias_pipeline.errors import InputDataError
from bias_pipeline.model import BiasModel
from bias_pipeline.steps.step3_fit_bias_model import (
    check_mask,
    fit_bias_model,
    fit_linear,
    load_hot_pixel_mask,
    save_bias_model,
)

RNG = np.random.default_rng(3)
A_TRUE = RNG.normal(3200, 30, (48, 64))
B_TRUE = RNG.normal(3, 0.5, (48, 64))


def linear_masters(temps):
    return {t: (A_TRUE + B_TRUE * t).astype(np.float64) for t in temps}


def test_exact_on_noiseless_linear_data():
    a, b = fit_bias_model(linear_masters([-10.0, 0.0, 12.5, 30.0]))
    assert a.dtype == np.float32 and a.shape == (48, 64)
    np.testing.assert_allclose(a, A_TRUE, rtol=0, atol=1e-3)
    np.testing.assert_allclose(b, B_TRUE, rtol=0, atol=1e-5)


def test_input_not_modified():
    masters = linear_masters([0.0, 10.0])
    copies = {t: m.copy() for t, m in masters.items()}
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[3, 4] = 1
    fit_bias_model(masters, mask)
    assert all(np.array_equal(masters[t], copies[t]) for t in masters)
    assert mask.sum() == 1


def test_weights_are_frame_counts():
    """A master of 9 frames pulls the line 9x as hard as one of 1 frame."""
    temps = [0.0, 10.0, 20.0]
    values = [100.0, 130.0, 140.0]
    masters = {t: np.full((2, 3), v) for t, v in zip(temps, values, strict=True)}
    a, b = fit_bias_model(masters, frames_per_master={0.0: 1, 10.0: 9, 20.0: 1})
    slope, intercept = np.polyfit(temps, values, 1, w=np.sqrt([1, 9, 1]))
    assert b[0, 0] == pytest.approx(slope, abs=1e-5)
    assert a[0, 0] == pytest.approx(intercept, abs=1e-3)
    a_equal, _ = fit_bias_model(masters)
    assert a_equal[0, 0] != pytest.approx(a[0, 0], abs=1e-2)


def test_masked_pixels_are_nan_and_others_unaffected():
    masters = linear_masters([0.0, 10.0, 20.0])
    masters[20.0][5, 6] += 5000  # a hot pixel far off the line
    mask = np.zeros((48, 64))
    mask[5, 6] = 7  # any non-zero value marks a hot pixel
    a, b = fit_bias_model(masters, mask)
    assert np.isnan(a[5, 6]) and np.isnan(b[5, 6])
    assert np.isfinite(a).sum() == 48 * 64 - 1
    np.testing.assert_allclose(b[~mask.astype(bool)], B_TRUE[~mask.astype(bool)], atol=1e-5)


def test_needs_two_distinct_temperatures():
    with pytest.raises(InputDataError, match="needs masters at 2 or more distinct temperatures"):
        fit_bias_model(linear_masters([5.0]))


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.zeros((64, 48)), "64x48 but the frames are 48x64"),
        (np.zeros((2, 48, 64)), "3 dimensions"),
        (np.ones((48, 64)), "every pixel"),
    ],
)
def test_bad_masks(mask, message):
    with pytest.raises(InputDataError, match=message):
        check_mask(mask, (48, 64))


def test_mask_file(tmp_path):
    path = tmp_path / "mask.fits"
    data = np.zeros((48, 64), dtype=np.uint8)
    data[0, 1] = 1
    fits.writeto(path, data)
    assert load_hot_pixel_mask(path, (48, 64)).sum() == 1
    with pytest.raises(InputDataError, match="--hot-pixel-mask"):
        load_hot_pixel_mask(tmp_path / "absent.fits", (48, 64))


def test_save_bias_model_round_trip(tmp_path):
    a, b = fit_bias_model(linear_masters([0.0, 10.0]))
    a_path, b_path = save_bias_model(a, b, tmp_path)
    assert (a_path.name, b_path.name) == ("bias_a_map.fits", "bias_b_map.fits")
    model = BiasModel.load(a_path, b_path)
    np.testing.assert_array_equal(model.a_map, a)
    assert fits.getheader(b_path)["BUNIT"] == "adu / deg C"


temperature_sets = st.lists(
    st.floats(-40, 60, allow_nan=False).map(lambda t: round(t, 2)), min_size=2, max_size=6, unique=True
).filter(lambda ts: max(ts) - min(ts) > 0.5)


@settings(max_examples=40, deadline=None)
@given(temps=temperature_sets, a=st.floats(-1000, 5000), b=st.floats(-20, 20), seed=st.integers(0, 2**16))
def test_property_exact_and_order_invariant(temps, a, b, seed):
    """Noiseless lines come back exactly, whatever the order of the masters and their weights."""
    rng = np.random.default_rng(seed)
    weights = rng.integers(1, 50, len(temps)).tolist()
    frames = [np.full((2, 3), a + b * t) for t in temps]
    a_fit, b_fit = fit_linear(temps, weights, frames.__getitem__)
    assert np.allclose(b_fit, b, atol=1e-4 * (1 + abs(b))) and np.allclose(a_fit, a, atol=1e-2)
    order = rng.permutation(len(temps))
    a_perm, b_perm = fit_linear([temps[i] for i in order], [weights[i] for i in order], lambda k: frames[order[k]])
    assert np.allclose(a_perm, a_fit, atol=1e-3) and np.allclose(b_perm, b_fit, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(temps=temperature_sets, seed=st.integers(0, 2**16))
def test_property_splitting_a_master_changes_nothing(temps, seed):
    """Two masters of n1 and n2 frames at one temperature weigh as one of n1 + n2 frames
    when they hold the same values (the fit depends on frames, not on how they are grouped)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(3000, 50, len(temps))
    weights = rng.integers(2, 20, len(temps)).tolist()
    frames = [np.full((1, 2), v) for v in values]
    a_one, b_one = fit_linear(temps, weights, frames.__getitem__)
    split_temps = [*temps, temps[0]]
    split_weights = [weights[0] - 1, *weights[1:], 1]
    split_frames = [*frames, frames[0]]
    a_two, b_two = fit_linear(split_temps, split_weights, split_frames.__getitem__)
    assert np.allclose(a_one, a_two, atol=1e-3) and np.allclose(b_one, b_two, atol=1e-6)

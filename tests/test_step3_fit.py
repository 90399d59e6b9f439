"""Step 3: the hot-pixel mask, and one test per legacy call form (``fit_bias_model``,
``save_bias_model``, ``fit_linear``); the real path, :func:`fit_model`, is tested against known
truth in ``test_step3_fit_model.py``."""

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


TEMPS4 = (-10.0, 0.0, 12.5, 30.0)


def linear_masters(temps):
    return {t: (A_TRUE + B_TRUE * t).astype(np.float64) for t in temps}


def test_fit_bias_model_legacy_form():
    mask = np.zeros((48, 64))
    mask[5, 6] = 7  # any non-zero value marks a hot pixel
    a, b = fit_bias_model(linear_masters(TEMPS4), mask, frames_per_master=dict.fromkeys(TEMPS4, 3))
    assert a.dtype == np.float32 and a.shape == (48, 64)
    assert np.isnan(a[5, 6]) and np.isnan(b[5, 6]) and np.isfinite(a).sum() == 48 * 64 - 1
    good = mask == 0
    np.testing.assert_allclose(a[good], A_TRUE[good], rtol=0, atol=1e-3)
    np.testing.assert_allclose(b[good], B_TRUE[good], rtol=0, atol=1e-5)


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

"""BiasModel and step 4 (synthetic frames)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import BiasModel
from bias_pipeline.errors import InputDataError
from bias_pipeline.steps.step4_generate_synthetic_bias import (
    generate_multiple_synthetic_biases,
    generate_synthetic_bias,
    synthetic_name,
)

A = np.arange(48 * 64, dtype=np.float32).reshape(48, 64) + 3000
B = np.full((48, 64), 2.5, dtype=np.float32)


def test_predict_scalar_and_stack():
    model = BiasModel.from_maps(A, B, temperature_range=(-10, 30))
    frame = model.predict(4.0)
    assert frame.shape == (48, 64) and frame.dtype == np.float32
    assert frame[1, 2] == A[1, 2] + 10.0
    stack = model.predict(np.array([0.0, 4.0, 8.0]))
    assert stack.shape == (3, 48, 64)
    np.testing.assert_array_equal(stack[1], frame)


def test_extrapolation_warns_only_outside_range(caplog):
    model = BiasModel.from_maps(A, B, temperature_range=(-10, 30))
    with caplog.at_level(logging.WARNING, logger="bias_pipeline"):
        model.predict(30.0)
        model.predict(-10.0)
        assert not caplog.records
        model.predict(35.0)
    assert "extrapolating" in caplog.text and "35" in caplog.text


def test_predict_rejects_nan_temperature():
    with pytest.raises(InputDataError, match="finite"):
        BiasModel.from_maps(A, B).predict(float("nan"))


def test_nan_pixels_are_masked():
    a = A.copy()
    a[0, 0] = np.nan
    model = BiasModel.from_maps(a, B)
    assert model.mask.sum() == 1 and model.mask[0, 0]


def test_shape_mismatch_is_an_error():
    with pytest.raises(InputDataError, match="differ in shape"):
        BiasModel.from_maps(A, B.T)


def test_save_load_round_trip_keeps_metadata(tmp_path):
    mask = np.zeros((48, 64), dtype=bool)
    mask[2, 3] = True
    a = A.copy()
    a[mask] = np.nan
    b = B.copy()
    b[mask] = np.nan
    model = BiasModel(a, b, mask, (-10.0, 30.0), (-10.0, 30.0), (4, 6), 16.0)
    model.save(tmp_path / "bias_model")
    loaded = BiasModel.load(tmp_path)  # an output folder holding bias_model/
    np.testing.assert_array_equal(loaded.mask, mask)
    np.testing.assert_array_equal(loaded.a_map, a)
    assert loaded.temperature_range == (-10.0, 30.0)
    assert loaded.group_temperatures == (-10.0, 30.0) and loaded.group_frames == (4, 6)
    header = fits.getheader(tmp_path / "bias_model" / "bias_a_map.fits")
    assert header["BUNIT"] == "adu" and header["NFRAMES"] == 10 and header["TMIN"] == -10.0


def test_load_errors(tmp_path):
    with pytest.raises(InputDataError, match="no bias_a_map.fits"):
        BiasModel.load(tmp_path)
    fits.writeto(tmp_path / "a.fits", A)
    fits.writeto(tmp_path / "b.fits", B[:, :10])
    with pytest.raises(InputDataError, match="give maps from one model"):
        BiasModel.load(tmp_path / "a.fits", tmp_path / "b.fits")


def test_generate_synthetic_bias_legacy_call():
    frame = generate_synthetic_bias(A, B, 12.0)
    assert frame.dtype == np.float32
    np.testing.assert_allclose(frame, A + 30.0)


def test_generate_multiple_synthetic_biases(tmp_path):
    paths = generate_multiple_synthetic_biases(A, B, [-5.0, 0.04, 12.0], tmp_path / "syn")
    assert [p.name for p in paths.values()] == [
        "synthetic_bias_-5.0C.fits",
        "synthetic_bias_0.0C.fits",
        "synthetic_bias_12.0C.fits",
    ]
    data = fits.getdata(paths[12.0])
    header = fits.getheader(paths[12.0])
    np.testing.assert_allclose(data, A + 30.0)
    assert header["TEMPERATURE"] == 12.0 and header["PRODTYPE"] == "SYNTHETIC_BIAS"
    # A name holds the temperature's own decimals: -0.04 and 0.0 deg C do not share a file.
    assert synthetic_name(-0.04) == "synthetic_bias_-0.04C.fits" and synthetic_name(-0.0) == "synthetic_bias_0.0C.fits"


def test_model_to_one_file_and_subtract_bias_from_a_dark(pipeline_run, sim, tmp_path):
    from bias_pipeline import BiasModel, subtract_bias

    model = BiasModel.load(pipeline_run.output_dir)
    path = model.to_fits(tmp_path / "model.fits")
    back = BiasModel.load(path)
    np.testing.assert_array_equal(back.predict(3.0), model.predict(3.0))
    # A dark frame: the bias at its header temperature plus 40 ADU of signal.
    frame_path = sorted(sim.raw_dir.glob("*.fits"))[0]
    header_temperature = float(fits.getheader(frame_path)["TEMPERATURE"])
    dark = subtract_bias(frame_path, model)  # temperature from the header
    np.testing.assert_allclose(
        dark, fits.getdata(frame_path).astype(np.float32) - model.predict(header_temperature), rtol=1e-6
    )
    good = ~model.flagged
    assert abs(float(np.nanmedian(dark[good]))) < 20  # a bias frame minus its bias: about zero
    with pytest.raises(InputDataError, match="pass temperature="):
        subtract_bias(fits.getdata(frame_path), model)

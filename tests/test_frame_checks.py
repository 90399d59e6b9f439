"""Step 1's compiled pixel checks against their numpy reference, the one read per frame (its
checksum from the same bytes) and the threaded scan: the same records whatever the engine."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import shutil
import sys

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import PipelineConfig
from bias_pipeline.frame_checks import PixelStats, StoredUint16Checks, array_stats
from bias_pipeline.frames import FrameReader, inspect_frame
from bias_pipeline.provenance import file_sha256
from bias_pipeline.steps.step1_load_data import scan_frames
from bias_pipeline.units import adc_maximum

from conftest import bias_pixels, write_frame

ENGINES_VARIABLE = "BIAS_PIPELINE_KERNELS"
SATURATIONS = (adc_maximum(), adc_maximum(4.0), 4095.0, 5323.5, 16777217.0, 0.0, 70000.0)


def _same(a: PixelStats, b: PixelStats) -> bool:
    """Equal, NaN equal to NaN (a frame with NaN has no meaningful extremes)."""
    return repr(a) == repr(b)


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(13)
    cases: dict[str, np.ndarray] = {
        "bias": bias_pixels((48, 64)),
        "bias odd": bias_pixels((7, 13), seed=3),
        "1x1": np.array([[3200]], dtype=np.uint16),
        "1x1 zero": np.zeros((1, 1), dtype=np.uint16),
        "zeros": np.zeros((5, 9), dtype=np.uint16),
        "all 65535": np.full((4, 6), 65535, dtype=np.uint16),
        "all 65520": np.full((3, 3), 65520, dtype=np.uint16),
        "random uint16": rng.integers(0, 65536, (31, 17)).astype(np.uint16),
        "12-bit": rng.integers(0, 4096, (16, 16)).astype(np.uint16),
        "12-bit with 4095": np.where(rng.random((9, 11)) < 0.3, 4095, rng.integers(0, 4096, (9, 11))).astype(np.uint16),
        "saturated x16": np.where(rng.random((20, 8)) < 0.5, 65520, bias_pixels((20, 8))).astype(np.uint16),
        "not x16": (bias_pixels((6, 10)) + (rng.random((6, 10)) < 0.05)).astype(np.uint16),
        "one not x16": np.concatenate([np.full(99, 3200), [3201]]).astype(np.uint16).reshape(10, 10),
        "signed": rng.integers(-32768, 32768, (12, 12)).astype(np.int16),
        "signed x16": (rng.integers(-2048, 2048, (5, 7)) * 16).astype(np.int16),
        "int32 big": rng.integers(-(2**31), 2**31 - 1, (8, 8)).astype(np.int32),
        "uint8": rng.integers(0, 256, (7, 7)).astype(np.uint8),
        "int64 with 4095": np.array([[4095, 4095, -3, 0]], dtype=np.int64),
        "big-endian int16": rng.integers(-100, 100, (6, 6)).astype(">i2"),
        "float32 x16": (bias_pixels((9, 9)).astype(np.float32)),
        "float32 fractional": rng.normal(3200, 5, (9, 9)).astype(np.float32),
        "float32 whole, not x16": rng.integers(0, 4096, (9, 9)).astype(np.float32),
        "float64 x8": (rng.integers(0, 512, (3, 5)) * 8 + 8).astype(np.float64),
        "float32 negative": rng.normal(-50, 40, (13, 5)).astype(np.float32),
        "float32 negative x16": (rng.integers(-100, 100, (4, 4)) * 16).astype(np.float32),
        "float32 tiny": np.array([[5e-45, 0.0, 16.0]], dtype=np.float32),
        "float32 at 2**24": np.full((2, 2), 16777216.0, dtype=np.float32),
        "float32 -0.0": np.array([[-0.0, -0.0], [-0.0, -0.0]], dtype=np.float32),
        "float64 saturated": np.where(rng.random((8, 8)) < 0.3, 65520.0, 3200.0),
        "float64 4095": np.array([[4095.0, 4095.0, 4094.5]]),
        "float64 huge": np.array([[1e300, -1e300, 2.0**70]]),
        "big-endian float32": rng.normal(100, 3, (5, 5)).astype(">f4"),
        "float32 NaN": np.array([[1.0, np.nan], [16.0, 32.0]], dtype=np.float32),
        "float64 inf": np.array([[np.inf, 0.0, -np.inf, 5.0, np.nan]]),
        "float32 all NaN": np.full((3, 3), np.nan, dtype=np.float32),
    }
    return cases


ARRAYS = _arrays()


@pytest.mark.parametrize("saturation", SATURATIONS)
@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_kernels_match_the_numpy_reference(name, saturation):
    pixels = ARRAYS[name]
    reference = array_stats(pixels, saturation, engine_name="numpy")
    compiled = array_stats(pixels, saturation, engine_name="numba")
    assert _same(compiled, reference), (compiled, reference)
    assert reference.size == pixels.size


def test_the_reference_counts_what_it_says():
    """Not only kernel == reference: the statistics themselves, written out for a small case."""
    pixels = np.array([[0, 16, 4095, 65520], [65535, 0, 4095, 32]], dtype=np.uint16)
    stats = array_stats(pixels, adc_maximum())
    assert stats == PixelStats(8, 65535.0, 0.0, False, True, 2, 0, 2, 2)
    floats = np.array([[-16.0, 0.0], [32.0, 48.5]], dtype=np.float32)
    assert array_stats(floats, adc_maximum()) == PixelStats(4, 48.5, -16.0, False, False, 1, 1, 0, 0)
    bad = np.array([[np.nan, np.inf, 1.0]])
    assert array_stats(bad, adc_maximum()).nonfinite == 2


def _stored(values: np.ndarray) -> np.ndarray:
    """Values as the camera's files hold them (big-endian int16 + BZERO 32768), viewed as uint16."""
    return np.frombuffer((values.astype(np.uint16) ^ np.uint16(0x8000)).astype(">u2").tobytes(), dtype=np.uint16)


@pytest.mark.parametrize("engine", ["numba", "numpy"])
@pytest.mark.parametrize("saturation", SATURATIONS + (math.nan,))
@pytest.mark.parametrize("name", [n for n, a in ARRAYS.items() if a.dtype == np.uint16])
def test_stored_values_are_decoded_in_the_kernel(name, saturation, engine):
    values = ARRAYS[name]
    stored = _stored(values)
    expected = array_stats(values, saturation, engine_name="numpy")
    whole = StoredUint16Checks(saturation, engine_name=engine)
    whole.add(stored)
    assert whole.result() == expected
    # Fed in pieces, as the file is read: cuts anywhere, empty pieces included.
    rng = np.random.default_rng(stored.size)
    cuts = np.sort(rng.integers(0, stored.size + 1, 4))
    pieces = StoredUint16Checks(saturation, engine_name=engine)
    for part in np.split(stored, cuts):
        pieces.add(part)
    assert pieces.result() == expected


def test_no_values_is_an_error():
    with pytest.raises(ValueError, match="no pixel values"):
        StoredUint16Checks(65520.0).result()


def _plain_file(tmp_path, values, name="frame.fits"):
    header = fits.Header()
    header["HIERARCH TEMPERATURE"] = 5.0
    header["EXPOSURE"] = 0.0
    path = tmp_path / name
    hdul = fits.HDUList([fits.PrimaryHDU(values, header=header), fits.ImageHDU(np.arange(5, dtype=np.int32))])
    hdul.writeto(path)  # an extension after the frame: the checksum covers it, the checks do not
    return path


@pytest.mark.parametrize("buffer_bytes", [2, 6, 2880, 4096, 1 << 20])
@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_one_read_gives_the_file_checksum_and_the_pixel_checks(tmp_path, monkeypatch, buffer_bytes, engine):
    monkeypatch.setenv(ENGINES_VARIABLE, engine)
    values = ARRAYS["12-bit with 4095"]
    path = _plain_file(tmp_path, values)
    reader = FrameReader(checksum=True, buffer_bytes=buffer_bytes)
    record = inspect_frame(path, ["TEMPERATURE"], ["EXPOSURE"], reader=reader)
    assert record.status == "accepted", record.reason
    assert record.data_offset is not None and record.bzero == 32768.0
    assert reader.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    # The record holds what the pixels say (here compared with astropy's decoding of the file).
    with fits.open(path) as hdul:
        data = np.asarray(hdul[0].data)
    assert data.dtype == np.uint16
    stats = array_stats(data, adc_maximum(), engine_name="numpy")
    assert record.max_value == stats.maximum == 4095.0 and record.min_value == stats.minimum
    assert record.saturated_fraction_12 == stats.twelve_bit_max / data.size > 0
    assert record.saturated_fraction == 0.0 and not record.multiple_of_16
    assert record.zero_fraction == stats.zeros / data.size
    # Without a checksum asked, no checksum (and only the pixels are read).
    quiet = FrameReader(buffer_bytes=buffer_bytes)
    again = inspect_frame(path, ["TEMPERATURE"], ["EXPOSURE"], reader=quiet)
    assert quiet.sha256 == "" and dataclasses.astuple(again) == dataclasses.astuple(record)


def test_a_file_cut_after_its_header_was_read_is_rejected(tmp_path, monkeypatch):
    """The read finds fewer pixel bytes than the header promised (a file cut between the header
    parse and the read): rejected as truncated, with no checksum."""
    path = _plain_file(tmp_path, bias_pixels((48, 64)))
    whole = path.read_bytes()
    reader = FrameReader(checksum=True, buffer_bytes=4096)
    original = reader.check_stored_uint16

    def cut_first(record, saturation):
        path.write_bytes(whole[: record.data_offset + 1000])
        return original(record, saturation)

    monkeypatch.setattr(reader, "check_stored_uint16", cut_first)
    record = inspect_frame(path, ["TEMPERATURE"], ["EXPOSURE"], reader=reader)
    assert record.status == "rejected" and "truncated since it was scanned" in record.reason
    assert reader.sha256 == ""


def _varied_folder(raw):
    """Frames of every kind step 1 reads: the camera's plain frames and faulty ones, and the
    rarer kinds astropy decodes (gzip, tile-compressed, float, signed, BLANK)."""
    raw.mkdir()
    rng = np.random.default_rng(5)
    for index in range(3):
        write_frame(raw / f"good_{index}.fits", bias_pixels(seed=index), temperature=5.0)
    write_frame(raw / "saturated.fits", np.where(rng.random((48, 64)) < 0.5, 65520, bias_pixels()).astype(np.uint16))
    write_frame(raw / "zeros.fits", np.where(rng.random((48, 64)) < 0.5, 0, bias_pixels()).astype(np.uint16))
    write_frame(raw / "stuck.fits", np.full((48, 64), 3200, dtype=np.uint16))
    write_frame(raw / "twelve_bit.fits", np.where(rng.random((48, 64)) < 0.2, 4095, 200).astype(np.uint16))
    write_frame(raw / "odd_1x1.fits", np.array([[3200]], dtype=np.uint16))
    write_frame(raw / "odd_7x13.fits", bias_pixels((7, 13)))
    write_frame(raw / "float.fits", bias_pixels(seed=9).astype(np.float32))
    write_frame(raw / "float_fraction.fits", rng.normal(3200, 3, (48, 64)).astype(np.float32))
    write_frame(raw / "float_nan.fits", np.where(rng.random((48, 64)) < 0.01, np.nan, 3200.0).astype(np.float32))
    write_frame(raw / "signed.fits", (bias_pixels(seed=4).astype(np.int32) - 32768).astype(np.int16))
    with open(raw / "good_0.fits", "rb") as source, gzip.open(raw / "zipped.fits.gz", "wb") as target:
        shutil.copyfileobj(source, target)
    header = fits.Header()
    header["HIERARCH TEMPERATURE"] = 5.0
    header["EXPOSURE"] = 0.0
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(bias_pixels(seed=7), header=header)]).writeto(
        raw / "compressed.fits.fz"
    )
    blank = fits.PrimaryHDU(bias_pixels(seed=8).astype(np.int32), header=header.copy())
    blank.header["BLANK"] = -1
    blank.writeto(raw / "blank.fits")
    shutil.copy(raw / "good_1.fits", raw / "good_1_copy.fits")  # a byte-identical copy: same checksum
    (raw / "notes.txt").write_text("not a frame")


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    raw = tmp_path_factory.mktemp("varied") / "raw"
    _varied_folder(raw)
    return raw


def _scan(raw, monkeypatch, engine, threads):
    monkeypatch.setenv(ENGINES_VARIABLE, engine)
    records, bits = scan_frames(raw, PipelineConfig(show_progress=False, threads=threads), checksum=True)
    return [repr(dataclasses.astuple(r)) for r in records], bits, records


def test_scan_is_the_same_with_either_engine_and_any_thread_count(varied, monkeypatch):
    reference, bits, records = _scan(varied, monkeypatch, "numpy", 1)
    for engine, threads in (("numba", 1), ("numba", 3), ("numpy", 2)):
        other, other_bits, _ = _scan(varied, monkeypatch, engine, threads)
        assert other_bits == bits
        assert other == reference, (engine, threads)
    found = {r.path.name: r for r in records}
    # The folder holds what it was made to hold, so the comparison above compares something.
    assert found["saturated.fits"].status == "rejected" and "saturated" in found["saturated.fits"].reason
    assert found["zeros.fits"].status == "rejected" and "zero" in found["zeros.fits"].reason
    assert found["float_nan.fits"].reason.endswith("pixels are NaN or infinite")
    assert found["signed.fits"].status == "rejected" and "negative" in found["signed.fits"].reason
    assert found["good_1_copy.fits"].status == "ignored" and "byte-identical" in found["good_1_copy.fits"].reason
    assert found["notes.txt"].status == "ignored"
    for name in ("good_0.fits", "good_2.fits", "zipped.fits.gz", "compressed.fits.fz", "float.fits"):
        record = found[name]
        assert record.passed_checks, (name, record.reason)
        assert record.sha256 == hashlib.sha256(record.path.read_bytes()).hexdigest(), name
    assert found["zipped.fits.gz"].data_offset is None and found["good_0.fits"].data_offset is not None
    assert not found["saturated.fits"].sha256  # only frames that passed get a checksum, as before


def test_scan_of_a_simulated_set_is_the_same_with_either_engine(sim, monkeypatch):
    reference, bits, records = _scan(sim.raw_dir, monkeypatch, "numpy", 1)
    compiled, compiled_bits, _ = _scan(sim.raw_dir, monkeypatch, "numba", 0)
    assert compiled == reference and compiled_bits == bits
    used = [r for r in records if r.passed_checks]
    assert len(used) == len(sim.frame_paths)
    for record in used:
        assert record.sha256 == hashlib.sha256(record.path.read_bytes()).hexdigest()
        assert record.multiple_of_16 and record.max_value <= adc_maximum()


@pytest.mark.skipif(sys.byteorder != "little", reason="the swap branch runs on little-endian machines")
def test_kernel_swaps_bytes_on_this_machine():
    values = np.array([1, 256, 4095, 65535], dtype=np.uint16)
    checks = StoredUint16Checks(65520.0)
    checks.add(_stored(values))
    assert checks.result().maximum == 65535.0 and checks.result().twelve_bit_max == 1

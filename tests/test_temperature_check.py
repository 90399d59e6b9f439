"""The per-frame temperature check: it returns its results and edits no record; it flags the
frames whose header is 2 deg C off and, on frames with right headers, flags no more than its
3-sigma threshold promises."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline.frames import FrameRecord, inspect_frame
from bias_pipeline.model import BiasModel
from bias_pipeline.temperature_check import (
    FLAG_TEMPERATURE,
    MISMATCH_SIGMAS,
    TemperatureCheck,
    check_frame_temperatures,
    with_temperature_checks,
)

SHAPE = (8, 16)  # 128 pixels: an estimate's error of ~0.15 deg C
NOISE = 5.0  # [ADU] read noise of one frame
SLOPE = 3.0  # [ADU / deg C]


@pytest.fixture(scope="module")
def truth() -> BiasModel:
    rng = np.random.default_rng(11)
    a = rng.normal(3000.0, 20.0, SHAPE).astype(np.float32)
    b = rng.normal(SLOPE, 0.1, SHAPE).astype(np.float32)
    return BiasModel(a, b, np.zeros(SHAPE, dtype=bool), read_noise=np.full(SHAPE, NOISE, dtype=np.float32))


def _frames(
    folder: Path, model: BiasModel, temperatures: np.ndarray, offsets: np.ndarray, seed: int
) -> list[FrameRecord]:
    """Frames at ``temperatures`` with read noise, headers saying ``temperatures + offsets``;
    the records as step 1 leaves them (passed its checks)."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    records = []
    for index, (t, off) in enumerate(zip(temperatures, offsets, strict=True)):
        data = (model.a_map + model.b_map * np.float32(t) + rng.normal(0.0, NOISE, SHAPE)).astype(np.float32)
        path = folder / f"f{index:04d}.fits"
        fits.PrimaryHDU(data, header=fits.Header({"HIERARCH TEMPERATURE": float(t + off), "EXPOSURE": 0.0})).writeto(
            path
        )
        record = inspect_frame(path, ["TEMPERATURE"], ["EXPOSURE"])
        assert record.status == "accepted", record.reason
        records.append(dataclasses.replace(record, passed_checks=True))
    return records


def test_check_does_not_modify_its_records_and_returns_new_ones(truth, tmp_path):
    records = _frames(tmp_path / "raw", truth, np.array([0.0, 10.0, 20.0]), np.array([0.0, 2.0, 0.0]), seed=1)
    records.append(FrameRecord(path=tmp_path / "raw" / "notes.txt", status="ignored"))  # never estimated
    before = repr(records)
    checks = check_frame_temperatures(truth, records, tolerance=0.5, show_progress=False, threads=2)
    assert repr(records) == before
    assert all(r.temperature_est is None and r.flag == "" for r in records)
    assert list(checks) == [r.path for r in records[:3]]
    assert all(isinstance(c, TemperatureCheck) for c in checks.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        checks[records[0].path].flag = "x"  # type: ignore[misc]
    checked = with_temperature_checks(records, checks)
    assert repr(records) == before
    assert [r.path for r in checked] == [r.path for r in records]
    assert all(new is not old for new, old in zip(checked[:3], records[:3], strict=True))
    assert checked[3] is records[3]
    assert [r.flag for r in checked] == ["", FLAG_TEMPERATURE, "", ""]
    for record in checked[:3]:
        check = checks[record.path]
        assert (record.temperature_est, record.temperature_est_err) == (check.temperature, check.error)


def test_headers_two_degrees_off_are_flagged_and_right_headers_are_not(truth, tmp_path):
    rng = np.random.default_rng(2)
    temperatures = rng.uniform(-10.0, 30.0, 40)
    offsets = np.zeros(40)
    wrong = [3, 17, 29, 36]
    offsets[wrong] = [2.0, -2.0, 2.0, -2.0]
    records = _frames(tmp_path / "raw", truth, temperatures, offsets, seed=3)
    checks = check_frame_temperatures(truth, records, tolerance=0.5, show_progress=False)
    flagged = [i for i, r in enumerate(records) if checks[r.path].flag == FLAG_TEMPERATURE]
    assert flagged == wrong
    for r, t in zip(records, temperatures, strict=True):
        assert abs(checks[r.path].temperature - t) < 5 * checks[r.path].error  # the true temperature, not the header
        assert checks[r.path].error == pytest.approx(NOISE / (SLOPE * math.sqrt(SHAPE[0] * SHAPE[1])), rel=0.05)


def test_false_flag_rate_on_right_headers_is_what_the_threshold_promises(truth, tmp_path):
    """Every header right: a frame is flagged only beyond max(tolerance, 3 sigma), and with an
    honest error that happens to 0.27 % of frames. The errors are checked honest through the
    spread of the pulls and their 2-sigma tail (4.55 %)."""
    n = 600
    rng = np.random.default_rng(4)
    temperatures = rng.uniform(-10.0, 30.0, n)
    records = _frames(tmp_path / "raw", truth, temperatures, np.zeros(n), seed=5)
    tolerance = 0.1  # below 3 sigma (~0.44 deg C): the 3-sigma rule decides
    checks = check_frame_temperatures(truth, records, tolerance=tolerance, show_progress=False)
    difference = np.array([checks[r.path].temperature - r.temperature for r in records])
    error = np.array([checks[r.path].error for r in records])
    flagged = np.array([checks[r.path].flag == FLAG_TEMPERATURE for r in records])
    assert np.array_equal(flagged, np.abs(difference) > np.maximum(tolerance, MISMATCH_SIGMAS * error))
    pull = difference / error
    assert 0.9 < pull.std() < 1.1
    two_sigma = 2 * (1 - NormalDist().cdf(2.0))  # 4.55 %
    assert abs(np.mean(np.abs(pull) > 2) - two_sigma) < 3 * math.sqrt(two_sigma / n)
    promised = 2 * (1 - NormalDist().cdf(MISMATCH_SIGMAS))  # 0.27 %: 1.6 of 600 frames expected
    assert flagged.sum() <= 8, (flagged.sum(), promised * n)  # Poisson(1.6) reaches 8 once in 3000 runs

"""Row noise (bias_pipeline.row_noise): the statistics on arrays with a known truth.

The frames here are Gaussian read noise quantised like the camera's (12-bit values x16), with
or without a per-frame, per-row common offset. The end-to-end behaviour (manifest, noise maps,
products with auto and off) is in tests/test_row_correction.py. The compiled half-row medians
(bias_pipeline.row_kernels) are checked against numpy's median, the reference, to the bit.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from bias_pipeline import compiled
from bias_pipeline.combine import combine_block
from bias_pipeline.row_noise import (
    ROW_EXCESS,
    expected_row_variance,
    frame_row_noise,
    remove_row_offsets,
    row_noise_significant,
    row_offsets,
    split_row_offsets,
)

READ_NOISE = 32.0  # ADU: 2 DN x16
SHAPE = (48, 64)


def _frames(rng: np.random.Generator, n: int, row_sigma: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` quantised frames of one static pattern, and the row offsets each got [ADU]."""
    pattern = 3200.0 + rng.normal(0.0, 40.0, SHAPE)
    offsets = rng.normal(0.0, row_sigma, (n, SHAPE[0])) if row_sigma else np.zeros((n, SHAPE[0]))
    frames = pattern + offsets[:, :, None] + rng.normal(0.0, READ_NOISE, (n, *SHAPE))
    return (np.rint(frames / 16.0) * 16.0).astype(np.float32), offsets


def _measured(frames: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Row offsets of every frame against the group's master, and the read noise's part."""
    combined = combine_block(frames.copy(), method, quantum=16.0)
    return split_row_offsets(frames - combined.master[None])


@pytest.mark.parametrize("method", ["mean", "median", "sigma-clip"])
@pytest.mark.parametrize("n", [3, 8])
def test_split_halves_measure_read_noise_alone(method: str, n: int) -> None:
    # Without row noise the row offsets' mean square is the halves' read-noise part, to well
    # within the auto rule's 10 % margin, whatever the combine (a median master piles the
    # differences up at zero) and with quantised values.
    rng = np.random.default_rng(n)
    trials = math.ceil(30_000 / (n * SHAPE[0]))
    squares = parts = 0.0
    for _ in range(trials):
        offsets, expected = _measured(_frames(rng, n)[0], method)
        squares, parts = squares + float(np.sum(offsets**2)), parts + float(np.sum(expected))
    count = trials * n * SHAPE[0]
    assert abs(squares / parts - 1.0) < 4 * math.sqrt(4.0 / count) < ROW_EXCESS / 2


def test_auto_rule_never_fires_on_read_noise_alone() -> None:
    rng = np.random.default_rng(5)
    fired = 0
    for _ in range(200):
        offsets, expected = _measured(_frames(rng, 5)[0], "sigma-clip")
        centred = offsets - offsets.mean(axis=1, keepdims=True)
        fired += row_noise_significant(float(np.sum(centred**2)), float(expected.sum()), centred.size).significant
    assert fired == 0


def test_auto_rule_fires_on_weak_row_noise() -> None:
    # 0.3 x the read noise in a row of 64 pixels: over 3 x the read-noise-alone variance.
    rng = np.random.default_rng(6)
    offsets, expected = _measured(_frames(rng, 5, row_sigma=0.3 * READ_NOISE)[0], "sigma-clip")
    test = row_noise_significant(float(np.sum(offsets**2)), float(expected.sum()), offsets.size)
    assert test.significant and test.excess_sigma > 10


def test_frame_amplitudes_recover_each_frames_truth() -> None:
    rng = np.random.default_rng(7)
    frames, truth = _frames(rng, 8, row_sigma=0.6 * READ_NOISE)
    offsets, expected = _measured(frames, "sigma-clip")
    centred = offsets - offsets.mean(axis=1, keepdims=True)
    amplitudes = frame_row_noise(np.mean(centred**2, axis=1), expected.mean(axis=1))
    own = np.sqrt(np.mean((truth - truth.mean(axis=1, keepdims=True)) ** 2, axis=1))
    # Each frame's estimate scatters by about sqrt(1/2 / rows) of itself (48 rows: 10 %), plus the
    # part of the other frames' offsets that the master carries; 20 % is the issue's goal.
    assert np.all(np.abs(amplitudes / own - 1.0) < 0.2), (amplitudes, own)


def test_expected_row_variance_against_a_model() -> None:
    # A frame against a noiseless reference: its row medians scatter by sqrt(pi/2) s / sqrt(C).
    rng = np.random.default_rng(9)
    frames = rng.normal(0.0, READ_NOISE, (400, *SHAPE))
    measured = float(np.mean(row_offsets(frames) ** 2))
    expected = float(np.mean(expected_row_variance(np.full(SHAPE, READ_NOISE), None)))
    assert abs(measured / expected - 1.0) < 4 * math.sqrt(2.0 / (400 * SHAPE[0])) + 0.02  # 1/C terms


def test_two_frames_share_their_row_noise() -> None:
    assert frame_row_noise(np.array([4.0, 4.0]), 0.0).tolist() == [2.0 * math.sqrt(2.0)] * 2


def test_remove_row_offsets_keeps_the_level_and_ignores_invalid_pixels() -> None:
    rng = np.random.default_rng(8)
    reference = np.full(SHAPE, 3000.0)
    offsets = rng.normal(0.0, 20.0, SHAPE[0])
    frame = reference + 55.0 + offsets[:, None] + rng.normal(0.0, 1.0, SHAPE)
    valid = np.ones(SHAPE, dtype=bool)
    frame[:, 3] = 60000.0  # a hot column, left out of the measurement
    valid[:, 3] = False
    corrected, removed = remove_row_offsets(frame, reference, valid)
    assert abs(float(np.mean(removed))) < 1e-3
    np.testing.assert_allclose(removed, offsets - offsets.mean(), atol=0.5)
    kept = np.delete(corrected, 3, axis=1) - reference[:, :-1]
    assert abs(float(kept.mean()) - (55.0 + offsets.mean())) < 0.1  # the level stays
    assert float(np.std(kept.mean(axis=1))) < 0.5  # the rows' pattern goes


def test_a_row_without_valid_pixels_gets_no_offset() -> None:
    difference = np.array([[1.0, 2.0], [5.0, 7.0]])
    valid = np.array([[True, True], [False, False]])
    assert row_offsets(difference, valid).tolist() == [1.5, 0.0]


needs_numba = pytest.mark.skipif(not compiled.available(), reason="numba cannot be imported")


def _numpy_halves(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    half = data.shape[-1] // 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns on an empty half (NaN)
        return np.median(data[..., :half], axis=-1), np.median(data[..., data.shape[-1] - half :], axis=-1)


def _kernel_halves(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from bias_pipeline.row_kernels import half_row_medians

    left, right = np.empty(data.shape[0], np.float32), np.empty(data.shape[0], np.float32)
    half_row_medians(np.ascontiguousarray(data, dtype=np.float32).view(np.uint32), data.shape[1] // 2, left, right)
    return left, right


def _awkward_rows(rng: np.random.Generator, kind: int, rows: int, columns: int) -> np.ndarray:
    """Rows the selection must get right: noise about 0 or far from it, few distinct values
    (ties), sorted rows, zeros of both signs, infinities, subnormals and NaN."""
    if kind == 0:
        data = rng.normal(0.0, READ_NOISE, (rows, columns))
    elif kind == 1:
        data = rng.normal(150.0, READ_NOISE, (rows, columns))  # the middle in a crowded exponent
    elif kind == 2:
        data = rng.integers(-3, 4, (rows, columns)) * 16.0
    elif kind == 3:
        data = np.sort(rng.integers(-5, 5, (rows, columns)).astype(float), axis=1)[:, ::-1]
    elif kind == 4:
        data = rng.choice(np.array([-0.0, 0.0, 1e-40, -1e-40, np.inf, -np.inf, 3.0, -2.5]), (rows, columns))
    else:
        data = rng.normal(0.0, 1.0, (rows, columns))
        data[rng.random(data.shape) < 0.01] = np.nan
    return data.astype(np.float32)


@needs_numba
@pytest.mark.parametrize("kind", range(6))
def test_compiled_half_medians_are_numpys_median_to_the_bit(kind: int) -> None:
    rng = np.random.default_rng(40 + kind)
    for columns in (*range(1, 70), 255, 256, 1024, 1025):  # odd and even halves, odd rows
        data = _awkward_rows(rng, kind, 12, columns)
        for mine, reference in zip(_kernel_halves(data), _numpy_halves(data), strict=True):
            assert reference.dtype == np.float32
            np.testing.assert_array_equal(mine, reference, err_msg=f"{columns} columns")


@needs_numba
def test_the_other_middle_value_is_found_among_the_values_dropped() -> None:
    # An even half whose upper middle value is the smallest of its exponent's byte: the lower
    # one is among the values the first byte dropped.
    data = np.array([[-1.0, -0.5, 100.0, 200.0, 7.0, 7.0, 7.0, 7.0]], dtype=np.float32)
    left, right = _kernel_halves(data)
    assert (left.tolist(), right.tolist()) == ([49.75], [7.0])


@needs_numba
def test_split_row_offsets_is_the_same_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = _frames(np.random.default_rng(12), 4, row_sigma=READ_NOISE)[0] - 3200.0
    results = {}
    for engine in compiled.ENGINES:
        monkeypatch.setenv(compiled.ENGINE_VARIABLE, engine)
        results[engine] = split_row_offsets(frames)  # (frames, rows, columns) at once
    for mine, reference in zip(results["numba"], results["numpy"], strict=True):
        assert mine.shape == reference.shape == frames.shape[:2] and mine.dtype == reference.dtype
        np.testing.assert_array_equal(mine, reference)

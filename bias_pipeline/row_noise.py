"""Row noise: the offset each row of a CMOS frame shares, measured and removed.

A column-parallel readout adds to every row of every frame one common random offset (row
noise). Against a reference without it (a group's preliminary master, or the model at the
frame's temperature) a frame's row offsets are the medians over each row of frame minus
reference: robust to hot pixels, cosmic rays and telegraph pixels, which touch few pixels of a
row.

What read noise alone gives. In a group, each row's offset is measured twice, on the left and on
the right half of the row (:func:`split_row_offsets`): the offset is their mean, and their
difference, which row noise (common to the whole row) cannot touch, measures the read noise's
part: ``((left - right) / 2)^2`` has the expectation of the offset's variance from read noise
alone, whatever the combine method, the quantisation or the pixels' noise distribution (a
median master, for one, makes a frame's differences pile up at zero, which no closed formula
of the Gaussian case describes). Against a model (no noise of its own), a row median of ``C``
pixels of noise ``s`` scatters by ``sqrt(pi / 2) s / sqrt(C)`` (:func:`expected_row_variance`).

The rule of ``--row-correction auto`` (:func:`row_noise_significant`): a group's frames are
corrected when their row offsets' mean square exceeds the read noise's part by more than
:data:`ROW_EXCESS` (10 %) and by more than :data:`ROW_SIGNIFICANCE` (5) standard errors of their
ratio (``sqrt(4 / N)`` for ``N`` row offsets). Data without row noise then keep their products.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from .compiled import engine
from .row_kernels import half_row_medians

#: ``--row-correction`` choices.
ROW_CORRECTION_MODES = ("auto", "on", "off")
#: Excess of the row offsets' mean square over the read-noise expectation below which ``auto``
#: leaves a group alone (a fraction of the expectation).
ROW_EXCESS = 0.10
#: Standard errors of the mean square the excess must also exceed.
ROW_SIGNIFICANCE = 5.0
#: Pixels a row needs for its offset to be measured at all: in a narrower frame a row's median
#: is mostly its pixels' own signal, and removing it would remove the bias pattern itself.
MIN_ROW_PIXELS = 16
#: The variance of the median of many Gaussian values, in units of the variance of their mean.
MEDIAN_VARIANCE_FACTOR = math.pi / 2


def row_offsets(difference: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The median over each row of ``difference`` (frame minus reference).

    Parameters
    ----------
    difference
        ``(..., rows, columns)`` float array.
    valid
        ``(rows, columns)`` boolean map of the pixels to use (hot and flagged pixels False);
        all when ``None``. A row without a valid pixel gets offset 0.

    Returns
    -------
    numpy.ndarray
        ``(..., rows)`` float32 offsets.

    Examples
    --------
    >>> d = np.array([[1.0, 2.0, 30.0], [-1.0, -1.0, -1.0]])
    >>> row_offsets(d).tolist()
    [2.0, -1.0]
    """
    data = np.asarray(difference, dtype=np.float32)
    if valid is None or bool(np.all(valid)):
        finite = np.isfinite(data)
        if bool(np.all(finite)):
            return np.median(data, axis=-1).astype(np.float32)
        masked = data
    else:
        masked = np.where(np.broadcast_to(valid, data.shape), data, np.float32(np.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row: offset 0 below
        offsets = np.nanmedian(masked, axis=-1)
    return np.nan_to_num(offsets, nan=0.0).astype(np.float32)


def split_row_offsets(difference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's offset from the medians of its two halves, and the read noise's part of it.

    Parameters
    ----------
    difference
        ``(..., rows, columns)`` float array without NaN (frame minus master).

    Returns
    -------
    offsets, noise_variance
        ``(..., rows)``: ``(left + right) / 2`` and ``((left - right) / 2) ** 2`` of the halves'
        medians (the middle column of an odd row is left out). The second has the expectation
        of the first's variance without row noise; float32 and float64.

    Examples
    --------
    >>> d = np.array([[1.0, 3.0, 9.0, 5.0, 7.0]])
    >>> offsets, variance = split_row_offsets(d)
    >>> offsets.tolist(), variance.tolist()
    ([4.0], [4.0])
    """
    data = np.asarray(difference, dtype=np.float32)
    left, right = _half_medians(data, data.shape[-1] // 2)
    left, right = left.astype(np.float64), right.astype(np.float64)
    return ((left + right) / 2).astype(np.float32), ((left - right) / 2) ** 2


def _half_medians(data: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """The float32 medians of the first and of the last ``half`` values along the last axis of
    the float32 ``data``: by the compiled kernel (:mod:`bias_pipeline.row_kernels`, numpy's
    values to the bit, several times faster) unless the numpy reference path is chosen."""
    if engine() == "numba" and half > 0:
        rows = np.ascontiguousarray(data).reshape(-1, data.shape[-1])
        left = np.empty(rows.shape[0], dtype=np.float32)
        right = np.empty(rows.shape[0], dtype=np.float32)
        half_row_medians(rows.view(np.uint32), half, left, right)
        return left.reshape(data.shape[:-1]), right.reshape(data.shape[:-1])
    left = np.median(data[..., :half], axis=-1).astype(np.float32)
    right = np.median(data[..., data.shape[-1] - half :], axis=-1).astype(np.float32)
    return left, right


def expected_row_variance(noise: np.ndarray, n_frames: int | None, efficiency: float = 1.0) -> np.ndarray:
    """Variance of each row's offset that read noise alone gives, ``(rows,)`` float64.

    Parameters
    ----------
    noise
        ``(rows, columns)`` per-pixel noise of one frame [same units as the offsets]; NaN where
        unknown. Its median over the row (robust to hot and noisy pixels) stands for the row's.
    n_frames
        Frames in the reference master (the frame among them); ``None`` for a reference with no
        noise of its own (a model), then the frame's own noise only.
    efficiency
        The master's combine efficiency (1 for a mean, 1.2533 for a median).

    Returns
    -------
    numpy.ndarray
    """
    noise = np.asarray(noise, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row of NaN noise: NaN below
        typical = np.nanmedian(noise, axis=-1)
    columns = np.sum(np.isfinite(noise), axis=-1)
    factor = 1.0 if n_frames is None else 1.0 + (efficiency**2 - 2.0) / n_frames
    with np.errstate(all="ignore"):
        return np.where(columns > 0, MEDIAN_VARIANCE_FACTOR * factor * typical**2 / np.maximum(columns, 1), np.nan)


@dataclass(frozen=True)
class RowNoiseTest:
    """The test of :func:`row_noise_significant` for one group.

    Attributes
    ----------
    mean_square
        Mean square of the row offsets.
    expected
        What read noise alone gives (the mean of the read noise's parts).
    count
        Row offsets tested.
    significant
        Whether the excess passes both limits.
    """

    mean_square: float
    expected: float
    count: int
    significant: bool

    @property
    def excess_sigma(self) -> float:
        """The excess in standard errors of the mean square."""
        if self.count == 0 or not self.expected > 0:
            return math.nan
        return (self.mean_square / self.expected - 1.0) / math.sqrt(4.0 / self.count)


def row_noise_significant(sum_squares: float, sum_expected: float, count: int) -> RowNoiseTest:
    """Whether row offsets carry row noise beyond read noise (the ``auto`` rule, module docstring).

    Parameters
    ----------
    sum_squares
        Sum over frames and rows of the squared row offsets.
    sum_expected
        Sum over the same of the read noise's part (:func:`split_row_offsets`).
    count
        Number of row offsets summed.

    Returns
    -------
    RowNoiseTest

    Examples
    --------
    >>> row_noise_significant(1.05 * 1000, 1000.0, 1000).significant
    False
    >>> row_noise_significant(3.0 * 1000, 1000.0, 1000).significant
    True
    """
    if count == 0 or not sum_expected > 0:
        return RowNoiseTest(math.nan, math.nan, count, False)
    mean_square, expected = sum_squares / count, sum_expected / count
    ratio = mean_square / expected
    significant = ratio > 1.0 + ROW_EXCESS and (ratio - 1.0) > ROW_SIGNIFICANCE * math.sqrt(4.0 / count)
    return RowNoiseTest(mean_square, expected, count, bool(significant))


def frame_row_noise(mean_squares: np.ndarray, expected: float | np.ndarray) -> np.ndarray:
    """Each frame's row-noise amplitude from its row offsets against its group's master.

    A frame's offset against the master is its own row offset minus the group's mean one, so
    its mean square is ``(1 - 2/n) s_f + S / n^2 + V`` (``s_f`` its row-noise variance, ``S``
    their sum, ``V`` the read noise's part). Summed over frames that is ``(1 - 1/n) S + n V``;
    this solves for every ``s_f`` (negative estimates, noise alone, become 0). Two frames cannot
    be told apart: both get half of ``S``.

    Parameters
    ----------
    mean_squares
        ``(n,)`` each frame's mean square row offset over the rows.
    expected
        The mean over rows of what read noise alone gives, one for all frames or ``(n,)``.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` amplitudes (standard deviation of a frame's row offsets), float64.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> own = rng.normal(0, 3.0, (8, 20000))  # eight frames' row offsets, sigma 3
    >>> seen = own - own.mean(axis=0)  # against the master of the eight
    >>> np.round(frame_row_noise((seen**2).mean(axis=1), 0.0), 1).tolist()
    [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    """
    excess = np.asarray(mean_squares, dtype=np.float64) - np.asarray(expected, dtype=np.float64)
    n = excess.size
    if n < 2:
        return np.full(n, np.nan)
    total = float(excess.sum()) / (1.0 - 1.0 / n)
    if n == 2:
        own = np.full(n, total / 2.0)
    else:
        own = (excess - total / n**2) / (1.0 - 2.0 / n)
    return np.sqrt(np.maximum(own, 0.0))


def remove_row_offsets(
    frame: np.ndarray, reference: np.ndarray, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``frame`` with its row offsets against ``reference`` removed, its mean level kept.

    Each row loses its offset minus the mean offset over the rows: the row-to-row pattern goes,
    the frame's level (a dark's mean dark current, a global bias offset a verification must
    see) stays. Safe for a frame whose own signal is flat along rows and has no structure from
    row to row (a bias, a dark without gradients): whatever differs from row to row, row noise
    or a signal, goes.

    Parameters
    ----------
    frame
        ``(rows, columns)``.
    reference
        What the frame should be without row noise (the model at its temperature).
    valid
        Pixels to measure the offsets on (flagged and masked pixels False); all when ``None``.

    Returns
    -------
    corrected, offsets
        ``frame`` minus each row's offset about their mean (float32, or float64 for a float64
        frame), and the ``(rows,)`` offsets removed (mean zero).

    Examples
    --------
    >>> frame = np.array([[10.0, 11.0, 12.0], [5.0, 5.0, 50.0]])
    >>> corrected, removed = remove_row_offsets(frame, np.array([[9.0, 10.0, 11.0], [1.0, 1.0, 1.0]]))
    >>> removed.tolist(), corrected[1].tolist()
    ([-1.5, 1.5], [3.5, 3.5, 48.5])
    """
    data = np.asarray(frame)
    dtype = np.float64 if data.dtype == np.float64 else np.float32
    difference = data.astype(dtype) - np.asarray(reference, dtype=dtype)
    usable = np.isfinite(difference) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(difference))
    offsets = row_offsets(difference, usable).astype(np.float64)
    offsets -= offsets.mean()
    return data.astype(dtype) - offsets.astype(dtype)[:, None], offsets.astype(np.float32)


@dataclass(frozen=True)
class FrameRows:
    """One frame's row offsets against a reference without row noise (the model at its
    temperature), from :func:`measure_frame_rows`.

    Attributes
    ----------
    offsets
        ``(rows,)`` float64: each measured row's median of frame minus reference, less their
        mean over the measured rows (so removing them keeps the frame's level); 0 for a row
        with fewer than :data:`MIN_ROW_PIXELS` usable pixels, which is left as it is.
    measured
        ``(rows,)`` which rows were measured.
    amplitude
        The frame's row-noise amplitude: the rms of the offsets less what read noise alone
        gives in a row median (0 when the offsets are no larger; NaN without a noise map or
        with fewer than two measured rows).
    test
        The ``auto`` rule (:func:`row_noise_significant`) on this frame's offsets.
    """

    offsets: np.ndarray
    measured: np.ndarray
    amplitude: float
    test: RowNoiseTest

    @property
    def rms_removed(self) -> float:
        """The rms of the offsets (what removing them takes out of the measured rows)."""
        if not bool(self.measured.any()):
            return 0.0
        return float(np.sqrt(np.mean(self.offsets[self.measured] ** 2)))

    def removed_from(self, frame: np.ndarray) -> np.ndarray:
        """``frame`` (rows first) less each row's offset, in the frame's float type."""
        data = np.asarray(frame)
        dtype = np.float64 if data.dtype == np.float64 else np.float32
        return data.astype(dtype) - self.offsets.astype(dtype)[:, None]


def measure_frame_rows(
    difference: np.ndarray, valid: np.ndarray | None = None, noise: np.ndarray | None = None
) -> FrameRows:
    """A single frame's row offsets about their mean, its row-noise amplitude and the ``auto`` test.

    For a frame that meets a reference with no noise of its own (a model): what read noise
    alone gives is :func:`expected_row_variance` of ``noise`` over the usable pixels with
    ``n_frames=None``. The offsets are taken about their mean, so the mean square compared is
    ``sum (o_r - mean)^2`` against ``(1 - 1/R)`` times the sum of the expected variances.

    Parameters
    ----------
    difference
        ``(rows, columns)`` frame minus reference [ADU].
    valid
        Pixels to measure on (unflagged, unmasked); all when ``None``. Non-finite pixels of
        ``difference`` are left out too.
    noise
        ``(rows, columns)`` one frame's per-pixel read noise [ADU] (the model's ``READNOISE``);
        ``None``: amplitude and test unknown (NaN, not significant).

    Returns
    -------
    FrameRows

    Examples
    --------
    >>> rng = np.random.default_rng(2)
    >>> rows = rng.normal(0.0, 20.0, (400, 1))  # row noise 20 ADU
    >>> found = measure_frame_rows(rng.normal(0.0, 30.0, (400, 500)) + rows, noise=np.full((400, 500), 30.0))
    >>> bool(found.test.significant), bool(abs(found.amplitude - 20.0) < 2.0)
    (True, True)
    """
    data = np.asarray(difference, dtype=np.float32)
    usable = np.isfinite(data) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(data))
    measured = np.count_nonzero(usable, axis=-1) >= MIN_ROW_PIXELS
    raw = row_offsets(data, usable).astype(np.float64)
    offsets = np.zeros(data.shape[0], dtype=np.float64)
    count = int(np.count_nonzero(measured))
    if count:
        offsets[measured] = raw[measured] - raw[measured].mean()
    if noise is None or count < 2:
        return FrameRows(offsets, measured, math.nan, RowNoiseTest(math.nan, math.nan, count, False))
    expected = expected_row_variance(np.where(usable, noise, np.nan), None)[measured]
    if not bool(np.all(np.isfinite(expected))):
        return FrameRows(offsets, measured, math.nan, RowNoiseTest(math.nan, math.nan, count, False))
    sum_squares = float(np.sum(offsets[measured] ** 2))
    sum_expected = float(expected.sum()) * (1.0 - 1.0 / count)
    amplitude = math.sqrt(max(0.0, (sum_squares - sum_expected) / (count - 1)))
    return FrameRows(offsets, measured, amplitude, row_noise_significant(sum_squares, sum_expected, count))

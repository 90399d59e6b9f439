"""Array functions that combine a stack of frames into a master, with its noise.

Pure functions on arrays of shape ``(n_frames, rows, columns)``; the step-2 module feeds them
row blocks read from disk. Each method returns the master, the per-pixel temporal noise of the
frames (the read-noise estimate) and the master's own standard error.

- ``median``: noise is the standard deviation of the values within 5 robust sigmas of the
  median (robust to cosmic rays); the master's error is 1.2533 noise / sqrt(n), the
  efficiency of a median of Gaussian samples.
- ``mean``: noise is the sample standard deviation; error noise / sqrt(n).
- ``sigma-clip``: iterative: centre on the median of the kept values, scale 1.4826 MAD of the
  kept values (floored, see below), drop values beyond ``clip_sigma`` scales, until nothing
  changes or ``clip_iters`` passes; then the mean of the kept values. The noise is the
  standard deviation of the values within 5 robust sigmas (a 3-sigma window would cut the
  Gaussian tails and bias it low).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.4826
MEDIAN_EFFICIENCY = 1.2533  # sqrt(pi / 2): error of a median relative to a mean, large n
NOISE_WINDOW = 5.0  # robust sigmas around the centre within which the noise is measured
COMBINE_METHODS: tuple[str, ...] = ("sigma-clip", "median", "mean")


@dataclass
class Combined:
    """A combined block: ``master``, ``noise`` (per-frame temporal scatter), ``error`` (standard
    error of the master) and ``n_used`` (frames kept per pixel), all ``(rows, columns)``."""

    master: np.ndarray
    noise: np.ndarray
    error: np.ndarray
    n_used: np.ndarray


def _take(sorted_stack: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.take_along_axis(sorted_stack, index[None], axis=0)[0]


def _sorted_median(sorted_stack: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Median of ``sorted_stack[lo:hi]`` per pixel (``hi > lo``)."""
    return 0.5 * (_take(sorted_stack, (lo + hi - 1) // 2) + _take(sorted_stack, (lo + hi) // 2))


def combine_block(
    stack: np.ndarray,
    method: str = "sigma-clip",
    *,
    clip_sigma: float = 3.0,
    clip_iters: int = 5,
) -> Combined:
    """Combine ``stack`` (frames along axis 0) into a master with its noise and error.

    Parameters
    ----------
    stack
        ``(n_frames, rows, columns)`` values; not modified.
    method
        One of :data:`COMBINE_METHODS`.
    clip_sigma, clip_iters
        Threshold (in robust standard deviations) and maximum passes of ``sigma-clip``.

    Returns
    -------
    Combined
        float32 maps. With one frame, noise and error are NaN.

    Examples
    --------
    >>> stack = np.tile([10.0, 11.0, 9.0, 10.0, 10.0], (40, 1)).T.reshape(5, 4, 10)
    >>> stack[4, 0, 0] = 500.0  # a cosmic-ray hit in one frame
    >>> out = combine_block(stack, "sigma-clip")
    >>> float(out.master[0, 0]), int(out.n_used[0, 0]), float(out.master[1, 1])
    (10.0, 4, 10.0)
    >>> float(combine_block(stack, "mean").master[0, 0])
    108.0
    """
    n = stack.shape[0]
    data = np.asarray(stack, dtype=np.float32)
    if method == "mean":
        master = data.mean(axis=0, dtype=np.float64)
        noise = data.std(axis=0, ddof=1, dtype=np.float64) if n > 1 else np.full(master.shape, np.nan)
        return Combined(
            master.astype(np.float32),
            noise.astype(np.float32),
            (noise / np.sqrt(n)).astype(np.float32),
            np.full(master.shape, n, dtype=np.int32),
        )
    ordered = np.sort(data, axis=0)
    lo = np.zeros(data.shape[1:], dtype=np.intp)
    hi = np.full(data.shape[1:], n, dtype=np.intp)
    if method not in ("median", "sigma-clip"):
        raise ValueError(f"unknown combine method {method!r}; use one of {', '.join(COMBINE_METHODS)}")
    median = _sorted_median(ordered, lo, hi)
    iterations = clip_iters if method == "sigma-clip" else 1
    noise_lo, noise_hi = lo, hi
    if n >= 3:
        # Every pixel's scale is floored at the row's typical noise (median over the row's
        # pixels): the MAD of a few quantised values is coarse, 0 where most values coincide,
        # which would clip honest values. The typical noise is the standard deviation within
        # a wide window around the median, sized by the typical MAD, so a cosmic ray, a hot
        # pixel or a whole bad frame does not raise it; per row, the result does not depend on
        # how the frame is cut into blocks. A pixel noisier than typical keeps its own MAD.
        mad = _mad_sigma(ordered, median, lo, hi)
        window_lo, window_hi = _within(ordered, median, NOISE_WINDOW * np.maximum(mad, typical_noise(mad)), lo, hi)
        floor = typical_noise(_range_stats(ordered, window_lo, window_hi)[1])
        for _ in range(iterations):
            centre = _sorted_median(ordered, lo, hi)
            scale = np.maximum(_mad_sigma(ordered, centre, lo, hi), floor)
            new_lo, new_hi = _within(ordered, centre, clip_sigma * scale, lo, hi)
            if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
                break
            lo, hi = new_lo, new_hi
        # The noise is measured on a wider window: a 3-sigma clip also cuts the Gaussian tails
        # and would bias the noise low by several per cent; a cosmic ray lies far outside both.
        noise_lo, noise_hi = _within(ordered, centre, max(NOISE_WINDOW, clip_sigma) * scale, lo, hi)
    master, _ = _range_stats(ordered, lo, hi)
    _, noise = _range_stats(ordered, noise_lo, noise_hi)
    if method == "median":
        return Combined(
            median.astype(np.float32),
            noise.astype(np.float32),
            (MEDIAN_EFFICIENCY * noise / np.sqrt(n)).astype(np.float32),
            np.full(median.shape, n, dtype=np.int32),
        )
    kept = hi - lo
    return Combined(
        master.astype(np.float32),
        noise.astype(np.float32),
        (noise / np.sqrt(kept)).astype(np.float32),
        kept.astype(np.int32),
    )


def _within(
    ordered: np.ndarray, centre: np.ndarray, half_width: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Index range of the sorted values within ``centre +- half_width``, never narrower than
    the median value(s) of the current range ``lo:hi``."""
    new_lo = np.sum(ordered < (centre - half_width)[None], axis=0)
    new_hi = np.sum(ordered <= (centre + half_width)[None], axis=0)
    return np.minimum(new_lo, (lo + hi - 1) // 2), np.maximum(new_hi, (lo + hi) // 2 + 1)


def _range_stats(ordered: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation of ``ordered[lo:hi]`` per pixel (NaN std for one value)."""
    n = ordered.shape[0]
    index = np.arange(n)[:, None, None]
    inside = (index >= lo[None]) & (index < hi[None])
    count = (hi - lo).astype(np.float64)
    mean = np.where(inside, ordered, 0).sum(axis=0, dtype=np.float64) / count
    shifted = np.where(inside, ordered - mean[None], 0.0)  # centred first: no cancellation
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.where(count > 1, np.sqrt(np.sum(shifted**2, axis=0) / (count - 1)), np.nan)
    return mean, std


def typical_noise(noise: np.ndarray) -> np.ndarray:
    """Median over each row of a ``(rows, columns)`` noise map, as a ``(rows, 1)`` column."""
    with np.errstate(invalid="ignore"):
        return np.nanmedian(noise, axis=-1, keepdims=True)


def _mad_sigma(ordered: np.ndarray, centre: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """1.4826 x median absolute deviation about ``centre`` of ``ordered[lo:hi]`` per pixel."""
    n = ordered.shape[0]
    index = np.arange(n)[:, None, None]
    inside = (index >= lo[None]) & (index < hi[None])
    deviation = np.where(inside, np.abs(ordered - centre[None]), np.inf)
    deviation.sort(axis=0)
    return MAD_TO_SIGMA * _sorted_median(deviation, np.zeros_like(lo), hi - lo)


def bytes_per_stacked_value(method: str) -> int:
    """Working memory per frame-pixel of a block, for choosing the block height."""
    return 8 if method == "mean" else 40

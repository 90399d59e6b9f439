"""Array functions that combine a stack of frames into a master, with its noise.

Each method returns the master, the per-pixel temporal noise of the frames (the read-noise
estimate), the master's own standard error and the number of frames kept per pixel.

- ``median``: noise is the standard deviation of the values within 5 robust sigmas of the
  median (robust to cosmic rays); the master's error is 1.2533 noise / sqrt(n), the
  efficiency of a median of Gaussian samples.
- ``mean``: noise is the sample standard deviation; error noise / sqrt(n).
- ``sigma-clip``: iterative: centre on the median of the kept values, scale 1.4826 MAD of the
  kept values floored at the row's typical noise (see :func:`clip_floor`), drop values beyond
  ``clip_sigma`` scales, until nothing changes or ``clip_iters`` passes; then the mean of the
  kept values. The noise is the standard deviation of the values within 5 scales of the
  centre (a 3-sigma window would cut the Gaussian tails and bias it low).

Two implementations give the same result:

- :func:`combine_block` is the straightforward one, written for clarity: ``np.sort`` and the
  clipping arithmetic on every pixel. Tests and ``benchmarks/compare_combine.py`` use it.
- :func:`combine_sorted` is what the pipeline runs. Its input is already sorted along the
  frames axis (:func:`sort_frames`: a sorting network of element-wise ``minimum``/``maximum``
  on whole frames, several times faster than ``np.sort`` or ``np.median`` across tens of
  frames). Almost every pixel has all its values within the clip window of its median; for
  those the clip keeps everything, so the master is the plain mean and the noise the plain
  standard deviation, computed for all pixels at once. Only the few pixels with a value
  outside the window (cosmic rays, hot and noisy pixels, a bad frame) go through the
  iterative clip, and that uses the very code of :func:`combine_block`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The MAD to a normal's sigma, as the combine has always scaled it. The combine keeps its own
# float32 kernels on frames already sorted (mad_sigma_sorted, _mad_sigma) instead of
# astropy.stats.mad_std: they pick the k-th deviation from the sorted slabs without another
# sort or a float64 copy of every block, which is the combine's fast path; and mad_std's factor,
# 1 / Phi^-1(3/4) = 1.482602..., would change the masters' noise maps in their last bits.
MAD_TO_SIGMA = 1.4826
MEDIAN_EFFICIENCY = 1.2533  # sqrt(pi / 2): error of a median relative to a mean, large n
NOISE_WINDOW = 5.0  # robust sigmas around the centre within which the noise is measured
COMBINE_METHODS: tuple[str, ...] = ("sigma-clip", "median", "mean")
NETWORK_MAX_FRAMES = 64  # above this, np.sort beats a sorting network of whole frames


@dataclass
class Combined:
    """A combined block: ``master``, ``noise`` (per-frame temporal scatter), ``error`` (standard
    error of the master) and ``n_used`` (frames kept per pixel), all ``(rows, columns)``; and
    ``typical_noise``, the median of ``noise`` when known (NaN otherwise)."""

    master: np.ndarray
    noise: np.ndarray
    error: np.ndarray
    n_used: np.ndarray
    #: The median of ``noise`` (NaN left out), when the combiner has measured it already.
    typical_noise: float = math.nan
    #: The rms row-noise amplitude of the frames removed before combining [ADU] (0: none
    #: removed): the master still holds their mean row offsets, ``row_noise / sqrt(n)`` a row.
    row_noise: float = 0.0
    #: ``(2, rows, columns)`` float32: each pixel's two-level statistics ``B / sigma^2`` and
    #: ``W / sigma^2`` (:func:`bias_pipeline.telegraph.level_statistics`); ``None`` when not measured.
    levels: np.ndarray | None = None


# ----------------------------------------------------------------------------- sorting
@functools.lru_cache(maxsize=64)
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort for ``n`` wires.

    Applying ``x[i], x[j] = min(x[i], x[j]), max(x[i], x[j])`` in order sorts any ``n``
    values. About ``n log2(n)^2 / 4`` comparators (59 for 15).

    >>> sorting_network(3)
    ((0, 1), (0, 2), (1, 2))
    """
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def sort_frames(stack: np.ndarray) -> list[np.ndarray]:
    """Sort ``stack`` along axis 0 in place; return its frames in ascending order.

    Up to :data:`NETWORK_MAX_FRAMES` frames, a sorting network of element-wise
    ``np.minimum``/``np.maximum`` over whole frames (vectorised, no per-pixel calls); the
    returned list then holds views of ``stack`` in sorted order but ``stack`` itself is left
    in an unspecified order. Above that, ``ndarray.sort(axis=0)``.

    Parameters
    ----------
    stack
        ``(n_frames, rows, columns)`` array without NaN; overwritten.

    Returns
    -------
    list of numpy.ndarray
        ``n_frames`` arrays ``(rows, columns)``, element-wise ascending.

    Examples
    --------
    >>> stack = np.array([[[3, 1]], [[1, 2]], [[2, 0]]], dtype=np.uint16)
    >>> [s.tolist() for s in sort_frames(stack)]
    [[[1, 0]], [[2, 1]], [[3, 2]]]
    """
    n = stack.shape[0]
    if n > NETWORK_MAX_FRAMES:
        stack.sort(axis=0)
        return list(stack)
    slabs = list(stack)
    if n < 2:
        return slabs
    scratch = np.empty_like(slabs[0])
    for i, j in sorting_network(n):
        np.minimum(slabs[i], slabs[j], out=scratch)
        np.maximum(slabs[i], slabs[j], out=slabs[j])
        # The minimum now lives in the scratch buffer; the old frame i becomes the scratch.
        slabs[i], scratch = scratch, slabs[i]
    return slabs


def _sorted_median_slabs(slabs: Sequence[np.ndarray]) -> np.ndarray:
    """Median of sorted frames, exactly as ``np.median`` gives it, float32."""
    n = len(slabs)
    if n % 2:
        return slabs[n // 2].astype(np.float32)
    return (slabs[n // 2 - 1].astype(np.float32) + slabs[n // 2]) * np.float32(0.5)


#: Pixels a "typical noise" is taken over at least: a frame narrower than this pools that many
#: rows (see :func:`pool_rows`), so that a row of one or three pixels does not set the floor alone.
MIN_FLOOR_PIXELS = 64


def quantisation_floor(quantum: float) -> np.float32:
    """The noise of rounding to steps of ``quantum``, ``quantum / sqrt(12)``: the least a noise
    estimate can mean. In a frame of a few pixels the row's typical noise is that of the pixel
    itself, and five quantised values that happen to coincide would make a one-step difference
    infinitely many sigmas.

    >>> round(float(quantisation_floor(16)), 3), float(quantisation_floor(0))
    (4.619, 0.0)
    """
    return np.float32(quantum / math.sqrt(12.0))


def pool_rows(columns: int) -> int:
    """Rows whose pixels share one typical noise: 1 for frames of :data:`MIN_FLOOR_PIXELS` columns
    or more, more for narrower frames. Pools start at multiples of this from the first row, so
    a block that starts at such a multiple gives every pixel the same floor as the whole frame.

    >>> pool_rows(2048), pool_rows(64), pool_rows(3), pool_rows(1)
    (1, 1, 22, 64)
    """
    return max(1, math.ceil(MIN_FLOOR_PIXELS / max(1, columns)))


def typical_noise(noise: np.ndarray, pool: int = 1) -> np.ndarray:
    """Median over each row (or each ``pool`` rows) of a ``(rows, columns)`` map, NaN left out,
    as a ``(rows, 1)`` column.

    >>> typical_noise(np.array([[1.0, 5.0, 2.0], [np.nan, 4.0, 3.0]])).ravel().tolist()
    [2.0, 3.5]
    >>> typical_noise(np.array([[1.0], [5.0], [2.0], [7.0]]), pool=3).ravel().tolist()
    [2.0, 2.0, 2.0, 7.0]
    """
    if pool > 1:
        rows = noise.shape[0]
        out = np.empty((rows, 1), dtype=np.asarray(noise).dtype)
        for start in range(0, rows, pool):
            block = np.asarray(noise[start : start + pool]).reshape(1, -1)
            out[start : start + pool] = typical_noise(block)
        return out
    # By a sort, not np.median: np.partition slows down several times on the many equal
    # values of quantised data (a MAD map has a dozen distinct values), and np.nanmedian loops
    # over the rows in Python. Sorting puts NaN last, so the median of a row's `count` finite
    # values sits in the middle of its first `count` entries (the two middle ones are the same
    # entry for an odd count).
    noise = np.asarray(noise)
    ordered = np.sort(noise, axis=-1)
    count = (~np.isnan(noise)).sum(axis=-1, keepdims=True)
    low = np.take_along_axis(ordered, np.maximum(count - 1, 0) // 2, axis=-1)
    high = np.take_along_axis(ordered, count // 2 - (count == 0), axis=-1)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, 0.5 * (low + high), np.nan).astype(noise.dtype)


def _kth_deviation(deviations: Sequence[np.ndarray], k: int) -> np.ndarray:
    """k-th smallest (1-based) of per-pixel deviations from the median of sorted values.

    The k values nearest the median are k consecutive sorted values, so the answer is the
    smallest, over windows of k consecutive values, of the larger deviation at the window's
    two ends: ``n - k + 1`` element-wise comparisons instead of a sort.
    """
    best = np.maximum(deviations[0], deviations[k - 1])
    edge = np.empty_like(best)
    for start in range(1, len(deviations) - k + 1):
        np.maximum(deviations[start], deviations[start + k - 1], out=edge)
        np.minimum(best, edge, out=best)
    return best


def mad_sigma_sorted(slabs: Sequence[np.ndarray], median: np.ndarray) -> np.ndarray:
    """1.4826 x median absolute deviation of sorted frames about their median, float32.

    Bit for bit what :func:`combine_block` computes for the first clip pass.

    >>> slabs = [np.array([v], dtype=np.float32) for v in (1, 2, 4, 9)]
    >>> bool(mad_sigma_sorted(slabs, np.array([3.0], dtype=np.float32))[0] == np.float32(1.4826) * np.float32(1.5))
    True
    """
    n = len(slabs)
    deviations = [np.abs(slab.astype(np.float32) - median) for slab in slabs]
    if n % 2:
        mad = _kth_deviation(deviations, n // 2 + 1)
    else:
        mad = np.float32(0.5) * (_kth_deviation(deviations, n // 2) + _kth_deviation(deviations, n // 2 + 1))
    return MAD_TO_SIGMA * mad


# ----------------------------------------------------------------------------- the reference
def combine_block(
    stack: np.ndarray,
    method: str = "sigma-clip",
    *,
    clip_sigma: float = 3.0,
    clip_iters: int = 5,
    pool: int = 1,
    quantum: float = 0.0,
) -> Combined:
    """Combine ``stack`` (frames along axis 0) into a master with its noise and error.

    The straightforward implementation; :func:`combine_sorted` gives the same result faster.

    Parameters
    ----------
    stack
        ``(n_frames, rows, columns)`` values; not modified.
    method
        One of :data:`COMBINE_METHODS`.
    clip_sigma, clip_iters
        Threshold (in robust standard deviations) and maximum passes of ``sigma-clip``.
    pool
        Rows sharing one clip floor (:func:`pool_rows`); the stack's first row starts a pool.
    quantum
        The values' quantisation step (16 for 12-bit values stored x16, 1 for integers, 0 for
        floats): no clip scale falls below its noise, ``quantum / sqrt(12)`` (see
        :func:`quantisation_floor`).

    Returns
    -------
    Combined
        float32 maps. With one frame, noise and error are NaN.

    Raises
    ------
    ValueError
        For an unknown method.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> stack = rng.normal(100.0, 2.0, (7, 4, 50)).round()
    >>> stack[3, 0, 0] = 500.0  # a cosmic-ray hit in one frame
    >>> out = combine_block(stack, "sigma-clip")
    >>> int(out.n_used[0, 0]), bool(abs(out.master[0, 0] - 100) < 5)
    (6, True)
    >>> float(combine_block(stack, "mean").master[0, 0]) > 150
    True
    """
    if method not in COMBINE_METHODS:
        raise ValueError(f"unknown combine method {method!r}; use one of {', '.join(COMBINE_METHODS)}")
    n = stack.shape[0]
    data = np.asarray(stack, dtype=np.float32)
    if method == "mean" or n < 3:
        mean = data.mean(axis=0, dtype=np.float64)
        noise = data.std(axis=0, ddof=1, dtype=np.float64) if n > 1 else np.full(mean.shape, np.nan)
        master = np.median(data, axis=0) if method == "median" else mean
        efficiency = MEDIAN_EFFICIENCY if method == "median" else 1.0
        return Combined(
            master.astype(np.float32),
            noise.astype(np.float32),
            (efficiency * noise / np.sqrt(n)).astype(np.float32),
            np.full(mean.shape, n, dtype=np.int32),
        )
    ordered = np.sort(data, axis=0)
    median = _sorted_median_slabs(ordered)
    last = np.ascontiguousarray(np.moveaxis(ordered, 0, -1))  # the helpers want frames last
    full_lo = np.zeros(median.shape, dtype=np.intp)
    full_hi = np.full(median.shape, n, dtype=np.intp)
    mad = _mad_sigma(last, median, full_lo, full_hi)
    half = np.float32(NOISE_WINDOW) * typical_noise(mad, pool)
    lo, hi = _within(last, median, half, full_lo, full_hi)
    floor = np.maximum(_finite_floor(typical_noise(_range_stats(last, lo, hi)[1], pool)), quantisation_floor(quantum))
    master, noise, kept = clip_pixels(last, floor, method, clip_sigma=clip_sigma, clip_iters=clip_iters)
    return _finish(master, noise, kept, method)


def clip_floor(
    slabs: Sequence[np.ndarray], median: np.ndarray, std: np.ndarray, mad: np.ndarray, pool: int = 1
) -> np.ndarray:
    """The row's typical noise, below which no pixel's clip scale may fall, ``(rows, 1)``.

    Per row: the median over its pixels of the standard deviation of the values within
    5 typical robust sigmas (the row's median of the pixels' MAD) of the pixel's median. The
    MAD resists one bad value in three, where an interquartile range would not. A per-pixel MAD of
    a few quantised values is coarse, and 0 where most values coincide, which would clip
    honest values; a cosmic ray, a hot pixel or a whole bad frame does not raise this floor,
    and, per row, it does not depend on how the frame is cut into blocks.

    Parameters
    ----------
    slabs
        Sorted frames (``n >= 3``), each ``(rows, columns)``.
    median
        Their per-pixel median.
    std
        Their per-pixel standard deviation over all frames (used where every value lies
        within the window).
    mad
        Their per-pixel MAD in sigmas (:func:`mad_sigma_sorted`).
    pool
        Rows sharing one floor (:func:`pool_rows`; a narrow frame pools rows).

    Returns
    -------
    numpy.ndarray
        float32 ``(rows, 1)``; 0 where a row has no spread at all.
    """
    half = np.float32(NOISE_WINDOW) * typical_noise(mad, pool)
    outside = np.flatnonzero((slabs[0] < median - half) | (slabs[-1] > median + half))
    windowed = std.copy()
    half_flat = np.broadcast_to(half, median.shape).reshape(-1)
    for chunk in _chunks(outside, len(slabs)):
        sub = _pixels_frames_last(slabs, chunk)
        full = np.zeros(sub.shape[0], dtype=np.intp)
        lo, hi = _within(sub, median.reshape(-1).take(chunk), half_flat.take(chunk), full, full + len(slabs))
        windowed.reshape(-1)[chunk] = _range_stats(sub, lo, hi)[1]
    return _finite_floor(typical_noise(windowed, pool))


def _finite_floor(floor: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(floor), floor, 0.0).astype(np.float32)


CLIP_CHUNK_VALUES = 2**19  # values per slow-path chunk: bounds its temporaries (~40 B a value)


def _chunks(flat_index: np.ndarray, n_frames: int) -> list[np.ndarray]:
    """``flat_index`` in pieces of at most :data:`CLIP_CHUNK_VALUES` frame values, so that a
    block where every pixel needs the slow path (a bad frame) stays within its memory."""
    size = max(1, CLIP_CHUNK_VALUES // max(1, n_frames))
    return [flat_index[start : start + size] for start in range(0, flat_index.size, size)]


def _pixels_frames_last(slabs: Sequence[np.ndarray], flat_index: np.ndarray) -> np.ndarray:
    """The values of the pixels at ``flat_index`` of every frame, float32 ``(pixels, frames)``."""
    return np.stack([slab.reshape(-1).take(flat_index) for slab in slabs], axis=-1).astype(np.float32)


def clip_pixels(
    ordered: np.ndarray, floor: np.ndarray, method: str, *, clip_sigma: float = 3.0, clip_iters: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip sorted values pixel by pixel: master, noise and kept count (``sigma-clip``, ``median``).

    Each pass: centre = median of the kept values, scale = 1.4826 MAD of the kept values
    (at least ``floor``), keep the values within ``clip_sigma`` scales; a pixel stops when
    its kept range no longer changes (later passes would repeat it), all after
    ``clip_iters`` passes. The noise is the standard deviation within
    ``max(5, clip_sigma)`` scales of the last centre.

    Parameters
    ----------
    ordered
        ``(..., n_frames)`` float32, sorted along the last axis, ``n_frames >= 3``.
    floor
        Lowest clip scale per pixel (broadcastable to ``ordered.shape[:-1]``).
    method
        ``"sigma-clip"`` (iterate) or ``"median"`` (one pass, for the noise window only).
    clip_sigma, clip_iters
        Threshold and maximum passes.

    Returns
    -------
    master, noise, kept
        The clipped mean (``sigma-clip``) or the median, the noise, and frames kept.
    """
    shape = ordered.shape[:-1]
    n = ordered.shape[-1]
    values = ordered.reshape(-1, n)
    floor = np.broadcast_to(floor, shape).reshape(-1)
    lo = np.zeros(values.shape[0], dtype=np.intp)
    hi = np.full(values.shape[0], n, dtype=np.intp)
    centre = np.empty(values.shape[0], dtype=np.float32)
    scale = np.empty(values.shape[0], dtype=np.float32)
    active = np.arange(values.shape[0])
    for _ in range(clip_iters if method == "sigma-clip" else 1):
        sub, sub_lo, sub_hi = values[active], lo[active], hi[active]
        sub_centre = _sorted_median(sub, sub_lo, sub_hi)
        sub_scale = np.maximum(_mad_sigma(sub, sub_centre, sub_lo, sub_hi), floor[active])
        centre[active] = sub_centre
        scale[active] = sub_scale
        new_lo, new_hi = _within(sub, sub_centre, clip_sigma * sub_scale, sub_lo, sub_hi)
        changed = (new_lo != sub_lo) | (new_hi != sub_hi)
        active = active[changed]
        lo[active] = new_lo[changed]
        hi[active] = new_hi[changed]
        if not active.size:
            break
    noise_lo, noise_hi = _within(values, centre, max(NOISE_WINDOW, clip_sigma) * scale, lo, hi)
    _, noise = _range_stats(values, noise_lo, noise_hi)
    if method == "median":
        master = _sorted_median(values, np.zeros_like(lo), np.full_like(hi, n))
        return master.reshape(shape), noise.reshape(shape), np.full(shape, n)
    mean, _ = _range_stats(values, lo, hi)
    return mean.reshape(shape), noise.reshape(shape), (hi - lo).reshape(shape)


def _finish(master: np.ndarray, noise: np.ndarray, kept: np.ndarray, method: str) -> Combined:
    efficiency = MEDIAN_EFFICIENCY if method == "median" else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        error = efficiency * np.asarray(noise, dtype=np.float32) / np.sqrt(kept.astype(np.float32))
    return Combined(
        np.asarray(master, dtype=np.float32),
        np.asarray(noise, dtype=np.float32),
        error.astype(np.float32),
        np.asarray(kept, dtype=np.int32),
    )


# ----------------------------------------------------------------------------- the fast path
def combine_sorted(
    slabs: Sequence[np.ndarray],
    method: str = "sigma-clip",
    *,
    clip_sigma: float = 3.0,
    clip_iters: int = 5,
    pool: int = 1,
    quantum: float = 0.0,
) -> Combined:
    """Combine frames already sorted along the frames axis; same result as :func:`combine_block`.

    Parameters
    ----------
    slabs
        ``n_frames`` arrays ``(rows, columns)``, element-wise ascending (from
        :func:`sort_frames`; for ``mean`` any order), any integer or float dtype.
    method
        One of :data:`COMBINE_METHODS`.
    clip_sigma, clip_iters
        Threshold and maximum passes of ``sigma-clip``.
    pool, quantum
        Rows sharing one clip floor, and the values' quantisation step (see :func:`combine_block`).

    Returns
    -------
    Combined
        float32 maps.

    Raises
    ------
    ValueError
        For an unknown method.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> stack = rng.normal(100.0, 2.0, (7, 4, 50)).round().astype(np.uint16)
    >>> stack[3, 0, 0] = 500
    >>> fast = combine_sorted(sort_frames(stack.copy()))
    >>> slow = combine_block(stack)
    >>> bool(np.allclose(fast.master, slow.master, rtol=1e-6) and (fast.n_used == slow.n_used).all())
    True
    """
    if method not in COMBINE_METHODS:
        raise ValueError(f"unknown combine method {method!r}; use one of {', '.join(COMBINE_METHODS)}")
    n = len(slabs)
    shape = slabs[0].shape
    # Sums of integers below 2**16 are exact in float32 up to 256 frames; float input or more
    # frames sum in float64.
    accumulator = np.float32 if n <= 256 and slabs[0].dtype.kind in "ui" else np.float64
    total = np.zeros(shape, dtype=accumulator)
    for slab in slabs:
        np.add(total, slab, out=total)
    mean = (total / n).astype(np.float32)
    if n > 1:
        squares = np.zeros(shape, dtype=accumulator)
        deviation = np.empty(shape, dtype=np.float32)
        for slab in slabs:
            np.subtract(slab, mean, out=deviation)
            np.multiply(deviation, deviation, out=deviation)
            np.add(squares, deviation, out=squares)
        std = np.sqrt(squares / (n - 1)).astype(np.float32)
    else:
        std = np.full(shape, np.nan, dtype=np.float32)
    kept = np.full(shape, n, dtype=np.int32)
    if method == "mean":
        return _finish(mean, std, kept, method)
    median = _sorted_median_slabs(slabs)
    if n < 3:
        return _finish(median if method == "median" else mean, std, kept, method)
    mad = mad_sigma_sorted(slabs, median)
    floor = np.maximum(clip_floor(slabs, median, std, mad, pool), quantisation_floor(quantum))
    # A pixel whose values all lie within the first pass's window keeps them all: its master
    # is the plain mean (or the median) and its noise the plain standard deviation. The
    # window is computed exactly as clip_pixels computes it, so the two agree bit for bit.
    scale = np.maximum(mad, floor)
    half = (clip_sigma if method == "sigma-clip" else max(NOISE_WINDOW, clip_sigma)) * scale
    dirty = np.flatnonzero((slabs[0] < median - half) | (slabs[-1] > median + half))
    master = mean if method == "sigma-clip" else median
    floor_flat = np.broadcast_to(floor, shape).reshape(-1)
    for chunk in _chunks(dirty, n):
        sub_master, sub_noise, sub_kept = clip_pixels(
            _pixels_frames_last(slabs, chunk),
            floor_flat.take(chunk),
            method,
            clip_sigma=clip_sigma,
            clip_iters=clip_iters,
        )
        master.reshape(-1)[chunk] = sub_master
        std.reshape(-1)[chunk] = sub_noise
        kept.reshape(-1)[chunk] = sub_kept
    return _finish(master, std, kept, method)


# ----------------------------------------------------------------------------- helpers
def _take(sorted_values: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.take_along_axis(sorted_values, index[..., None], axis=-1)[..., 0]


def _sorted_median(sorted_values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Median of ``sorted_values[..., lo:hi]`` per pixel (``hi > lo``)."""
    return 0.5 * (_take(sorted_values, (lo + hi - 1) // 2) + _take(sorted_values, (lo + hi) // 2))


def _within(
    ordered: np.ndarray, centre: np.ndarray, half_width: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Index range of the sorted values (frames last) within ``centre +- half_width``, never
    narrower than the median value(s) of the current range ``lo:hi``."""
    new_lo = np.sum(ordered < (centre - half_width)[..., None], axis=-1)
    new_hi = np.sum(ordered <= (centre + half_width)[..., None], axis=-1)
    return np.minimum(new_lo, (lo + hi - 1) // 2), np.maximum(new_hi, (lo + hi) // 2 + 1)


def _inside(ordered: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    index = np.arange(ordered.shape[-1])
    return (index >= lo[..., None]) & (index < hi[..., None])


def _range_stats(ordered: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation of ``ordered[..., lo:hi]`` per pixel (NaN std for one value)."""
    inside = _inside(ordered, lo, hi)
    count = (hi - lo).astype(np.float64)
    mean = np.where(inside, ordered, 0).sum(axis=-1, dtype=np.float64) / count
    shifted = np.where(inside, ordered - mean[..., None], 0.0)  # centred first: no cancellation
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.where(count > 1, np.sqrt(np.sum(shifted**2, axis=-1) / (count - 1)), np.nan)
    return mean, std


def _mad_sigma(ordered: np.ndarray, centre: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """1.4826 x median absolute deviation about ``centre`` of ``ordered[..., lo:hi]`` per pixel."""
    deviation = np.where(_inside(ordered, lo, hi), np.abs(ordered - centre[..., None]), np.inf)
    deviation.sort(axis=-1)
    return MAD_TO_SIGMA * _sorted_median(deviation, np.zeros_like(lo), hi - lo)


def bytes_per_frame_pixel(itemsize: int) -> int:
    """Working memory per frame-pixel of a block: the read buffer, its sorted copy and the
    float32 deviations from the median (the slow path works in chunks of bounded size)."""
    return 2 * itemsize + 4


BYTES_PER_PIXEL_MAPS = 128  # the per-pixel maps of one block (master, noise, sums, the two-level statistics)

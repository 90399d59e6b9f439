"""The combine of one row block as compiled kernels: the whole of
:func:`~bias_pipeline.combine.combine_sorted` and the frame statistics of the block combiner,
fused per pixel while the block is in cache.

One call of :func:`combine_block_compiled` does what the numpy path does in a dozen passes
over the block: undo the file's byte order and BZERO, sort each pixel's values, take the
median, mean, standard deviation and MAD, the rows' typical noise, the clip floor, the
iterative clip of the few pixels that need it, the master's error, and for every frame the
count of its pixels far from the master and the sums of its differences from it.

The arithmetic is the numpy path's, operation for operation and in the same float types
(float32 where it works in float32, float64 where it sums in float64), so the masters'
medians and kept counts are bit-identical to it and means and noise agree to float32
rounding (``tests/test_combine_kernels.py``; a float64 sum may be grouped differently from
numpy's pairwise summation). The numpy path stays the reference
(:mod:`bias_pipeline.compiled`).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .combine import (
    COMBINE_METHODS,
    MAD_TO_SIGMA,
    MEDIAN_EFFICIENCY,
    NETWORK_MAX_FRAMES,
    NOISE_WINDOW,
    sorting_network,
)
from .compiled import kernel

#: Method codes the kernels take (a string cannot cross into them cheaply).
METHOD_CODES = {name: code for code, name in enumerate(COMBINE_METHODS)}
_SIGMA_CLIP, _MEDIAN, _MEAN = (METHOD_CODES[m] for m in ("sigma-clip", "median", "mean"))
CHUNK_VALUES = 8192  # values of a chunk of pixels (x frames) sorted together: 16-32 KB, in L1 cache

_MAD = np.float32(MAD_TO_SIGMA)
_HALF = np.float32(0.5)


@kernel
def _decode(value, swapped):  # pragma: no cover - compiled
    """A stored big-endian int16 + BZERO 32768 value as uint16 (``swapped``), else as it is."""
    if swapped:
        v = np.uint16(value)
        return np.uint16(((v >> np.uint16(8)) | (v << np.uint16(8))) ^ np.uint16(0x8000))
    return value


@kernel
def _kth_window(deviations, k, count, out):  # pragma: no cover - compiled
    """Per pixel of the chunk (``count`` of them): the ``k``-th smallest (1-based) of the
    deviations of sorted values from their median: the smallest, over windows of ``k``
    consecutive values, of the larger deviation at the window's ends
    (``combine._kth_deviation``)."""
    n = deviations.shape[0]
    first_row = deviations[0, :count]
    last_row = deviations[k - 1, :count]
    for p in range(count):
        out[p] = max(first_row[p], last_row[p])
    for start in range(1, n - k + 1):
        low_row = deviations[start, :count]
        high_row = deviations[start + k - 1, :count]
        for p in range(count):
            out[p] = min(out[p], max(low_row[p], high_row[p]))


@kernel
def _sort_and_moments(
    raw, swapped, network, wide, method, chunk, ordered, median, mean, std, mad
):  # pragma: no cover - compiled
    """Chunk by chunk of pixels (so that a chunk's values stay in the first-level cache): the
    values decoded into ``ordered[frame, pixel]``, sorted along the frames by the sorting
    ``network`` applied to the whole chunk at once (vectorised over pixels, as
    ``combine.sort_frames`` does over whole frames), then each pixel's median, mean,
    standard deviation and (3+ frames) MAD sigma, in the numpy path's types (float32 sums of
    integers up to 256 frames, else float64). Every loop runs along a frame's row of pixels,
    which the compiler vectorises."""
    n, height, width = raw.shape
    pixels = height * width
    flat = raw.reshape(n, pixels)
    total32 = np.empty(chunk, dtype=np.float32)
    total64 = np.empty(chunk, dtype=np.float64)
    deviations = np.empty((n, chunk), dtype=np.float32)
    low = np.empty(chunk, dtype=np.float32)
    high = np.empty(chunk, dtype=np.float32)
    column = np.empty(n, dtype=ordered.dtype)
    for first in range(0, pixels, chunk):
        stop = min(pixels, first + chunk)
        count = stop - first
        for k in range(n):
            source = flat[k, first:stop]
            target = ordered[k, first:stop]
            for p in range(count):
                target[p] = _decode(source[p], swapped)
        if network.shape[0] > 0:
            for c in range(network.shape[0]):
                row_i = ordered[network[c, 0], first:stop]
                row_j = ordered[network[c, 1], first:stop]
                for p in range(count):
                    a = row_i[p]
                    b = row_j[p]
                    row_i[p] = min(a, b)
                    row_j[p] = max(a, b)
        elif n > 1:  # more frames than a network is worth: each pixel's values sorted alone
            for p in range(first, stop):
                for k in range(n):
                    column[k] = ordered[k, p]
                column.sort()
                for k in range(n):
                    ordered[k, p] = column[k]
        chunk_mean = mean[first:stop]
        if wide:
            total64[:count] = 0.0
            for k in range(n):
                row = ordered[k, first:stop]
                for p in range(count):
                    total64[p] += np.float64(row[p])
            for p in range(count):
                chunk_mean[p] = np.float32(total64[p] / n)
        else:
            total32[:count] = 0.0
            for k in range(n):
                row = ordered[k, first:stop]
                for p in range(count):
                    total32[p] += np.float32(row[p])
            for p in range(count):
                chunk_mean[p] = np.float32(total32[p] / np.float32(n))
        chunk_std = std[first:stop]
        if n > 1 and wide:
            total64[:count] = 0.0
            for k in range(n):
                row = ordered[k, first:stop]
                for p in range(count):
                    d = np.float32(np.float32(row[p]) - chunk_mean[p])
                    total64[p] += np.float64(np.float32(d * d))
            for p in range(count):
                chunk_std[p] = np.float32(math.sqrt(total64[p] / (n - 1)))
        elif n > 1:
            total32[:count] = 0.0
            for k in range(n):
                row = ordered[k, first:stop]
                for p in range(count):
                    d = np.float32(np.float32(row[p]) - chunk_mean[p])
                    total32[p] += np.float32(d * d)
            for p in range(count):
                chunk_std[p] = np.float32(np.sqrt(np.float32(total32[p] / np.float32(n - 1))))
        else:
            chunk_std[:] = np.nan
        if method == _MEAN:
            continue
        chunk_median = median[first:stop]
        if n % 2:
            row = ordered[n // 2, first:stop]
            for p in range(count):
                chunk_median[p] = np.float32(row[p])
        else:
            row = ordered[n // 2 - 1, first:stop]
            next_row = ordered[n // 2, first:stop]
            for p in range(count):
                chunk_median[p] = (np.float32(row[p]) + np.float32(next_row[p])) * _HALF
        if n < 3:
            continue
        for k in range(n):
            row = ordered[k, first:stop]
            deviation_row = deviations[k, :count]
            for p in range(count):
                deviation_row[p] = abs(np.float32(row[p]) - chunk_median[p])
        chunk_mad = mad[first:stop]
        if n % 2:
            _kth_window(deviations, n // 2 + 1, count, low)
            for p in range(count):
                chunk_mad[p] = _MAD * low[p]
        else:
            _kth_window(deviations, n // 2, count, low)
            _kth_window(deviations, n // 2 + 1, count, high)
            for p in range(count):
                chunk_mad[p] = _MAD * (_HALF * (low[p] + high[p]))


@kernel
def _kth_deviation_pair(values, lo, hi, centre, first, second):  # pragma: no cover - compiled
    """The ``first``-th and ``second``-th (0-based, ``first <= second``) smallest of
    ``|float32(values[i]) - centre|`` over sorted ``values[lo:hi]``.

    Deviations of sorted values from any centre fall, then rise: merging outward from the
    first value at or above the centre picks them in ascending order without a sort.
    """
    split = lo
    while split < hi and np.float32(values[split]) < centre:
        split += 1
    left = split - 1
    right = split
    found_first = np.float32(0.0)
    result = np.float32(0.0)
    for rank in range(second + 1):
        take_left = False
        if right >= hi:
            take_left = True
        elif left >= lo:
            take_left = abs(np.float32(values[left]) - centre) < abs(np.float32(values[right]) - centre)
        if take_left:
            result = abs(np.float32(values[left]) - centre)
            left -= 1
        else:
            result = abs(np.float32(values[right]) - centre)
            right += 1
        if rank == first:
            found_first = result
    return found_first, result


@kernel
def _mad_sigma(values, lo, hi, centre):  # pragma: no cover - compiled
    """1.4826 x the median absolute deviation of sorted ``values[lo:hi]`` about ``centre``, float32."""
    count = hi - lo
    low, high = _kth_deviation_pair(values, lo, hi, centre, (count - 1) // 2, count // 2)
    return _MAD * ((low + high) * _HALF)


@kernel
def _range_std(values, lo, hi):  # pragma: no cover - compiled
    """Mean and sample standard deviation (NaN for one value) of ``values[lo:hi]``, float64."""
    count = hi - lo
    total = 0.0
    for i in range(lo, hi):
        total += np.float64(np.float32(values[i]))
    mean = total / count
    if count < 2:
        return mean, np.nan
    squares = 0.0
    for i in range(lo, hi):
        shifted = np.float64(np.float32(values[i])) - mean
        squares += shifted * shifted
    return mean, math.sqrt(squares / (count - 1))


@kernel
def _within(values, centre, half_width, lo, hi):  # pragma: no cover - compiled
    """Index range of sorted ``values`` within ``centre +- half_width``, never narrower than the
    median value(s) of ``lo:hi`` (numpy path: ``combine._within``)."""
    low_edge = np.float32(centre - half_width)
    high_edge = np.float32(centre + half_width)
    new_lo = 0
    new_hi = 0
    for i in range(values.shape[0]):
        v = np.float32(values[i])
        if v < low_edge:
            new_lo += 1
        if v <= high_edge:
            new_hi += 1
    return min(new_lo, (lo + hi - 1) // 2), max(new_hi, (lo + hi) // 2 + 1)


@kernel
def _order_key(bits):  # pragma: no cover - compiled
    """A float32's bits as an unsigned integer that orders as the floats do (no NaN)."""
    if bits & np.uint32(0x80000000):
        return np.uint32(~bits)
    return np.uint32(bits | np.uint32(0x80000000))


@kernel
def _from_order_key(key):  # pragma: no cover - compiled
    """The float32 bits of an order key (the inverse of :func:`_order_key`)."""
    if key & np.uint32(0x80000000):
        return np.uint32(key & np.uint32(0x7FFFFFFF))
    return np.uint32(~key)


@kernel
def _select(keys, count, k, histogram):  # pragma: no cover - compiled
    """The ``k``-th smallest (0-based) of ``keys[:count]`` (order keys of float32 values), by
    radix selection over four 8-bit digits: four branch-free counting passes, whatever the
    values (the many equal values of quantised data slow a sort or a partition several
    times). Four interleaved histograms, so that runs of equal keys do not wait on each other."""
    prefix = np.uint32(0)
    for digit in range(4):
        shift = np.uint32(24 - 8 * digit)
        high_mask = np.uint32(0) if digit == 0 else np.uint32((0xFFFFFFFF << (32 - 8 * digit)) & 0xFFFFFFFF)
        histogram[:] = 0
        quads = count // 4
        for q in range(quads):
            for lane in range(4):
                key = keys[4 * q + lane]
                match = np.int64((key & high_mask) == prefix)
                histogram[lane, (key >> shift) & np.uint32(0xFF)] += match
        for i in range(4 * quads, count):
            key = keys[i]
            histogram[0, (key >> shift) & np.uint32(0xFF)] += np.int64((key & high_mask) == prefix)
        below = 0
        bucket = 0
        for bucket in range(256):
            here = histogram[0, bucket] + histogram[1, bucket] + histogram[2, bucket] + histogram[3, bucket]
            if below + here > k:
                break
            below += here
        k -= below
        prefix = np.uint32(prefix | (np.uint32(bucket) << shift))
    return prefix


@kernel
def _middle_keys(keys, count, histogram, middle):  # pragma: no cover - compiled
    """The two middle keys of ``keys[:count]`` (the same one for an odd count) into ``middle``.

    Quantised data put the median of a row on a value many pixels share: the median of a
    small sample is tried first, with two counting passes (below it, equal to it) that the
    compiler vectorises; radix selection when the sample's value is not the middle one.
    """
    low_rank = (count - 1) // 2
    high_rank = count // 2
    sample_size = min(count, 31)
    sample = np.empty(sample_size, dtype=np.uint32)
    for i in range(sample_size):
        sample[i] = keys[(i * count) // sample_size]
    sample.sort()
    candidate = sample[sample_size // 2]
    below = 0
    equal = 0
    for i in range(count):
        key = keys[i]
        below += np.int64(key < candidate)
        equal += np.int64(key == candidate)
    if below <= low_rank and high_rank < below + equal:
        middle[0] = candidate
        middle[1] = candidate
        return
    middle[0] = _select(keys, count, low_rank, histogram)
    middle[1] = middle[0] if high_rank == low_rank else _select(keys, count, high_rank, histogram)


@kernel
def _pool_medians(values, width, pool, scratch, out):  # pragma: no cover - compiled
    """Per row: the median of its pool of ``pool`` rows (NaN left out; NaN when none), as
    ``combine.typical_noise`` gives it; ``values`` is flat row-major, ``out`` one per row."""
    rows = values.shape[0] // width
    bits = values.view(np.uint32)
    histogram = np.zeros((4, 256), dtype=np.int64)
    middle = np.empty(2, dtype=np.uint32)
    as_float = middle.view(np.float32)
    for start in range(0, rows, pool):
        stop = min(rows, start + pool)
        count = 0
        for i in range(start * width, stop * width):
            if not np.isnan(values[i]):
                scratch[count] = _order_key(bits[i])
                count += 1
        if count == 0:
            typical = np.float32(np.nan)
        else:
            _middle_keys(scratch, count, histogram, middle)
            middle[0] = _from_order_key(middle[0])
            middle[1] = _from_order_key(middle[1])
            typical = (as_float[0] + as_float[1]) * _HALF
        for row in range(start, stop):
            out[row] = typical


@kernel
def _windowed_std(ordered, median, half, width, std, out):  # pragma: no cover - compiled
    """The standard deviation of the values within ``half`` (per row) of each pixel's median:
    ``std`` where every value lies within, float32 (``combine.clip_floor``)."""
    n, pixels = ordered.shape
    values = np.empty(n, dtype=np.float32)
    for p in range(pixels):
        centre = median[p]
        h = half[p // width]
        if np.float32(ordered[0, p]) < np.float32(centre - h) or np.float32(ordered[n - 1, p]) > np.float32(centre + h):
            for k in range(n):
                values[k] = ordered[k, p]
            lo, hi = _within(values, centre, h, 0, n)
            out[p] = np.float32(_range_std(values, lo, hi)[1])
        else:
            out[p] = std[p]


@kernel
def _clip_all(
    ordered, method, clip_sigma, clip_iters, width, floor, median, mean, std, mad, master, noise, kept
):  # pragma: no cover - compiled
    """The clip of every pixel (``combine.combine_sorted`` after the floor): the few pixels with a
    value outside the first pass's window go through ``combine.clip_pixels``, the others keep
    every value (master = mean or median, noise = standard deviation)."""
    n, pixels = ordered.shape
    window = np.float32(clip_sigma if method == _SIGMA_CLIP else max(NOISE_WINDOW, clip_sigma))
    sigma = np.float32(clip_sigma)
    noise_window = np.float32(max(NOISE_WINDOW, clip_sigma))
    passes = clip_iters if method == _SIGMA_CLIP else 1
    values = np.empty(n, dtype=np.float32)
    for p in range(pixels):
        f = floor[p // width]
        scale = max(mad[p], f)
        half = np.float32(window * scale)
        centre = median[p]
        if not (
            np.float32(ordered[0, p]) < np.float32(centre - half)
            or np.float32(ordered[n - 1, p]) > np.float32(centre + half)
        ):
            master[p] = mean[p] if method == _SIGMA_CLIP else centre
            noise[p] = std[p]
            kept[p] = n
            continue
        for k in range(n):  # one pixel's values side by side: the clip reads them many times
            values[k] = ordered[k, p]
        lo = 0
        hi = n
        for _ in range(passes):
            centre = (np.float32(values[(lo + hi - 1) // 2]) + np.float32(values[(lo + hi) // 2])) * _HALF
            scale = max(_mad_sigma(values, lo, hi, centre), f)
            new_lo, new_hi = _within(values, centre, np.float32(sigma * scale), lo, hi)
            if new_lo == lo and new_hi == hi:
                break
            lo = new_lo
            hi = new_hi
        noise_lo, noise_hi = _within(values, centre, np.float32(noise_window * scale), lo, hi)
        noise[p] = np.float32(_range_std(values, noise_lo, noise_hi)[1])
        if method == _MEDIAN:
            master[p] = (np.float32(values[(n - 1) // 2]) + np.float32(values[n // 2])) * _HALF
            kept[p] = n
        else:
            master[p] = np.float32(_range_std(values, lo, hi)[0])
            kept[p] = hi - lo


@kernel(reassociate=True)
def _frame_statistics(
    raw, swapped, master, noise, width, typical, quantum_floor, outlier_sigma, outliers, sums, squares, inside
):  # pragma: no cover - compiled
    """Per frame: pixels further than ``outlier_sigma`` noise from the master, and the sum, sum of
    squares and count of the other pixels' differences from it (``block_combine``'s frame
    statistics; noise floored at its row's typical value and the quantisation noise, as
    ``np.fmax`` does: NaN gives way to a number). The sums may be added in any order (they
    judge a frame's level; identical frames still give identical sums)."""
    n, height, columns = raw.shape
    pixels = height * columns
    flat = raw.reshape(n, pixels)
    sigma = np.float32(outlier_sigma)
    reach = np.empty(pixels, dtype=np.float32)
    for p in range(pixels):
        level = noise[p]
        t = typical[p // width]
        if np.isnan(level) or t > level:
            level = t if not np.isnan(t) else level
        if np.isnan(level) or quantum_floor > level:
            level = quantum_floor
        reach[p] = np.float32(sigma * level)
    for k in range(n):
        row = flat[k]
        far = 0
        total = 0.0
        total_squares = 0.0
        for p in range(pixels):
            difference = np.float32(np.float32(_decode(row[p], swapped)) - master[p])
            outside = abs(difference) > reach[p]
            far += np.int64(outside)
            kept = np.float64(0.0) if outside else np.float64(difference)
            total += kept
            total_squares += kept * kept
        outliers[k] = far
        sums[k] = total
        squares[k] = total_squares
        inside[k] = pixels - far


@kernel
def _finish(master, noise, kept, efficiency, factor, error):  # pragma: no cover - compiled
    """The master's standard error from its noise and kept count, then every map in 16-bit units."""
    for p in range(master.shape[0]):
        e = np.float32(np.float32(efficiency) * noise[p]) / np.sqrt(np.float32(kept[p]))
        error[p] = np.float32(e * factor)
        master[p] = np.float32(master[p] * factor)
        noise[p] = np.float32(noise[p] * factor)


@kernel
def _combine_block(
    raw,
    swapped,
    network,
    wide,
    method,
    chunk,
    clip_sigma,
    clip_iters,
    pool,
    quantum_floor,
    outlier_sigma,
    judged,
    factor,
    efficiency,
    ordered,
    pixel_maps,
    row_maps,
    pool_values,
    master,
    noise,
    error,
    kept,
    outliers,
    sums,
    squares,
    inside,
):  # pragma: no cover - compiled
    """The whole combine of one block, in one call (one compiled entry point to load from the
    cache): the steps of ``combine.combine_sorted`` in its order, then the frame statistics."""
    n, height, width = raw.shape
    median, mean, std, mad, windowed = pixel_maps[0], pixel_maps[1], pixel_maps[2], pixel_maps[3], pixel_maps[4]
    half, floor, per_row = row_maps[0], row_maps[1], row_maps[2]
    _sort_and_moments(raw, swapped, network, wide, method, chunk, ordered, median, mean, std, mad)
    if method == _MEAN or n < 3:
        for p in range(master.shape[0]):
            master[p] = median[p] if method == _MEDIAN else mean[p]
            noise[p] = std[p]
            kept[p] = n
    else:
        _pool_medians(mad, width, pool, pool_values, half)
        for row in range(height):
            half[row] = np.float32(np.float32(NOISE_WINDOW) * half[row])
        _windowed_std(ordered, median, half, width, std, windowed)
        _pool_medians(windowed, width, pool, pool_values, floor)
        for row in range(height):
            level = floor[row] if np.isfinite(floor[row]) else np.float32(0.0)
            floor[row] = max(level, quantum_floor)
        _clip_all(ordered, method, clip_sigma, clip_iters, width, floor, median, mean, std, mad, master, noise, kept)
    if judged:
        _pool_medians(noise, width, pool, pool_values, per_row)
        _frame_statistics(
            raw, swapped, master, noise, width, per_row, quantum_floor, outlier_sigma, outliers, sums, squares, inside
        )  # fmt: skip
    _finish(master, noise, kept, efficiency, factor, error)


def count_dtype(n_frames: int) -> np.dtype:
    """The integer type of a master's kept-frame counts: int16, int32 beyond 32767 frames.

    >>> count_dtype(15), count_dtype(40_000)
    (dtype('int16'), dtype('int32'))
    """
    return np.dtype(np.int16 if n_frames <= np.iinfo(np.int16).max else np.int32)


def nan_median(values: np.ndarray) -> float:
    """The median of a map's values, NaN left out (NaN when all are), as ``np.nanmedian`` gives
    it for float32, by radix selection (no sort or partition of a 16 MB copy).

    >>> nan_median(np.array([[3.0, np.nan], [1.0, 2.0]], dtype=np.float32))
    2.0
    """
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    out = np.empty(1, dtype=np.float32)
    _pool_medians(flat, max(1, flat.size), 1, np.empty(flat.size, dtype=np.uint32), out)
    return float(out[0])


@functools.lru_cache(maxsize=64)
def _network(n: int) -> np.ndarray:
    """The sorting network of ``n`` frames as an ``(m, 2)`` array; empty above
    :data:`~bias_pipeline.combine.NETWORK_MAX_FRAMES` (each pixel is then sorted alone)."""
    if n > NETWORK_MAX_FRAMES:
        return np.zeros((0, 2), dtype=np.int64)
    return np.array(sorting_network(n), dtype=np.int64).reshape(-1, 2)


def combine_block_compiled(
    raw: np.ndarray,
    *,
    swapped: bool,
    method: str,
    clip_sigma: float,
    clip_iters: int,
    pool: int,
    quantum: float,
    outlier_sigma: float,
    judged: bool,
    factor: float,
    scratch: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Combine one row block of every frame of a group with the compiled kernels.

    Parameters
    ----------
    raw
        ``(n_frames, rows, columns)``: stored big-endian int16 + BZERO 32768 bits as ``uint16``
        (``swapped``), or native ``uint16`` or ``float32`` values.
    swapped
        Whether ``raw`` holds the file's bytes still to be decoded.
    method, clip_sigma, clip_iters
        The combine (:data:`~bias_pipeline.combine.COMBINE_METHODS`).
    pool, quantum
        Rows sharing one typical noise (the block holds whole pools) and the values'
        quantisation step (see :func:`~bias_pipeline.combine.combine_block`).
    outlier_sigma, judged
        The frame statistics' threshold, and whether to compute them at all.
    factor
        Stored units to 16-bit ADU, applied to the maps last.
    scratch
        Buffers kept between calls of one thread (allocated here when missing or too small).

    Returns
    -------
    master, noise, error, n_used, statistics
        ``(rows, columns)`` float32 maps in 16-bit ADU and counts (:func:`count_dtype`); ``statistics`` is
        ``(outliers, sums, squares, inside)`` per frame (zeros when not ``judged``), in stored
        units.
    """
    n, height, width = raw.shape
    pixels = height * width
    value_dtype = np.dtype(np.float32) if raw.dtype.kind == "f" else np.dtype(np.uint16)
    scratch = {} if scratch is None else scratch

    def buffer(name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        size = int(np.prod(shape))
        held = scratch.get(name)
        if held is None or held.dtype != np.dtype(dtype) or held.size < size:
            held = scratch[name] = np.empty(size, dtype=dtype)
        return held[:size].reshape(shape)

    code = METHOD_CODES[method]
    master = np.empty(pixels, dtype=np.float32)
    noise = np.empty(pixels, dtype=np.float32)
    error = np.empty(pixels, dtype=np.float32)
    kept = np.empty(pixels, dtype=count_dtype(n))
    statistics = (np.zeros(n, np.int64), np.zeros(n, np.float64), np.zeros(n, np.float64), np.zeros(n, np.int64))
    _combine_block(
        raw,
        swapped,
        _network(n),
        not (n <= 256 and value_dtype.kind in "ui"),  # sums of integers exact in float32
        code,
        max(64, CHUNK_VALUES // max(1, n)),
        np.float32(clip_sigma),
        int(clip_iters),
        int(pool),
        np.float32(quantum / math.sqrt(12.0)),
        np.float32(outlier_sigma),
        bool(judged),
        np.float32(factor),
        np.float32(MEDIAN_EFFICIENCY if code == _MEDIAN else 1.0),
        buffer("ordered", (n, pixels), value_dtype),
        tuple(buffer(name, (pixels,), np.float32) for name in ("median", "mean", "std", "mad", "windowed")),
        tuple(buffer(name, (height,), np.float32) for name in ("half", "floor", "per_row")),
        buffer("pool_values", (pool * width,), np.uint32),
        master,
        noise,
        error,
        kept,
        *statistics,
    )
    shape = (height, width)
    return master.reshape(shape), noise.reshape(shape), error.reshape(shape), kept.reshape(shape), statistics

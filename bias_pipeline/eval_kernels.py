"""Compiled kernels of step 5 and the report: a master's errors and a map's order statistics.

Step 5 needs, per master, the model's prediction, ``|real - model|`` and the percentage error,
their counts, means, standard deviations, medians and 95th percentiles over unflagged finite
pixels, the mean error in read-noise units, and block-averaged copies of four maps for the
plots. numpy takes a dozen passes and several full-frame temporaries for that (a boolean
selection copy and a partition per statistic); the kernels here take two passes over the
master and hold no full-frame temporary:

1. :func:`error_pass` predicts each pixel, computes its errors, adds them to the block sums of
   the plots and to the running counts and sums, and counts each error in a histogram of the
   top 16 bits of its order-preserving 32-bit key (:func:`sort_key`);
2. :func:`error_select` counts, for the few top-16-bit bins that hold the ranks a percentile
   needs, the low 16 bits of each error in that bin, and sums the squared deviations from the
   mean (the two-pass standard deviation numpy computes).

Together the two histograms give each needed order statistic exactly (a float32 is its 32-bit
key), and :func:`percentiles` interpolates between them as ``np.percentile`` (method
``"linear"``) does, so the medians and percentiles are the reference's to the last bit, and
means and standard deviations to float64 summation order.

:func:`map_pass`, :func:`map_select` and :func:`map_histogram` do the same for one map of the
model (the report's statistics, histograms and block-averaged maps).

The numpy reference of all this is the code in :mod:`bias_pipeline.evaluation` and
:mod:`bias_pipeline.plots` (``compiled.engine() == "numpy"``); the tests compare the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .compiled import kernel

HI_BINS = 1 << 16  # histogram bins of the keys' top 16 bits (and of the low 16 bits)
ERROR_SUMS = 6  # error_pass's totals: count and sum of |err|, of the percentage, of |err| / noise


@kernel
def sort_key(value: np.float32) -> np.uint32:  # pragma: no cover - compiled
    """A float32's 32-bit key whose unsigned order is the values' order (NaN excluded)."""
    bits = np.float32(value).view(np.uint32)
    if bits & np.uint32(0x80000000):
        return ~bits
    return bits | np.uint32(0x80000000)


def key_value(key: int) -> np.float32:
    """The float32 whose :func:`sort_key` is ``key``."""
    key = int(key)
    bits = key & 0x7FFFFFFF if key & 0x80000000 else ~key & 0xFFFFFFFF
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


@kernel
def error_pass(
    real, a, b, c, temperature, scale, flagged, noise, factor, sums, counts, hist, totals
):  # pragma: no cover - compiled
    """One pass over a master: prediction, errors, plot block sums, totals and key histograms.

    ``c`` and ``noise`` of shape ``(0, 0)`` mean absent; ``factor`` 0 means no block sums.
    The errors are ``|real - model| * scale`` and ``100 |real - model| / |real| * scale``
    (float32, as the reference); ``hist[0]``/``hist[1]`` count their keys' top 16 bits,
    ``totals`` gets ``(n, sum)`` of each, then of ``|err| * scale / noise``. ``sums``/``counts``
    ``(4, rows // factor, cols // factor)`` get the finite values of real, model, error and
    percentage error (unscaled) per block.
    """
    rows, cols = real.shape
    quadratic = c.shape[0] > 0
    weighted = noise.shape[0] > 0
    t2 = temperature * temperature
    hundred = np.float32(100.0)
    block_rows = rows // factor if factor > 0 else 0
    block_cols = cols // factor if factor > 0 else 0
    n_err = 0
    n_pct = 0
    n_noise = 0
    s_err = 0.0
    s_pct = 0.0
    s_noise = 0.0
    nan = np.float32(np.nan)
    for i in range(rows):
        bi = i // factor if factor > 0 else 0
        in_rows = factor > 0 and bi < block_rows
        for j in range(cols):
            r = real[i, j]
            p = a[i, j] + temperature * b[i, j]
            if quadratic:
                p = p + t2 * c[i, j]
            e = abs(r - p)
            pct = hundred * e / abs(r) if r != 0 else nan
            if in_rows:
                bj = j // factor
                if bj < block_cols:
                    if math.isfinite(r):
                        sums[0, bi, bj] += r
                        counts[0, bi, bj] += 1
                    if math.isfinite(p):
                        sums[1, bi, bj] += p
                        counts[1, bi, bj] += 1
                    if math.isfinite(e):
                        sums[2, bi, bj] += e
                        counts[2, bi, bj] += 1
                    if math.isfinite(pct):
                        sums[3, bi, bj] += pct
                        counts[3, bi, bj] += 1
            if flagged[i, j]:
                continue
            err = e * scale
            if math.isfinite(err):
                n_err += 1
                s_err += err
                hist[0, sort_key(err) >> 16] += 1
                # A dead pixel's noise is 0: numpy's quotient is inf or NaN and left out, and
                # a compiled float division by zero would raise, so it is not made.
                if weighted and noise[i, j] != 0:
                    q = err / noise[i, j]
                    if math.isfinite(q):
                        n_noise += 1
                        s_noise += q
            per = pct * scale
            if math.isfinite(per):
                n_pct += 1
                s_pct += per
                hist[1, sort_key(per) >> 16] += 1
    totals[0] += n_err
    totals[1] += s_err
    totals[2] += n_pct
    totals[3] += s_pct
    totals[4] += n_noise
    totals[5] += s_noise


@kernel
def error_select(real, a, b, c, temperature, scale, flagged, slots, low, means, squares):  # pragma: no cover - compiled
    """The second pass of :func:`error_pass`: low-16-bit histograms and squared deviations.

    ``slots[q, top]`` is the row of ``low[q]`` that counts the low 16 bits of the keys whose
    top 16 bits are ``top`` (``-1``: not wanted), for quantity ``q`` (0: error, 1: percentage
    error); ``squares[q]`` gets ``sum (x - means[q])**2``.
    """
    rows, cols = real.shape
    quadratic = c.shape[0] > 0
    t2 = temperature * temperature
    hundred = np.float32(100.0)
    sq_err = 0.0
    sq_pct = 0.0
    for i in range(rows):
        for j in range(cols):
            if flagged[i, j]:
                continue
            r = real[i, j]
            p = a[i, j] + temperature * b[i, j]
            if quadratic:
                p = p + t2 * c[i, j]
            e = abs(r - p)
            err = e * scale
            if math.isfinite(err):
                d = err - means[0]
                sq_err += d * d
                key = sort_key(err)
                slot = slots[0, key >> 16]
                if slot >= 0:
                    low[0, slot, key & 0xFFFF] += 1
            if r != 0:
                per = (hundred * e / abs(r)) * scale
                if math.isfinite(per):
                    d = per - means[1]
                    sq_pct += d * d
                    key = sort_key(per)
                    slot = slots[1, key >> 16]
                    if slot >= 0:
                        low[1, slot, key & 0xFFFF] += 1
    squares[0] += sq_err
    squares[1] += sq_pct


@kernel
def map_pass(image, flagged, factor, sums, counts, hist, totals):  # pragma: no cover - compiled
    """One pass over a map: block sums of its unflagged finite pixels (``factor`` > 0), the
    top-16-bit key histogram, count, sum, minimum and maximum of those pixels."""
    rows, cols = image.shape
    block_rows = rows // factor if factor > 0 else 0
    block_cols = cols // factor if factor > 0 else 0
    n = 0
    total = 0.0
    for i in range(rows):
        bi = i // factor if factor > 0 else 0
        for j in range(cols):
            v = image[i, j]
            if flagged[i, j] or not math.isfinite(v):
                continue
            n += 1
            total += v
            hist[sort_key(v) >> 16] += 1
            if factor > 0 and bi < block_rows:
                bj = j // factor
                if bj < block_cols:
                    sums[bi, bj] += v
                    counts[bi, bj] += 1
    totals[0] += n
    totals[1] += total


@kernel
def map_select(image, flagged, slots, low):  # pragma: no cover - compiled
    """Low-16-bit key histograms of a map's unflagged finite pixels: ``low[slots[top]]``
    counts the keys whose top 16 bits are ``top`` (``slots[top]`` -1: not wanted)."""
    rows, cols = image.shape
    for i in range(rows):
        for j in range(cols):
            v = image[i, j]
            if flagged[i, j] or not math.isfinite(v):
                continue
            key = sort_key(v)
            slot = slots[key >> 16]
            if slot >= 0:
                low[slot, key & 0xFFFF] += 1


@kernel
def map_histogram(image, flagged, low, high, counts):  # pragma: no cover - compiled
    """Counts of a map's unflagged finite pixels in ``len(counts)`` equal bins of
    ``[low, high]`` (the last bin holds ``high``; values outside are not counted)."""
    rows, cols = image.shape
    bins = counts.shape[0]
    width = (high - low) / bins
    for i in range(rows):
        for j in range(cols):
            v = np.float64(image[i, j])
            if flagged[i, j] or not (v >= low and v <= high):
                continue
            index = int((v - low) / width)
            if index >= bins:
                index = bins - 1
            # The division may miss an edge by an ulp: place the value by the edges themselves.
            if index > 0 and v < low + index * width:
                index -= 1
            elif index < bins - 1 and v >= low + (index + 1) * width:
                index += 1
            counts[index] += 1


@kernel
def largest(image, excluded, indices, values):  # pragma: no cover - compiled
    """The ``len(indices)`` largest finite values of ``image`` outside ``excluded``, largest
    first (ties: the lower flat index first): their flat indices into ``indices`` and values
    into ``values``; returns how many were found. One pass, no full-frame temporary."""
    rows, cols = image.shape
    k = indices.shape[0]
    found = 0
    for i in range(rows):
        for j in range(cols):
            v = image[i, j]
            if excluded[i, j] or not math.isfinite(v):
                continue
            if found == k and v <= values[k - 1]:
                continue
            # Insert in descending order, after the equal values already there.
            at = found if found < k else k - 1
            while at > 0 and values[at - 1] < v:
                if at < k:
                    values[at] = values[at - 1]
                    indices[at] = indices[at - 1]
                at -= 1
            values[at] = v
            indices[at] = i * cols + j
            if found < k:
                found += 1
    return found


# --------------------------------------------------------------------------- order statistics


def percentile_ranks(count: int, quantiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ranks ``np.percentile`` (method ``"linear"``) reads for ``quantiles`` [%] of
    ``count`` values, and its interpolation weights.

    Returns
    -------
    previous, following, gamma
        Ranks (0-based) of the lower and upper neighbours, and the weight of the upper one.
    """
    q = np.true_divide(np.asarray(quantiles, dtype=np.float64), 100)
    virtual = (count - 1) * q
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= count - 1
    previous[above] = count - 1
    following[above] = count - 1
    below = virtual < 0
    previous[below] = 0
    following[below] = 0
    # At the ends both neighbours are one value, and any finite weight gives that value.
    gamma = np.asarray(virtual - np.floor(virtual), dtype=np.float64)
    return previous.astype(np.int64), following.astype(np.int64), gamma


def interpolate(previous: np.ndarray, following: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """``np.percentile``'s linear interpolation between float32 neighbours (its ``_lerp``),
    in the same types, so the result is the reference's to the last bit."""
    previous = np.asarray(previous, dtype=np.float32)
    following = np.asarray(following, dtype=np.float32)
    difference = following - previous
    result = np.add(previous, difference * gamma)
    np.subtract(following, difference * (1 - gamma), out=result, where=gamma >= 0.5, casting="unsafe")
    return result


def prefixes_for(hist: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The top-16-bit bins holding each of ``ranks`` (0-based) in the key histogram ``hist``."""
    cumulative = np.cumsum(hist)
    return np.searchsorted(cumulative, ranks, side="right").astype(np.int64)


def values_at(hist: np.ndarray, prefixes: np.ndarray, low: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The float32 values of ``ranks`` from the top histogram ``hist``, the bins ``prefixes``
    each rank lies in, and ``low[k]``, the low-16-bit histogram of bin ``prefixes[k]``."""
    cumulative = np.cumsum(hist)
    values = np.empty(len(ranks), dtype=np.float32)
    for k, (rank, prefix) in enumerate(zip(ranks, prefixes, strict=True)):
        before = int(cumulative[prefix - 1]) if prefix > 0 else 0
        within = int(np.searchsorted(np.cumsum(low[k]), rank - before, side="right"))
        values[k] = key_value((int(prefix) << 16) | within)
    return values


def slot_table(bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct top-16-bit ``bins`` wanted, and the table from a bin to its row in the
    low-16-bit histograms (``-1``: not wanted), as :func:`error_select` and
    :func:`map_select` take it.

    Returns
    -------
    wanted, slots
        ``wanted[k]`` is the bin of row ``k``; ``slots[bin]`` is ``k``.
    """
    wanted = np.unique(bins)
    slots = np.full(HI_BINS, -1, dtype=np.int64)
    slots[wanted] = np.arange(wanted.size)
    return wanted, slots

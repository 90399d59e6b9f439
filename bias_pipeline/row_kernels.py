"""The medians of the two halves of every row (:func:`~bias_pipeline.row_noise.split_row_offsets`)
as a compiled kernel: a radix selection per half row instead of numpy's median along an axis.

``np.median`` along the last axis partitions a copy of the whole array (a quickselect, whose
comparisons of noise-like data the processor mispredicts half the time) and then averages the
middle values through ``np.mean``; for a frame of 2048 x 2048 that is about 25 times the cost
of decoding the frame and subtracting the master, and it runs once per frame in step 2.

Here each float32 is mapped to an unsigned 32-bit key of the same order (the sign bit set for
a positive value, every bit flipped for a negative one), and the middle key is found one byte
at a time, from the most significant: a histogram of the byte over the values still in the
running names the byte's value at the middle, and only the values with that byte stay. There
is no comparison to mispredict, and few values survive the first byte or two (the exponent
bits: a median near 0 sits in a sparse bin). With 32 or fewer left, they are sorted. The
other middle value of an even length is the one below among them, or, when the middle one is
the smallest kept, the largest of the smaller values (one more pass, rarely).

The result is numpy's to the bit: a selection returns the exact order statistic whatever the
algorithm, the mean of the two middle values of an even length is computed as numpy does it
(their float32 sum halved), and a half row holding a NaN has median NaN, as in numpy
(``tests/test_row_noise.py`` compares the two on random data with ties, zeros of both signs,
odd and even lengths). The numpy path stays the reference (:mod:`bias_pipeline.compiled`).
"""

from __future__ import annotations

import numpy as np

from .compiled import kernel

_HALF = np.float32(0.5)
_SIGN = 0x80000000
_ALL = 0xFFFFFFFF
_ABS = 0x7FFFFFFF
_INF = 0x7F800000
_FEW = 32  # values left few enough to sort


@kernel
def _ordered_key(bits):  # pragma: no cover - compiled
    """A float32's bits as an unsigned key (int64) in the order of the values (-0 just below +0)."""
    u = np.int64(bits)
    return u ^ (((0 - (u >> 31)) & _ALL) | _SIGN)


@kernel
def _key_bits(key):  # pragma: no cover - compiled
    """The float32 bits of an :func:`_ordered_key`."""
    if key >= _SIGN:
        return key ^ _SIGN
    return key ^ _ALL


@kernel
def _middle_keys(source, k, keys, histogram):  # pragma: no cover - compiled
    """The ``k``-th smallest (0-based) of the float32 bits ``source`` as keys, and the
    ``k-1``-th (``k`` >= 1; else -1), by radix selection in ``keys`` (at least as long);
    ``(-1, -1)`` when ``source`` holds a NaN."""
    n = source.shape[0]
    histogram[:] = 0
    nan = False
    for p in range(n):  # the keys and the histogram of their first byte
        bits = np.int64(source[p])
        nan |= (bits & _ABS) > _INF
        key = _ordered_key(bits)
        keys[p] = key
        histogram[key >> 24] += 1
    if nan:
        return np.int64(-1), np.int64(-1)
    count = n
    target = k  # the rank sought among the values still in the running
    shift = 24
    while True:
        digit = 0
        while target >= histogram[digit]:
            target -= histogram[digit]
            digit += 1
        if histogram[digit] < count:  # keep the values of that digit only
            kept = 0
            for p in range(count):
                key = np.int64(keys[p])
                keys[kept] = key
                kept += ((key >> shift) & 255) == digit
            count = kept
        shift -= 8
        if count <= _FEW or shift < 0:
            break
        histogram[:] = 0
        for p in range(count):
            histogram[(np.int64(keys[p]) >> shift) & 255] += 1
    for p in range(1, count):  # few left (or all equal): insertion sort
        key = keys[p]
        q = p - 1
        while q >= 0 and keys[q] > key:
            keys[q + 1] = keys[q]
            q -= 1
        keys[q + 1] = key
    upper = np.int64(keys[target])
    if target > 0:
        return upper, np.int64(keys[target - 1])
    if k == 0:
        return upper, np.int64(-1)
    # The k-1-th lies among the values dropped as smaller (a chance of about one in the number
    # kept): the largest of those below the k-th, looked for again in the source.
    lower = np.int64(-1)
    for p in range(n):
        key = _ordered_key(np.int64(source[p]))
        lower = max(lower, key if key < upper else np.int64(-1))
    return upper, lower


@kernel
def _median_of(source, keys, histogram, cell):  # pragma: no cover - compiled
    """The median of the float32 bits ``source`` as ``np.median`` gives it (NaN when it holds a
    NaN or nothing). ``cell`` is a uint32 array of one value, viewed as float32 to read bits."""
    n = source.shape[0]
    if n == 0:
        return np.float32(np.nan)
    upper, lower = _middle_keys(source, n // 2, keys, histogram)
    if upper < 0:
        return np.float32(np.nan)
    floats = cell.view(np.float32)
    cell[0] = np.uint32(_key_bits(upper))
    high = floats[0]
    if n % 2 == 1:
        return high
    cell[0] = np.uint32(_key_bits(lower))
    low = floats[0]
    return np.float32(np.float32(low + high) * _HALF)  # numpy: their float32 sum, halved


@kernel
def half_row_medians(bits, half, left, right):  # pragma: no cover - compiled
    """For every row of ``bits`` (2-d float32 values viewed as uint32): the median of its first
    ``half`` values into ``left`` and of its last ``half`` values into ``right`` (float32)."""
    columns = bits.shape[1]
    keys = np.empty(max(half, 1), dtype=np.uint32)
    histogram = np.zeros(256, dtype=np.int64)
    cell = np.zeros(1, dtype=np.uint32)
    for r in range(bits.shape[0]):
        row = bits[r]
        left[r] = _median_of(row[:half], keys, histogram, cell)
        right[r] = _median_of(row[columns - half :], keys, histogram, cell)

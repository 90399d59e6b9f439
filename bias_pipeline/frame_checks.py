"""Step 1's pixel checks in one pass: the statistics :func:`~bias_pipeline.frames.inspect_frame`
judges a frame by, computed by a compiled kernel that reads each value once.

A frame is judged by its largest and smallest value, whether every value is a multiple of 16
(12-bit data stored x16) or a whole number, and how many values are zero, negative, at or
above the ADC's maximum, or at the 12-bit maximum (4095). Before the kernels these took six
numpy passes over the frame, and the camera's frames a byte-swapped copy first; the kernels
take one pass, and decode the camera's stored values (big-endian int16 with BZERO = 32768)
as they go, so the file's bytes are checked where they were read.

Each kernel has a numpy reference that computes the same statistics (the code step 1 ran
before the kernels); :func:`~bias_pipeline.compiled.engine` chooses which runs, and the tests
compare the two. Every statistic is exact (counts, extremes, all-or-none tests), so both give
identical results. This module computes on arrays only: :mod:`bias_pipeline.frames` opens
the files.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from .compiled import engine, kernel
from .units import TWELVE_BIT_MAX

__all__ = ["PixelStats", "StoredUint16Checks", "array_stats"]

# The camera's storage: unsigned 16-bit values as int16 with BZERO = 32768, which is a flip of
# the sign bit of the stored value.
_SIGN_BIT = 0x8000
# FITS stores big-endian: on a little-endian machine the stored values are byte-swapped.
_SWAP = sys.byteorder == "little"

# Slots of the running statistics of stored values (int64), in the order the kernel keeps them.
_MAX, _MIN, _OR, _ZEROS, _SATURATED, _TWELVE = range(6)
_STATE_SLOTS = 6


@dataclass(frozen=True)
class PixelStats:
    """The statistics of a frame's pixel values that step 1 judges it by.

    Attributes
    ----------
    size
        Number of pixels.
    maximum, minimum
        Largest and smallest value (physical, after BZERO/BSCALE); meaningless when
        ``nonfinite`` is not 0.
    multiple_of_16
        Whether every value is a multiple of 16.
    integer_valued
        Whether every value is a whole number.
    zeros, negatives
        Values equal to zero, and below zero.
    saturated
        Values at or above the saturation value given.
    twelve_bit_max
        Values equal to :data:`~bias_pipeline.units.TWELVE_BIT_MAX` (4095).
    nonfinite
        NaN or infinite values (only float frames have any).
    """

    size: int
    maximum: float
    minimum: float
    multiple_of_16: bool
    integer_valued: bool
    zeros: int
    negatives: int
    saturated: int
    twelve_bit_max: int
    nonfinite: int = 0


# --- compiled kernels ------------------------------------------------------------------------


@kernel
def _stored_uint16_pass(stored, swap, threshold, state):  # pragma: no cover - compiled
    """Fold stored big-endian int16 + BZERO 32768 values into ``state`` (see the slots above):
    each value is byte-swapped (when ``swap``) and its sign bit flipped here, in registers.

    The arithmetic is in 16 and 32 bits on purpose: it lets the compiler process many values
    per instruction (no 64-bit minimum or maximum in AVX2), several times faster than int64.
    One call takes fewer than 2**32 values (a read buffer's worth), so its counts fit.
    """
    high = np.uint16(0)
    low = np.uint16(65535)
    bits = np.uint16(0)
    saturated = np.uint32(0)
    zeros = np.uint32(0)
    twelve = np.uint32(0)
    limit = np.uint32(threshold)  # 0..65536
    flip = np.uint32(0x8000)
    if swap:
        for i in range(stored.size):
            raw = np.uint32(stored[i])
            wide = (((raw >> np.uint32(8)) | (raw << np.uint32(8))) & np.uint32(0xFFFF)) ^ flip
            value = np.uint16(wide)
            high = max(high, value)
            low = min(low, value)
            bits = np.uint16(bits | value)
            saturated = np.uint32(saturated + np.uint32(wide >= limit))
            zeros = np.uint32(zeros + np.uint32(value == np.uint16(0)))
            twelve = np.uint32(twelve + np.uint32(value == np.uint16(4095)))
    else:
        for i in range(stored.size):
            wide = np.uint32(stored[i]) ^ flip
            value = np.uint16(wide)
            high = max(high, value)
            low = min(low, value)
            bits = np.uint16(bits | value)
            saturated = np.uint32(saturated + np.uint32(wide >= limit))
            zeros = np.uint32(zeros + np.uint32(value == np.uint16(0)))
            twelve = np.uint32(twelve + np.uint32(value == np.uint16(4095)))
    state[0] = max(state[0], np.int64(high))
    state[1] = min(state[1], np.int64(low))
    state[2] |= np.int64(bits)
    state[3] += np.int64(zeros)
    state[4] += np.int64(saturated)
    state[5] += np.int64(twelve)


@kernel
def _integer_pass(values, threshold):  # pragma: no cover - compiled
    """Statistics of decoded integer values; saturation compared in float64, as numpy does
    for an integer array and a float."""
    high = values[0]
    low = values[0]
    bits = np.int64(0)
    zeros = 0
    negatives = 0
    saturated = 0
    twelve = 0
    for i in range(values.size):
        value = values[i]
        high = max(high, value)
        low = min(low, value)
        bits |= np.int64(value)  # two's complement: the low 4 bits of a negative multiple of 16 are 0 too
        zeros += value == 0
        negatives += value < 0
        saturated += np.float64(value) >= threshold
        twelve += value == 4095
    return high, low, bits, zeros, negatives, saturated, twelve


@kernel
def _float_pass(values, threshold):  # pragma: no cover - compiled
    """Statistics of float values: NaN and infinities counted, the other tests on finite values
    (``threshold`` has the values' own type, as numpy compares a float32 array in float32)."""
    high = values[0]
    low = values[0]
    nonfinite = 0
    zeros = 0
    negatives = 0
    saturated = 0
    twelve = 0
    not_integer = 0
    not_16 = 0
    for i in range(values.size):
        value = values[i]
        if not np.isfinite(value):
            nonfinite += 1
            continue
        high = max(high, value)
        low = min(low, value)
        zeros += value == 0
        negatives += value < 0
        saturated += value >= threshold
        twelve += value == 4095
        # A whole number whose 16th is whole (dividing a whole number by 16 is exact).
        whole = value == np.floor(value)
        sixteenth = value * 0.0625
        not_integer += not whole
        not_16 += not (whole and sixteenth == np.floor(sixteenth))
    return high, low, nonfinite, zeros, negatives, saturated, twelve, not_integer, not_16


# --- numpy reference ---------------------------------------------------------------------------


def _numpy_stats(pixels: np.ndarray, saturation: float) -> PixelStats:
    """The reference: the numpy passes step 1 ran before the kernels. A count is skipped when
    the extremes show it is 0 (no zero when the minimum is above 0, and so on), as it was."""
    size = int(pixels.size)
    if pixels.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(pixels)))
        if bad:
            return PixelStats(size, math.nan, math.nan, False, False, 0, 0, 0, 0, bad)
        multiple_of_16 = bool(np.all(np.mod(pixels, 16) == 0))
        integer_valued = multiple_of_16 or bool(np.all(np.mod(pixels, 1) == 0))
    else:
        # OR of all values has its low 4 bits clear only when every value is a multiple of 16.
        multiple_of_16 = int(np.bitwise_or.reduce(pixels, axis=None)) & 15 == 0
        integer_valued = True
    maximum = float(pixels.max())
    minimum = float(pixels.min())
    negatives = int(np.count_nonzero(pixels < 0)) if minimum < 0 else 0
    zeros = int(np.count_nonzero(pixels == 0)) if minimum <= 0 else 0
    # A float32 frame is compared with the saturation rounded to float32 (numpy's rule), so
    # its float64 maximum does not tell whether any value counts: count always.
    counts_saturated = maximum >= saturation or pixels.dtype.kind == "f"
    saturated = int(np.count_nonzero(pixels >= saturation)) if counts_saturated else 0
    twelve = int(np.count_nonzero(pixels == TWELVE_BIT_MAX)) if minimum <= TWELVE_BIT_MAX <= maximum else 0
    return PixelStats(size, maximum, minimum, multiple_of_16, integer_valued, zeros, negatives, saturated, twelve)


# --- the two entry points ----------------------------------------------------------------------


def _use_kernels(engine_name: str | None) -> bool:
    return (engine_name or engine()) == "numba"


def array_stats(pixels: np.ndarray, saturation: float, *, engine_name: str | None = None) -> PixelStats:
    """The statistics of decoded pixel values (any integer or float type, any shape).

    Parameters
    ----------
    pixels
        Physical values (after BZERO/BSCALE), as astropy decodes them; not empty.
    saturation
        The saturation value [ADU]: values at or above it are counted.
    engine_name
        ``"numba"`` or ``"numpy"``; default :func:`~bias_pipeline.compiled.engine`.

    Returns
    -------
    PixelStats
    """
    pixels = np.asarray(pixels)
    compiled = pixels.dtype.kind in "iu" or pixels.dtype.kind == "f" and pixels.dtype.itemsize in (4, 8)
    if not compiled or not _use_kernels(engine_name):  # float16, bool: numpy only
        return _numpy_stats(pixels, saturation)
    # The kernels read native-order contiguous values; astropy leaves unscaled data big-endian.
    values = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("=")).ravel()
    size = int(values.size)
    if values.dtype.kind == "f":
        high, low, bad, zeros, negatives, saturated, twelve, not_integer, not_16 = _float_pass(
            values, values.dtype.type(saturation)
        )
        if bad:
            return PixelStats(size, math.nan, math.nan, False, False, 0, 0, 0, 0, int(bad))
        return PixelStats(
            size, float(high), float(low), not_16 == 0, not_integer == 0,
            int(zeros), int(negatives), int(saturated), int(twelve),
        )  # fmt: skip
    high, low, bits, zeros, negatives, saturated, twelve = _integer_pass(values, float(saturation))
    return PixelStats(
        size, float(high), float(low), int(bits) & 15 == 0, True,
        int(zeros), int(negatives), int(saturated), int(twelve),
    )  # fmt: skip


class StoredUint16Checks:
    """The statistics of a frame stored as the camera stores it (big-endian int16 with
    BZERO = 32768), fed in pieces as the file is read (:meth:`add`), then :meth:`result`.

    Parameters
    ----------
    saturation
        The saturation value [ADU]: values at or above it are counted.
    engine_name
        ``"numba"`` or ``"numpy"``; default :func:`~bias_pipeline.compiled.engine`.
    """

    def __init__(self, saturation: float, *, engine_name: str | None = None) -> None:
        self._kernels = _use_kernels(engine_name)
        self._saturation = float(saturation)
        # Stored values are whole numbers 0..65535: "at or above the saturation" is "at or
        # above its ceiling" (none when that is above 65535, or not a number).
        if math.isnan(self._saturation):
            self._threshold = 65536
        else:
            self._threshold = int(min(max(math.ceil(min(self._saturation, 65536.0)), 0), 65536))
        self._state = np.array([-1, 1 << 62, 0, 0, 0, 0], dtype=np.int64)
        self._size = 0
        self._multiple_of_16 = True

    def add(self, stored: np.ndarray) -> None:
        """Fold in more of the frame's values.

        Parameters
        ----------
        stored
            1-D ``uint16`` view of the file's bytes (the stored values, big-endian as in the
            file: not decoded).
        """
        if stored.size == 0:
            return
        self._size += int(stored.size)
        if self._kernels:
            _stored_uint16_pass(stored, _SWAP, self._threshold, self._state)
            return
        decoded = stored.byteswap() if _SWAP else stored.copy()
        np.bitwise_xor(decoded, np.uint16(_SIGN_BIT), out=decoded)
        part = _numpy_stats(decoded, self._saturation)
        state = self._state
        state[_MAX] = max(int(state[_MAX]), int(part.maximum))
        state[_MIN] = min(int(state[_MIN]), int(part.minimum))
        self._multiple_of_16 = self._multiple_of_16 and part.multiple_of_16
        state[_ZEROS] += part.zeros
        state[_SATURATED] += part.saturated
        state[_TWELVE] += part.twelve_bit_max

    def result(self) -> PixelStats:
        """The statistics of every value added.

        Raises
        ------
        ValueError
            When no value was added.
        """
        if self._size == 0:
            raise ValueError("no pixel values were added")
        state = self._state
        multiple_of_16 = int(state[_OR]) & 15 == 0 if self._kernels else self._multiple_of_16
        return PixelStats(
            self._size, float(state[_MAX]), float(state[_MIN]), multiple_of_16, True,
            int(state[_ZEROS]), 0, int(state[_SATURATED]), int(state[_TWELVE]),
        )  # fmt: skip

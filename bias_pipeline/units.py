"""The camera's units, declared once: 12-bit ADC values and the 16-bit ADU products are in.

PhotSat's ADC gives 12-bit values (0 to :data:`TWELVE_BIT_MAX`); the raw FITS frames store each
multiplied by the scale factor (16), so products are in 16-bit ADU. Every conversion between the
two, and every use of the ADC's maximum, goes through the functions here, so that
``--scale-factor`` is honoured everywhere.

This module imports nothing of the package: every other module may import it.
"""

from __future__ import annotations

import numpy as np

#: The largest value of the 12-bit ADC.
TWELVE_BIT_MAX = 4095
#: The factor between 12-bit values and the 16-bit ADU stored in PhotSat's raw frames.
DEFAULT_SCALE_FACTOR = 16.0


def input_factor(input_bits: int, scale_factor: float = DEFAULT_SCALE_FACTOR) -> np.float32:
    """The factor that takes stored values to 16-bit ADU.

    Parameters
    ----------
    input_bits
        12: the stored values are raw 12-bit and are multiplied by ``scale_factor``;
        16: they are 16-bit ADU already.
    scale_factor
        The 12-bit to 16-bit factor.

    Returns
    -------
    numpy.float32

    Examples
    --------
    >>> float(input_factor(12)), float(input_factor(16)), float(input_factor(12, 4.0))
    (16.0, 1.0, 4.0)
    """
    return np.float32(scale_factor if int(input_bits) == 12 else 1.0)


def to_adu16(data: np.ndarray, input_bits: int, scale_factor: float = DEFAULT_SCALE_FACTOR) -> np.ndarray:
    """``data`` in 16-bit ADU, float32.

    Parameters
    ----------
    data
        Stored pixel values.
    input_bits, scale_factor
        See :func:`input_factor`.

    Returns
    -------
    numpy.ndarray
        float32 (``data`` itself when it is float32 16-bit ADU already; never changed in place).

    Examples
    --------
    >>> to_adu16(np.array([[1, 2]]), 12).tolist(), to_adu16(np.array([[16, 32]]), 16).tolist()
    ([[16.0, 32.0]], [[16.0, 32.0]])
    """
    out = np.asarray(data, dtype=np.float32)
    factor = input_factor(input_bits, scale_factor)
    return out * factor if factor != 1 else out


def adc_maximum(scale_factor: float = DEFAULT_SCALE_FACTOR) -> float:
    """The ADC's largest value in 16-bit ADU: :data:`TWELVE_BIT_MAX` x ``scale_factor``.

    Examples
    --------
    >>> adc_maximum(), adc_maximum(4.0)
    (65520.0, 16380.0)
    """
    return TWELVE_BIT_MAX * float(scale_factor)


def quantise_to_adc(values: np.ndarray, scale_factor: float = DEFAULT_SCALE_FACTOR) -> np.ndarray:
    """``values`` [16-bit ADU] as the camera would store them: rounded to whole 12-bit steps,
    clipped to the ADC's range, back in 16-bit ADU (float32).

    Examples
    --------
    >>> quantise_to_adc(np.array([3201.0, -40.0, 1e6])).tolist()
    [3200.0, 0.0, 65520.0]
    """
    steps = np.clip(np.rint(np.asarray(values, dtype=np.float64) / scale_factor), 0, TWELVE_BIT_MAX)
    return (steps * scale_factor).astype(np.float32)

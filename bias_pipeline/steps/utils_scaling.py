"""Units: 12-bit raw values and the 16-bit ADU the pipeline's products are in.

PhotSat stores each 12-bit ADC value multiplied by 16 in a 16-bit container, so by default
(``input_bits=16``) stored values are used as they are. ``input_bits=12`` declares raw 12-bit
frames, which are multiplied by the scale factor. ``"auto"`` decides once per data set with
:func:`decide_input_bits`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..frames import FrameRecord, read_frame
from ..units import DEFAULT_SCALE_FACTOR, TWELVE_BIT_MAX, to_adu16

logger = logging.getLogger(__name__)

__all__ = ["TWELVE_BIT_MAX", "decide_input_bits", "load_fits_as_adu16", "looks_twelve_bit", "scale_to_adu16"]


def looks_twelve_bit(record: FrameRecord) -> bool:
    """Whether a frame looks like raw 12-bit data.

    Values all below 4096 alone prove nothing (a 16-bit bias sits near 1000 ADU, and PhotSat's
    own x16 bias near 3200); what tells raw 12-bit data from 12-bit data stored x16 is that
    not every value is a multiple of 16.
    """
    return record.max_value <= TWELVE_BIT_MAX and not record.multiple_of_16


def decide_input_bits(records: Sequence[FrameRecord], input_bits: str) -> int:
    """Decide the bit depth of a data set and warn when the choice looks wrong.

    Rule for ``"auto"``: the data set is raw 12-bit when most frames look 12-bit by
    :func:`looks_twelve_bit` (every value <= 4095 and not all multiples of 16), else 16-bit.
    With an explicit ``"16"``, data that all look 12-bit give a warning naming
    ``--input-bits 12``; with ``"12"``, frames with values above 4095 are reported by the
    caller.

    Parameters
    ----------
    records
        Accepted frames (with ``max_value`` and ``multiple_of_16`` filled in).
    input_bits
        ``"auto"``, ``"12"`` or ``"16"``.

    Returns
    -------
    int
        12 or 16.
    """
    twelve = sum(looks_twelve_bit(r) for r in records)
    if input_bits == "auto":
        bits = 12 if records and twelve > len(records) / 2 else 16
        logger.info(
            "--input-bits auto: %d of %d frames look like raw 12-bit data; treating the data as %d-bit",
            twelve,
            len(records),
            bits,
        )
        return bits
    bits = int(input_bits)
    if bits == 16 and records and twelve == len(records):
        logger.warning(
            "every frame has values below 4096 that are not multiples of 16: these look like raw "
            "12-bit frames; if so, rerun with --input-bits 12 (they are used as 16-bit ADU now)"
        )
    return bits


def scale_to_adu16(data: np.ndarray, input_bits: int, scale_factor: float = DEFAULT_SCALE_FACTOR) -> np.ndarray:
    """Return ``data`` in 16-bit ADU as float32 (the older name of :func:`bias_pipeline.units.to_adu16`).

    >>> scale_to_adu16(np.array([[1, 2]]), 12).tolist()
    [[16.0, 32.0]]
    >>> scale_to_adu16(np.array([[16, 32]]), 16).tolist()
    [[16.0, 32.0]]
    """
    return to_adu16(data, input_bits, scale_factor)


def load_fits_as_adu16(
    path: str | Path, input_bits: int = 16, scale_factor: float = DEFAULT_SCALE_FACTOR
) -> np.ndarray:
    """Load a raw frame as float32 in the pipeline's units (16-bit ADU).

    Parameters
    ----------
    path
        A FITS file with a 2-D image in its first image HDU.
    input_bits
        12 to multiply by ``scale_factor``; 16 to use stored values as they are.
    scale_factor
        The 12-bit to 16-bit factor.

    Returns
    -------
    numpy.ndarray
        float32 image.

    Raises
    ------
    FrameReadError
        When the file cannot be read.
    """
    return scale_to_adu16(read_frame(path), int(input_bits), scale_factor)

"""Subtract the model bias from a frame: the call the dark-current pipeline makes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import DEFAULT_TEMPERATURE_KEYS
from .errors import FrameReadError, InputDataError
from .frames import inspect_frame, read_frame
from .model import BiasModel
from .units import to_adu16


def subtract_bias(
    frame_or_path: np.ndarray | str | Path,
    model: BiasModel,
    temperature: float | None = None,
    *,
    temperature_keys: Sequence[str] = DEFAULT_TEMPERATURE_KEYS,
    input_bits: int = 16,
) -> np.ndarray:
    """The frame minus the model's bias at its temperature, float32 in 16-bit ADU.

    Parameters
    ----------
    frame_or_path
        A 2-D array in 16-bit ADU, or the path of a raw FITS frame.
    model
        The bias model (:meth:`BiasModel.load`).
    temperature
        Sensor temperature [deg C]; read from the frame's header when not given (a path only).
    temperature_keys
        Header keywords tried for the temperature, in order.
    input_bits
        16 when the frame's values are 16-bit ADU (12-bit values x16, the camera's files); 12
        when they are raw 12-bit values, which are then multiplied by the model's scale factor.

    Returns
    -------
    numpy.ndarray
        ``frame - model.predict(temperature)``; NaN at the model's masked pixels.

    Raises
    ------
    InputDataError
        When the frame cannot be read, has no usable temperature, or is not the model's shape.

    Examples
    --------
    >>> model = BiasModel.from_maps(np.full((2, 3), 3000.0), np.full((2, 3), 2.0))
    >>> dark = np.full((2, 3), 3100.0, dtype=np.float32)
    >>> subtract_bias(dark, model, temperature=20.0).tolist()
    [[60.0, 60.0, 60.0], [60.0, 60.0, 60.0]]
    """
    if isinstance(frame_or_path, (str, Path)):
        path = Path(frame_or_path)
        if temperature is None:
            record = inspect_frame(path, tuple(temperature_keys), ("EXPOSURE", "EXPTIME"))
            if record.temperature is None:
                raise InputDataError(f"{path}: {record.reason or 'no temperature'}; pass temperature=")
            temperature = record.temperature
        try:
            frame = read_frame(path)
        except FrameReadError as exc:
            raise InputDataError(f"{path}: {exc}") from None
    else:
        if temperature is None:
            raise InputDataError("an array has no header: pass temperature= (deg C)")
        frame = np.asarray(frame_or_path, dtype=np.float32)
    if frame.shape != model.shape:
        raise InputDataError(
            f"frame is {frame.shape[0]}x{frame.shape[1]} but the model is {model.shape[0]}x{model.shape[1]}"
        )
    frame = to_adu16(frame, input_bits, model.scale_factor)
    bias = model.predict(float(temperature))
    return (frame - bias).astype(np.float32)

"""Step 3: fit ``bias(T) = a + b * T`` to every pixel across the masters.

The fit is weighted least squares with each master weighted by its number of frames (a
master of n frames has 1/n the variance of one frame). Because every pixel shares the same
temperatures and weights, the fit has a closed form in two running sums per pixel, so the
masters are visited one at a time and never stacked:

    T0 = sum(w T) / sum(w),  Sxx = sum(w (T - T0)^2)
    b  = sum(w (T - T0) y) / Sxx,   a = sum(w y) / sum(w) - b * T0

Pixels of the hot-pixel mask (non-zero = hot) are left out and hold NaN in both maps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputDataError
from ..model import BiasModel
from ..products import read_image

logger = logging.getLogger(__name__)


def load_hot_pixel_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a hot-pixel mask FITS (non-zero = hot) as a boolean array.

    Parameters
    ----------
    path
        The mask file (first 2-D image HDU).
    shape
        The frames' shape; a mask of another shape is an error.

    Returns
    -------
    numpy.ndarray
        bool, True = hot (left out of the fit).

    Raises
    ------
    InputDataError
        When the file is missing, unreadable, not 2-D or of the wrong shape.
    """
    try:
        data, _ = read_image(path, "--hot-pixel-mask")
    except InputDataError as exc:
        raise InputDataError(f"{exc}; give a 2-D FITS image, non-zero = hot pixel") from None
    mask = check_mask(data, shape, f"--hot-pixel-mask {path}")
    logger.info("hot-pixel mask %s: %d pixels left out of the fit", path, int(mask.sum()))
    return mask


def check_mask(mask: np.ndarray, shape: tuple[int, int] | None, name: str = "hot-pixel mask") -> np.ndarray:
    """Return ``mask`` as bool (non-zero and NaN = hot) after checking its shape."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputDataError(f"{name} has {mask.ndim} dimensions; it must be a 2-D image")
    if shape is not None and mask.shape != tuple(shape):
        raise InputDataError(
            f"{name} is {mask.shape[0]}x{mask.shape[1]} but the frames are {shape[0]}x{shape[1]}; "
            "give the mask made for this sensor"
        )
    hot = mask != 0
    if mask.dtype.kind == "f":
        hot |= np.isnan(mask)
    if hot.all():
        raise InputDataError(f"{name} marks every pixel as hot; nothing would be fitted")
    return hot


def fit_linear(
    temperatures: Sequence[float],
    weights: Sequence[float],
    load: Callable[[int], np.ndarray],
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted per-pixel linear fit over frames read one at a time.

    Parameters
    ----------
    temperatures
        Temperature of each frame [deg C]; at least two distinct values.
    weights
        Weight of each frame (> 0).
    load
        ``load(k)`` returns frame ``k`` as a 2-D array.
    mask
        True where a pixel is left out (NaN in the result).

    Returns
    -------
    a_map, b_map
        float32 intercept at 0 deg C and slope per deg C.

    Raises
    ------
    InputDataError
        With fewer than two distinct temperatures.

    Examples
    --------
    >>> frames = [np.full((1, 2), 100.0 + 2.0 * t) for t in (0.0, 10.0, 20.0)]
    >>> a, b = fit_linear([0.0, 10.0, 20.0], [1, 1, 1], frames.__getitem__)
    >>> a.tolist(), b.tolist()
    ([[100.0, 100.0]], [[2.0, 2.0]])
    """
    temps = np.asarray(temperatures, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if temps.size != w.size:
        raise InputDataError("one weight per temperature is needed")
    if np.unique(temps).size < 2:
        raise InputDataError(
            "the fit needs masters at two or more distinct temperatures, got "
            f"{', '.join(f'{t:g}' for t in np.unique(temps)) or 'none'} deg C; "
            "add frames at other temperatures or narrow --temp-bin-width"
        )
    if np.any(w <= 0):
        raise InputDataError("weights must be positive")
    t0 = float(np.sum(w * temps) / np.sum(w))
    sxx = float(np.sum(w * (temps - t0) ** 2))
    sum_y: np.ndarray | None = None
    sum_ty: np.ndarray | None = None
    for k in range(temps.size):
        y = np.asarray(load(k), dtype=np.float64)
        if sum_y is None:
            sum_y = np.zeros_like(y)
            sum_ty = np.zeros_like(y)
        elif y.shape != sum_y.shape:
            raise InputDataError(f"frame {k} has shape {y.shape}, the others {sum_y.shape}")
        sum_y += w[k] * y
        sum_ty += w[k] * (temps[k] - t0) * y  # type: ignore[operator]
    assert sum_y is not None and sum_ty is not None
    b_map = sum_ty / sxx
    a_map = sum_y / np.sum(w) - b_map * t0
    if mask is not None:
        a_map[mask] = np.nan
        b_map[mask] = np.nan
    return a_map.astype(np.float32), b_map.astype(np.float32)


def fit_model(
    masters: Sequence[object],
    hot_pixel_mask: np.ndarray | None = None,
    *,
    scale_factor: float = 16.0,
) -> BiasModel:
    """Fit the model to masters given as objects with ``temperature``, ``n_frames``, ``load()``.

    Parameters
    ----------
    masters
        :class:`~.step2_generate_master_bias_by_temp.MasterFrame` objects.
    hot_pixel_mask
        True (or non-zero) where a pixel is left out.
    scale_factor
        Recorded in the model.

    Returns
    -------
    BiasModel
    """
    temps = [float(m.temperature) for m in masters]  # type: ignore[attr-defined]
    frames = [int(m.n_frames) for m in masters]  # type: ignore[attr-defined]
    first = masters[0].load() if masters else None  # type: ignore[attr-defined]
    shape = None if first is None else first.shape
    mask = None if hot_pixel_mask is None else check_mask(hot_pixel_mask, shape)

    def load(k: int) -> np.ndarray:
        return first if k == 0 else masters[k].load()  # type: ignore[attr-defined,return-value]

    a_map, b_map = fit_linear(temps, frames, load, mask)
    model = BiasModel.from_maps(
        a_map,
        b_map,
        mask,
        temperature_range=(min(temps), max(temps)),
        scale_factor=scale_factor,
    )
    model.group_temperatures = tuple(temps)
    model.group_frames = tuple(frames)
    logger.info(
        "fitted %d masters (%d frames) over %.2f..%.2f deg C; %d pixels masked",
        len(temps),
        sum(frames),
        min(temps),
        max(temps),
        int(model.mask.sum()),
    )
    return model


def fit_bias_model(
    master_bias_dict: Mapping[float, np.ndarray],
    hot_pixel_mask: np.ndarray | None = None,
    *,
    frames_per_master: Mapping[float, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``a`` and ``b`` maps to a dict of masters.

    Parameters
    ----------
    master_bias_dict
        Temperature [deg C] -> master array.
    hot_pixel_mask
        Non-zero where a pixel is left out (NaN in both maps).
    frames_per_master
        Temperature -> number of frames, used as weights; equal weights when ``None``.

    Returns
    -------
    a_map, b_map
        float32 arrays: bias at 0 deg C and slope per deg C.

    Raises
    ------
    InputDataError
        With fewer than two distinct temperatures or a mask of another shape.
    """
    temps = sorted(master_bias_dict)
    if not temps:
        raise InputDataError("no masters to fit")
    shape = np.shape(master_bias_dict[temps[0]])
    mask = None if hot_pixel_mask is None else check_mask(hot_pixel_mask, shape)  # type: ignore[arg-type]
    weights = [1 if frames_per_master is None else frames_per_master[t] for t in temps]
    return fit_linear(temps, weights, lambda k: master_bias_dict[temps[k]], mask)


def save_bias_model(a_map: np.ndarray, b_map: np.ndarray, output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``bias_a_map.fits`` and ``bias_b_map.fits`` into ``output_dir``.

    Returns
    -------
    a_path, b_path
    """
    return BiasModel.from_maps(a_map, b_map).save(output_dir)

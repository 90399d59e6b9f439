"""The model as a thermometer: a frame's own temperature estimated from its pixels.

For a frame ``y`` and the model ``a + b T (+ c T^2)``, the temperature is the value that
minimises ``sum ((y - model(T)) / s)^2`` over unflagged pixels, by Gauss-Newton steps
(exact in one step for a linear model), with pixels beyond ``clip_sigma`` (cosmic rays)
dropped and the fit repeated. ``s^2`` is the pixel's noise squared plus the model's own
variance at ``T`` (from the fit's covariance: the slope's error matters far from the fitted
temperatures, and in a frame of a few pixels it is most of the error). The standard error is
``1 / sqrt(sum (dmodel/dT / s)^2)``: with millions of pixels, a few thousandths of a degree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .model import BiasModel

MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(0.75): astropy's mad_std factor


@dataclass
class TemperatureEstimate:
    """A frame's temperature from its bias [deg C], its standard error and the pixels used."""

    temperature: float
    error: float
    n_pixels: int


@dataclass(frozen=True)
class ModelSample:
    """What :func:`estimate_temperature` needs of the model at a set of rows, taken once for
    every frame of a run (slicing the model's maps again for each frame cost more than the
    fit): the usable pixels and, over them, the noise variance, coefficients and covariance,
    as float64.

    Attributes
    ----------
    rows
        The rows sampled (``None``: every row).
    usable
        Pixels of those rows that are unflagged and have a finite, positive noise.
    noise_variance, coefficients, covariance
        Over the usable pixels (``covariance`` ``(P, P, n)`` or ``None`` when the model has
        none).
    covariance_finite
        Whether every value of ``covariance`` is finite.
    """

    rows: np.ndarray | None
    usable: np.ndarray
    noise_variance: np.ndarray
    coefficients: list[np.ndarray]
    covariance: np.ndarray | None
    covariance_finite: bool


def sample_model(model: BiasModel, rows: np.ndarray | None = None) -> ModelSample:
    """The model at ``rows`` (all rows when ``None``), as :func:`estimate_temperature` uses it.

    Parameters
    ----------
    model
        The fitted model.
    rows
        Rows of the frames to be estimated.

    Returns
    -------
    ModelSample
    """
    select = slice(None) if rows is None else rows
    flagged = model.mask[select] if model.dq is None else (model.mask[select] | (model.dq[select] != 0))
    noise = model.read_noise if model.read_noise is not None else np.ones(model.shape, dtype=np.float32)
    noise = noise[select]
    usable = ~flagged & np.isfinite(noise) & (noise > 0)
    noise_variance = noise[usable].astype(np.float64) ** 2
    coefficients = [c[select][usable].astype(np.float64) for c in model.coefficients]
    covariance = None if model.covariance is None else model.covariance[:, :, select][:, :, usable].astype(np.float64)
    finite = covariance is not None and bool(np.all(np.isfinite(covariance)))
    return ModelSample(
        None if rows is None else np.asarray(rows), usable, noise_variance, coefficients, covariance, finite
    )


def estimate_temperature(
    frame: np.ndarray,
    model: BiasModel,
    *,
    start: float | None = None,
    clip_sigma: float = 5.0,
    iterations: int = 5,
    rows: np.ndarray | None = None,
    sample: ModelSample | None = None,
) -> TemperatureEstimate:
    """Estimate the temperature at which ``model`` best reproduces ``frame``.

    Parameters
    ----------
    frame
        A raw frame in 16-bit ADU, the model's shape.
    model
        The fitted model (its ``read_noise`` map weights the pixels when present).
    start
        First guess [deg C] (default: the median of the pixels' own linear estimates).
    clip_sigma
        Pixels further than this many noise sigmas from the model are dropped.
    iterations
        At most this many clip-and-refit passes.
    rows
        When given, ``frame`` holds only these rows of a frame (the model's rows are taken
        to match).
    sample
        :func:`sample_model` of ``model`` at ``rows``, when the caller estimates many frames
        (the same result, without slicing the model again).

    Returns
    -------
    TemperatureEstimate

    Examples
    --------
    >>> a, b = np.full((20, 30), 3000.0), np.full((20, 30), 3.0)
    >>> model = BiasModel.from_maps(a, b)
    >>> frame = a + b * 12.5
    >>> frame[0, 0] += 5000  # a cosmic ray
    >>> round(estimate_temperature(frame, model).temperature, 6)
    12.5
    """
    if sample is None:
        sample = sample_model(model, rows)
    values = frame[sample.usable]
    finite = np.isfinite(values)
    if finite.all():
        y = values.astype(np.float64)
        noise_variance, coefficients, covariance = sample.noise_variance, sample.coefficients, sample.covariance
        covariance_finite = sample.covariance_finite
    else:  # a frame with NaN pixels: the model's arrays over its finite ones
        y = values[finite].astype(np.float64)
        noise_variance = sample.noise_variance[finite]
        coefficients = [c[finite] for c in sample.coefficients]
        covariance = None if sample.covariance is None else sample.covariance[:, :, finite]
        covariance_finite = covariance is not None and bool(np.all(np.isfinite(covariance)))
    weight = 1.0 / noise_variance
    if not covariance_finite:
        covariance = None
    if start is None:
        # Robust first guess: the median over pixels of each pixel's own linear estimate.
        usable = np.abs(coefficients[1]) > 1e-6
        start = float(np.median((y[usable] - coefficients[0][usable]) / coefficients[1][usable]))
    temperature = start
    keep = np.ones(y.size, dtype=bool)
    slope = coefficients[1]
    for iteration in range(iterations):
        if covariance is not None:
            powers = temperature ** np.arange(len(coefficients))
            weight = 1.0 / (noise_variance + np.einsum("p,pqk,q->k", powers, covariance, powers))
        residual = (y - _poly(coefficients, temperature)) * np.sqrt(weight)
        # The clip scale is the noise, or the residuals' robust spread when that is larger
        # (a model without a noise map, a frame noisier than the read noise). The median is
        # taken once for both uses: astropy's mad_std is exactly this, and it would take it
        # again.
        centre = np.median(residual)
        spread = max(1.0, float(np.median(np.abs(residual - centre)) * MAD_TO_SIGMA))
        new_keep = np.abs(residual - centre) <= clip_sigma * spread
        if iteration > 0 and np.array_equal(new_keep, keep):
            break
        keep = new_keep
        for _step in range(3 if len(coefficients) > 2 else 1):  # Gauss-Newton; exact when linear
            predicted = _poly(coefficients, temperature)
            slope = _dpoly(coefficients, temperature)
            numerator = np.sum((weight * slope * (y - predicted))[keep])
            denominator = np.sum((weight * slope**2)[keep])
            temperature += numerator / denominator
    information = float(np.sum((weight * slope**2)[keep]))
    error = 1.0 / math.sqrt(information) if information > 0 else math.inf
    return TemperatureEstimate(float(temperature), error, int(keep.sum()))


def _poly(coefficients: list[np.ndarray], t: float) -> np.ndarray:
    return sum(c * t**j for j, c in enumerate(coefficients))  # type: ignore[return-value]


def _dpoly(coefficients: list[np.ndarray], t: float) -> np.ndarray:
    return sum(j * c * t ** (j - 1) for j, c in enumerate(coefficients) if j > 0)  # type: ignore[return-value]

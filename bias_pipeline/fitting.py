"""Per-pixel weighted polynomial fits of bias against temperature, as array functions.

Every pixel shares the same temperatures and weights, so the weighted least-squares solution
is one small matrix ``L`` (coefficients x inputs) applied to the inputs, and the inputs
(masters or frames, full 2-D images) are visited one at a time: memory holds the coefficient
maps, never a stack. The fit is made in ``t = T - TREF`` (TREF: a temperature inside the data)
so the matrix is well conditioned, then expressed in powers of ``T`` about 0 deg C, the
meaning of the seed's a-map.

Noise model: input k of a pixel has variance ``noise^2 / w_k``, with ``noise`` the pixel's
read noise (one frame) and ``w_k`` the input's weight (frames combined, divided by the
combine's efficiency squared). The coefficient covariance is then ``noise^2 * C`` with one
``C`` for all pixels, and ``chi2 = sum w_k r_k^2 / noise^2`` tests the model. With the noise
known, ``chi2`` follows a chi-square of ``dof`` degrees of freedom; with the noise estimated
from ``noise_dof`` degrees of freedom, independently of the residuals, ``chi2 / dof`` follows
Fisher's F(``dof``, ``noise_dof``) (:func:`f_threshold`), whose tail is heavier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputDataError


@dataclass
class PolynomialFit:
    """Result of :func:`fit_polynomial`.

    Attributes
    ----------
    coefficients
        ``(degree + 1, rows, columns)`` float64: ``a, b[, c]`` of ``a + b T + c T^2``
        (T in deg C).
    unit_covariance
        ``(degree + 1, degree + 1)`` covariance of the coefficients for unit noise; a pixel's
        covariance is this times its ``noise_variance``.
    noise_variance
        Per-pixel variance of one frame used for the covariance (given, or estimated from the
        residuals when no noise map was given).
    chi2
        Per-pixel ``sum w r^2 / noise^2``; ``dof`` degrees of freedom.
    rms
        Per-pixel root mean square of the residuals [ADU], unweighted.
    residual_sum_sq
        Per-pixel ``sum w r^2`` (weighted, not divided by the noise).
    leverage
        ``h_k`` of each input: its held-out residual is ``r_k / (1 - h_k)`` (exact for a linear
        smoother), so leave-one-out needs no refits.
    tref
        Reference temperature of the fit [deg C].
    dof
        Inputs minus coefficients.
    noise_dof
        Degrees of freedom of ``noise_variance`` as an estimate (``inf``: known, or estimated
        from so much data that it may be taken as known): ``chi2 / dof`` follows
        F(``dof``, ``noise_dof``).
    """

    coefficients: np.ndarray
    unit_covariance: np.ndarray
    noise_variance: np.ndarray
    chi2: np.ndarray
    rms: np.ndarray
    residual_sum_sq: np.ndarray
    leverage: np.ndarray
    tref: float
    dof: int
    noise_dof: float = math.inf

    @property
    def degree(self) -> int:
        """Polynomial degree."""
        return self.coefficients.shape[0] - 1

    def covariance(self) -> np.ndarray:
        """Per-pixel covariance ``(P, P, rows, columns)`` of the coefficients, float32."""
        unit = self.unit_covariance.astype(np.float32)
        return unit[:, :, None, None] * self.noise_variance.astype(np.float32)[None, None]


def _shift_matrix(degree: int, tref: float) -> np.ndarray:
    """``J`` with ``coef_T = J coef_t`` for ``sum c_p (T - tref)^p = sum A_j T^j``."""
    size = degree + 1
    shift = np.zeros((size, size))
    for p in range(size):
        for j in range(p + 1):
            shift[j, p] = math.comb(p, j) * (-tref) ** (p - j)
    return shift


def design(
    temperatures: Sequence[float], weights: Sequence[float], degree: int = 1, tref: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The linear maps of a weighted polynomial fit shared by all pixels.

    Parameters
    ----------
    temperatures
        Temperature of each input [deg C].
    weights
        Weight of each input (> 0).
    degree
        1 or 2.
    tref
        Reference temperature; the weighted median temperature when ``None``.

    Returns
    -------
    smoother, unit_covariance, leverage, tref
        ``smoother`` (P x K) gives coefficients in powers of T from the inputs;
        ``unit_covariance`` (P x P) their covariance for unit noise; ``leverage`` (K,).

    Raises
    ------
    InputDataError
        When there are fewer distinct temperatures than coefficients.
    """
    temps = np.asarray(temperatures, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if temps.size != w.size:
        raise InputDataError("one weight per temperature is needed")
    if np.any(~(w > 0)):
        raise InputDataError("weights must be positive")
    distinct = np.unique(temps)
    if distinct.size < degree + 1:
        raise InputDataError(
            f"a degree-{degree} fit needs masters at {degree + 1} or more distinct temperatures, got "
            f"{', '.join(f'{t:g}' for t in distinct) or 'none'} deg C; "
            "add frames at other temperatures or narrow --temp-bin-width"
        )
    if tref is None:
        order = np.argsort(temps)
        cumulative = np.cumsum(w[order])
        tref = float(temps[order][np.searchsorted(cumulative, cumulative[-1] / 2)])
    t = temps - tref
    x = np.vander(t, degree + 1, increasing=True)  # K x P
    normal = x.T @ (w[:, None] * x)
    inverse = np.linalg.inv(normal)
    smoother_t = inverse @ (x.T * w[None, :])  # P x K, coefficients in powers of t
    leverage = w * np.einsum("kp,pq,kq->k", x, inverse, x)
    shift = _shift_matrix(degree, tref)
    return shift @ smoother_t, shift @ inverse @ shift.T, leverage, tref


def evaluate_polynomial(coefficients: np.ndarray, temperature: float, dtype: type = np.float64) -> np.ndarray:
    """``sum_j coefficients[j] * T^j`` (Horner), ``coefficients`` shaped ``(P, ...)``."""
    result = np.array(coefficients[-1], dtype=dtype)
    for coefficient in coefficients[-2::-1]:
        result *= dtype(temperature)
        result += coefficient
    return result


def fit_polynomial(
    temperatures: Sequence[float],
    weights: Sequence[float],
    load: Callable[[int], np.ndarray],
    *,
    degree: int = 1,
    tref: float | None = None,
    noise: np.ndarray | None = None,
    noise_dof: float = math.inf,
) -> PolynomialFit:
    """Fit ``a + b T (+ c T^2)`` to every pixel, reading the inputs one at a time (twice).

    Parameters
    ----------
    temperatures, weights
        Per input: temperature [deg C] and weight (inverse relative variance).
    load
        ``load(k)`` returns input ``k`` as a 2-D array.
    degree
        1 or 2.
    tref
        Reference temperature (default: weighted median).
    noise
        Per-pixel noise of one frame [ADU]; when ``None`` it is estimated from the residuals
        (then the reduced chi-square is 1 by construction).
    noise_dof
        Degrees of freedom of ``noise`` as an estimate (``inf``: known).

    Returns
    -------
    PolynomialFit

    Examples
    --------
    >>> frames = [np.full((1, 2), 100.0 + 2.0 * t) for t in (0.0, 10.0, 20.0)]
    >>> fit = fit_polynomial([0.0, 10.0, 20.0], [1, 1, 1], frames.__getitem__)
    >>> fit.coefficients[:, 0, 0].round(9).tolist(), fit.tref
    ([100.0, 2.0], 10.0)
    """
    temps = np.asarray(temperatures, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    smoother, unit_cov, leverage, tref = design(temps, w, degree, tref)
    # Sums in float64 (the coefficients), residuals in float32: the masters are float32 and
    # a residual of a few ADU loses nothing there; full-frame float64 temporaries would
    # double the memory and the time.
    coefficients: np.ndarray | None = None
    for k in range(temps.size):
        y = _floating(load(k))
        if coefficients is None:
            coefficients = np.zeros((degree + 1, *y.shape))
        elif y.shape != coefficients.shape[1:]:
            raise InputDataError(f"input {k} has shape {y.shape}, the others {coefficients.shape[1:]}")
        for p in range(degree + 1):
            coefficients[p] += np.float64(smoother[p, k]) * y  # float64 products: exact fits stay exact
    assert coefficients is not None
    coefficients32 = coefficients.astype(np.float32)
    residual_sum_sq = np.zeros(coefficients.shape[1:], dtype=np.float32)
    square_sum = np.zeros(coefficients.shape[1:], dtype=np.float32)
    for k in range(temps.size):
        residual = _floating(load(k))
        residual = residual - evaluate_polynomial(coefficients32 if residual.dtype == np.float32 else coefficients,
                                                  temps[k], dtype=residual.dtype.type)  # fmt: skip
        np.multiply(residual, residual, out=residual)
        square_sum += residual
        residual *= np.float32(w[k])
        residual_sum_sq += residual
    dof = temps.size - (degree + 1)
    if noise is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            noise_variance = residual_sum_sq / dof if dof > 0 else np.full(residual_sum_sq.shape, np.nan)
    else:
        noise_variance = np.square(np.asarray(noise, dtype=np.float32))
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = residual_sum_sq / noise_variance
    return PolynomialFit(
        coefficients=coefficients,
        unit_covariance=unit_cov,
        noise_variance=noise_variance,
        chi2=chi2,
        rms=np.sqrt(square_sum / temps.size),
        residual_sum_sq=residual_sum_sq,
        leverage=leverage,
        tref=tref,
        dof=dof,
        noise_dof=noise_dof,
    )


def _floating(data: np.ndarray) -> np.ndarray:
    """``data`` as float32, or float64 when given so (callers passing float64 keep its precision)."""
    data = np.asarray(data)
    return data if data.dtype in (np.float32, np.float64) else data.astype(np.float32)


def chi2_threshold(dof: int, p_value: float) -> float:
    """Chi-square value exceeded with probability ``p_value`` with ``dof`` degrees of freedom
    (the exact quantile, :func:`scipy.special.chdtri`, what ``scipy.stats.chi2.isf`` computes;
    fine for any ``p_value`` down to the smallest float, where ``1 - p`` would round to 1).

    >>> round(chi2_threshold(1, 0.001), 2), round(chi2_threshold(3, 1e-4), 2), round(chi2_threshold(3, 1e-16), 1)
    (10.83, 21.11, 77.6)
    """
    from scipy.special import chdtri  # here, and not scipy.stats: that import alone costs a second

    return float(chdtri(dof, p_value))


def f_threshold(dof: int, noise_dof: float, p_value: float) -> float:
    """Value of ``chi2 / dof`` exceeded with probability ``p_value`` when ``chi2`` is a sum of
    ``dof`` squared residuals divided by a noise variance estimated, independently, from
    ``noise_dof`` degrees of freedom: the upper ``p_value`` quantile of F(``dof``, ``noise_dof``),
    exact (through the inverse regularised incomplete beta function, so as small a ``p_value``
    as :func:`chi2_threshold` takes), and ``chi2_threshold(dof, p) / dof`` for ``noise_dof = inf``.

    >>> round(f_threshold(3, 35, 0.01), 4), round(f_threshold(3, math.inf, 0.01) * 3, 4)
    (4.3957, 11.3449)
    >>> bool(f_threshold(3, 1e12, 1e-4) * 3 - chi2_threshold(3, 1e-4) < 1e-6)
    True
    """
    from scipy.special import betaincinv

    if not noise_dof < 1e10:  # inf, NaN-free huge: the noise is known
        return chi2_threshold(dof, p_value) / dof
    # P(F > x) = I_y(noise_dof / 2, dof / 2) with y = noise_dof / (noise_dof + dof x).
    y = float(betaincinv(noise_dof / 2.0, dof / 2.0, p_value))
    return noise_dof * (1.0 - y) / (dof * y)


def f_pvalue(reduced_chi2: np.ndarray, dof: int, noise_dof: float) -> np.ndarray:
    """Probability that F(``dof``, ``noise_dof``) exceeds ``reduced_chi2`` (the inverse of
    :func:`f_threshold`; the chi-square tail for ``noise_dof = inf``).

    >>> round(float(f_pvalue(np.array(f_threshold(3, 35, 0.01)), 3, 35)), 6)
    0.01
    """
    from scipy.special import chdtrc, fdtrc

    values = np.asarray(reduced_chi2, dtype=np.float64)
    if not noise_dof < 1e10:
        return chdtrc(dof, values * dof)
    return fdtrc(dof, noise_dof, values)

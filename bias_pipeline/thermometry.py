"""The model as a thermometer: a frame's own temperature estimated from its pixels.

For a frame ``y`` and the model ``a + b T (+ c T^2)``, the temperature is the value that
minimises ``sum ((y - model(T)) / s)^2`` over unflagged pixels, by Gauss-Newton steps
(exact in one step for a linear model), with pixels beyond ``clip_sigma`` (cosmic rays)
dropped and the fit repeated. ``s^2`` is the pixel's noise squared plus the model's own
variance at ``T`` (from the fit's covariance: the slope's error matters far from the fitted
temperatures, and in a frame of a few pixels it is most of the error). The standard error is
``1 / sqrt(sum (dmodel/dT / s)^2)``: with millions of pixels, a few thousandths of a degree.

Row noise (the offset each row of a CMOS frame shares, :mod:`bias_pipeline.row_noise`) biases
nothing on average but adds scatter, and far more than the read noise does: a row's offset
moves all its pixels alike, as a temperature change would, so the mean of a frame's ``R`` row
offsets moves the estimate by ``s_row / (sqrt(R) x mean slope)`` (0.8 deg C for row noise of
19 ADU over 64 rows at 3 ADU / deg C, against 0.03 deg C from the read noise), which no
estimate can tell from a temperature change without reference pixels. With ``row_correction``
``"on"``, or ``"auto"`` when the frame's row offsets against the model are significant against
its read noise, the fit takes the row noise into the pixels' covariance (each row's common
level weighted by ``1 / (s^2 / C + s_row^2)``, the differences within a row, the pixel-to-pixel
and column pattern of the slope, fully), ``s_row`` measured from the frame's own row offsets
(medians against the model at the current estimate, about their mean). Pixels are clipped on
their residual less their row's offset. The estimate is then the best the frame allows, and its
error says how good that is (an honest error keeps the ``temperature_mismatch`` flag to its
promised rate); without the correction the error would count the read noise alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .model import BiasModel
from .row_noise import ROW_CORRECTION_MODES, FrameRows, measure_frame_rows

MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(0.75): astropy's mad_std factor


@dataclass
class TemperatureEstimate:
    """A frame's temperature from its bias [deg C], its standard error and the pixels used.

    ``row_noise`` is the frame's row-noise amplitude [ADU] when its rows were measured (NaN
    otherwise); ``row_corrected`` whether its row offsets were removed (module docstring).
    """

    temperature: float
    error: float
    n_pixels: int
    row_noise: float = math.nan
    row_corrected: bool = False


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
    row_correction: str = "off",
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
    row_correction
        ``"off"`` (default: the estimate as without row noise), ``"auto"`` (remove the frame's
        row offsets about their mean when they are significant against the model's read noise;
        never for a model without a read-noise map) or ``"on"`` (always, where the rows have
        enough pixels; for a model without a read-noise map the offsets' whole mean square
        stands for the row noise's variance); module docstring.

    Returns
    -------
    TemperatureEstimate

    Raises
    ------
    ValueError
        When ``row_correction`` is not one of :data:`~bias_pipeline.row_noise.ROW_CORRECTION_MODES`.

    Examples
    --------
    >>> a, b = np.full((20, 30), 3000.0), np.full((20, 30), 3.0)
    >>> model = BiasModel.from_maps(a, b)
    >>> frame = a + b * 12.5
    >>> frame[0, 0] += 5000  # a cosmic ray
    >>> round(estimate_temperature(frame, model).temperature, 6)
    12.5
    """
    if row_correction not in ROW_CORRECTION_MODES:
        raise ValueError(f"row_correction {row_correction!r} is not one of {', '.join(ROW_CORRECTION_MODES)}")
    if sample is None:
        sample = sample_model(model, rows)
    values = frame[sample.usable]
    finite = np.isfinite(values)
    # Where each pixel of ``values`` sits in the frame's rows, for the row offsets.
    grid = _PixelGrid(sample.usable, finite) if row_correction != "off" and np.ndim(frame) == 2 else None
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
    measured = y  # the frame's pixels, less their rows' offsets when those are removed
    found: FrameRows | None = None
    correcting = grid is not None
    for iteration in range(iterations):
        if covariance is not None:
            powers = temperature ** np.arange(len(coefficients))
            weight = 1.0 / (noise_variance + np.einsum("p,pqk,q->k", powers, covariance, powers))
        # The rows are measured at the first guess and once more at the first estimate: later
        # steps move the temperature by far less than would change a row's median.
        if correcting and iteration < 2:
            assert grid is not None
            noise = np.sqrt(1.0 / weight) if model.read_noise is not None else None  # the model's variance too
            found = grid.rows(y - _poly(coefficients, temperature), keep, noise)
            if iteration == 0 and row_correction == "auto" and not found.test.significant:
                correcting = False  # no row noise to speak of: the estimate as without the option
            else:
                measured = y - found.offsets[grid.row_of]
        residual = (measured - _poly(coefficients, temperature)) * np.sqrt(weight)
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
        row_variance = _row_variance(found) if correcting else 0.0
        for _step in range(3 if len(coefficients) > 2 else 1):  # Gauss-Newton; exact when linear
            predicted = _poly(coefficients, temperature)
            slope = _dpoly(coefficients, temperature)
            if correcting:
                assert grid is not None
                numerator, denominator = grid.row_weighted_sums(weight, slope, y - predicted, keep, row_variance)
            else:
                numerator = np.sum((weight * slope * (measured - predicted))[keep])
                denominator = np.sum((weight * slope**2)[keep])
            temperature += numerator / denominator
    if correcting:
        assert grid is not None and found is not None
        _, information = grid.row_weighted_sums(weight, slope, y - _poly(coefficients, temperature), keep, row_variance)
        information = float(information)
    else:
        information = float(np.sum((weight * slope**2)[keep]))
    error = 1.0 / math.sqrt(information) if information > 0 else math.inf
    row_noise = found.amplitude if found is not None else math.nan
    return TemperatureEstimate(float(temperature), error, int(keep.sum()), row_noise, correcting)


def _row_variance(found: FrameRows | None) -> float:
    """The row noise's variance the weighted fit assumes: the measured amplitude's square, or,
    without a read-noise map to measure it against (``"on"`` with a bare model), the offsets'
    whole mean square (read noise's part included: an upper bound, so the error is not too
    small); 0 when no row was measured."""
    if found is None:
        return 0.0
    if math.isfinite(found.amplitude):
        return found.amplitude**2
    return found.rms_removed**2


class _PixelGrid:
    """The usable pixels of a frame's rows, as flat vectors, put back in their rows to measure
    the rows' offsets."""

    def __init__(self, usable: np.ndarray, finite: np.ndarray) -> None:
        rows, columns = np.nonzero(usable)
        self.shape = usable.shape
        self.row_of = rows[finite]
        self.column_of = columns[finite]

    def rows(self, difference: np.ndarray, keep: np.ndarray, noise: np.ndarray | None) -> FrameRows:
        """The row offsets of ``difference`` (a value per pixel) over the ``keep`` pixels."""
        grid = np.full(self.shape, np.nan, dtype=np.float32)
        grid[self.row_of[keep], self.column_of[keep]] = difference[keep]
        noise_grid = None
        if noise is not None:
            noise_grid = np.full(self.shape, np.nan, dtype=np.float64)
            noise_grid[self.row_of[keep], self.column_of[keep]] = noise[keep]
        return measure_frame_rows(grid, None, noise_grid)

    def row_weighted_sums(
        self, weight: np.ndarray, slope: np.ndarray, residual: np.ndarray, keep: np.ndarray, row_variance: float
    ) -> tuple[float, float]:
        """The Gauss-Newton step's numerator and denominator with the row noise in the pixels'
        covariance: within a row ``diag(1 / w) + row_variance * 1 1^T``, whose inverse
        (Sherman-Morrison) subtracts from each row's weighted sums ``row_variance x (sum w b)
        (sum w z) / (1 + row_variance x sum w)``. A row's common level is weighted by
        ``1 / (its mean's noise variance + row_variance)``, its pixels' differences fully."""
        rows, count = self.row_of[keep], self.shape[0]
        w, b, z = weight[keep] if np.ndim(weight) else np.full(rows.size, weight), slope[keep], residual[keep]
        sum_w = np.bincount(rows, w, count)
        sum_wb = np.bincount(rows, w * b, count)
        sum_wz = np.bincount(rows, w * z, count)
        shrink = row_variance / (1.0 + row_variance * sum_w)
        numerator = float(np.sum(w * b * z) - np.sum(shrink * sum_wb * sum_wz))
        denominator = float(np.sum(w * b * b) - np.sum(shrink * sum_wb**2))
        return numerator, denominator


def _poly(coefficients: list[np.ndarray], t: float) -> np.ndarray:
    return sum(c * t**j for j, c in enumerate(coefficients))  # type: ignore[return-value]


def _dpoly(coefficients: list[np.ndarray], t: float) -> np.ndarray:
    return sum(j * c * t ** (j - 1) for j, c in enumerate(coefficients) if j > 0)  # type: ignore[return-value]

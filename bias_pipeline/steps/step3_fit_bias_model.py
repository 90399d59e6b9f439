"""Step 3: fit ``bias(T) = a + b T`` (``+ c T^2`` with ``--degree 2``) to every pixel.

:func:`fit_model` fits the masters of step 2 (:class:`~bias_pipeline.master_writer.Master`);
:func:`fit_model_on_frames` (``--fit-on frames``) fits every used frame at its own temperature.
The fit is weighted least squares with a closed form per pixel (a fixed linear smoother,
:func:`~bias_pipeline.fitting.design`). With the compiled kernels (:mod:`bias_pipeline.fit_kernels`,
the default) every input is read once, a block of rows at a time (a master's image, ``NOISE`` and
``NUSED`` rows together; for ``--fit-on frames`` the masters' noise first, then each frame's rows
with its master's), on worker threads, into float32 maps; the numpy reference path
(``BIAS_PIPELINE_KERNELS=numpy``: :func:`~bias_pipeline.fitting.fit_polynomial`) reads whole
inputs one at a time, twice (sums, then residuals). Both give the same maps. A master of ``n``
frames weighs ``n / e^2`` (``e`` the combine's efficiency for ``n`` values, measured by simulating
the combine: :func:`combine_weights`) over the read noise squared; the read noise is pooled over
the groups' ``NOISE`` maps (each corrected for its combine's bias) and shrunk towards its typical
value (:func:`shrink_noise`), the row noise the masters still carry is added, and the result
gives each pixel's chi-square. ``chi2 / dof`` (the model's ``CHI2`` map) is tested against
F(``dof``, the shrunk noise's effective degrees of freedom, :class:`NoiseShrinkage`), so
NONLINEAR flags the fraction ``--nonlinear-pvalue`` promises on pure noise. The model carries
the covariance of the coefficients, the fit statistics and DQ flags (:mod:`bias_pipeline.quality`:
HOT_MASK, NONLINEAR, NOISY, DEAD, SATURATED). Pixels of the hot-pixel mask (non-zero = hot) are left out and hold NaN.

The legacy call forms (``fit_bias_model``, ``fit_linear``, ``save_bias_model``) live in
:mod:`bias_pipeline.legacy` and are found here too.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..block_combine import quantisation_step
from ..combine_efficiency import CombineFactors, combine_factors, quantum_ratio
from ..compiled import engine
from ..config import PipelineConfig
from ..errors import InputDataError
from ..fit_kernels import fit_frame_rows, fit_rows, pool_noise_rows, sum_counts_rows
from ..fitting import PolynomialFit, design, f_threshold, fit_polynomial
from ..frames import FrameRecord, plain_uint16, read_frame, read_rows, read_uint16_rows, reading
from ..lazy import forward
from ..master_writer import Master
from ..model import BiasModel, ScaledCovariance
from ..products import read_image
from ..quality import MAX_CLIPPED_FRACTION, describe, flag_pixels, robust_outliers
from ..telegraph import telegraph_pixels
from ..units import adc_maximum, input_factor
from ..workers import default_threads, worker_pool

logger = logging.getLogger(__name__)

#: The legacy call forms, defined in :mod:`bias_pipeline.legacy` and found here by name.
LEGACY_NAMES = ("fit_bias_model", "fit_linear", "save_bias_model")
__all__ = [
    "MOSTLY_FLAGGED",
    "MOSTLY_MASKED",
    "QUADRATIC_PVALUE",
    "QUADRATIC_Z",
    "SLOPE_SAMPLE",
    "check_mask",
    "fit_model",
    "fit_model_on_frames",
    "load_hot_pixel_mask",
    "CombineWeights",
    "NoiseShrinkage",
    "combine_weights",
    "noise_shrinkage",
    "pooled_read_noise",
    "shrink_noise",
    "warn_if_implausible",
    *LEGACY_NAMES,
]


# PEP 562: the legacy forms are looked up on first use. legacy.py imports this module, so
# importing it here at the top would be an import cycle.
__getattr__ = forward(__name__, LEGACY_NAMES, "bias_pipeline.legacy")


#: A mask marking more than this fraction of the pixels as hot is suspect (an inverted mask).
MOSTLY_MASKED = 0.5
#: More than this fraction of the fitted pixels flagged says the data, not the pixels, are at fault.
MOSTLY_FLAGGED = 0.5
#: Pixels whose slope and its error give the typical values of :func:`warn_if_implausible`.
SLOPE_SAMPLE = 100_000

# |c| / sigma_c beyond this: the quadratic term is warranted at p < 0.001 (two-sided). With
# the noise known this is the likelihood-ratio (delta chi-square, 1 dof) test of degree 2
# against degree 1, since delta chi2 = (c / sigma_c)^2 for one added parameter. With the noise
# estimated (``noise_dof`` degrees of freedom) (c / sigma_c)^2 follows F(1, noise_dof), and the
# log uses that quantile (Student's t), which this is the limit of.
QUADRATIC_Z = 3.2905
QUADRATIC_PVALUE = 0.001


def load_hot_pixel_mask(path: str | Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
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
    if mask.mean() > MOSTLY_MASKED:
        logger.warning(
            "--hot-pixel-mask %s marks %.1f %% of the pixels as hot (%d of %d): is it inverted? "
            "Non-zero must mean hot; only %d pixels are fitted",
            path, 100 * mask.mean(), int(mask.sum()), mask.size, int((~mask).sum()),
        )  # fmt: skip
    return mask


def check_mask(mask: np.ndarray, shape: tuple[int, ...] | None, name: str = "hot-pixel mask") -> np.ndarray:
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


def pooled_read_noise(
    masters: Sequence[Master], noise_bias: Sequence[float] | None = None
) -> tuple[np.ndarray | None, int]:
    """Per-pixel read noise pooled over the masters' ``NOISE`` maps, and its degrees of freedom.

    ``sqrt(sum (n_k - 1) s_k^2 / g_k / sum (n_k - 1))``: the pooled variance is unbiased, whereas
    a median of a few per-group standard deviations is biased low (by ~8 % for 5 frames a group).
    ``g_k`` (``noise_bias``, default 1) is the mean square of master ``k``'s noise map over the
    true variance (:func:`~bias_pipeline.combine_efficiency.combine_factors`: 0.99 for a
    sigma-clip of 3 frames). Returns ``(None, 0)`` when no master has a noise map (groups of one frame).
    """
    total: np.ndarray | None = None
    dof = 0
    for k, master in enumerate(masters):
        noise = master.load_extension("NOISE")
        n = int(master.n_frames)
        if noise is None or n < 2:
            continue
        noise = np.nan_to_num(noise, nan=0.0)  # a copy: the caller's array stays as it was
        bias = 1.0 if noise_bias is None else float(noise_bias[k])
        variance = np.float32((n - 1) / bias) * noise * noise
        total = variance if total is None else np.add(total, variance, out=total)
        dof += n - 1
    return (None, 0) if total is None else (np.sqrt(total / dof).astype(np.float32), dof)


@dataclass(frozen=True)
class CombineWeights:
    """What the combine of each master means for the fit (:func:`combine_weights`).

    Attributes
    ----------
    weights
        Per master: ``n_k / e_k^2``, its inverse variance in units of one frame's pixel variance.
    noise_bias
        Per master: the mean square of its ``NOISE`` map over the true variance.
    row_variance
        ``R`` [ADU^2]: the row-correlated variance the fit adds to the pixel variance.
    """

    weights: tuple[float, ...]
    noise_bias: tuple[float, ...]
    row_variance: float


def combine_weights(
    masters: Sequence[Master], config: PipelineConfig, quantum: float = 0.0, *, frames_fit: bool = False
) -> CombineWeights:
    """The masters' weights, their noise maps' bias and the row variance, from how they were made.

    A master of ``n`` frames combined by a method of efficiency ``e`` (the master's standard error
    over ``noise / sqrt(n)``) has variance ``(e^2 sigma^2 + rho^2) / n``: ``sigma`` the pixel's
    noise, ``rho`` the rms row offset its frames had removed (``row_noise``; the master keeps their
    mean, common to the row). ``e^2`` and the noise map's bias come from
    :func:`~bias_pipeline.combine_efficiency.combine_factors` (by simulation of the combine as
    implemented, with the master's ``n``, the clip options and ``quantum`` over its typical noise):
    1.12 for a sigma-clip of 3 frames, 1.04 of 8, 1.34..1.50 for a median, 1 for a mean.

    One linear smoother serves all pixels, so the row part enters as one pooled variance ``R``
    added to every pixel's: ``sigma_fit^2 = sigma^2 + R`` with master ``k`` modelled as
    ``e_k^2 sigma_fit^2 / n_k``, i.e. ``R`` the weighted mean of ``rho_k^2 / e_k^2`` with the
    fit's weights ``n_k / e_k^2``: exact when the masters share one row noise and one efficiency
    (a camera's frames), and the weights stay those of the pixel noise.

    Parameters
    ----------
    masters
        ``method``, ``n_frames`` and, when they have them, ``noise_median`` and ``row_noise``.
    config
        ``clip_sigma``, ``clip_iters``.
    quantum
        The frames' quantisation step [ADU] (0: continuous).
    frames_fit
        For ``--fit-on frames``: each input is one raw frame (weight 1, carrying its full row
        offsets), so ``R`` is the frames' mean ``rho^2``.

    Returns
    -------
    CombineWeights
    """
    from scipy.special import chdtri

    factors: list[CombineFactors] = []
    for master in masters:
        # The master's median noise is that of a chi distribution of n - 1 degrees of freedom;
        # its rms (the scale the simulation takes) is larger by 1 / sqrt(median of chi2 / dof).
        n = int(master.n_frames)
        typical = float(getattr(master, "noise_median", math.nan))
        if n >= 2:
            typical /= math.sqrt(float(chdtri(n - 1, 0.5)) / (n - 1))
        factors.append(
            combine_factors(
                master.method, int(master.n_frames), float(config.clip_sigma), int(config.clip_iters),
                quantum_ratio(quantum, typical),
            )
        )  # fmt: skip
    frames = [int(m.n_frames) for m in masters]
    weights = tuple(n / f.variance for n, f in zip(frames, factors, strict=True))
    rows = [float(getattr(m, "row_noise", 0.0) or 0.0) ** 2 for m in masters]
    if frames_fit:
        row_variance = sum(n * r for n, r in zip(frames, rows, strict=True)) / max(sum(frames), 1)
    else:
        row_variance = sum(w * r / f.variance for w, r, f in zip(weights, rows, factors, strict=True)) / sum(weights)
    bias = tuple(f.noise_bias if math.isfinite(f.noise_bias) else 1.0 for f in factors)
    return CombineWeights(weights, bias, float(row_variance))


@dataclass(frozen=True)
class NoiseShrinkage:
    """How :func:`shrink_noise` pulls a noise map towards its typical value.

    Attributes
    ----------
    centre
        The typical variance [ADU^2]: the median of the pixels' variances divided by the median
        of a chi-square of ``dof`` degrees of freedom over ``dof`` (so unbiased for a uniform
        sensor, where the plain median is low by ~2 / (3 dof), 1.9 % at 35 dof, and as robust
        as a median to hot and noisy pixels).
    weight
        0 (every pixel takes the centre) to 1 (each keeps its own estimate).
    dof
        Degrees of freedom of each pixel's variance estimate.
    pixels
        Pixels the centre was measured on.
    """

    centre: float
    weight: float
    dof: int
    pixels: int

    @property
    def effective_dof(self) -> float:
        """Degrees of freedom of a shrunk variance as an estimate of the pixel's true variance.

        The shrunk variance ``c + w (s^2 - c)`` errs by ``w (s^2 - sigma^2)`` (estimation) plus
        ``(1 - w) (c - sigma^2)`` (the pixel's own departure from the centre); with the weight
        of normal-normal shrinkage the two add up to ``w`` times the estimation variance
        ``2 c^2 / dof``. A chi-square with the same relative variance has ``dof / w`` degrees of
        freedom (moment matching), at most those of the centre itself (``dof x pixels``).

        >>> NoiseShrinkage(900.0, 0.25, 35, 64000).effective_dof, NoiseShrinkage(900.0, 0.0, 35, 10).effective_dof
        (140.0, 350.0)
        """
        limit = float(self.dof) * max(self.pixels, 1)
        return limit if self.weight <= self.dof / limit else float(self.dof) / self.weight

    def apply(self, noise: np.ndarray) -> np.ndarray:
        """The shrunk noise map, float32 (computed a few MB of rows at a time)."""
        shrunk = np.empty(noise.shape, dtype=np.float32)
        flat, out = noise.reshape(-1), shrunk.reshape(-1)
        step = 1 << 18
        for start in range(0, flat.size, step):
            variance = flat[start : start + step].astype(np.float64) ** 2
            out[start : start + step] = np.sqrt(self.centre + self.weight * (variance - self.centre))
        return shrunk


def noise_shrinkage(noise: np.ndarray, dof: int, valid: np.ndarray) -> NoiseShrinkage | None:
    """The shrinkage :func:`shrink_noise` applies to ``noise`` (``None``: too few pixels or no
    degrees of freedom, the map is used as it is).

    >>> rng = np.random.default_rng(0)
    >>> raw = np.sqrt(rng.chisquare(20, (200, 200)) / 20) * 30.0  # a uniform sensor, 20 dof
    >>> shrinkage = noise_shrinkage(raw, 20, np.ones(raw.shape, bool))
    >>> round(shrinkage.centre / 900, 2), shrinkage.weight < 0.05
    (1.0, True)
    """
    from scipy.special import chdtri

    selected = noise[valid & np.isfinite(noise)].astype(np.float64) ** 2
    if selected.size < 10 or dof < 1 or not np.any(selected > 0):
        return None
    # The median of chi2(dof) / dof is below its mean 1: dividing by it makes the median of the
    # variances an unbiased centre for a uniform sensor.
    centre = float(np.median(selected)) / (float(chdtri(dof, 0.5)) / dof)
    measurement = 2.0 * centre**2 / dof  # variance of one pixel's variance estimate
    sensor = max(0.0, float(np.var(selected)) - measurement)
    weight = sensor / (sensor + measurement)  # 0: all pixels alike, 1: trust each pixel
    return NoiseShrinkage(centre, weight, int(dof), int(selected.size))


def shrink_noise(noise: np.ndarray, dof: int, valid: np.ndarray) -> np.ndarray:
    """Per-pixel noise for the uncertainties: each pixel's estimate pulled towards the typical
    value by as much as its own estimation noise warrants (normal-normal shrinkage of the
    variance, :class:`NoiseShrinkage`).

    A variance estimated from ``dof`` degrees of freedom scatters by ``sqrt(2/dof)`` of itself;
    with few frames that scatter, not the sensor, dominates the map, and dividing by a noisy
    sigma inflates pulls by ``sqrt(dof / (dof - 2))``. The spread the sensor really has
    (observed variance of the map minus the estimation part) sets how far pixels stay apart.

    >>> rng = np.random.default_rng(0)
    >>> raw = np.sqrt(rng.chisquare(20, (50, 50)) / 20) * 30.0  # a uniform sensor, 20 dof
    >>> shrunk = shrink_noise(raw, 20, np.ones(raw.shape, bool))
    >>> bool(shrunk.std() < raw.std() / 3), round(float(np.median(shrunk)) / 30, 1)
    (True, 1.0)
    """
    shrinkage = noise_shrinkage(noise, dof, valid)
    return noise if shrinkage is None else shrinkage.apply(noise)


def fit_model(
    masters: Sequence[Master],
    hot_pixel_mask: np.ndarray | None = None,
    config: PipelineConfig | None = None,
    *,
    scale_factor: float | None = None,
    quantum: float | None = None,
) -> BiasModel:
    """Fit the model to masters, with uncertainties, fit statistics and bad-pixel flags.

    Each master is weighted by its inverse variance: ``n_k / e_k^2`` frames over the combine's
    efficiency squared (:func:`combine_weights`: 1 for a mean, 1.04 for a sigma-clip of 8 frames,
    1.12 of 3, 1.34..1.50 for a median) times the pixel's read noise squared, the read noise
    being pooled over all groups (one stable map rather than a noisy per-group one, which would
    bias a weighted fit). A master's ``row_noise`` adds the pooled row variance to every pixel's
    (``sigma_fit^2 = sigma^2 + R``): the errors of a and b and the chi-square include it, the
    ``READNOISE`` map does not.

    Parameters
    ----------
    masters
        The masters of step 2 (:class:`~bias_pipeline.master_writer.Master`: ``temperature``,
        ``n_frames``, ``method``, ``load()``, ``load_extension()``).
    hot_pixel_mask
        True (or non-zero) where a pixel is left out.
    config
        Options (``degree``, ``nonlinear_pvalue``, ``scale_factor``); defaults if ``None``.
    scale_factor
        Overrides ``config.scale_factor`` (kept for old callers).
    quantum
        The frames' quantisation step [ADU] (see :func:`combine_weights`; default: the scale
        factor, the step of 12-bit values in 16-bit ADU).

    Returns
    -------
    BiasModel

    Raises
    ------
    InputDataError
        With too few distinct temperatures or a mask of another shape.
    """
    config = config or PipelineConfig()
    scale = config.scale_factor if scale_factor is None else scale_factor
    temps = [float(m.temperature) for m in masters]
    frames = [int(m.n_frames) for m in masters]
    combine = combine_weights(masters, config, scale if quantum is None else quantum)
    weights = list(combine.weights)
    level = adc_maximum(scale) * 0.9999
    if engine() == "numba":
        fit, noise, clipped, saturated, mask = _fit_masters_in_blocks(
            masters, temps, combine, hot_pixel_mask, level, config
        )
    else:  # the reference: whole frames, each master read twice
        noise, noise_dof = pooled_read_noise(masters, combine.noise_bias)
        shape = masters[0].load().shape if noise is None else noise.shape
        mask = _as_mask(hot_pixel_mask, shape)
        saturation = _SaturationTracker(level)
        fit_noise, fit_noise_dof = _fit_noise(noise, noise_dof, mask, combine.row_variance)
        with _fit_progress(len(masters), "master", config) as progress:
            fit = fit_polynomial(
                temps,
                weights,
                _counted(lambda k: saturation.see(masters[k].load()), progress),
                degree=config.degree,
                noise=fit_noise,
                noise_dof=fit_noise_dof,
            )
        clipped, saturated = _clipped_fraction(masters, frames), saturation.map
    model = _assemble(
        fit,
        mask,
        noise,
        clipped,
        saturated,
        config,
        scale,
        inputs=FitInputs(tuple(temps), tuple(frames), (min(temps), max(temps)), tuple(float(h) for h in fit.leverage)),
        telegraph=telegraph_pixels(masters),
    )
    _log_fit(model, f"{len(temps)} masters ({sum(frames)} frames)", fit.noise_dof)
    return model


def fit_model_on_frames(
    frames: Sequence[FrameRecord],
    masters: Sequence[Master],
    hot_pixel_mask: np.ndarray | None = None,
    config: PipelineConfig | None = None,
    *,
    input_bits: int = 16,
) -> BiasModel:
    """Fit every used frame at its own measured temperature (``--fit-on frames``).

    One streaming pass accumulates the fit (a second computes the residuals): no frame stack
    and no temperature binning. A frame's pixel further than ``outlier_sigma`` read-noise
    sigmas from its group's master (a cosmic ray) is replaced by the master's value, since a
    single pass cannot clip. The read noise comes from the masters (pooled over groups), and
    each frame weighs one read-noise variance.

    Parameters
    ----------
    frames
        The used frames (``group`` names their master).
    masters
        The masters of step 2 (``label``, ``load()``, ``load_extension()``).
    hot_pixel_mask
        True where a pixel is left out.
    config
        The run's options.
    input_bits
        Bit depth of the stored values.

    Returns
    -------
    BiasModel
        ``group_temperatures``/``group_frames`` describe the masters (for the evaluation);
        its ``group_leverage`` is empty: held-out errors come from a masters fit.
    """
    config = config or PipelineConfig()
    ordered = sorted(frames, key=lambda r: (r.group, str(r.path)))  # one master load per group
    if engine() == "numba":
        fit, noise, clipped, saturated, mask = _fit_frames_in_blocks(
            ordered, masters, hot_pixel_mask, config, input_bits
        )
        counts = [int(m.n_frames) for m in masters]
        temps = [reading(r) for r in ordered]
        model = _assemble(
            fit,
            mask,
            noise,
            clipped,
            saturated,
            config,
            config.scale_factor,
            inputs=FitInputs(tuple(float(m.temperature) for m in masters), tuple(counts), (min(temps), max(temps))),
            telegraph=telegraph_pixels(masters),
        )
        _log_fit(model, f"{len(ordered)} frames at their own temperatures", fit.noise_dof)
        return model
    by_label = {m.label: m for m in masters}
    quantum = quantisation_step(frames, input_bits, config.scale_factor)
    combine = combine_weights(masters, config, quantum, frames_fit=True)
    noise, noise_dof = pooled_read_noise(masters, combine.noise_bias)
    if noise is None:
        raise InputDataError("--fit-on frames needs groups of two or more frames to measure the read noise")
    mask = np.zeros(noise.shape, dtype=bool) if hot_pixel_mask is None else check_mask(hot_pixel_mask, noise.shape)
    floor = np.fmax(noise, float(np.nanmedian(noise)))
    factor = input_factor(input_bits, config.scale_factor)
    saturation = _SaturationTracker(adc_maximum(config.scale_factor) * 0.9999)
    cached: dict[str, np.ndarray] = {}

    def load(k: int) -> np.ndarray:
        record = ordered[k]
        if record.group not in cached:
            cached.clear()
            cached[record.group] = by_label[record.group].load()
        reference = cached[record.group]
        data = read_frame(record) * factor
        far = np.abs(data - reference) > config.outlier_sigma * floor
        data[far] = reference[far]
        return saturation.see(data)

    fit_noise, fit_noise_dof = _fit_noise(noise, noise_dof, mask, combine.row_variance)
    with _fit_progress(len(ordered), "frame", config) as progress:
        fit = fit_polynomial(
            [reading(r) for r in ordered],
            [1.0] * len(ordered),
            _counted(load, progress),
            degree=config.degree,
            noise=fit_noise,
            noise_dof=fit_noise_dof,
        )
    counts = [int(m.n_frames) for m in masters]
    temps = [reading(r) for r in ordered]
    model = _assemble(
        fit,
        mask,
        noise,
        _clipped_fraction(masters, counts),
        saturation.map,
        config,
        config.scale_factor,
        inputs=FitInputs(tuple(float(m.temperature) for m in masters), tuple(counts), (min(temps), max(temps))),
        telegraph=telegraph_pixels(masters),
    )
    _log_fit(model, f"{len(ordered)} frames at their own temperatures", fit.noise_dof)
    return model


def _fit_progress(inputs: int, unit: str, config: PipelineConfig) -> tqdm:
    """A bar over the fit's reads: every input is read twice (sums, then residuals)."""
    return tqdm(
        total=2 * inputs,
        desc="fitting (2 passes)",
        unit=f"{unit}-read",
        disable=None if config.show_progress else True,
        leave=False,
    )


def _counted(load: Callable[[int], np.ndarray], progress: tqdm) -> Callable[[int], np.ndarray]:
    def counted(k: int) -> np.ndarray:
        data = load(k)
        progress.update()
        return data

    return counted


def _as_mask(hot_pixel_mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if hot_pixel_mask is None:
        return np.zeros(shape, dtype=bool)
    return check_mask(hot_pixel_mask, shape)


class _SaturationTracker:
    """Remembers which pixels reached the ADC maximum in any image it was shown."""

    def __init__(self, level: float) -> None:
        self.level = level
        self.map: np.ndarray | None = None

    def see(self, data: np.ndarray) -> np.ndarray:
        hit = data >= self.level
        self.map = hit if self.map is None else (self.map | hit)
        return data


def _fit_noise(
    noise: np.ndarray | None, dof: int, mask: np.ndarray, row_variance: float = 0.0
) -> tuple[np.ndarray | None, float]:
    """The noise the fit divides by, and its degrees of freedom as an estimate: the pooled
    pixel noise shrunk (:class:`NoiseShrinkage`), plus the row-correlated variance the masters
    still carry (``row_variance``, measured from whole rows, so taken as known: it adds to the
    variance without adding to its estimation error, which raises the degrees of freedom by
    ``((c + R) / c)^2``)."""
    if noise is None:
        return None, math.inf
    # Hot, noisy and dead pixels would widen the spread the shrinkage allows.
    high, low = robust_outliers(noise, ~mask, 6.0)
    shrinkage = noise_shrinkage(noise, dof, ~(mask | high | low))
    if shrinkage is None:
        fit_noise, noise_dof = noise, (float(dof) if dof > 0 else math.inf)
        centre = float(np.nanmedian(np.square(noise[~mask]))) if (~mask).any() else math.nan
    else:
        fit_noise, noise_dof, centre = shrinkage.apply(noise), shrinkage.effective_dof, shrinkage.centre
    if row_variance > 0:
        fit_noise = np.sqrt(np.square(fit_noise, dtype=np.float32) + np.float32(row_variance))
        if centre > 0:
            noise_dof *= ((centre + row_variance) / centre) ** 2
    return fit_noise, noise_dof


@dataclass(frozen=True)
class FitInputs:
    """What a fit was made from, for the model (:class:`~bias_pipeline.model.BiasModel`'s fields
    of the same names): the masters' temperatures and frame counts, the temperatures spanned
    and, for a fit on the masters, each master's leverage (empty for a fit on frames)."""

    group_temperatures: tuple[float, ...]
    group_frames: tuple[int, ...]
    temperature_range: tuple[float, float]
    group_leverage: tuple[float, ...] = ()


def _assemble(
    fit: PolynomialFit,
    mask: np.ndarray,
    noise: np.ndarray | None,
    clipped: np.ndarray | None,
    saturated: np.ndarray | None,
    config: PipelineConfig,
    scale: float,
    *,
    inputs: FitInputs,
    telegraph: np.ndarray | None = None,
) -> BiasModel:
    """A :class:`BiasModel` from a fit: NaN at masked pixels, statistics and DQ flags, and what
    the fit was made from (``inputs``), all given to the constructor. The fit's maps are taken
    over (changed in place), and the covariance is kept as the unit covariance times the noise
    variance (:class:`~bias_pipeline.model.ScaledCovariance`), not as P^2 full maps."""
    coefficients = fit.coefficients.astype(np.float32, copy=False)
    coefficients[:, mask] = np.nan
    variance = np.asarray(fit.noise_variance, dtype=np.float32)  # the fit's own map: changed in place
    variance[mask] = np.nan
    covariance = ScaledCovariance(fit.unit_covariance, variance)
    dq = flag_pixels(
        hot_mask=mask,
        chi2=fit.chi2 if noise is not None else None,
        dof=fit.dof,
        noise=noise,
        clipped_fraction=clipped if clipped is not None and clipped.dtype != bool else None,
        too_clipped=clipped if clipped is not None and clipped.dtype == bool else None,
        saturated=saturated if saturated is not None else np.zeros(mask.shape, dtype=bool),
        p_value=config.nonlinear_pvalue,
        noise_dof=fit.noise_dof,
        telegraph=telegraph,  # the masters' two-level statistics pooled (bias_pipeline.telegraph)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        if fit.dof > 0:
            reduced = np.asarray(fit.chi2, dtype=np.float32)
            np.divide(reduced, fit.dof, out=reduced)  # the same float32 division, in place
        else:
            reduced = np.full(fit.chi2.shape, np.nan, dtype=np.float32)
    rms = fit.rms.astype(np.float32, copy=False)
    rms[mask] = np.nan
    reduced[mask] = np.nan
    ngroups = np.full(mask.shape, fit.dof + fit.degree + 1, dtype=np.int16)
    ngroups[mask] = 0
    return BiasModel(
        coefficients[0],
        coefficients[1],
        mask,
        scale_factor=scale,
        c_map=coefficients[2] if fit.degree == 2 else None,
        covariance=covariance,
        rms=rms,
        chi2=reduced,
        ngroups=ngroups,
        dq=dq,
        read_noise=noise,
        tref=fit.tref,
        temperature_range=inputs.temperature_range,
        group_temperatures=inputs.group_temperatures,
        group_frames=inputs.group_frames,
        group_leverage=inputs.group_leverage,
    )


def _log_fit(model: BiasModel, what: str, noise_dof: float = math.inf) -> None:
    assert model.dq is not None and model.temperature_range is not None
    counts = describe(model.dq)
    logger.info(
        "fitted degree %d to %s over %.2f..%.2f deg C about TREF %.2f; flags: %s",
        model.degree,
        what,
        *model.temperature_range,
        model.tref,
        ", ".join(f"{name} {count}" for name, count in counts.items()),
    )
    dof = int(model.ngroups.max()) - model.degree - 1
    if dof > 0:
        logger.info(
            "the fit's noise variance has %.4g effective degrees of freedom: the CHI2 map's reference "
            "distribution is F(%d, %.4g)",
            noise_dof, dof, noise_dof,
        )  # fmt: skip
    if model.c_map is not None and model.covariance is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(model.c_map) / np.sqrt(model.covariance[2, 2])
        limit = math.sqrt(f_threshold(1, noise_dof, QUADRATIC_PVALUE))
        logger.info(
            "quadratic term warranted (|c| / sigma_c > %.2f, p < %g) in %d of %d fitted pixels",
            limit,
            QUADRATIC_PVALUE,
            int(np.count_nonzero(z > limit)),
            int((~model.mask).sum()),
        )
    warn_if_implausible(model)


def warn_if_implausible(model: BiasModel) -> list[str]:
    """Warnings about a fitted model that the data, not single pixels, are at fault: most pixels
    flagged, or a slope the temperatures cannot measure. Logged, and returned.

    Returns
    -------
    list of str
        The warnings (empty for a healthy model).
    """
    assert model.dq is not None
    warnings = []
    fitted = ~model.mask
    flagged = fitted & (model.dq != 0)
    if fitted.any() and flagged.sum() > MOSTLY_FLAGGED * fitted.sum():
        counts = ", ".join(f"{name} {n}" for name, n in describe(np.where(fitted, model.dq, 0)).items() if n)
        warnings.append(
            f"{100 * flagged.sum() / fitted.sum():.1f} % of the fitted pixels carry a flag ({counts}): the "
            "frames, not the pixels, look wrong (copies of one frame, frames of another camera or mode?)"
        )
    if model.covariance is not None and fitted.any():
        # The slope at the fit's reference temperature: b + 2 c TREF for degree 2, whose b alone
        # (the slope at 0 deg C) may lie far outside the data. Typical values: a sample of pixels
        # is enough, and a full float64 copy of the covariance would cost 128 MB at 2048 x 2048.
        t = float(model.tref or 0.0)
        gradient = np.array([0.0, 1.0, 2.0 * t][: model.degree + 1])
        sample = _every_nth(fitted.ravel(), max(1, int(fitted.sum()) // SLOPE_SAMPLE))
        rows, columns = np.unravel_index(sample, model.shape)
        covariance = np.asarray(model.covariance[:, :, rows, columns], dtype=np.float64)
        sigma_slope = np.sqrt(np.maximum(np.einsum("p,pqk,q->k", gradient, covariance, gradient), 0))
        slope = model.b_map.ravel()[sample] + (
            2.0 * t * model.c_map.ravel()[sample] if model.c_map is not None else 0.0
        )
        typical_sigma = float(np.nanmedian(sigma_slope))
        typical_slope = float(np.nanmedian(np.abs(slope)))
        if np.isfinite(typical_sigma) and typical_sigma > typical_slope:
            low, high = model.temperature_range or (float("nan"), float("nan"))
            warnings.append(
                f"the slope is not measured: its typical error {typical_sigma:.3g} ADU/deg C exceeds its typical "
                f"size {typical_slope:.3g}; the groups span only {high - low:.3g} deg C ({low:g} .. {high:g}): "
                "take frames over a wider range of temperatures"
            )
    for text in warnings:
        logger.warning("%s", text)
    return warnings


def _every_nth(flags: np.ndarray, step: int) -> np.ndarray:
    """``np.flatnonzero(flags)[::step]`` without the int64 index of every True value (32 MB for
    a 2048 x 2048 frame): found a chunk at a time.

    >>> flags = np.array([1, 0, 1, 1, 0, 1, 1, 1], dtype=bool)
    >>> _every_nth(flags, 2).tolist() == np.flatnonzero(flags)[::2].tolist()
    True
    """
    picks = []
    seen = 0
    chunk = 1 << 18
    for start in range(0, flags.size, chunk):
        found = np.flatnonzero(flags[start : start + chunk])
        picks.append(found[(-seen) % step :: step] + start)
        seen += found.size
    return np.concatenate(picks) if picks else np.zeros(0, dtype=np.intp)


def _clipped_fraction(masters: Sequence[Master], frames: Sequence[int]) -> np.ndarray | None:
    """Fraction of each pixel's frame values the combine left out (sigma-clip only)."""
    used_total: np.ndarray | None = None
    for master in masters:
        if master.method != "sigma-clip":
            return None
        used = master.load_extension("NUSED")
        if used is None:
            return None
        used_total = used.astype(np.float64) if used_total is None else used_total + used
    if used_total is None:
        return None
    return 1.0 - used_total / float(sum(frames))


# ---------------------------------------------------------------- the row-block path (numba)
#: Bytes of input rows one block task holds (all inputs' rows of its block): a few MB, so that
#: blocks stay in cache-friendly sizes and memory does not grow with the frame size.
BLOCK_BYTES = 8 * 1024 * 1024


class _ThreadBuffers:
    """Block buffers kept per worker thread and reused for every block it runs: fresh buffers of
    several MB per block would leave the allocator's per-thread arenas holding their pages."""

    def __init__(self) -> None:
        self.local = threading.local()

    def get(self, name: str, shape: tuple[int, ...], dtype: object) -> np.ndarray:
        held = getattr(self.local, name, None)
        size = int(np.prod(shape))
        if held is None or held.size < size or held.dtype != np.dtype(dtype):
            held = np.empty(size, dtype=dtype)
            setattr(self.local, name, held)
        return held[:size].reshape(shape)


class _WholeRows:
    """Row blocks of a master that cannot read rows itself (a :class:`Master` held in memory):
    each image is loaded once, when first asked for, and sliced."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.images: dict[str, np.ndarray | None] = {}

    def names(self) -> list[str]:
        return [name for name in ("PRIMARY", "NOISE", "NUSED") if self._image(name) is not None]

    def _image(self, name: str) -> np.ndarray | None:
        if name not in self.images:
            if name == "PRIMARY":
                image: np.ndarray | None = np.asarray(self.master.load(), dtype=np.float32)
            else:
                image = self.master.load_extension(name)
                if image is not None and name != "NUSED":
                    image = np.asarray(image, dtype=np.float32)
            self.images[name] = image
        return self.images[name]

    def shape(self, name: str = "PRIMARY") -> tuple[int, int]:
        image = self._image(name)
        assert image is not None
        return image.shape  # type: ignore[return-value]

    def read(self, name: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray | None:
        image = self._image(name)
        if image is None:
            return None
        if out is None:
            return image[start:stop]
        out[...] = image[start:stop]
        return out

    def close(self) -> None:
        self.images.clear()


def _row_readers(masters: Sequence[Master]) -> list:
    """One row reader per master: its own (``open_rows()``, a :class:`MasterFrame`) or a
    :class:`_WholeRows`."""
    readers = []
    try:
        for master in masters:
            opener = getattr(master, "open_rows", None)
            readers.append(opener() if callable(opener) else _WholeRows(master))
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    return readers


def _blocks(
    rows: int, bytes_per_row: int, config: PipelineConfig, tall: bool = False
) -> tuple[list[tuple[int, int]], int]:
    """Row ranges covering ``rows`` so that one task's buffers hold ``BLOCK_BYTES`` (or, with
    ``tall``, as much as the memory limit allows each thread), and the threads to use."""
    threads = max(1, min(config.threads or default_threads(), rows))
    budget = config.memory_limit * 1024 * 1024 / threads
    if not tall:
        budget = min(budget, BLOCK_BYTES)
    step = int(max(1, min(rows, budget // max(1, bytes_per_row))))
    ranges = [(start, min(rows, start + step)) for start in range(0, rows, step)]
    return ranges, min(threads, len(ranges))


def _run_blocks(
    task: Callable[[int, int], None], ranges: list[tuple[int, int]], threads: int, what: str, config: PipelineConfig
) -> None:
    """Run ``task(start, stop)`` on every row range, on ``threads`` worker threads (the kernels
    and the reads release the interpreter lock), with a progress bar."""
    with tqdm(
        total=len(ranges), desc=what, unit="block", disable=None if config.show_progress else True, leave=False
    ) as bar:
        if threads <= 1:
            for start, stop in ranges:
                task(start, stop)
                bar.update()
            return
        with worker_pool(ThreadPoolExecutor(threads, thread_name_prefix="fit")) as pool:
            for future in [pool.submit(task, start, stop) for start, stop in ranges]:
                future.result()
                bar.update()


@dataclass
class _NoiseSums:
    """What the masters' ``NOISE`` and ``NUSED`` maps give step 3, gathered block by block."""

    noise_masters: list[int]  # indices of the masters with a noise map and two or more frames
    pool_weights: list[float]  # their (n - 1) / noise bias (pooled_read_noise)
    dof: int
    total: np.ndarray | None  # sum (n - 1) s^2, float32
    counts: list[int]  # indices of the masters whose NUSED is summed ([] when not wanted)
    used: np.ndarray | None  # sum of NUSED, int16 (int32 beyond 32767 frames)

    def read_noise(self) -> np.ndarray | None:
        """The pooled read noise (:func:`pooled_read_noise`)."""
        if self.total is None:
            return None
        return np.sqrt(self.total / self.dof).astype(np.float32)

    def too_clipped(self, frames: Sequence[int]) -> np.ndarray | None:
        """Where :func:`_clipped_fraction` exceeds :data:`~bias_pipeline.quality.MAX_CLIPPED_FRACTION`:
        the same float64 arithmetic, a few rows at a time, kept as a bool map."""
        if self.used is None:
            return None
        total = float(sum(frames))
        over = np.empty(self.used.shape, dtype=bool)
        step = max(1, (1 << 18) // max(1, self.used.shape[1]))
        for start in range(0, self.used.shape[0], step):
            over[start : start + step] = (1.0 - self.used[start : start + step] / total) > MAX_CLIPPED_FRACTION
        return over


def _noise_plan(
    masters: Sequence[Master], readers: list, shape: tuple[int, int], noise_bias: Sequence[float]
) -> _NoiseSums:
    names = [set(reader.names()) for reader in readers]
    noisy = [k for k, m in enumerate(masters) if "NOISE" in names[k] and int(m.n_frames) >= 2]
    total_frames = sum(int(m.n_frames) for m in masters)
    counted = list(range(len(masters)))
    if not masters or any(m.method != "sigma-clip" for m in masters) or any("NUSED" not in n for n in names):
        counted = []
    return _NoiseSums(
        noisy,
        [(int(masters[k].n_frames) - 1) / float(noise_bias[k]) for k in noisy],
        sum(int(masters[k].n_frames) - 1 for k in noisy),
        np.empty(shape, dtype=np.float32) if noisy else None,
        counted,
        np.empty(shape, dtype=np.int16 if total_frames <= np.iinfo(np.int16).max else np.int32) if counted else None,
    )


def _add_noise_rows(plan: _NoiseSums, masters: Sequence[Master], readers: list, start: int, stop: int) -> None:
    """The block's rows of the pooled noise variance and of the summed counts."""
    columns = plan.total.shape[1] if plan.total is not None else plan.used.shape[1] if plan.used is not None else 0
    if plan.total is not None:
        stack = np.empty((len(plan.noise_masters), stop - start, columns), dtype=np.float32)
        for index, k in enumerate(plan.noise_masters):
            stack[index] = readers[k].read("NOISE", start, stop)
        pool_noise_rows(stack, np.array(plan.pool_weights, dtype=np.float32), plan.total[start:stop])
    if plan.used is not None:
        parts = [readers[k].read("NUSED", start, stop) for k in plan.counts]
        sum_counts_rows(np.stack(parts), plan.used[start:stop])


@dataclass
class _FitMaps:
    """The fit's per-pixel outputs, float32, filled block by block."""

    coefficients: np.ndarray
    residual_sum_sq: np.ndarray
    rms: np.ndarray
    saturated: np.ndarray

    @classmethod
    def empty(cls, terms: int, shape: tuple[int, int]) -> _FitMaps:
        return cls(
            np.empty((terms, *shape), dtype=np.float32),
            np.empty(shape, dtype=np.float32),
            np.empty(shape, dtype=np.float32),
            np.zeros(shape, dtype=bool),
        )


def _finish_fit(
    maps: _FitMaps,
    temps: Sequence[float],
    weights: Sequence[float],
    degree: int,
    noise_for_fit: np.ndarray | None,
    noise_dof: float = math.inf,
    own_noise: bool = False,
) -> PolynomialFit:
    """A :class:`PolynomialFit` from the block maps, as :func:`fit_polynomial` ends (``own_noise``:
    ``noise_for_fit`` is a map of nobody else's, squared in place)."""
    _, unit_cov, leverage, tref = design(temps, weights, degree)
    dof = len(temps) - (degree + 1)
    if noise_for_fit is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            noise_variance = maps.residual_sum_sq / dof if dof > 0 else np.full(maps.rms.shape, np.nan, np.float32)
    else:
        noise_for_fit = np.asarray(noise_for_fit, dtype=np.float32)
        noise_variance = np.square(noise_for_fit, out=noise_for_fit if own_noise else None)
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = np.divide(maps.residual_sum_sq, noise_variance)
    return PolynomialFit(
        coefficients=maps.coefficients,
        unit_covariance=unit_cov,
        noise_variance=noise_variance,
        chi2=chi2,
        rms=maps.rms,
        residual_sum_sq=maps.residual_sum_sq,
        leverage=leverage,
        tref=tref,
        dof=dof,
        noise_dof=noise_dof,
    )


def _fit_masters_in_blocks(
    masters: Sequence[Master],
    temps: Sequence[float],
    combine: CombineWeights,
    hot_pixel_mask: np.ndarray | None,
    level: float,
    config: PipelineConfig,
) -> tuple[PolynomialFit, np.ndarray | None, np.ndarray | None, np.ndarray, np.ndarray]:
    """The masters fit in one pass: each block of rows of every master's image, ``NOISE`` and
    ``NUSED`` read once and fitted by :func:`~bias_pipeline.fit_kernels.fit_rows`.

    Returns
    -------
    fit, pooled noise, clipped fraction, saturated, mask
    """
    weights = combine.weights
    smoother, _, _, _ = design(temps, weights, config.degree)  # raises for too few temperatures
    readers = _row_readers(masters)
    try:
        shape = tuple(readers[0].shape())
        for master, reader in zip(masters, readers, strict=True):
            if tuple(reader.shape()) != shape:
                raise InputDataError(f"master {master.label} has shape {tuple(reader.shape())}, the others {shape}")
        mask = _as_mask(hot_pixel_mask, shape)
        plan = _noise_plan(masters, readers, shape, combine.noise_bias)
        maps = _FitMaps.empty(config.degree + 1, shape)
        temps32 = np.asarray(temps, dtype=np.float32)
        weights32 = np.asarray(weights, dtype=np.float32)
        smoother = np.ascontiguousarray(smoother, dtype=np.float64)
        level32 = np.float32(level)

        buffers = _ThreadBuffers()

        def task(start: int, stop: int) -> None:
            stack = buffers.get("stack", (len(masters), stop - start, shape[1]), np.float32)
            for k, reader in enumerate(readers):
                reader.read("PRIMARY", start, stop, out=stack[k])
            fit_rows(
                stack, smoother, temps32, weights32, level32,
                maps.coefficients[:, start:stop], maps.residual_sum_sq[start:stop],
                maps.rms[start:stop], maps.saturated[start:stop],
            )  # fmt: skip
            _add_noise_rows(plan, masters, readers, start, stop)

        ranges, threads = _blocks(shape[0], len(masters) * shape[1] * 9, config)
        _run_blocks(task, ranges, threads, "fitting masters", config)
    finally:
        for reader in readers:
            reader.close()
    noise = plan.read_noise()
    plan.total = None  # the pooled variance sums are in ``noise`` now
    shrunk, noise_dof = _fit_noise(noise, plan.dof, mask, combine.row_variance)
    fit = _finish_fit(maps, temps, weights, config.degree, shrunk, noise_dof, own_noise=shrunk is not noise)
    del shrunk
    return fit, noise, plan.too_clipped([int(m.n_frames) for m in masters]), maps.saturated, mask


def _fit_frames_in_blocks(
    ordered: Sequence[FrameRecord],
    masters: Sequence[Master],
    hot_pixel_mask: np.ndarray | None,
    config: PipelineConfig,
    input_bits: int,
) -> tuple[PolynomialFit, np.ndarray | None, np.ndarray | None, np.ndarray, np.ndarray]:
    """The frames fit: the masters' ``NOISE``/``NUSED`` pooled in one pass of row blocks, then each
    block of rows of every frame (and of the masters) read once and fitted by
    :func:`~bias_pipeline.fit_kernels.fit_frame_rows`, cosmic rays replaced by the master's value.

    Returns
    -------
    fit, pooled noise, clipped fraction, saturated, mask
    """
    temps = [reading(r) for r in ordered]
    weights = [1.0] * len(ordered)
    smoother, _, _, _ = design(temps, weights, config.degree)
    labels = [m.label for m in masters]
    used_groups = sorted({r.group for r in ordered}, key=labels.index)
    group_of = np.array([used_groups.index(r.group) for r in ordered], dtype=np.int64)
    readers = _row_readers(masters)
    try:
        shape = tuple(readers[0].shape())
        quantum = quantisation_step(ordered, input_bits, config.scale_factor)
        combine = combine_weights(masters, config, quantum, frames_fit=True)
        plan = _noise_plan(masters, readers, shape, combine.noise_bias)
        if plan.total is None:
            raise InputDataError("--fit-on frames needs groups of two or more frames to measure the read noise")
        noise_ranges, threads = _blocks(shape[0], len(masters) * shape[1] * 6, config)
        _run_blocks(
            lambda start, stop: _add_noise_rows(plan, masters, readers, start, stop),
            noise_ranges,
            threads,
            "pooling noise",
            config,
        )
        noise = plan.read_noise()
        plan.total = None  # the pooled variance sums are in ``noise`` now
        assert noise is not None
        mask = np.zeros(noise.shape, dtype=bool) if hot_pixel_mask is None else check_mask(hot_pixel_mask, noise.shape)
        threshold = config.outlier_sigma * np.fmax(noise, float(np.nanmedian(noise)))
        factor = np.float32(input_factor(input_bits, config.scale_factor))
        level = np.float32(adc_maximum(config.scale_factor) * 0.9999)
        maps = _FitMaps.empty(config.degree + 1, shape)
        as_uint16 = all(plain_uint16(r) for r in ordered)
        raw_dtype = np.dtype(np.uint16 if as_uint16 else np.float32)
        temps32 = np.asarray(temps, dtype=np.float32)
        weights32 = np.asarray(weights, dtype=np.float32)
        smoother = np.ascontiguousarray(smoother, dtype=np.float64)
        group_readers = [readers[labels.index(label)] for label in used_groups]

        buffers = _ThreadBuffers()

        def task(start: int, stop: int) -> None:
            height = stop - start
            raw = buffers.get("raw", (len(ordered), height, shape[1]), raw_dtype)
            for k, record in enumerate(ordered):
                if as_uint16:
                    read_uint16_rows(record, start, stop, raw[k])
                else:
                    raw[k] = read_rows(record, start, stop)
            references = buffers.get("references", (len(group_readers), height, shape[1]), np.float32)
            for g, reader in enumerate(group_readers):
                reader.read("PRIMARY", start, stop, out=references[g])
            fit_frame_rows(
                raw, factor, group_of, references, threshold[start:stop], smoother, temps32, weights32, level,
                maps.coefficients[:, start:stop], maps.residual_sum_sq[start:stop],
                maps.rms[start:stop], maps.saturated[start:stop],
            )  # fmt: skip

        compressed = any(r.data_offset is None for r in ordered)  # decoded whole for every block
        row_bytes = shape[1] * (len(ordered) * raw_dtype.itemsize + len(group_readers) * 4)
        ranges, threads = _blocks(shape[0], row_bytes, config, tall=compressed)
        _run_blocks(task, ranges, threads, "fitting frames", config)
    finally:
        for reader in readers:
            reader.close()
    shrunk, noise_dof = _fit_noise(noise, plan.dof, mask, combine.row_variance)
    fit = _finish_fit(maps, temps, weights, config.degree, shrunk, noise_dof, own_noise=shrunk is not noise)
    del shrunk
    return fit, noise, plan.too_clipped([int(m.n_frames) for m in masters]), maps.saturated, mask

"""Step 5's computation and its writer: how well the model reproduces each master.

Per pixel: ``MAE = |real - model|`` [ADU] and ``MAPE = 100 |real - model| / |real|`` [%]
(NaN where the real value is 0). Statistics leave out masked pixels. Held out: the error of
the model refitted without the master, from the fit's leverages (leave-one-out).

:func:`evaluate_masters` is the pure part (model and masters in, one
:class:`MasterEvaluation` per master out, no files); :func:`write_evaluation` saves them (FITS
when asked, the CSV, the PNGs through :mod:`bias_pipeline.plots`). The pure part is a
generator, and the writer keeps only the downsampled maps of each master it has seen: at
2048 x 2048 one master's full-size maps are ~100 MB, so memory stays that of one master
however many temperatures there are, while each master is still read and predicted once.

Each master is read once and everything per master comes from that one float32 array: the
row (in-sample and held-out statistics), the block-averaged maps of the plots, and, with
``--save-eval-fits``, the full-size maps, each made when its file is written. The compiled
kernels of :mod:`bias_pipeline.eval_kernels` compute the row and plot maps in two passes with
no full-frame temporary; ``BIAS_PIPELINE_KERNELS=numpy`` runs the numpy reference instead
(the same rows: order statistics to the bit, means and deviations to float64 summation order).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import eval_kernels
from .compiled import engine
from .config import PipelineConfig
from .master_writer import MasterImage
from .model import BiasModel
from .plots import (
    ImagePlot,
    bias_temperature_figure,
    downsample,
    draw_plots,
    flag_map_figure,
    plot_factor,
    plot_summary,
    profile_figure,
    shared_limits,
    symmetric_limits,
)
from .products import product_header, write_image, write_png_atomic, write_text_atomic
from .quality import DQ_BITS
from .registry import (
    BIAS_TEMPERATURE_PLOT,
    CHI2_PLOT,
    FLAG_MAP_PLOT,
    HELDOUT_MAE,
    MAE,
    MAPE,
    PROFILES_PLOT,
    REAL_PLOT,
    RESIDUAL,
    RMS_PLOT,
    SIGMA_B_PLOT,
    SIGNIFICANCE,
    SUMMARY_CSV,
    SUMMARY_PNG,
    SYNTHETIC,
    labelled_name,
)
from .steps.step3_fit_bias_model import combine_weights
from .units import DEFAULT_SCALE_FACTOR
from .workers import default_threads

logger = logging.getLogger(__name__)

STATISTICS = ("mean", "median", "std", "p95")
SUMMARY_COLUMNS = (
    "temperature",
    "label",
    "n_frames",
    "n_pixels",
    "n_flagged",
    "mae_mean",
    "mae_median",
    "mae_std",
    "mae_p95",
    "mape_mean",
    "mape_median",
    "mape_std",
    "mape_p95",
    "heldout_mae_mean",
    "heldout_mae_median",
    "heldout_mae_std",
    "heldout_mae_p95",
    "heldout_mape_mean",
    "heldout_mape_median",
    "heldout_mape_std",
    "heldout_mape_p95",
    "mae_per_read_noise",
    "heldout_mae_per_read_noise",
    "expected_error_median",
    "leverage",
    "residual_per_error",
    "heldout_residual_per_error",
    "per_error_tolerance",
    "bias_p05",
    "bias_median",
    "bias_p95",
)
#: The columns :func:`noise_floor` fills.
NOISE_FLOOR_COLUMNS = (
    "expected_error_median",
    "leverage",
    "residual_per_error",
    "heldout_residual_per_error",
    "per_error_tolerance",
)
#: The noise-floor rule (:func:`noise_floor_verdict`): a ratio of residual to expected error is
#: at the floor when it is at most ``1 + NOISE_FLOOR_MARGIN`` plus ``NOISE_FLOOR_SIGMAS`` times
#: its statistical uncertainty. The margin covers what the expected error does not model (the
#: pooled noise's own scatter, the combine efficiency measured by simulation, row correlations).
NOISE_FLOOR_MARGIN = 0.10
#: Colour limits of the significance map [sigma]: beyond 4 sigma is 1 pixel in 16 000 at the floor.
SIGNIFICANCE_LIMIT = 4.0
NOISE_FLOOR_SIGMAS = 3.0
#: median |z| of a standard normal: the robust rms is median |z| / this.
HALF_NORMAL_MEDIAN = 0.6744897501960817
#: sqrt(N) times the relative standard deviation of median |z| / HALF_NORMAL_MEDIAN over N
#: Gaussian values: sqrt(1/4) / (2 phi(0.6745) 0.6745) (asymptotic variance of a median).
ROBUST_RMS_RELATIVE_SD = 1.1664


@dataclass
class MasterEvaluation:
    """The model against one master: the summary row, the master, and what the plots show.

    The full-size error maps are not kept (at 2048 x 2048 each is 16 MB): they are computed
    from the master and the model when asked for (the FITS of ``--save-eval-fits``), with
    the same float32 arithmetic the summary row was computed with.

    Attributes
    ----------
    row
        The summary row (keys :data:`SUMMARY_COLUMNS`).
    real
        The master [ADU].
    model
        The model it is compared with.
    inflation
        The held-out factor ``1 / (1 - h)`` of the master's leverage (NaN when unknown).
    heldout_model
        The masters fit the held-out errors come from, when it is not ``model``.
    shown
        Block-averaged maps for the plots, by file stem (``real_bias``, ``synthetic_bias``,
        ``mae``, ``mape``, and ``significance`` when the expected errors are known):
        ``(map, factor)`` as :func:`~bias_pipeline.plots.downsample`.
    """

    row: dict[str, object]
    real: np.ndarray
    model: BiasModel
    inflation: np.float32 = np.float32(np.nan)
    heldout_model: BiasModel | None = None
    shown: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The master's label (``"12.5"``)."""
        return str(self.row["label"])

    @property
    def temperature(self) -> float:
        """The master's temperature [deg C]."""
        return float(self.row["temperature"])  # type: ignore[arg-type]

    @property
    def predicted(self) -> np.ndarray:
        """The model at the master's temperature [ADU]."""
        return prediction(self.model, self.temperature)

    @property
    def mae(self) -> np.ndarray:
        """``|real - model|`` [ADU]."""
        return error_maps(self.real, self.predicted)[0]

    @property
    def mape(self) -> np.ndarray:
        """``100 |real - model| / |real|`` [%]."""
        return error_maps(self.real, self.predicted)[1]

    def heldout_maps(self, mae: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``|real - model fitted without this master|`` [ADU] and its percentage [%] (NaN
        when no leverage is known); ``mae``, when given, is :attr:`mae` already computed."""
        if self.heldout_model is None or self.heldout_model is self.model:
            if mae is None:
                mae, mape = error_maps(self.real, self.predicted)
            else:
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    real = np.asarray(self.real, dtype=np.float32)
                    mape = np.where(real != 0, np.float32(100) * mae / np.abs(real), np.nan).astype(np.float32)
        else:
            mae, mape = error_maps(self.real, prediction(self.heldout_model, self.temperature))
        return mae * self.inflation, mape * self.inflation

    @property
    def heldout_mae(self) -> np.ndarray:
        """The held-out absolute error [ADU] (see :meth:`heldout_maps`)."""
        return self.heldout_maps()[0]

    @property
    def heldout_mape(self) -> np.ndarray:
        """The held-out percentage error [%] (see :meth:`heldout_maps`)."""
        return self.heldout_maps()[1]


@dataclass(frozen=True)
class ExpectedError:
    """What a master's expected standard error is made of (the fit's own noise model).

    A master of ``n`` frames combined with efficiency squared ``e^2``
    (:func:`~bias_pipeline.combine_efficiency.combine_factors`) from frames of pixel noise
    ``sigma`` that had rms row offsets ``rho`` removed has variance ``e^2 (sigma^2 + R) / n``
    with ``R`` the fit's pooled row variance (:func:`~bias_pipeline.steps.step3_fit_bias_model.combine_weights`).
    The master's ``ERR`` extension is ``1.2533 noise / sqrt(n)`` for a median and
    ``noise / sqrt(n)`` for a sigma-clip: the large-sample efficiencies, low by up to 10 % for a
    median of a few frames and 2-6 % for a sigma-clip (which then rejects a few good values), so it
    is not used. ``sigma`` is the read noise pooled over every master's ``NOISE`` map
    (``BiasModel.read_noise``): one master's map has only ``n - 1`` degrees of freedom, and
    dividing by it would inflate the ratio by ``sqrt((n - 1) / (n - 3))``, 7 % at 16 frames.
    The pooled map's own scatter still makes the ratio a Student t of its degrees of freedom
    (``sum (n_k - 1)``): a robust rms 1 % above 1 at 35 degrees of freedom, 0.5 % at 75, inside
    :data:`NOISE_FLOOR_MARGIN`.

    Attributes
    ----------
    variance_factor
        ``e^2`` (1 for a mean).
    row_variance
        ``R`` [ADU^2].
    n_frames
        Frames in the master.
    """

    variance_factor: float
    row_variance: float
    n_frames: int

    def error_map(self, noise: np.ndarray) -> np.ndarray:
        """The master's expected standard error per pixel [ADU] for pixel noise ``noise`` [ADU].

        >>> ExpectedError(1.0, 0.0, 16).error_map(np.array([32.0])).tolist()
        [8.0]
        """
        noise = np.asarray(noise, dtype=np.float32)
        scale = np.float32(self.variance_factor / max(self.n_frames, 1))
        return np.sqrt(scale * (noise * noise + np.float32(self.row_variance))).astype(np.float32)


def expected_errors(
    masters: Sequence[MasterImage], config: PipelineConfig | None = None, quantum: float | None = None
) -> list[ExpectedError]:
    """Each master's :class:`ExpectedError`, as step 3 weighted it.

    Parameters
    ----------
    masters
        The masters; with ``method`` (and ``noise_median``, ``row_noise``) the combine's
        efficiency is that of :func:`~bias_pipeline.steps.step3_fit_bias_model.combine_weights`,
        without (a plain :class:`~bias_pipeline.master_writer.MasterImage`) a plain mean's.
    config
        The run's options (``clip_sigma``, ``clip_iters``, ``scale_factor``; default: the defaults).
    quantum
        The frames' quantisation step [ADU] (default ``config.scale_factor``, as step 3).

    Returns
    -------
    list of ExpectedError
        One per master, in order.
    """
    config = config or PipelineConfig()
    frames = [int(m.n_frames) for m in masters]
    if not masters or not all(hasattr(m, "method") for m in masters):
        return [ExpectedError(1.0, 0.0, n) for n in frames]
    step = config.scale_factor if quantum is None else quantum
    combine = combine_weights(masters, config, step)  # type: ignore[arg-type]
    return [ExpectedError(n / w, combine.row_variance, n) for n, w in zip(frames, combine.weights, strict=True)]


def robust_rms(values: np.ndarray) -> float:
    """``median |values| / 0.6745``: the rms of Gaussian values about 0, robust to a few outliers
    (NaN for no values). An offset counts: the values are not centred first.

    >>> round(robust_rms(np.array([-0.1, 0.5, 0.6745, 2.0, -100.0])), 3)
    1.0
    """
    values = np.asarray(values)
    if values.size == 0:
        return math.nan
    return float(np.median(np.abs(values))) / HALF_NORMAL_MEDIAN


def noise_floor(
    model: BiasModel,
    real: np.ndarray,
    temperature: float,
    valid: np.ndarray,
    expected: ExpectedError | None,
    leverage: float,
    heldout_model: BiasModel | None = None,
) -> tuple[dict[str, float], np.ndarray | None]:
    """The noise-floor columns of one master's row and its significance map.

    ``residual_per_error``: the robust rms (:func:`robust_rms`) over ``valid`` pixels of
    ``(real - model) / (err sqrt(1 - h))``, ``err`` the master's expected error
    (:class:`ExpectedError`) and ``h`` its leverage: a fit at the noise floor leaves residuals of
    variance ``err^2 (1 - h)`` (it absorbs the fraction ``h`` of the master's own noise), so 1.0 is
    the floor. ``heldout_residual_per_error``: the leave-one-out residual ``r / (1 - h)`` over its
    expected error ``err / sqrt(1 - h)`` (the master's error and the refitted model's,
    ``err^2 + sigma_model^2``, combined); for a fit on the masters this is the same number
    (``r / (1 - h)`` over ``err / sqrt(1 - h)`` is ``r / (err sqrt(1 - h))``), for a fit on
    frames it is that of the masters fit ``heldout_model``, and the in-sample residual's expected
    variance is ``err^2 (1 - h / e^2)`` (the frames fit follows the frames' mean, not the master).
    ``per_error_tolerance``: the ratios'
    relative standard deviation from the number of pixels, ``1.166 / sqrt(N)``. NaN where the
    expected error or the leverage is unknown.

    The map is the held-out residual over its expected error per pixel (NaN where flagged), a
    standard normal at the floor: structure in it is what noise alone would not make. None
    where the columns are NaN.
    """
    columns = {name: math.nan for name in NOISE_FLOOR_COLUMNS}
    columns["leverage"] = float(leverage)
    noise_model = heldout_model if heldout_model is not None else model
    noise = noise_model.read_noise if noise_model.read_noise is not None else model.read_noise
    if expected is None or noise is None:
        return columns, None
    error = expected.error_map(noise)
    usable = valid & np.isfinite(error) & (error > 0)
    count = int(np.count_nonzero(usable))
    if count == 0:
        return columns, None
    columns["expected_error_median"] = float(np.median(error[usable]))
    columns["per_error_tolerance"] = ROBUST_RMS_RELATIVE_SD / math.sqrt(count)
    if not (0.0 <= leverage < 1.0):
        return columns, None
    root = np.float32(math.sqrt(1.0 - leverage))
    same = heldout_model is None or heldout_model is model
    # A fit on frames weights the frames' plain mean, not the master: the master's residual then
    # has variance err^2 - h sigma_fit^2 / n = err^2 (1 - h / e^2) (the master's departure from
    # the frames' mean is independent of that mean for Gaussian noise), 1.2 x err^2 (1 - h) for
    # a median of 16 frames at h = 0.6. For a fit on the masters it is err^2 (1 - h).
    shrink = leverage if same else leverage / max(expected.variance_factor, 1.0)
    own_root = np.float32(math.sqrt(1.0 - shrink))
    real = np.asarray(real, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        significance = np.where(usable, (real - prediction(model, temperature)) / (error * own_root), np.nan)
    per_error = significance[usable]
    columns["residual_per_error"] = robust_rms(per_error[np.isfinite(per_error)])
    if not same:
        assert heldout_model is not None
        with np.errstate(invalid="ignore", divide="ignore"):
            # (r / (1 - h)) / (err / sqrt(1 - h)) = r / (err sqrt(1 - h))
            significance = np.where(usable, (real - prediction(heldout_model, temperature)) / (error * root), np.nan)
        per_error = significance[usable]
    columns["heldout_residual_per_error"] = robust_rms(per_error[np.isfinite(per_error)])
    return columns, significance.astype(np.float32, copy=False)
    return columns


@dataclass(frozen=True)
class NoiseFloorVerdict:
    """Whether the model is at the noise floor (:func:`noise_floor_verdict`).

    Attributes
    ----------
    at_floor
        True when every temperature's in-sample and held-out ratios are within the rule; None
        when no ratio could be computed.
    sentence
        One sentence for the log and the report, with the numbers and the rule.
    insample
        Median over the temperatures of ``residual_per_error``.
    heldout
        Median over the temperatures of ``heldout_residual_per_error``.
    """

    at_floor: bool | None
    sentence: str
    insample: float = math.nan
    heldout: float = math.nan


def floor_limit(tolerance: float) -> float:
    """The largest ratio at the noise floor: ``1 + NOISE_FLOOR_MARGIN + NOISE_FLOOR_SIGMAS x tolerance``.

    >>> round(floor_limit(0.01), 3)
    1.13
    """
    return 1.0 + NOISE_FLOOR_MARGIN + NOISE_FLOOR_SIGMAS * (tolerance if math.isfinite(tolerance) else 0.0)


def noise_floor_verdict(rows: Sequence[Mapping[str, object]]) -> NoiseFloorVerdict:
    """The one-sentence noise-floor verdict from step 5's rows.

    A temperature is at the floor when both its ratios (``residual_per_error``,
    ``heldout_residual_per_error``) are at most :func:`floor_limit` of its ``per_error_tolerance``;
    the model is when every temperature is. Otherwise the sentence names the worst temperature
    and its factors.

    Parameters
    ----------
    rows
        Step 5's summary rows (keys :data:`SUMMARY_COLUMNS`), as numbers or as the CSV's text.

    Returns
    -------
    NoiseFloorVerdict
    """

    def number(row: Mapping[str, object], key: str) -> float:
        value = row.get(key, math.nan)
        try:  # a row read back from the CSV holds text
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return math.nan

    known = [r for r in rows if math.isfinite(number(r, "heldout_residual_per_error"))]
    if not known:
        return NoiseFloorVerdict(
            None,
            "No noise-floor verdict: the expected errors or the masters' leverages are unknown "
            "(masters of one frame have no noise map; a fit needs more masters than coefficients).",
        )
    insample = float(np.median([number(r, "residual_per_error") for r in known]))
    heldout = float(np.median([number(r, "heldout_residual_per_error") for r in known]))
    tolerance = max(number(r, "per_error_tolerance") for r in known)
    rule = (
        f"at the floor means at most {floor_limit(tolerance):.2f} x: within "
        f"{100 * NOISE_FLOOR_MARGIN:.0f} % plus {NOISE_FLOOR_SIGMAS:.0f} sigma of the robust rms over the pixels"
    )
    where = f"median over {len(known)} temperature{'s' if len(known) != 1 else ''}"

    def excess(row: Mapping[str, object]) -> float:
        limit = floor_limit(number(row, "per_error_tolerance"))
        return max(number(row, "residual_per_error"), number(row, "heldout_residual_per_error")) / limit

    above = [r for r in known if excess(r) > 1.0]
    if not above:
        sentence = (
            f"The model is at the noise floor: in-sample residuals {insample:.2f} x and held-out "
            f"{heldout:.2f} x their expected errors ({where}; {rule})."
        )
        return NoiseFloorVerdict(True, sentence, insample, heldout)
    worst = max(above, key=excess)
    sentence = (
        f"The model is not at the noise floor: held-out residuals {number(worst, 'heldout_residual_per_error'):.2f} x "
        f"and in-sample {number(worst, 'residual_per_error'):.2f} x their expected errors at {worst['label']} deg C "
        f"(worst; {len(above)} of {len(known)} temperatures above the floor; {where}: in-sample {insample:.2f} x, "
        f"held-out {heldout:.2f} x; {rule})."
    )
    return NoiseFloorVerdict(False, sentence, insample, heldout)


def prediction(model: BiasModel, temperature: float) -> np.ndarray:
    """The model at ``temperature`` as :meth:`BiasModel.predict` computes it (float32, the
    same operations), without its extrapolation warning: step 5 warns once per master."""
    t = np.float32(temperature)
    value = model.a_map + t * model.b_map
    if model.c_map is not None:
        value = value + t * t * model.c_map
    return value.astype(np.float32, copy=False)


def error_maps(real: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel absolute error [ADU] and absolute percentage error [%].

    >>> mae, mape = error_maps(np.array([[100.0, 0.0]]), np.array([[90.0, 5.0]]))
    >>> mae.tolist(), mape[0, 0].item(), bool(np.isnan(mape[0, 1]))
    ([[10.0, 5.0]], 10.0, True)
    """
    real = np.asarray(real, dtype=np.float32)
    diff = np.abs(real - np.asarray(predicted, dtype=np.float32))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mape = np.where(real != 0, np.float32(100) * diff / np.abs(real), np.nan).astype(np.float32)
    return diff.astype(np.float32), mape


def summarize(values: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Mean, median, std and 95th percentile of ``values`` over ``valid`` finite pixels.

    >>> summarize(np.array([[1.0, 2.0, 3.0, 100.0]]), np.array([[True, True, True, False]]))
    {'mean': 2.0, 'median': 2.0, 'std': 0.816496580927726, 'p95': 2.9}
    """
    selected = values[valid & np.isfinite(values)]
    if selected.size == 0:
        return {"mean": math.nan, "median": math.nan, "std": math.nan, "p95": math.nan}
    median, p95 = np.percentile(selected, [50, 95])  # one partition for both
    return {
        "mean": float(selected.mean(dtype=np.float64)),
        "median": float(median),
        "std": float(selected.std(dtype=np.float64)),
        "p95": float(p95),
    }


def evaluate_master(
    model: BiasModel,
    master: MasterImage,
    *,
    leverage: float = math.nan,
    heldout_model: BiasModel | None = None,
    flagged: np.ndarray | None = None,
    expected: ExpectedError | None = None,
) -> MasterEvaluation:
    """Compare ``model`` with one master (pure: no files).

    The master is read once, and its row and plot maps are computed from that one array: by
    the compiled kernels of :mod:`bias_pipeline.eval_kernels` (two passes, no full-frame
    temporary), or by numpy when ``compiled.engine()`` is ``"numpy"`` (the reference; the
    same numbers, medians and percentiles to the bit, means and deviations to float64
    summation order).

    Parameters
    ----------
    model
        The fitted model.
    master
        The master (``label``, ``temperature``, ``n_frames``, ``load()``).
    leverage
        The master's leverage ``h`` in the fit that gives the held-out errors (NaN: unknown,
        and the held-out numbers are NaN).
    heldout_model
        The masters fit the leverage belongs to, when it is not ``model`` (a model fitted on
        frames): the held-out errors are then its own, inflated.
    flagged
        ``model.flagged``, when the caller has it already (one per run rather than one per
        master).
    expected
        What the master's expected error is made of (:func:`expected_errors`; None: the
        noise-floor columns are NaN).

    Returns
    -------
    MasterEvaluation
    """
    label, temp, n_frames = master.label, float(master.temperature), int(master.n_frames)
    if flagged is None:
        flagged = model.flagged
    real = np.ascontiguousarray(master.load(), dtype=np.float32)
    # Leave-one-out: for a weighted linear fit the residual of input k refitted without
    # it is exactly its in-sample residual / (1 - h_k).
    inflation = np.float32(1.0 / (1.0 - leverage)) if leverage < 1.0 - 1e-9 else np.float32(np.nan)
    same = heldout_model is None or heldout_model is model
    model.warn_if_extrapolating(np.asarray(temp))
    if engine() == "numba":
        stats, counts, shown = _kernel_statistics(model, real, temp, flagged, inflation, heldout_model)
    else:
        stats, counts, shown = _numpy_statistics(model, real, temp, flagged, inflation, heldout_model)
    if same:
        # The held-out maps are the in-sample ones times one positive factor, and so are
        # their mean, median, std and percentiles: no need to summarise them again.
        factor = float(inflation)
        for name in ("mae", "mape"):
            stats[f"heldout_{name}"] = {k: factor * stats[name][k] for k in STATISTICS}
        stats["heldout_per_noise"] = factor * stats["per_noise"]
    row: dict[str, object] = {
        "temperature": temp,
        "label": label,
        "n_frames": n_frames,
        "n_pixels": counts["n_pixels"],
        "n_flagged": counts["n_flagged"],
    }
    for name in ("mae", "mape", "heldout_mae", "heldout_mape"):
        row.update({f"{name}_{k}": v for k, v in stats[name].items()})
    row["mae_per_read_noise"] = stats["per_noise"]
    row["heldout_mae_per_read_noise"] = stats["heldout_per_noise"]
    columns, significance = noise_floor(
        model, real, temp, ~flagged, expected, leverage, None if same else heldout_model
    )
    row.update(columns)
    if significance is not None:
        # Block means times the block's side: a standard normal again at the floor, whatever the factor.
        blocks, factor = downsample(significance)
        shown[SIGNIFICANCE] = ((blocks * np.float32(factor)).astype(np.float32), factor)
    del significance
    levels = real[~flagged & np.isfinite(real)]
    low, median, high = np.percentile(levels, [5.0, 50.0, 95.0]) if levels.size else (math.nan,) * 3
    row.update(bias_p05=float(low), bias_median=float(median), bias_p95=float(high))
    return MasterEvaluation(row, real, model, inflation, None if same else heldout_model, shown)


Statistics = dict[str, Any]


def _numpy_statistics(
    model: BiasModel,
    real: np.ndarray,
    temp: float,
    flagged: np.ndarray,
    inflation: np.float32,
    heldout_model: BiasModel | None,
) -> tuple[Statistics, dict[str, int], dict[str, tuple[np.ndarray, int]]]:
    """The reference: the row's statistics and the plot maps with numpy, from full-size maps."""
    valid = ~flagged
    predicted = prediction(model, temp)
    mae, mape = error_maps(real, predicted)
    shown = {
        stem: downsample(image) for stem, image in ((REAL_PLOT, real), (SYNTHETIC, predicted), (MAE, mae), (MAPE, mape))
    }
    del predicted
    stats: Statistics = {name: summarize(values, valid) for name, values in (("mae", mae), ("mape", mape))}
    same = heldout_model is None or heldout_model is model
    if not same:
        assert heldout_model is not None
        heldout_mae, heldout_mape = (m * inflation for m in error_maps(real, prediction(heldout_model, temp)))
        for name, values in (("heldout_mae", heldout_mae), ("heldout_mape", heldout_mape)):
            stats[name] = summarize(values, valid)
        del heldout_mape
    counts = {
        "n_pixels": int(np.count_nonzero(valid & np.isfinite(mape))),
        "n_flagged": int(np.count_nonzero(flagged)),
    }
    stats["per_noise"] = stats["heldout_per_noise"] = math.nan
    if model.read_noise is not None:
        with np.errstate(invalid="ignore", divide="ignore"):  # a dead pixel's noise is 0
            per_noise = mae / model.read_noise
            selected = per_noise[valid & np.isfinite(per_noise)]
            stats["per_noise"] = float(selected.mean(dtype=np.float64)) if selected.size else math.nan
            if not same:
                stats["heldout_per_noise"] = summarize(heldout_mae / model.read_noise, valid)["mean"]
    return stats, counts, shown


def _kernel_statistics(
    model: BiasModel,
    real: np.ndarray,
    temp: float,
    flagged: np.ndarray,
    inflation: np.float32,
    heldout_model: BiasModel | None,
) -> tuple[Statistics, dict[str, int], dict[str, tuple[np.ndarray, int]]]:
    """The same as :func:`_numpy_statistics` by the kernels: two passes over the master."""
    flagged = np.ascontiguousarray(flagged, dtype=np.bool_)
    factor = plot_factor(real.shape)
    rows, cols = real.shape
    sums = np.zeros((4, rows // factor, cols // factor), dtype=np.float64)
    counts = np.zeros(sums.shape, dtype=np.int64)
    stats, totals = _kernel_errors(model, real, temp, flagged, np.float32(1.0), factor, sums, counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums / counts).astype(np.float32)
    del sums, counts
    shown = {stem: (means[k], factor) for k, stem in enumerate((REAL_PLOT, SYNTHETIC, MAE, MAPE))}
    numbers = {"n_pixels": int(totals[2]), "n_flagged": int(np.count_nonzero(flagged))}
    if heldout_model is not None and heldout_model is not model:
        held, held_totals = _kernel_errors(heldout_model, real, temp, flagged, inflation, 0, None, None, model)
        stats["heldout_mae"], stats["heldout_mape"] = held["mae"], held["mape"]
        stats["heldout_per_noise"] = held["per_noise"]
    else:
        stats["heldout_per_noise"] = math.nan
    return stats, numbers, shown


_EMPTY = np.zeros((0, 0), dtype=np.float32)


def _kernel_errors(
    model: BiasModel,
    real: np.ndarray,
    temp: float,
    flagged: np.ndarray,
    scale: np.float32,
    factor: int,
    sums: np.ndarray | None,
    counts: np.ndarray | None,
    noise_model: BiasModel | None = None,
) -> tuple[Statistics, np.ndarray]:
    """Statistics of ``|real - model| * scale``, its percentage and its ratio to the read
    noise (of ``noise_model``, default ``model``) by :func:`eval_kernels.error_pass` and
    :func:`eval_kernels.error_select`; the block sums go into ``sums``/``counts``."""
    a = np.ascontiguousarray(model.a_map, dtype=np.float32)
    b = np.ascontiguousarray(model.b_map, dtype=np.float32)
    c = _EMPTY if model.c_map is None else np.ascontiguousarray(model.c_map, dtype=np.float32)
    noise_map = (noise_model or model).read_noise
    noise = _EMPTY if noise_map is None else np.ascontiguousarray(noise_map, dtype=np.float32)
    t = np.float32(temp)
    hist = np.zeros((2, eval_kernels.HI_BINS), dtype=np.int64)
    totals = np.zeros(eval_kernels.ERROR_SUMS, dtype=np.float64)
    if sums is None or counts is None:
        sums = counts = np.zeros((4, 0, 0), dtype=np.float64)
    eval_kernels.error_pass(real, a, b, c, t, scale, flagged, noise, factor, sums, counts, hist, totals)
    quantities = (("mae", 0), ("mape", 2))
    stats: Statistics = {}
    wanted = []
    for name, at in quantities:
        n = int(totals[at])
        stats[name] = {"mean": math.nan, "median": math.nan, "std": math.nan, "p95": math.nan}
        if n:
            wanted.append((name, n, *eval_kernels.percentile_ranks(n, [50, 95])))
    stats["per_noise"] = float(totals[5] / totals[4]) if totals[4] else math.nan
    if wanted:
        slots = np.full((2, eval_kernels.HI_BINS), -1, dtype=np.int64)
        means = np.zeros(2, dtype=np.float64)
        found = {}
        for name, n, previous, following, _ in wanted:
            q = 0 if name == "mae" else 1
            ranks = np.concatenate([previous, following])
            bins = eval_kernels.prefixes_for(hist[q], ranks)
            _, slots[q] = eval_kernels.slot_table(bins)
            means[q] = totals[2 * q + 1] / n
            found[name] = (ranks, bins)
        width = 4  # two percentiles, two neighbours each: at most four bins
        low = np.zeros((2, width, eval_kernels.HI_BINS), dtype=np.int64)
        squares = np.zeros(2, dtype=np.float64)
        eval_kernels.error_select(real, a, b, c, t, scale, flagged, slots, low, means, squares)
        for name, n, _, _, gamma in wanted:
            q = 0 if name == "mae" else 1
            ranks, bins = found[name]
            values = eval_kernels.values_at(hist[q], bins, low[q][slots[q][bins]], ranks)
            median, p95 = (float(v) for v in eval_kernels.interpolate(values[:2], values[2:], gamma))
            stats[name] = {
                "mean": float(means[q]),
                "median": median,
                "std": math.sqrt(squares[q] / n),
                "p95": p95,
            }
    return stats, totals


def evaluate_masters(
    model: BiasModel,
    masters: Sequence[MasterImage],
    *,
    heldout_model: BiasModel | None = None,
    config: PipelineConfig | None = None,
) -> Iterator[MasterEvaluation]:
    """Compare the model with every master, one at a time (pure: no files).

    Parameters
    ----------
    model
        The fitted model.
    masters
        The masters (``label``, ``temperature``, ``n_frames``, ``load()``), in the order of
        the fit's groups.
    heldout_model
        The masters fit whose leverages give the held-out errors (default ``model``; a
        model fitted on frames has none, and its held-out columns then come from this one).
    config
        The run's options, for the masters' expected errors (:func:`expected_errors`).

    Yields
    ------
    MasterEvaluation
        One per master, in order; each master is read when its turn comes.
    """
    validation = heldout_model if heldout_model is not None else model
    leverage = list(validation.group_leverage) if len(validation.group_leverage) == len(masters) else None
    flagged = model.flagged  # once for every master
    expected = expected_errors(masters, config)
    for index, master in enumerate(masters):
        yield evaluate_master(
            model,
            master,
            leverage=leverage[index] if leverage is not None else math.nan,
            heldout_model=heldout_model,
            flagged=flagged,
            expected=expected[index],
        )


def summary_csv_text(rows: Sequence[Mapping[str, object]]) -> str:
    """The per-temperature summary as CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _fits_products(evaluation: MasterEvaluation) -> Iterator[tuple[str, np.ndarray, str, str, str]]:
    """``(file stem, data, kind, what, unit)`` of the FITS ``--save-eval-fits`` writes, one
    at a time: each full-size map is made when its file is written and let go after."""
    predicted = evaluation.predicted
    yield SYNTHETIC, predicted, "SYNTHETIC_BIAS", "model bias at the master's temperature", "adu"
    mae, mape = error_maps(evaluation.real, predicted)
    del predicted
    yield MAE, mae, "MAE", "absolute error |real - model| per pixel", "adu"
    yield MAPE, mape, "MAPE", "100 |real - model| / |real| per pixel", "%"
    del mape
    heldout = evaluation.heldout_maps(mae)[0]
    del mae
    yield HELDOUT_MAE, heldout, "HELDOUT_MAE", "|real - model fitted without this master|", "adu"


def map_plots(evaluation: MasterEvaluation, out: Path) -> list[ImagePlot]:
    """The maps of one master, block-averaged (see :func:`~bias_pipeline.plots.downsample`):
    the master and the model with one colour scale, the signed residual ``real - model`` with a
    diverging one centred on 0, the percentage error, and (when the expected errors are known) the
    significance map: the held-out residual over its expected error, block means times the
    block's side so that it is a standard normal at the noise floor whatever the block size."""
    label, n_frames = evaluation.label, evaluation.row["n_frames"]
    shape = (int(evaluation.real.shape[0]), int(evaluation.real.shape[1]))
    fitted = evaluation.model.group_frames
    source = f"fitted to all {sum(fitted)} frames of {len(fitted)} masters" if fitted else "the fitted model"
    real, factor = evaluation.shown[REAL_PLOT]
    model, _ = evaluation.shown[SYNTHETIC]
    residual = (real - model).astype(np.float32)  # block means are linear: the mean of real - model
    common = shared_limits(real, model)

    def plot(
        stem: str,
        shown: np.ndarray,
        title: str,
        unit: str,
        cmap: str = "viridis",
        limits: tuple[float, float] | None = None,
    ) -> ImagePlot:
        return ImagePlot(shown, factor, shape, out / labelled_name(stem, label, ".png"), title, unit, cmap, limits)

    significance = []
    if SIGNIFICANCE in evaluation.shown:
        scaled = f", block means x {factor}" if factor > 1 else ""
        significance.append(
            plot(
                SIGNIFICANCE,
                evaluation.shown[SIGNIFICANCE][0],
                f"Held-out residual / expected error at {label} deg C{scaled}\n(standard normal at the noise floor)",
                "significance (sigma)",
                "RdBu_r",
                (-SIGNIFICANCE_LIMIT, SIGNIFICANCE_LIMIT),
            )
        )
    return [
        plot(REAL_PLOT, real, f"Real master bias at {label} deg C ({n_frames} frames)", "bias (ADU)", limits=common),
        plot(SYNTHETIC, model, f"Model bias at {label} deg C ({source})", "bias (ADU)", limits=common),
        plot(
            RESIDUAL,
            residual,
            f"Residual real - model at {label} deg C ({n_frames} frames)",
            "real - model (ADU)",
            "RdBu_r",
            symmetric_limits(residual),
        ),
        plot(
            MAPE,
            evaluation.shown[MAPE][0],
            f"100 |real - model| / |real| at {label} deg C\n(small for any fit: the offset is large)",
            "MAPE (%)",
            "magma",
        ),
        *significance,
    ]


def diagnostic_maps(model: BiasModel) -> list[tuple[str, str, np.ndarray, str]]:
    """The fit's uncertainty and quality maps the model carries: ``(file name, title, map, unit)``
    for sigma_b (the standard error of b), the reduced chi-square and the rms of the residuals."""
    maps: list[tuple[str, str, np.ndarray, str]] = []
    if model.covariance is not None:
        sigma_b = np.sqrt(np.maximum(np.asarray(model.covariance[1, 1], dtype=np.float32), 0))
        maps.append((SIGMA_B_PLOT, "sigma_b: standard error of b", sigma_b, "ADU / deg C"))
    if model.chi2 is not None:
        maps.append((CHI2_PLOT, "CHI2: reduced chi-square of the fit", model.chi2, "reduced chi-square"))
    if model.rms is not None:
        maps.append((RMS_PLOT, "RMS: rms of the fit residuals", model.rms, "ADU"))
    return maps


def master_levels(rows: Sequence[Mapping[str, object]]) -> list[tuple[float, float, float]] | None:
    """Each master's ``(5 %, median, 95 %)`` from the rows (None when a row lacks them)."""
    try:
        return [(float(r["bias_p05"]), float(r["bias_median"]), float(r["bias_p95"])) for r in rows]  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        return None


def write_diagnostics(model: BiasModel, rows: Sequence[Mapping[str, object]], out: Path) -> list[ImagePlot]:
    """Write the fit's diagnostic figures into ``out`` (the bias against temperature with the
    fitted law, the flag map, the profiles of a and b) and return the maps still to draw
    (sigma_b, chi-square, rms: :func:`diagnostic_maps`, flagged pixels left out)."""
    flagged = model.flagged
    levels = master_levels(rows)
    if levels:
        temps = [float(r["temperature"]) for r in rows]  # type: ignore[arg-type]
        figure = bias_temperature_figure(temps, levels, model.a_map, model.b_map, flagged, model.c_map)
        write_png_atomic(out / BIAS_TEMPERATURE_PLOT, figure)
    if model.dq is not None:
        bits = [(bit.name, bit.value) for bit in DQ_BITS]
        write_png_atomic(out / FLAG_MAP_PLOT, flag_map_figure(model.dq, bits))
    profiles = [("a", model.a_map, "ADU"), ("b", model.b_map, "ADU / deg C")]
    write_png_atomic(out / PROFILES_PLOT, profile_figure(profiles, flagged))
    return [
        ImagePlot.of(np.where(flagged, np.float32(np.nan), image).astype(np.float32), out / name, title, unit, "magma")
        for name, title, image, unit in diagnostic_maps(model)
    ]


def write_evaluation(
    evaluations: Iterable[MasterEvaluation],
    evaluation_dir: str | Path,
    *,
    scale_factor: float = DEFAULT_SCALE_FACTOR,
    save_fits: bool = False,
    plots: bool = True,
    show_progress: bool = True,
    threads: int = 0,
    total: int | None = None,
) -> list[dict[str, object]]:
    """Save step 5's results: optional FITS per master, the CSV, the maps and the summary plot.

    Parameters
    ----------
    evaluations
        :func:`evaluate_masters`' results; consumed one at a time, and only the downsampled
        maps of each are kept (drawn together at the end, in parallel processes).
    evaluation_dir
        Output folder (created if missing).
    scale_factor
        12-bit to 16-bit factor, for the FITS headers.
    save_fits
        Also write ``synthetic_bias_XX.XC.fits``, ``mae_XX.XC.fits``, ``mape_XX.XC.fits``,
        ``heldout_mae_XX.XC.fits``.
    plots
        Draw the PNGs.
    show_progress
        tqdm bar on a terminal.
    threads
        Processes drawing the maps (0: as many as CPUs, at most 8).
    total
        Number of masters, for the progress bar.

    Returns
    -------
    list of dict
        One summary row per master (keys :data:`SUMMARY_COLUMNS`).

    Raises
    ------
    OutputError
        When a file cannot be written.
    """
    out = Path(evaluation_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    pending: list[ImagePlot] = []
    model: BiasModel | None = None
    # A bar updated by hand rather than wrapped round the iterable: tqdm's own loop would hold
    # the previous master's maps while the next one is computed.
    with tqdm(
        total=total, desc="evaluating", unit="master", disable=None if show_progress else True, leave=False
    ) as progress:
        for evaluation in evaluations:
            row = evaluation.row
            rows.append(row)
            model = evaluation.model
            if plots:
                pending += map_plots(evaluation, out)
            if save_fits:
                cards = {
                    "TEMPERATURE": (row["temperature"], "[deg C] temperature of the master"),
                    "NCOMBINE": (row["n_frames"], "frames in the master"),
                }
                for stem, data, kind, what, unit in _fits_products(evaluation):
                    write_image(
                        out / labelled_name(stem, evaluation.label),
                        data,
                        product_header(kind, what, bunit=unit, scale_factor=scale_factor, cards=cards),
                    )
            logger.info(
                "%s C: MAE mean %.3f ADU (held-out %.3f), median %.3f; MAPE mean %.4f %%; "
                "residual / expected error %.3f (held-out %.3f)",
                evaluation.label,
                row["mae_mean"],
                row["heldout_mae_mean"],
                row["mae_median"],
                row["mape_mean"],
                row["residual_per_error"],
                row["heldout_residual_per_error"],
            )
            progress.update()
            # Let go of this master's full-size maps before the next one is computed.
            del evaluation
    write_text_atomic(out / SUMMARY_CSV, summary_csv_text(rows))
    if rows:
        logger.info("%s", noise_floor_verdict(rows).sentence)
    if plots and model is not None:
        pending += write_diagnostics(model, rows, out)
    draw_plots(pending, workers=threads or default_threads(), show_progress=show_progress)
    if plots and rows:
        plot_summary(rows, out / SUMMARY_PNG)
    return rows

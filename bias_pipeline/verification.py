"""A model checked on new bias frames: ``python -m bias_pipeline verify MODEL --basepath RAW --output-dir OUT``.

Each new bias frame (found and judged by step 1's scan and checks) is compared with the model at
the frame's own header temperature, over the pixels neither masked nor DQ-flagged:

- the **mean residual** (frame - model), a clipped mean: the mean of the residuals within
  :data:`CLIP_SIGMA` robust standard deviations of their median (cosmic rays left out), and its
  **significance**, the mean over its standard error (the standard deviation of those residuals
  over the square root of their number: the frame's own noise and the model's per-pixel error
  together, both independent from pixel to pixel);
- the **noise ratio**: the robust standard deviation of the residual (MAD x 1.4826) over the
  noise the model expects, ``sqrt(mean over pixels of (readnoise_ij^2 + sigma_model_ij^2))``
  (a mean of variances: each pixel's read-noise estimate is an unbiased variance, whose median
  or square root would come out a few per cent low from a model of few frames);
- the **outlier fraction**: pixels whose residual, less the mean residual, lies beyond
  :data:`OUTLIER_SIGMA` of their own ``sqrt(readnoise_ij^2 + sigma_model_ij^2)``;
- whether the temperature lies outside the model's fitted range (a warning, not a failure);
- the frame's **row noise** (the offset each row of a CMOS frame shares,
  :mod:`bias_pipeline.row_noise`): the rms of its row offsets (each row's median residual) about
  their mean, less what noise alone gives in a row median (``pi / 2`` times the mean over the
  row of ``readnoise^2 + sigma_model^2``, over the number of pixels). With
  ``row_correction`` ``"on"``, or ``"auto"`` (the default) when that row noise is significant
  (:func:`~bias_pipeline.row_noise.row_noise_significant`), the offsets are removed before the
  noise ratio and the outliers are measured: a frame is not failed for the row noise the
  pipeline models. The mean residual keeps the frame's level either way (the offsets are
  removed about their mean); its standard error includes the row noise's part, the mean of the
  row offsets.

A frame **fails** (see :class:`VerificationRules`) when its mean residual is beyond the
tolerance (default :meth:`BiasModel.offset_tolerance`, a tenth of the median read noise) and
significant (more than :data:`MEAN_SIGNIFICANCE` standard errors), when its noise ratio is
further from 1 than ``max(noise_tolerance, NOISE_SIGMAS x its own standard error)``, or when
more than ``max_outlier_fraction`` of its pixels are outliers.

:func:`verify_residual` is the computation on plain arrays, :func:`verify_frame` one frame
against a model, :func:`verify_folder` a raw folder, :func:`write_verification` the products
(``verification.csv``, ``verification.html``), :func:`main` the command.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import logging
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ._version import __version__
from .command import (
    OneLineParser,
    add_message_options,
    add_schema_option,
    finite_float,
    guarded,
    setup_logging,
)
from .config import GROUP_FRAMES, PipelineConfig, options
from .dates import format_date
from .errors import FrameReadError, InputDataError, OutputError
from .frames import STATUS_ACCEPTED, STATUS_IGNORED, FrameRecord, read_frame
from .model import BiasModel
from .products import write_text_atomic
from .quality import MAD_TO_SIGMA
from .registry import MODEL_FILE_NAME, VERIFICATION_CSV, VERIFICATION_REPORT
from .row_noise import MIN_ROW_PIXELS, ROW_CORRECTION_MODES, measure_frame_rows
from .steps.step1_load_data import check_raw_folder, scan_frames
from .units import to_adu16

logger = logging.getLogger(__name__)

__all__ = [
    "CLIP_SIGMA",
    "CSV_COLUMNS",
    "DEFAULT_MAX_OUTLIER_FRACTION",
    "DEFAULT_NOISE_TOLERANCE",
    "EXAMPLE",
    "MAD_RELATIVE_ERROR",
    "MEAN_SIGNIFICANCE",
    "NOISE_SIGMAS",
    "OUTLIER_SIGMA",
    "FileVerification",
    "FrameVerification",
    "VerificationRules",
    "VerificationRun",
    "build_parser",
    "main",
    "verification_csv",
    "verification_html",
    "verify_folder",
    "verify_frame",
    "verify_residual",
    "write_verification",
]

#: Residuals further than this many robust standard deviations from their median are left out of
#: the mean residual: a cosmic ray or a new hot pixel moves a plain mean, not the level.
CLIP_SIGMA = 5.0
#: A mean residual beyond the tolerance fails the frame only when it is also this many standard
#: errors from zero: on a frame too small to measure its mean to the tolerance, noise alone
#: would otherwise fail it (one frame in 1.7 million at 5 sigma).
MEAN_SIGNIFICANCE = 5.0
#: A pixel whose residual is beyond this many of its own sigmas is an outlier (Gaussian tails:
#: 2e-9 of the pixels).
OUTLIER_SIGMA = 6.0
#: Default of ``--max-outlier-fraction``: 0.1 % of the pixels (see :class:`VerificationRules`).
DEFAULT_MAX_OUTLIER_FRACTION = 1e-3
#: Default of ``--noise-tolerance``: the noise ratio may differ from 1 by 10 % (see :class:`VerificationRules`).
DEFAULT_NOISE_TOLERANCE = 0.1
#: The noise ratio may also differ from 1 by this many of its own standard errors.
NOISE_SIGMAS = 5.0
#: The relative standard error of a MAD-based standard deviation of N Gaussian values is
#: ``MAD_RELATIVE_ERROR / sqrt(N)`` (the MAD's efficiency is 36.8 % of the standard deviation's,
#: whose relative error is ``1 / sqrt(2 N)``).
MAD_RELATIVE_ERROR = 1.1664

MAX_LISTED_FAILURES = 10  # failed frames named on stdout; the CSV has them all
PASSED = "passed"
FAILED = "failed"

EXAMPLE = f"""\
examples:
  python -m bias_pipeline verify results/ --basepath weekly_bias/2026-w23/ --output-dir verify_w23/
  python -m bias_pipeline verify results/bias_model/bias_model.fits --basepath weekly_bias/2026-w24/ \\
      --output-dir verify_w24/ -q || echo "the model no longer holds"

  Compares every bias frame under weekly_bias/2026-w23/ with the model of the run in results/
  (or give results/bias_model/{MODEL_FILE_NAME}) at the frame's own temperature, and writes
  verify_w23/{VERIFICATION_CSV} (one row per file: every figure, passed or failed and why) and
  verify_w23/{VERIFICATION_REPORT}. Exit 0: the model holds for every frame; 1: it does not for
  at least one; 2: bad options; 3: no model or no bias frame; 4: OUT cannot be written.
"""


# ------------------------------------------------------------------------- the computation
@dataclass(frozen=True)
class VerificationRules:
    """When a frame fails.

    Attributes
    ----------
    tolerance
        Largest accepted mean residual [ADU]. The command's default is
        :meth:`BiasModel.offset_tolerance`: a tenth of the model's median read noise, an error
        small against one pixel's noise in any frame the bias is subtracted from, while an aged
        sensor's offset of a third of the read noise is far beyond it.
    noise_tolerance
        Largest accepted ``|noise ratio - 1|`` beyond what the ratio's own scatter allows
        (``NOISE_SIGMAS x MAD_RELATIVE_ERROR / sqrt(N)``, which matters for small frames only):
        10 % by default. A residual noise 10 % above the model's means variance 21 % above, an
        extra noise of 46 % of the read noise (new pattern noise, a changed readout, or a
        pixel-to-pixel change of the bias that is no global offset); the pipeline's own noise
        estimate is good to a few per cent.
    max_outlier_fraction
        Largest accepted fraction of pixels beyond :data:`OUTLIER_SIGMA`: 0.1 % by default.
        Gaussian noise puts 2e-9 of the pixels there, and a read-noise map estimated from 20
        frames a pixel (Student t tails) 1e-5; the rest of the allowance is for cosmic rays (a
        zero-exposure frame gets a few, 1e-4 of the pixels at most) and stops being enough only
        when pixels changed (new hot pixels, a damaged region) or the frame is not a clean bias.
    """

    tolerance: float
    noise_tolerance: float = DEFAULT_NOISE_TOLERANCE
    max_outlier_fraction: float = DEFAULT_MAX_OUTLIER_FRACTION


@dataclass(frozen=True)
class FrameVerification:
    """One frame against the model.

    Attributes
    ----------
    temperature
        The frame's header temperature [deg C], at which the model was evaluated.
    pixels
        Pixels compared (neither masked nor flagged, finite in the frame and the model).
    mean_residual, mean_error, significance
        Clipped mean of frame - model [ADU], its standard error [ADU], and their ratio.
    clipped
        Pixels left out of the clipped mean.
    residual_noise, expected_noise, noise_ratio, noise_bound
        Robust standard deviation of the residual [ADU], the root mean square over pixels of
        ``sqrt(readnoise^2 + sigma_model^2)`` [ADU], their ratio, and the largest
        ``|ratio - 1|`` accepted.
    outliers, outlier_fraction
        Pixels beyond :data:`OUTLIER_SIGMA` of their own sigma (about the mean residual), and
        their fraction of ``pixels``.
    extrapolated
        The temperature lies outside the model's fitted range.
    failures
        Why the frame fails (empty: it passes).
    notes
        Remarks that do not fail the frame (extrapolation, an offset too small to test).
    row_noise
        The frame's row-noise amplitude [ADU] (module docstring); NaN when not measurable
        (rows of fewer than :data:`~bias_pipeline.row_noise.MIN_ROW_PIXELS` usable pixels).
    row_corrected
        Whether its row offsets were removed before the noise ratio and the outliers.
    """

    temperature: float
    pixels: int
    mean_residual: float
    mean_error: float
    significance: float
    clipped: int
    residual_noise: float
    expected_noise: float
    noise_ratio: float
    noise_bound: float
    outliers: int
    outlier_fraction: float
    extrapolated: bool = False
    failures: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    row_noise: float = math.nan
    row_corrected: bool = False

    @property
    def passed(self) -> bool:
        """Whether the model holds for this frame."""
        return not self.failures


def verify_residual(
    frame: np.ndarray,
    prediction: np.ndarray,
    model_sigma: np.ndarray,
    read_noise: np.ndarray,
    usable: np.ndarray,
    rules: VerificationRules,
    *,
    temperature: float = math.nan,
    temperature_range: tuple[float, float] | None = None,
    row_correction: str = "auto",
) -> FrameVerification:
    """Judge one frame against the model's prediction (plain arrays in, nothing changed).

    Parameters
    ----------
    frame
        The frame [16-bit ADU].
    prediction, model_sigma
        The model at the frame's temperature and its standard error [ADU] (NaN sigma counts as 0:
        a model without covariance).
    read_noise
        One frame's read noise per pixel [ADU].
    usable
        True where a pixel is compared (neither masked nor flagged); pixels not finite in
        ``frame``, ``prediction`` or ``read_noise`` are left out too.
    rules
        When the frame fails.
    temperature
        The frame's temperature [deg C] (recorded, and checked against ``temperature_range``).
    temperature_range
        The model's fitted range [deg C]; ``None``: unknown, not checked.
    row_correction
        ``"auto"``: remove the frame's row offsets (about their mean) before the noise ratio and
        the outliers when its row noise is significant; ``"on"``: always (where the rows have
        enough pixels); ``"off"``: never (the row noise is still measured).

    Returns
    -------
    FrameVerification

    Raises
    ------
    ValueError
        When the arrays differ in shape or ``row_correction`` is not one of
        :data:`~bias_pipeline.row_noise.ROW_CORRECTION_MODES`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> model, noise = np.full((64, 64), 3200.0), np.full((64, 64), 32.0)
    >>> frame = model + rng.normal(0.0, 32.0, model.shape)
    >>> rules = VerificationRules(tolerance=3.2)
    >>> good = verify_residual(frame, model, np.zeros_like(model), noise, np.ones(model.shape, bool), rules)
    >>> good.passed, good.outliers
    (True, 0)
    >>> aged = verify_residual(frame + 12.0, model, np.zeros_like(model), noise, np.ones(model.shape, bool), rules)
    >>> aged.passed, abs(aged.mean_residual - 12.0) < 5 * aged.mean_error, aged.failures[0].split(" ADU ")[1]
    (False, True, 'is beyond the tolerance 3.20')
    """
    shapes = {np.shape(a) for a in (frame, prediction, model_sigma, read_noise, usable)}
    if len(shapes) != 1:
        raise ValueError(f"frame, prediction, sigma, read noise and usable pixels differ in shape: {sorted(shapes)}")
    if row_correction not in ROW_CORRECTION_MODES:
        raise ValueError(f"row_correction {row_correction!r} is not one of {', '.join(ROW_CORRECTION_MODES)}")
    frame = np.asarray(frame, dtype=np.float32)
    prediction = np.asarray(prediction, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        good = (
            np.asarray(usable, dtype=bool)
            & np.isfinite(frame)
            & np.isfinite(prediction)
            & np.isfinite(read_noise)
            & (np.asarray(read_noise) > 0)
        )
    # What noise alone gives a row median: the frame's read noise and the model's own error
    # (which grows towards the ends of the fitted range) together.
    pixel_noise = np.hypot(np.asarray(read_noise, dtype=np.float64), np.nan_to_num(np.asarray(model_sigma), nan=0.0))
    rows = measure_frame_rows(frame - prediction, good, pixel_noise) if frame.ndim == 2 else None
    row_noise = rows.amplitude if rows is not None and rows.measured.any() else math.nan
    corrected = (
        rows is not None
        and bool(rows.measured.any())
        and (row_correction == "on" or (row_correction == "auto" and rows.test.significant))
    )
    if corrected:
        assert rows is not None
        frame = rows.removed_from(frame)
    # The level part of row noise, the mean of the frame's row offsets, is no pixel's own: it
    # adds to the mean residual's error (when there is row noise to speak of).
    level_variance = rows.amplitude**2 / int(rows.measured.sum()) if rows is not None and rows.test.significant else 0.0
    residual = (frame[good] - prediction[good]).astype(np.float64)
    sigma_model = np.nan_to_num(np.asarray(model_sigma, dtype=np.float64)[good], nan=0.0)
    sigma = np.sqrt(np.asarray(read_noise, dtype=np.float64)[good] ** 2 + sigma_model**2)
    extrapolated = temperature_range is not None and not (
        temperature_range[0] - 1e-9 <= temperature <= temperature_range[1] + 1e-9
    )
    notes = []
    if extrapolated:
        assert temperature_range is not None
        low, high = temperature_range
        notes.append(
            f"{temperature:.2f} deg C is outside the model's range {low:.2f}..{high:.2f} deg C: "
            "compared with an extrapolation"
        )
    n = residual.size
    if n == 0:
        return FrameVerification(
            temperature=float(temperature),
            pixels=0,
            mean_residual=math.nan,
            mean_error=math.nan,
            significance=math.nan,
            clipped=0,
            residual_noise=math.nan,
            expected_noise=math.nan,
            noise_ratio=math.nan,
            noise_bound=math.nan,
            outliers=0,
            outlier_fraction=math.nan,
            extrapolated=extrapolated,
            failures=("no pixel to compare: every pixel is masked, flagged or not finite",),
            notes=tuple(notes),
        )
    median = float(np.median(residual))
    spread = float(np.median(np.abs(residual - median)) * MAD_TO_SIGMA)
    kept = residual[np.abs(residual - median) <= CLIP_SIGMA * spread]
    mean = float(kept.mean())
    error = float(kept.std(ddof=1) / math.sqrt(kept.size)) if kept.size > 1 else math.nan
    if level_variance > 0:
        error = math.hypot(error, math.sqrt(level_variance))
    significance = mean / error if error > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    expected = float(np.sqrt(np.mean(sigma**2)))
    ratio = spread / expected
    bound = max(rules.noise_tolerance, NOISE_SIGMAS * MAD_RELATIVE_ERROR / math.sqrt(n))
    outliers = int(np.count_nonzero(np.abs(residual - mean) > OUTLIER_SIGMA * sigma))
    fraction = outliers / n

    failures = []
    if abs(mean) > rules.tolerance:
        if not abs(significance) > MEAN_SIGNIFICANCE:
            notes.append(
                f"mean residual {mean:+.2f} ADU is beyond the tolerance {rules.tolerance:.2f} ADU but only "
                f"{significance:+.1f} standard errors: too few pixels to tell an offset from noise"
            )
        else:
            failures.append(
                f"mean residual {mean:+.2f} ADU is beyond the tolerance {rules.tolerance:.2f} ADU "
                f"({significance:+.1f} standard errors)"
            )
    if not abs(ratio - 1.0) <= bound:
        failures.append(
            f"residual noise {spread:.2f} ADU is {ratio:.3f} x the model's {expected:.2f} ADU "
            f"(accepted 1 +- {bound:.3f})"
        )
    if fraction > rules.max_outlier_fraction:
        failures.append(
            f"{outliers} pixels ({100 * fraction:.3f} %) lie beyond {OUTLIER_SIGMA:g} sigma of the model "
            f"(accepted {100 * rules.max_outlier_fraction:.3g} %)"
        )
    return FrameVerification(
        temperature=float(temperature),
        pixels=n,
        mean_residual=mean,
        mean_error=error,
        significance=significance,
        clipped=n - kept.size,
        residual_noise=spread,
        expected_noise=expected,
        noise_ratio=ratio,
        noise_bound=bound,
        outliers=outliers,
        outlier_fraction=fraction,
        extrapolated=extrapolated,
        failures=tuple(failures),
        notes=tuple(notes),
        row_noise=row_noise,
        row_corrected=corrected,
    )


def model_read_noise(model: BiasModel, source: str | Path = "the model") -> np.ndarray:
    """The model's one-frame read-noise map (``READNOISE``), which verification needs.

    Raises
    ------
    InputDataError
        When the model carries none (an a-map and b-map without the one-file model).
    """
    if model.read_noise is None or np.shape(model.read_noise) != model.shape:
        raise InputDataError(
            f"model {source} carries no read-noise map (READNOISE), which verify compares the frames' noise "
            f"with; give the run's output folder or its bias_model/{MODEL_FILE_NAME}"
        )
    return model.read_noise


def verify_frame(
    frame: np.ndarray, temperature: float, model: BiasModel, rules: VerificationRules, *, row_correction: str = "auto"
) -> FrameVerification:
    """Judge one frame [16-bit ADU] against ``model.predict(temperature, return_sigma=True)``.

    Parameters
    ----------
    frame
        The frame, of the model's shape.
    temperature
        Its header temperature [deg C].
    model
        The model, with a read-noise map; its masked and DQ-flagged pixels are left out.
    rules
        When the frame fails.
    row_correction
        ``"auto"``, ``"on"`` or ``"off"``: whether the frame's row offsets are removed before
        its noise is judged (:func:`verify_residual`).

    Returns
    -------
    FrameVerification

    Raises
    ------
    InputDataError
        When the model has no read-noise map or the frame's shape differs from the model's.
    """
    if np.shape(frame) != model.shape:
        raise InputDataError(f"a frame of shape {np.shape(frame)} cannot be compared with a model of {model.shape}")
    read_noise = model_read_noise(model)
    prediction, sigma = model.predict(float(temperature), return_sigma=True)
    return verify_residual(
        frame,
        prediction,  # type: ignore[arg-type]
        sigma,  # type: ignore[arg-type]
        read_noise,
        ~model.flagged,
        rules,
        temperature=float(temperature),
        temperature_range=model.temperature_range,
        row_correction=row_correction,
    )


# ------------------------------------------------------------------------------ a folder
@dataclass(frozen=True)
class FileVerification:
    """One file found under the raw folder: verified (``result``) or why not (``reason``).

    Attributes
    ----------
    record
        The file's record from step 1's scan.
    status
        ``"passed"``, ``"failed"``, ``"rejected"`` or ``"ignored"``.
    reason
        Why it failed (the failures joined), or why it was not verified.
    result
        The figures of a verified frame; ``None`` otherwise.
    """

    record: FrameRecord
    status: str
    reason: str = ""
    result: FrameVerification | None = None


@dataclass(frozen=True)
class VerificationRun:
    """A raw folder verified against one model.

    Attributes
    ----------
    model_path
        What the model was loaded from.
    model
        The model.
    rules
        The rules applied.
    files
        One entry per file found, sorted by path.
    input_bits
        The bit depth the frames were read as.
    base_path
        The raw folder.
    row_correction
        ``--row-correction``: whether each frame's row offsets were removed before its noise
        was judged (``auto``: when its row noise is significant).
    """

    model_path: Path
    model: BiasModel
    rules: VerificationRules
    files: tuple[FileVerification, ...]
    input_bits: int
    base_path: Path
    row_correction: str = "auto"

    def count(self, status: str) -> int:
        """Number of files with ``status``."""
        return sum(1 for f in self.files if f.status == status)

    @property
    def verified(self) -> int:
        """Frames compared with the model."""
        return self.count(PASSED) + self.count(FAILED)

    @property
    def holds(self) -> bool:
        """The model holds for every verified frame (and at least one was verified)."""
        return self.verified > 0 and self.count(FAILED) == 0


def verify_folder(
    model: BiasModel,
    base_path: str | Path,
    rules: VerificationRules,
    config: PipelineConfig | None = None,
    *,
    model_path: str | Path = "",
    exclude: Sequence[Path] = (),
) -> VerificationRun:
    """Scan ``base_path`` as step 1 does and judge every bias frame against ``model``.

    Parameters
    ----------
    model
        The model, with a read-noise map.
    base_path
        The folder of new bias frames (searched recursively).
    rules
        When a frame fails.
    config
        The frame-selection options of the scan, and ``row_correction`` (whether each frame's
        row offsets are removed before its noise is judged, :func:`verify_residual`); defaults
        if ``None``.
    model_path
        Where the model came from (for the products).
    exclude
        Folders not to scan (the command's own output folder).

    Returns
    -------
    VerificationRun
        Every file found: passed, failed, or rejected / ignored with step 1's reason (or,
        for a frame of another shape than the model's, that reason).

    Raises
    ------
    InputDataError
        When the model has no read-noise map, or ``base_path`` is not a folder or holds no file.
    """
    config = config or PipelineConfig(show_progress=False)
    read_noise = model_read_noise(model, model_path or "the model")
    records, bits = scan_frames(base_path, config, exclude=exclude)
    usable = ~model.flagged
    if config.row_correction == "on" and model.shape[1] < MIN_ROW_PIXELS:
        logger.warning(
            "--row-correction on: rows of %d pixels are too few (fewer than %d) to measure row offsets on; "
            "frames verified without removing them",
            model.shape[1], MIN_ROW_PIXELS,
        )  # fmt: skip
    files = []
    progress = tqdm(records, desc="verifying", unit="file", leave=False, disable=None if config.show_progress else True)
    for record in progress:
        files.append(_verify_record(record, model, read_noise, usable, rules, bits, config))
    return VerificationRun(
        model_path=Path(model_path),
        model=model,
        rules=rules,
        files=tuple(files),
        input_bits=bits,
        base_path=Path(base_path),
        row_correction=config.row_correction,
    )


def _verify_record(
    record: FrameRecord,
    model: BiasModel,
    read_noise: np.ndarray,
    usable: np.ndarray,
    rules: VerificationRules,
    bits: int,
    config: PipelineConfig,
) -> FileVerification:
    if record.status != STATUS_ACCEPTED or not record.passed_checks:
        status = "ignored" if record.status == STATUS_IGNORED else "rejected"
        return FileVerification(record, status, record.reason or "not a bias frame")
    if record.shape != model.shape:
        assert record.shape is not None
        return FileVerification(
            record,
            "rejected",
            f"shape {record.shape[0]}x{record.shape[1]} differs from the model's {model.shape[0]}x{model.shape[1]}",
        )
    try:
        frame = to_adu16(read_frame(record), bits, config.scale_factor)
    except FrameReadError as exc:
        return FileVerification(record, "rejected", str(exc))
    assert record.temperature is not None
    prediction, sigma = model.predict(record.temperature, return_sigma=True)
    result = verify_residual(
        frame,
        prediction,  # type: ignore[arg-type]
        sigma,  # type: ignore[arg-type]
        read_noise,
        usable,
        rules,
        temperature=record.temperature,
        temperature_range=model.temperature_range,
        row_correction=config.row_correction,
    )
    if result.extrapolated:
        logger.warning("%s: %s", record.path, result.notes[0])
    if result.passed:
        logger.debug(
            "passed %s: mean residual %+.2f ADU (%+.1f sigma), noise ratio %.3f, %d outliers, row noise %.2f ADU%s",
            record.path,
            result.mean_residual,
            result.significance,
            result.noise_ratio,
            result.outliers,
            result.row_noise,
            " (removed)" if result.row_corrected else "",
        )
        return FileVerification(record, PASSED, "", result)
    logger.debug("failed %s: %s", record.path, "; ".join(result.failures))  # the summary lists them
    return FileVerification(record, FAILED, "; ".join(result.failures), result)


# ---------------------------------------------------------------------------- products
CSV_COLUMNS = (
    "path",
    "status",
    "reason",
    "temperature",
    "date_obs",
    "in_model_range",
    "pixels",
    "mean_residual_adu",
    "mean_error_adu",
    "significance",
    "tolerance_adu",
    "residual_noise_adu",
    "model_noise_adu",
    "noise_ratio",
    "noise_bound",
    "row_noise_adu",
    "row_corrected",
    "outliers",
    "outlier_fraction",
    "max_outlier_fraction",
    "notes",
)


def _number(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "" if value is None or math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.{digits}f}"


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _file_row(entry: FileVerification, run: VerificationRun) -> list[str]:
    record, result = entry.record, entry.result
    notes = list(result.notes) if result is not None else []
    if record.date_problem:
        notes.append(record.date_problem)
    row = [
        _relative(record.path, run.base_path),
        entry.status,
        entry.reason,
        _number(record.temperature, 4),
        format_date(record.date_obs) if record.date_obs is not None else "",
    ]
    if result is None:
        return row + [""] * (len(CSV_COLUMNS) - len(row) - 1) + ["; ".join(notes)]
    return row + [
        "no" if result.extrapolated else ("yes" if run.model.temperature_range else ""),
        str(result.pixels),
        _number(result.mean_residual, 4),
        _number(result.mean_error, 4),
        _number(result.significance, 2),
        _number(run.rules.tolerance, 4),
        _number(result.residual_noise, 4),
        _number(result.expected_noise, 4),
        _number(result.noise_ratio, 4),
        _number(result.noise_bound, 4),
        _number(result.row_noise, 4),
        "yes" if result.row_corrected else "no",
        str(result.outliers),
        f"{result.outlier_fraction:.6g}",
        f"{run.rules.max_outlier_fraction:g}",
        "; ".join(notes),
    ]


def verification_csv(run: VerificationRun) -> str:
    """``verification.csv`` as text: one row per file found (:data:`CSV_COLUMNS`), paths relative
    to the raw folder."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for entry in run.files:
        writer.writerow(_file_row(entry, run))
    return buffer.getvalue()


def verdict(run: VerificationRun) -> str:
    """One sentence: whether the model holds, for how many frames."""
    verified, failed = run.verified, run.count(FAILED)
    others = len(run.files) - verified
    skipped = f"; {others} file{'s' if others != 1 else ''} not verified (rejected or ignored, see the reasons)"
    if verified == 0:
        return f"no bias frame could be verified ({len(run.files)} files found, none usable)"
    if failed:
        return f"the model does NOT hold: {failed} of {verified} frames failed" + (skipped if others else "")
    return f"the model holds for all {verified} frames" + (skipped if others else "")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 80em; color: #222; padding: 0 1em; }
h2 { border-bottom: 1px solid #ccc; } table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fde8e8; } tr.rejected td, tr.ignored td { color: #777; }
.verdict { font-size: 1.2em; font-weight: 600; padding: 0.5em 1em; border-radius: 6px; display: inline-block; }
.holds { background: #e6f4ea; } .fails { background: #fde8e8; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: 600; } dd { margin: 0; }
"""


def _row_correction_fact(mode: str) -> str:
    what = "each frame's row offsets (row noise, about their mean) removed before its noise ratio and outliers"
    if mode == "on":
        return what
    if mode == "off":
        return "off: row noise measured (row_noise_adu), not removed"
    return f"auto: {what} when its row noise is significant against read noise (row_corrected)"


def verification_html(run: VerificationRun) -> str:
    """``verification.html``: a self-contained page (inline style, no script, no image) with the
    model verified, the rules, the verdict and the table of files."""
    esc = html.escape
    model = run.model
    low, high = model.temperature_range or (math.nan, math.nan)
    dates = model.date_range
    facts = [
        ("model", str(run.model_path)),
        ("shape", f"{model.shape[0]} x {model.shape[1]} pixels, {model.law}"),
        ("fitted range", f"{low:.2f} .. {high:.2f} deg C" if model.temperature_range else "not recorded"),
        ("fitted frames", f"{format_date(dates[0])} .. {format_date(dates[1])}" if dates else "dates not recorded"),
        ("read noise", f"{model.typical_read_noise:.2f} ADU (median over unflagged pixels)"),
        ("raw folder", str(run.base_path)),
        (
            "tolerance",
            f"|mean residual| <= {run.rules.tolerance:.3f} ADU; a larger one fails when beyond "
            f"{MEAN_SIGNIFICANCE:g} standard errors",
        ),
        ("noise", f"|noise ratio - 1| <= max({run.rules.noise_tolerance:g}, {NOISE_SIGMAS:g} x its standard error)"),
        ("row correction", _row_correction_fact(run.row_correction)),
        (
            "outliers",
            f"at most {100 * run.rules.max_outlier_fraction:.3g} % of pixels beyond {OUTLIER_SIGMA:g} sigma",
        ),
    ]
    rows = []
    numeric = {"temperature", "pixels", "outliers", "outlier_fraction", "significance", "noise_ratio", "noise_bound"}
    numeric |= {c for c in CSV_COLUMNS if c.endswith("_adu")}
    shown = [c for c in CSV_COLUMNS if c not in ("tolerance_adu", "max_outlier_fraction")]
    for entry in run.files:
        values = dict(zip(CSV_COLUMNS, _file_row(entry, run), strict=True))
        cells = "".join(f'<td class="{"num" if c in numeric else ""}">{esc(values[c])}</td>' for c in shown)
        rows.append(f'<tr class="{esc(entry.status)}">{cells}</tr>')
    head = "".join(f"<th>{esc(c)}</th>" for c in shown)
    state = "holds" if run.holds else "fails"
    title = f"Bias model verification: {run.model_path.name or run.model_path}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f'<section id="verification">\n<h2>{esc(title)}</h2>\n'
        f'<p class="verdict {state}">{esc(verdict(run))}</p>\n'
        "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts) + "</dl>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>\n"
        f"<p>bias_pipeline {esc(__version__)}; the same table is in {esc(VERIFICATION_CSV)}.</p>\n"
        "</section>\n</body>\n</html>\n"
    )


def write_verification(run: VerificationRun, output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``verification.csv`` and ``verification.html`` into ``output_dir`` (created), each atomically.

    Returns
    -------
    csv_path, html_path

    Raises
    ------
    OutputError
        When the folder cannot be made or written.
    """
    out = prepare_output_dir(output_dir)
    csv_path = write_text_atomic(out / VERIFICATION_CSV, verification_csv(run))
    html_path = write_text_atomic(out / VERIFICATION_REPORT, verification_html(run))
    return csv_path, html_path


def prepare_output_dir(output_dir: str | Path) -> Path:
    """The output folder, created if needed.

    Raises
    ------
    OutputError
        When it cannot be made (a file in the way, no permission).
    """
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--output-dir {out} cannot be made: {exc.strerror or exc}; choose another folder") from None
    if not out.is_dir():
        raise OutputError(f"--output-dir {out} is not a folder; choose another")
    return out


# ------------------------------------------------------------------------------ command
#: Options of the run's schema that verify takes too: the frame selection (the same scan and
#: checks as step 1) and the scan's threads.
SCHEMA_OPTIONS = tuple(name for name, opt in options().items() if opt.group == GROUP_FRAMES) + ("threads",)
#: Options of the run's schema that decide how verify judges a frame.
RULE_OPTIONS = ("row_correction",)
#: Their help where the run's says more than verify does with them.
HELP_OVERRIDES = {
    "threads": "worker threads of the scan; 0: as many as CPUs, at most 8 (default 0)",
    "row_correction": "remove each frame's row offsets (row noise, about their mean: the level is kept) before "
    "its noise ratio and outliers: auto (when its row noise is significant against read noise; default), on or off",
}


def _positive_number(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return value


def _fraction(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must lie in [0, 1)")
    return value


def _add_schema_option(group: argparse._ArgumentGroup, name: str) -> None:
    """One option of the run's schema, as the run's parser has it, with verify's help where it differs."""
    add_schema_option(group, name, HELP_OVERRIDES.get(name))


def build_parser(prog: str = "python -m bias_pipeline verify") -> argparse.ArgumentParser:
    """The argument parser of ``verify`` (the frame-selection options from the run's schema)."""
    parser = OneLineParser(
        prog=prog,
        description=(
            "Check a bias model on new bias frames: each frame (found and checked as the pipeline's step 1 does) "
            "is compared with the model at its own temperature. Exit 0 when the model holds for every frame, "
            "1 when it does not for at least one."
        ),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        type=Path,
        metavar="MODEL",
        help=f"a pipeline output folder, or a model file ({MODEL_FILE_NAME})",
    )
    io_group = parser.add_argument_group("input and output")
    io_group.add_argument(
        "--basepath",
        type=Path,
        required=True,
        metavar="RAW_DIR",
        help="folder of new bias frames, searched recursively",
    )
    io_group.add_argument(
        "--output-dir",
        type=Path,
        required=True,
        metavar="OUT_DIR",
        help=f"folder for {VERIFICATION_CSV} and {VERIFICATION_REPORT} (created; earlier ones replaced)",
    )
    rules = parser.add_argument_group("when a frame fails")
    rules.add_argument(
        "--tolerance",
        type=_positive_number,
        metavar="ADU",
        help="largest accepted mean residual, ADU (default: 0.1 x the model's median read noise)",
    )
    rules.add_argument(
        "--noise-tolerance",
        type=_positive_number,
        default=DEFAULT_NOISE_TOLERANCE,
        metavar="F",
        help="largest accepted |residual noise / model noise - 1|, beyond the ratio's own scatter "
        f"(default {DEFAULT_NOISE_TOLERANCE:g})",
    )
    rules.add_argument(
        "--max-outlier-fraction",
        type=_fraction,
        default=DEFAULT_MAX_OUTLIER_FRACTION,
        metavar="F",
        help=f"largest accepted fraction of pixels beyond {OUTLIER_SIGMA:g} sigma "
        f"(default {DEFAULT_MAX_OUTLIER_FRACTION:g})",
    )
    for name in RULE_OPTIONS:
        _add_schema_option(rules, name)
    frames = parser.add_argument_group("frame selection (as the pipeline's)")
    for name in SCHEMA_OPTIONS:
        _add_schema_option(frames, name)
    add_message_options(
        parser,
        verbose="every file's figures",
        quiet="nothing on stdout (the exit code is the verdict); on stderr only warnings and errors; no progress bar",
    )
    return parser


def load_model(path: Path) -> BiasModel:
    """The model at ``path`` (an output folder, a ``bias_model`` folder or a model file).

    Raises
    ------
    InputDataError
        When there is none or it cannot be read.
    """
    if not path.exists():
        raise InputDataError(
            f"MODEL {path} does not exist; give a pipeline output folder or its bias_model/{MODEL_FILE_NAME}"
        )
    try:
        return BiasModel.load(path)
    except InputDataError as exc:
        raise InputDataError(f"MODEL {path}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise InputDataError(f"MODEL {path} cannot be read: {exc}; give a model file of this package") from None


def _summary(run: VerificationRun, csv_path: Path) -> str:
    failed, others = run.count(FAILED), len(run.files) - run.verified
    first = (
        f"verify: {run.verified} frames verified against {run.model_path}, {failed} failed: "
        f"the model {'does NOT hold' if failed else 'holds'}"
    )
    if others:
        first += f"; {others} file{'s' if others != 1 else ''} not verified (rejected or ignored)"
    lines = [first, f"details: {csv_path}"]
    listed = [entry for entry in run.files if entry.status == FAILED]
    for entry in listed[:MAX_LISTED_FAILURES]:
        lines.append(f"  failed {_relative(entry.record.path, run.base_path)}: {entry.reason}")
    if len(listed) > MAX_LISTED_FAILURES:
        lines.append(f"  ... and {len(listed) - MAX_LISTED_FAILURES} more (see {csv_path.name})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "python -m bias_pipeline verify") -> int:
    """Command line: ``python -m bias_pipeline verify MODEL --basepath RAW --output-dir OUT``.

    Parameters
    ----------
    argv
        The arguments (default ``sys.argv[1:]``).
    prog
        The command's name in its usage and error messages.

    Returns
    -------
    int
        0 when the model holds for every verified frame, 1 when it does not, 2 for bad options, 3
        for bad input (no model, no bias frame), 4 when the output cannot be written; errors are
        one line on stderr, never a traceback.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    setup_logging(args.verbose, quiet=args.quiet)

    def body() -> int:
        given = {name: getattr(args, name) for name in SCHEMA_OPTIONS + RULE_OPTIONS if hasattr(args, name)}
        config = PipelineConfig(**given, show_progress=not args.quiet)
        model = load_model(args.model)
        model_read_noise(model, args.model)
        tolerance = args.tolerance if args.tolerance is not None else model.offset_tolerance()
        rules = VerificationRules(tolerance, args.noise_tolerance, args.max_outlier_fraction)
        check_raw_folder(args.basepath)
        out = prepare_output_dir(args.output_dir)
        run = verify_folder(model, args.basepath, rules, config, model_path=args.model, exclude=[out])
        csv_path, _ = write_verification(run, out)
        if run.verified == 0:
            kinds = Counter(entry.status for entry in run.files)
            found = ", ".join(f"{n} {status}" for status, n in sorted(kinds.items()))
            raise InputDataError(
                f"--basepath {args.basepath} holds no bias frame to verify ({found}); {csv_path} says why"
            )
        if not args.quiet:
            sys.stdout.write(_summary(run, csv_path) + "\n")
            sys.stdout.flush()
        return 0 if run.holds else 1

    def interrupted(exc: KeyboardInterrupt) -> str:
        return (
            f"no verdict: not every frame was verified; the files in {args.output_dir} are whole "
            "(each written at once), run it again"
        )

    return guarded(parser.prog, body, interrupted)


if __name__ == "__main__":
    sys.exit(main())

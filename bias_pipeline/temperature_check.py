"""The per-frame temperature check: the model as a thermometer for every frame's header.

Each frame that passed step 1 has its temperature estimated from its own pixels
(:func:`~bias_pipeline.thermometry.estimate_temperature`); a frame whose header disagrees by
more than the tolerance and by more than :data:`MISMATCH_SIGMAS` times the estimate's own
error is flagged ``temperature_mismatch``. The check returns its results
(:class:`TemperatureCheck` by frame path) and edits no record;
:func:`with_temperature_checks` makes the new records that carry them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .frames import FrameRecord, read_row_sample
from .model import BiasModel
from .registry import TEMPERATURE_PLOT
from .thermometry import TemperatureEstimate, estimate_temperature, sample_model
from .units import DEFAULT_SCALE_FACTOR, input_factor
from .workers import default_threads, worker_pool

logger = logging.getLogger(__name__)

FLAG_TEMPERATURE = "temperature_mismatch"
THERMOMETRY_PIXELS = 2**17  # pixels per frame used to estimate its temperature
MISMATCH_SIGMAS = 3.0  # a header-bias difference must exceed this many of the estimate's errors
MOSTLY_MISMATCHED = 0.5  # more flagged frames than this share: the model is suspect, not the headers


@dataclass(frozen=True)
class TemperatureCheck:
    """One frame's temperature read from its bias.

    Attributes
    ----------
    temperature
        The estimate [deg C].
    error
        Its standard error [deg C].
    flag
        :data:`FLAG_TEMPERATURE` when the header disagrees, else ``""``.
    """

    temperature: float
    error: float
    flag: str = ""

    @property
    def mismatched(self) -> bool:
        """Whether the header disagrees with the estimate."""
        return self.flag == FLAG_TEMPERATURE


def mismatched(header: float, estimate: TemperatureEstimate, tolerance: float) -> bool:
    """Whether a header temperature disagrees with the estimate from the frame's bias.

    Beyond the tolerance and beyond :data:`MISMATCH_SIGMAS` times the estimate's own error: a
    1 x 1 frame's +-14 deg C says nothing about its header. For an honest error, a right
    header is flagged with probability at most ``P(|z| > 3) = 0.27 %``.

    >>> mismatched(20.0, TemperatureEstimate(21.0, 0.1, 100), tolerance=0.5)
    True
    >>> mismatched(20.0, TemperatureEstimate(21.0, 0.5, 100), tolerance=0.5)
    False
    """
    difference = abs(estimate.temperature - header)
    return difference > tolerance and difference > MISMATCH_SIGMAS * estimate.error


def check_frame_temperatures(
    model: BiasModel,
    records: Sequence[FrameRecord],
    *,
    input_bits: int = 16,
    scale_factor: float = DEFAULT_SCALE_FACTOR,
    tolerance: float = 0.5,
    show_progress: bool = True,
    threads: int = 0,
    row_correction: str = "auto",
) -> dict[Path, TemperatureCheck]:
    """Estimate each frame's temperature from its pixels; flag header disagreements.

    Every frame that passed step 1 is estimated, used or not: a mislabelled header often
    lands a frame in a group of its own, rejected for its size, and that is exactly the frame
    to point out. A frame is flagged when its header temperature differs from the estimate by
    more than ``tolerance`` deg C (a sensor read during a thermal transient, a mislabelled
    header) and by more than :data:`MISMATCH_SIGMAS` times the estimate's own error
    (:func:`mismatched`). The flag is a warning; it changes no status. When most frames are
    flagged, one warning says that the model, not the headers, is suspect. ``records`` are not
    modified.

    Parameters
    ----------
    model
        The fitted model.
    records
        The frames of the run (those with ``passed_checks`` are estimated).
    input_bits
        Bit depth the input was read as; 12-bit values are multiplied by ``scale_factor``.
    scale_factor
        12-bit to 16-bit factor.
    tolerance
        ``--temperature-tolerance`` [deg C].
    show_progress
        tqdm bar on a terminal.
    threads
        Threads reading and estimating (0: as many as CPUs, at most 8).
    row_correction
        The run's ``--row-correction``: each frame's row offsets (row noise) are removed about
        their mean in its estimate, and the level they leave counted in its error, always with
        ``"on"``, when its row noise is significant with ``"auto"`` and also with ``"off"``
        (:func:`~bias_pipeline.thermometry.estimate_temperature`). ``off`` keeps the row noise
        in the products; the check must still keep its promised false-alarm rate, and an error
        counting read noise alone flagged most frames of a sensor with row noise of 0.6 x the
        read noise (28 of 50) and then blamed the model.

    Returns
    -------
    dict of Path to TemperatureCheck
        One entry per frame estimated, keyed by ``record.path``, in the order of ``records``.
    """
    used = [r for r in records if r.passed_checks]
    factor = input_factor(input_bits, scale_factor)
    # Evenly spaced rows holding about THERMOMETRY_PIXELS pixels: the estimate's statistical
    # error (read noise / (slope sqrt(pixels)), ~0.02 deg C here) stays far below any useful
    # tolerance, and only those rows are read.
    rows = model.shape[0]
    step = max(1, round(rows / max(1, THERMOMETRY_PIXELS // model.shape[1])))
    sample = np.arange(step // 2, rows, step)
    at_sample = sample_model(model, sample)  # once for every frame
    # "off" is about the products; the estimate's error must count significant row noise anyway
    # (on data without it "auto" gives exactly the estimate of "off").
    estimate_mode = "auto" if row_correction == "off" else row_correction

    def estimate(record: FrameRecord) -> TemperatureEstimate:
        frame = read_row_sample(record, sample) * factor
        return estimate_temperature(
            frame, model, start=record.temperature, rows=sample, sample=at_sample, row_correction=estimate_mode
        )

    progress = tqdm(
        total=len(used), desc="temperatures", unit="frame", disable=None if show_progress else True, leave=False
    )
    with progress, worker_pool(ThreadPoolExecutor(max_workers=max(1, threads or default_threads()))) as pool:
        estimates = []
        for result in pool.map(estimate, used):  # in order: the log reads the same every run
            estimates.append(result)
            progress.update()
    checks: dict[Path, TemperatureCheck] = {}
    for record, found in zip(used, estimates, strict=True):
        assert record.temperature is not None  # passed step 1
        flag = FLAG_TEMPERATURE if mismatched(record.temperature, found, tolerance) else ""
        checks[record.path] = TemperatureCheck(found.temperature, found.error, flag)
    flagged = [r for r in used if checks[r.path].mismatched]
    most = len(flagged) > MOSTLY_MISMATCHED * len(used) and len(flagged) >= 3
    for record in flagged:
        check = checks[record.path]
        (logger.info if most else logger.warning)(
            "%s: header says %.2f deg C, its bias says %.2f +- %.2f deg C (--temperature-tolerance %g)",
            record.path.name,
            record.temperature,
            check.temperature,
            check.error,
            tolerance,
        )
    if most:
        logger.warning(
            "%d of %d frames disagree with the temperature the model gives their bias (by more than %g deg C): "
            "when most frames disagree, the model is more likely at fault than their headers (the bias drifting "
            "between the dates of the frames, temperature confounded with time, a law that is not linear); "
            "see %s",
            len(flagged), len(used), tolerance, TEMPERATURE_PLOT,
        )  # fmt: skip
    return checks


def with_temperature_checks(
    records: Sequence[FrameRecord], checks: Mapping[Path, TemperatureCheck]
) -> list[FrameRecord]:
    """New records carrying the check's results (``temperature_est``, ``temperature_est_err``,
    ``flag``); records without a check are returned as they are.

    Parameters
    ----------
    records
        The frames.
    checks
        :func:`check_frame_temperatures`' results.

    Returns
    -------
    list of FrameRecord
        In the order of ``records``; the input records are not modified.
    """
    out = []
    for record in records:
        check = checks.get(record.path)
        if check is None:
            out.append(record)
            continue
        # The check's flag replaces the record's only when it raises one: a record flagged
        # before keeps its flag rather than have a passing check wipe it.
        out.append(
            dataclasses.replace(
                record,
                temperature_est=check.temperature,
                temperature_est_err=check.error,
                flag=check.flag or record.flag,
            )
        )
    return out

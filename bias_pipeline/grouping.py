"""Grouping of accepted frames by temperature (step 2's first part).

Frames are grouped by their thermal set point when every one states it, else by their
readings: sorted temperatures split at gaps wider than ``temp_bin_width`` deg C (a group
wider than that is cut), at least as coarsely as the thermometer's own step. A group's
temperature is the mean of its frames' readings. Nothing here changes a record: the
rejections come back as :class:`~bias_pipeline.frames.FrameDecision` objects.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import PipelineConfig
from .frames import STATUS_ACCEPTED, FrameDecision, FrameRecord, reading
from .products import unique_labels

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameGroup:
    """Frames whose temperatures fall in one bin.

    Attributes
    ----------
    label
        Temperature as used in file names (``"-5.0"``).
    records
        The frames.
    """

    label: str
    records: list[FrameRecord]

    @property
    def temperature(self) -> float:
        """Mean temperature of the frames [deg C]."""
        return float(np.mean([reading(r) for r in self.records]))

    @property
    def temperature_span(self) -> tuple[float, float]:
        """Lowest and highest frame temperature [deg C]."""
        temps = [reading(r) for r in self.records]
        return min(temps), max(temps)


def temperature_clusters(temperatures: Sequence[float], bin_width: float) -> np.ndarray:
    """Group index of each temperature, groups numbered by increasing temperature.

    Sorted temperatures start a new group where the gap to the previous one exceeds
    ``bin_width``, so the frames of one thermal set point stay together however their jitter
    falls (fixed bins would split a set point lying on a bin edge). A group spanning more
    than ``bin_width`` (a slow drift with no gaps) is cut into consecutive pieces, each no
    wider than ``bin_width``.

    >>> temperature_clusters([4.96, 5.04, 5.06, -0.04, 0.06], 0.1).tolist()
    [1, 1, 1, 0, 0]
    >>> temperature_clusters([0.0, 0.05, 0.1, 0.15, 0.2, 0.25], 0.1).tolist()
    [0, 0, 0, 1, 1, 1]
    """
    temps = np.asarray(temperatures, dtype=np.float64)
    order = np.argsort(temps, kind="stable")
    labels = np.empty(temps.size, dtype=np.int64)
    group = -1
    start = -math.inf
    previous = -math.inf
    # A tolerance of 1e-9 deg C keeps 0.1 - 0.0 = 0.1000000001 from counting as a gap.
    for index in order:
        t = temps[index]
        if t - previous > bin_width + 1e-9 or t - start > bin_width + 1e-9:
            group += 1
            start = t
        labels[index] = group
        previous = t
    return labels


#: No thermometer quantises coarser than this [deg C]: set points this far apart are set points.
MAX_READING_STEP = 1.0


def reading_step(temperatures: Sequence[float], bin_width: float) -> tuple[float, int] | None:
    """The step of a thermometer whose readings come on a lattice coarser than ``bin_width``,
    and the most neighbouring steps one set point's readings take; ``None`` when the readings
    show no such steps.

    Some cameras report the sensor temperature in steps (an SBIG camera: 0.415 deg C), so that
    the readings at one set point flip between neighbouring values further apart than the bins
    and one set point would become two groups. The readings are taken to come in steps ``q``
    (``bin_width`` < ``q`` <= :data:`MAX_READING_STEP`) when all distinct readings lie on one
    lattice of spacing ``q`` (fitted to all the gaps, so rounded header values do not matter),
    the same readings recur (at least twice as many frames as distinct values), and the
    readings form runs of neighbouring steps that look like a thermometer flipping about a set
    point: more than half the runs hold two or three values, none more, both values of some
    two-value run recur, the middle value of a three-value run is the most frequent of the
    three, and runs lie three or more steps apart (set points apart). Set points that each read
    as one value, evenly spaced, do not pass.

    >>> readings = [-10.2, -9.79, -10.2, -9.79, -5.22, -4.81, -5.22, 4.75, 5.16, 4.75, 5.16, 5.16]
    >>> step, widest = reading_step(readings, 0.1)
    >>> round(step, 2), widest
    (0.42, 2)
    >>> reading_step([-10.02, -9.98, 0.01, 0.03, 9.99, 10.02], 0.1) is None  # ordinary jitter
    True
    >>> reading_step([0.0] * 5 + [1.0] * 5 + [2.0] * 5 + [5.0] * 5, 0.1) is None  # set points 1 deg C apart
    True
    """
    values, counts = np.unique(np.round(np.asarray(temperatures, dtype=np.float64), 6), return_counts=True)
    if values.size < 3 or len(temperatures) < 2 * values.size:
        return None
    gaps = np.diff(values)
    step = float(gaps.min())
    if not bin_width + 1e-9 < step <= MAX_READING_STEP:
        return None
    for reach in (4.0, 16.0, 64.0, math.inf):  # widen the fit as the step gets known better
        near = gaps[gaps <= reach * step]
        multiples = np.rint(near / step)
        step = float(np.sum(multiples * near) / np.sum(multiples**2))
    multiples = np.rint(gaps / step)
    if np.any(np.abs(gaps / step - multiples) > 0.2) or not np.any(multiples >= 3):
        return None
    # Runs of readings one step apart: where a reading is two or more steps from the previous one,
    # a new run begins.
    runs = np.split(np.arange(values.size), np.flatnonzero(multiples > 1) + 1)
    sizes = [len(run) for run in runs]
    if max(sizes) > 3 or sum(size >= 2 for size in sizes) * 2 <= len(runs):
        return None
    if not any(len(run) == 2 and counts[run].min() >= 2 for run in runs):
        return None
    if any(len(run) == 3 and counts[run[1]] <= max(counts[run[0]], counts[run[2]]) for run in runs):
        return None
    return step, max(sizes)


def grouping_width(temperatures: Sequence[float], bin_width: float) -> float:
    """The width frames are grouped with: ``bin_width``, or, when the readings come in coarser
    steps (:func:`reading_step`), half a step more than one set point's readings span (1.5 steps
    for readings flipping between two values, 2.5 for three), so that a header's rounding of
    the last digit does not split them and the next set point, three or more steps away, stays
    apart; the log says which."""
    found = reading_step(temperatures, bin_width)
    if found is None:
        return bin_width
    step, widest = found
    width = (widest - 0.5) * step
    logger.info(
        "temperature readings come in steps of %.3f deg C, coarser than --temp-bin-width %g: frames are "
        "grouped %.3f deg C wide, so that readings flipping between neighbouring steps stay in one group",
        step, bin_width, width,
    )  # fmt: skip
    return width


#: A frame whose reading lies further than this many grouping widths (and at least
#: :data:`MIN_SETTLED_DISTANCE`) from its set point's other frames had not reached the set point.
SETTLED_WIDTHS = 5.0
MIN_SETTLED_DISTANCE = 1.0  # deg C


def _set_point_groups(
    records: Sequence[FrameRecord], width: float
) -> tuple[list[list[FrameRecord]], list[tuple[FrameRecord, str]]] | None:
    """Frames grouped by set point, by increasing set point, and the frames whose readings lie
    far from their set point's other frames (the sensor was not at its set point), with the
    reason to reject them; ``None`` when the set points do not separate the readings: a single
    set point (a sweep with the cooler off writes the same one on every frame), or a set point
    whose frames mostly lie far from their own median (two temperatures under one set point)."""
    by_set_point: dict[float, list[FrameRecord]] = {}
    for record in records:
        assert record.set_point is not None  # the caller groups by set point only when all have one
        by_set_point.setdefault(round(float(record.set_point), 6), []).append(record)
    if len(by_set_point) < 2:
        return None
    limit = max(SETTLED_WIDTHS * width, MIN_SETTLED_DISTANCE)
    groups, far = [], []
    for set_point in sorted(by_set_point):
        members = by_set_point[set_point]
        median = float(np.median([reading(r) for r in members]))
        away = []
        for record in members:
            distance = reading(record) - median
            if abs(distance) > limit:
                away.append(
                    (
                        record,
                        f"its temperature {record.temperature:g} deg C ({record.temperature_key}) is {distance:+.2f} "
                        f"deg C from the other frames at set point {set_point:g} ({record.set_point_key}, median "
                        f"{median:.2f}): the sensor had not settled, or the reading is wrong",
                    )
                )
        if 2 * len(away) >= len(members):
            return None
        far += away
        groups.append([r for r in members if all(r is not a for a, _ in away)])
    return groups, far


def clusters(entries: Sequence[object], temperatures: Sequence[float], width: float) -> list[list]:
    """``entries`` split by :func:`temperature_clusters` of their ``temperatures``, by increasing
    temperature (each cluster in the entries' order)."""
    labels = temperature_clusters(temperatures, width)
    return [[e for e, g in zip(entries, labels, strict=True) if g == k] for k in range(labels.max() + 1)]


@dataclass(frozen=True)
class Grouping:
    """What grouping decided: the groups to combine, and the frames it rejected.

    Attributes
    ----------
    groups
        Groups large enough to combine, by increasing temperature, with unique labels.
    decisions
        Path of each frame rejected while grouping -> its rejection.
    """

    groups: list[FrameGroup]
    decisions: dict[Path, FrameDecision] = field(default_factory=dict)


def make_groups(records: Sequence[FrameRecord], config: PipelineConfig) -> Grouping:
    """Group the accepted frames; reject those of groups smaller than the minimum.

    Frames are grouped by their thermal set point when every one has a set-point keyword
    (``set_point_keys``), else by their temperature readings (:func:`temperature_clusters`) at
    least as coarsely as the thermometer's step (:func:`grouping_width`). Either way a group's
    temperature is the mean of its frames' readings. The records are not changed.

    Parameters
    ----------
    records
        All records of the scan; only status ``accepted`` ones are grouped.
    config
        The run's options (``temp_bin_width``, ``min_frames_per_group``, ``set_point_keys``).

    Returns
    -------
    Grouping
        The groups large enough to combine, by increasing temperature, with unique labels, and
        the rejections of the frames left out.
    """
    accepted = [r for r in records if r.status == STATUS_ACCEPTED]
    decisions: dict[Path, FrameDecision] = {}
    width = grouping_width([reading(r) for r in accepted], config.temp_bin_width)
    with_set_point = sum(r.set_point is not None for r in accepted)
    by_set_point = _set_point_groups(accepted, width) if accepted and with_set_point == len(accepted) else None
    if by_set_point is not None:
        logger.info("grouping %d frames by their set point (%s)", len(accepted), accepted[0].set_point_key)
        binned, far = by_set_point
        for record, reason in far:
            decisions[record.path] = FrameDecision.rejected(record, reason)
    else:
        if with_set_point == len(accepted) and accepted:
            logger.info(
                "the set points (%s) do not separate the frames' temperatures (one set point, or most frames of "
                "one far from each other): grouping by the readings",
                accepted[0].set_point_key,
            )
        elif with_set_point:
            logger.info(
                "%d of %d frames have no set point (%s): grouping all by their temperature readings",
                len(accepted) - with_set_point, len(accepted), ",".join(config.set_point_keys),
            )  # fmt: skip
        binned = clusters(accepted, [reading(r) for r in accepted], width) if accepted else []
    kept: list[list[FrameRecord]] = []
    for members in binned:
        if len(members) < config.min_frames_per_group:
            mean_t = float(np.mean([reading(m) for m in members]))
            for member in members:
                decisions[member.path] = FrameDecision.rejected(
                    member,
                    f"its temperature group ({mean_t:.2f} deg C) has {len(members)} frame(s), "
                    f"fewer than --min-frames-per-group {config.min_frames_per_group}",
                )
        else:
            kept.append(members)
    kept.sort(key=lambda g: float(np.mean([reading(m) for m in g])))
    means = [float(np.mean([reading(m) for m in members])) for members in kept]
    groups = [FrameGroup(label, members) for label, members in zip(unique_labels(means), kept, strict=True)]
    return Grouping(groups, decisions)

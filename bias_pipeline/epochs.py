"""Epochs of a run's frames, and whether temperature is confounded with time.

In orbit the bias drifts with time as well as with temperature (the sensor ages, radiation
damages it). A fit of ``bias = a + b T`` to frames taken weeks apart is sound only when each
epoch covers the temperatures alike; when the cold frames come from one epoch and the warm
ones from another, the fitted slope ``b`` takes up the drift between the epochs and is wrong
at every temperature between them.

The rule:

1. **Epochs.** The used frames' dates, sorted, are cut into clusters wherever two neighbours
   lie more than ``gap_days`` apart (``--date-gap``, default 7 days). Frames without a date
   are left out. Within one epoch the set points are visited in order, so temperature follows
   the date inside a cluster too; that order says nothing about drift (minutes or hours), and
   only the clusters count.
2. **Confounding.** Each dated frame is given two numbers: its group's temperature and the mean
   date of its cluster. With two clusters or more, temperature is confounded with date when
   the Pearson correlation ``r`` of those two numbers over the frames satisfies
   ``|r| >= CONFOUNDING_CORRELATION`` (0.7). Why this measure:

   - The slope's error from a bias offset ``delta`` between epochs is ``delta`` times the
     regression slope of the epoch on temperature: it vanishes when every group holds the
     epochs in the same proportion (``r = 0``) and is largest when each group comes from one
     epoch only (``|r|`` near 1). Using the cluster's mean date rather than each frame's own
     date leaves out the order of the set points within an epoch.
   - Counting frames rather than groups weighs each group by its frames, as the fit does, and
     keeps two groups from giving ``|r| = 1`` whatever their mixture.
   - 0.7 is the usual bound of a strong correlation: the epochs then explain about half of
     the spread of the frames' temperatures (``r^2 >= 0.49``) or more. With evenly spread,
     equally filled temperatures, the coldest ones from one epoch and the rest from another
     give ``|r|`` from 0.87 (halves) down to 0.7 (a fifth in one epoch); a lone group of ten
     from another epoch gives 0.52 and is not warned about (its offset moves the slope about
     a third as much as the same offset between halves). Two epochs that each cover every temperature give
     ``r`` near 0.

A confounded run gets one warning naming the clusters (their date spans, frame counts and
temperatures) and suggesting a fit of each epoch on its own.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .dates import format_date, to_mjd
from .frames import STATUS_USED, FrameRecord

logger = logging.getLogger(__name__)

#: ``|r|`` from which temperature counts as confounded with date (see the module docstring).
CONFOUNDING_CORRELATION = 0.7
#: Default gap [days] between two date clusters (``--date-gap``).
DEFAULT_DATE_GAP_DAYS = 7.0


class DatedFrame(NamedTuple):
    """One used frame as the epoch check sees it."""

    group: str
    """Label of its temperature group (``"10.0"``)."""
    temperature: float
    """Its group's temperature [deg C]."""
    date: _dt.datetime | None
    """Its observation date (UTC), ``None`` when unknown."""


@dataclass(frozen=True)
class DateCluster:
    """Frames whose dates lie within the gap of one another: one epoch.

    Attributes
    ----------
    begin, end
        First and last observation date (UTC).
    centre
        Mean observation date of its frames.
    n_frames
        Number of frames.
    groups
        ``(group label, group temperature, frames of this cluster in it)`` by temperature.
    """

    begin: _dt.datetime
    end: _dt.datetime
    centre: _dt.datetime
    n_frames: int
    groups: tuple[tuple[str, float, int], ...]

    def describe(self) -> str:
        """One line: ``2026-03-01 00:00 to 2026-03-01 00:14 UTC, 15 frames at -10.0 (5), ... deg C``
        (each group's label, and in brackets its frames in this cluster)."""
        temperatures = ", ".join(f"{label} ({count})" for label, _, count in self.groups)
        return f"{_short(self.begin)} to {_short(self.end)} UTC, {self.n_frames} frames at {temperatures} deg C"

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form for ``run_config.json``."""
        return {
            "begin": format_date(self.begin),
            "end": format_date(self.end),
            "frames": self.n_frames,
            "groups": [{"group": label, "temperature": t, "frames": n} for label, t, n in self.groups],
        }


@dataclass(frozen=True)
class EpochCheck:
    """The used frames' date clusters and the confounding of temperature with date.

    Attributes
    ----------
    clusters
        The date clusters, oldest first (empty when no frame had a date).
    gap_days
        The gap [days] that separates clusters.
    correlation
        Pearson ``r`` between each dated frame's group temperature and its cluster's mean date;
        ``None`` with fewer than two clusters, or when either number does not vary.
    undated
        Used frames without a date (left out of the clusters).
    threshold
        ``|r|`` from which the run is confounded.
    """

    clusters: tuple[DateCluster, ...] = ()
    gap_days: float = DEFAULT_DATE_GAP_DAYS
    correlation: float | None = None
    undated: int = 0
    threshold: float = CONFOUNDING_CORRELATION

    @property
    def date_range(self) -> tuple[_dt.datetime, _dt.datetime] | None:
        """First and last date of the dated frames, or ``None``."""
        if not self.clusters:
            return None
        return self.clusters[0].begin, self.clusters[-1].end

    @property
    def confounded(self) -> bool:
        """Two or more clusters, and the groups' temperatures follow the clusters' dates."""
        return len(self.clusters) >= 2 and self.correlation is not None and abs(self.correlation) >= self.threshold

    @property
    def warning(self) -> str | None:
        """The one warning of a confounded run (``None`` otherwise)."""
        if not self.confounded:
            return None
        assert self.correlation is not None
        spans = "; ".join(f"epoch {i + 1}: {c.describe()}" for i, c in enumerate(self.clusters))
        return (
            f"temperature is confounded with date: the used frames fall in {len(self.clusters)} date clusters "
            f"more than {self.gap_days:g} days apart (--date-gap) and the groups' temperatures follow them "
            f"(Pearson r = {self.correlation:.2f} between each frame's group temperature and its cluster's mean "
            f"date; |r| >= {self.threshold:g} warns); each epoch's groups with their frames in brackets: {spans}. "
            "The fitted slope mixes the change with temperature with the bias drift between the epochs; fit each "
            "epoch on its own (run the pipeline on each epoch's frames, then compare the models with "
            "python -m bias_pipeline compare)"
        )

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form for ``run_config.json``."""
        span = self.date_range
        return {
            "date_range": None if span is None else [format_date(span[0]), format_date(span[1])],
            "gap_days": self.gap_days,
            "undated_frames": self.undated,
            "clusters": [c.as_dict() for c in self.clusters],
            "correlation": None if self.correlation is None else round(self.correlation, 4),
            "threshold": self.threshold,
            "confounded": self.confounded,
        }


def cluster_dates(dates: Iterable[_dt.datetime], gap_days: float) -> list[list[_dt.datetime]]:
    """Sorted dates cut wherever two neighbours lie more than ``gap_days`` apart.

    Parameters
    ----------
    dates
        Observation dates (aware, UTC).
    gap_days
        The largest gap [days] within one cluster.

    Returns
    -------
    list of list of datetime
        The clusters, oldest first, each sorted.

    Examples
    --------
    >>> from bias_pipeline.dates import parse_date
    >>> days = [parse_date(d) for d in ("2026-03-01", "2026-03-03", "2026-06-01", "2026-03-02")]
    >>> [len(c) for c in cluster_dates(days, 7.0)]
    [3, 1]
    """
    ordered = sorted(dates)
    gap = _dt.timedelta(days=gap_days)
    clusters: list[list[_dt.datetime]] = []
    for date in ordered:
        if clusters and date - clusters[-1][-1] <= gap:
            clusters[-1].append(date)
        else:
            clusters.append([date])
    return clusters


def check_epochs(
    frames: Iterable[DatedFrame], gap_days: float = DEFAULT_DATE_GAP_DAYS, threshold: float = CONFOUNDING_CORRELATION
) -> EpochCheck:
    """The date clusters of the used frames and whether their temperatures follow them (pure).

    Parameters
    ----------
    frames
        Every used frame: its group, the group's temperature, its date (or ``None``).
    gap_days
        A gap longer than this [days] between sorted dates starts a new cluster.
    threshold
        ``|r|`` from which temperature counts as confounded with date.

    Returns
    -------
    EpochCheck
        Its :attr:`~EpochCheck.warning` is the one warning to give, or ``None``.

    Examples
    --------
    >>> from bias_pipeline.dates import parse_date
    >>> march, june = parse_date("2026-03-01"), parse_date("2026-06-01")
    >>> cold_then_warm = [DatedFrame("0.0", 0.0, march), DatedFrame("10.0", 10.0, march),
    ...                   DatedFrame("20.0", 20.0, june), DatedFrame("30.0", 30.0, june)]
    >>> check_epochs(cold_then_warm).confounded
    True
    >>> both_everywhere = [DatedFrame(f.group, f.temperature, d) for f in cold_then_warm for d in (march, june)]
    >>> check_epochs(both_everywhere).confounded
    False
    """
    frames = list(frames)
    dated = [f for f in frames if f.date is not None]
    undated = len(frames) - len(dated)
    if not dated:
        return EpochCheck(gap_days=gap_days, undated=undated, threshold=threshold)
    spans = cluster_dates((f.date for f in dated), gap_days)  # type: ignore[misc]
    ends = [span[-1] for span in spans]
    centres = [_mean_date(span) for span in spans]

    def cluster_of(date: _dt.datetime) -> int:
        return next(i for i, end in enumerate(ends) if date <= end)

    members: list[list[DatedFrame]] = [[] for _ in spans]
    for frame in dated:
        assert frame.date is not None
        members[cluster_of(frame.date)].append(frame)
    clusters = tuple(
        DateCluster(span[0], span[-1], centre, len(span), _group_counts(member))
        for span, centre, member in zip(spans, centres, members, strict=True)
    )
    correlation = None
    if len(clusters) >= 2:
        assert all(f.date is not None for f in dated)
        x = [to_mjd(centres[cluster_of(f.date)]) for f in dated]  # type: ignore[arg-type]
        y = [f.temperature for f in dated]
        correlation = pearson(x, y)
    return EpochCheck(clusters, gap_days, correlation, undated, threshold)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's correlation of two equally long sequences; ``None`` when either is constant.

    >>> round(pearson([0, 0, 1, 1], [1, 2, 3, 4]), 4)
    0.8944
    >>> pearson([1, 1, 1], [1, 2, 3]) is None
    True
    """
    n = len(x)
    mean_x, mean_y = math.fsum(x) / n, math.fsum(y) / n
    sxx = math.fsum((a - mean_x) ** 2 for a in x)
    syy = math.fsum((b - mean_y) ** 2 for b in y)
    # A spread at rounding level is no spread: 1e-9 of the values' size.
    if sxx <= (1e-9 * max(1.0, abs(mean_x))) ** 2 * n or syy <= (1e-9 * max(1.0, abs(mean_y))) ** 2 * n:
        return None
    sxy = math.fsum((a - mean_x) * (b - mean_y) for a, b in zip(x, y, strict=True))
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def _mean_date(dates: Sequence[_dt.datetime]) -> _dt.datetime:
    first = dates[0]
    offset = math.fsum((d - first).total_seconds() for d in dates) / len(dates)
    return first + _dt.timedelta(seconds=offset)


def _group_counts(frames: Sequence[DatedFrame]) -> tuple[tuple[str, float, int], ...]:
    counts: dict[str, list] = {}
    for frame in frames:
        entry = counts.setdefault(frame.group, [frame.temperature, 0])
        entry[1] += 1
    return tuple(sorted(((label, float(t), n) for label, (t, n) in counts.items()), key=lambda g: (g[1], g[0])))


def _short(date: _dt.datetime) -> str:
    return date.strftime("%Y-%m-%d %H:%M")


def check_run_epochs(
    records: Sequence[FrameRecord], group_temperatures: Mapping[str, float], gap_days: float = DEFAULT_DATE_GAP_DAYS
) -> EpochCheck:
    """:func:`check_epochs` of a run's used frames, logged: the clusters when there are
    several (info), the confounding warning when the temperatures follow them.

    Parameters
    ----------
    records
        The run's records after step 2 (a used frame carries its group's label).
    group_temperatures
        ``{group label: temperature}`` of the masters.
    gap_days
        ``--date-gap``.

    Returns
    -------
    EpochCheck
    """
    frames = [
        DatedFrame(r.group, float(group_temperatures[r.group]), r.date_obs)
        for r in records
        if r.status == STATUS_USED and r.group in group_temperatures
    ]
    epochs = check_epochs(frames, gap_days)
    if len(epochs.clusters) > 1:
        logger.info(
            "the used frames fall in %d date clusters (--date-gap %g days): %s",
            len(epochs.clusters),
            gap_days,
            "; ".join(c.describe() for c in epochs.clusters),
        )
    if epochs.warning:
        logger.warning("%s", epochs.warning)
    return epochs

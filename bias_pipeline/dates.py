"""Observation dates: read from headers (ISO strings or MJD numbers), held as UTC datetimes,
written as the FITS standard's ISO form.

A frame's date says when it was taken (``DATE-OBS``, then ``MJD-OBS``, then ``DATE``, a
configurable alias list like the temperature keys); a product's ``DATE-BEG`` and ``DATE-END``
are the first and last date of the frames behind it; a model's ``VALID-FROM`` and ``VALID-TO``
(set by the user) bound the dates it may be used for. Everything here is UTC: FITS dates carry
no time zone and mean UTC unless ``TIMESYS`` says otherwise, which no camera of ours does.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterable

#: Header keywords tried for a frame's observation date, in order.
DEFAULT_DATE_KEYS: tuple[str, ...] = ("DATE-OBS", "MJD-OBS", "DATE")

#: Keywords of a product's date range and of a model's validity set by the user.
DATE_BEGIN_KEY = "DATE-BEG"
DATE_END_KEY = "DATE-END"
VALID_FROM_KEY = "VALID-FROM"
VALID_TO_KEY = "VALID-TO"

_MJD_EPOCH = _dt.datetime(1858, 11, 17, tzinfo=_dt.timezone.utc)
# MJD numbers a camera could plausibly write: 1950 (33282) to 2200 (124592). A bare number out
# of this range is more likely a frame counter or a Unix time than a date.
_MJD_RANGE = (33282.0, 124592.0)
# YYYY-MM-DD, optionally THH:MM[:SS[.fff...]], optionally a Z or +00:00 suffix.
_ISO = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[T ](?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?)?"
    r"(?P<zone>Z|[+-]00:?00)?$"
)


def parse_date(value: object) -> _dt.datetime:
    """A header value as a UTC datetime.

    Parameters
    ----------
    value
        An ISO date (``2026-03-01``, ``2026-03-01T12:30``, ``2026-03-01T12:30:05.25``, with
        or without ``Z``), an MJD number (``61100.5``, or the same as text), or a datetime.

    Returns
    -------
    datetime.datetime
        Aware, in UTC.

    Raises
    ------
    ValueError
        When the value is none of these; the message says what it holds.

    Examples
    --------
    >>> parse_date("2026-03-01T12:30:05.5").isoformat()
    '2026-03-01T12:30:05.500000+00:00'
    >>> format_date(parse_date(61100.5))
    '2026-03-01T12:00:00'
    >>> format_date(parse_date("2026-03-01"))
    '2026-03-01T00:00:00'
    """
    if isinstance(value, _dt.datetime):
        return value.replace(tzinfo=_dt.timezone.utc) if value.tzinfo is None else value.astimezone(_dt.timezone.utc)
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not a date")
    if isinstance(value, (int, float)) or _is_number_type(value):
        return _from_mjd(float(value))  # type: ignore[arg-type]
    text = str(value).strip()
    try:
        return _from_mjd(float(text))
    except ValueError:
        pass
    match = _ISO.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not an ISO date (YYYY-MM-DD[THH:MM:SS[.fff]]) or an MJD number")
    fraction = (match["fraction"] or "0")[:6].ljust(6, "0")
    try:
        return _dt.datetime(
            *(int(part) for part in match["date"].split("-")),
            int(match["hour"] or 0),
            int(match["minute"] or 0),
            int(match["second"] or 0),
            int(fraction),
            tzinfo=_dt.timezone.utc,
        )
    except ValueError as exc:  # 2026-02-30, 25:00
        raise ValueError(f"{text!r} is not a valid date: {exc}") from None


def _is_number_type(value: object) -> bool:
    """numpy scalars without importing numpy here."""
    return hasattr(value, "dtype") and value.dtype.kind in "iuf"


def _from_mjd(mjd: float) -> _dt.datetime:
    if not math.isfinite(mjd) or not _MJD_RANGE[0] <= mjd <= _MJD_RANGE[1]:
        raise ValueError(f"{mjd!r} is not a plausible MJD (years 1950 to 2200)")
    return _MJD_EPOCH + _dt.timedelta(days=mjd)


def format_date(date: _dt.datetime) -> str:
    """The FITS standard's ISO form in UTC, to the second or, when it has them, milliseconds.

    >>> format_date(parse_date("2026-03-01T12:30:05.25"))
    '2026-03-01T12:30:05.250'
    """
    date = parse_date(date)
    text = date.strftime("%Y-%m-%dT%H:%M:%S")
    return text + f".{date.microsecond // 1000:03d}" if date.microsecond else text


def to_mjd(date: _dt.datetime) -> float:
    """The date as an MJD number (days).

    >>> to_mjd(parse_date("2026-03-02T12:00:00"))
    61101.5
    """
    return (parse_date(date) - _MJD_EPOCH).total_seconds() / 86400.0


def date_span(dates: Iterable[_dt.datetime | None]) -> tuple[_dt.datetime, _dt.datetime] | None:
    """The first and last of the known dates, or ``None`` when none is known.

    >>> date_span([None, parse_date("2026-03-02"), parse_date("2026-03-01")])[0].day
    1
    """
    known = [d for d in dates if d is not None]
    return (min(known), max(known)) if known else None

"""Several bias models of one sensor and the rule that picks one for a frame.

A :class:`BiasLibrary` holds the models fitted over a mission (one per epoch, say), each with
its validity read from its header:

- **temperatures**: ``TMIN..TMAX``, the range of the fit (:attr:`BiasModel.temperature_range`);
- **dates**: ``DATE-BEG..DATE-END``, the first and last observation behind the fit
  (:attr:`BiasModel.date_range`), and, when the user declared them, ``VALID-FROM`` and
  ``VALID-TO`` (:attr:`BiasModel.valid_from`, :attr:`BiasModel.valid_to`; either may be
  missing, leaving that side open).

:meth:`BiasLibrary.select` picks the model for a frame of a given temperature and date:

1. **Declared validity is a hard limit** (as CRDS's USEAFTER and LCO BANZAI's
   ``good_after..good_until``): a model whose ``VALID-FROM..VALID-TO`` does not hold the date is
   left out. A model without ``VALID-*`` cards is never left out for its date. When every model
   is left out, :class:`~bias_pipeline.errors.InputDataError` names the date and the ranges.
2. **Temperature first**: among the remaining models, those whose ``TMIN..TMAX`` holds the
   temperature. When none does, the nearest in temperature is used and a warning says that it
   extrapolates (a model outside its range is worse than an older one inside it: the bias moves
   a few ADU per degree, the ageing a fraction of an ADU per week).
3. **Then nearest in time** (as BANZAI): the distance from the date to the model's
   ``DATE-BEG..DATE-END``, 0 when the date lies inside it. A model without dates ranks after
   every dated one (a warning says so when it is chosen for a dated frame).
4. **Ties**: the later ``DATE-END``, then the path in alphabetical order (so the choice never
   depends on the order the paths were given).

Without a date the newest model is chosen: the latest ``DATE-END`` among those holding the
temperature (declared validity is not consulted: there is no date to check it against).

Only the headers are read when a library is made; a model's maps are read the first time it is
selected, and the last few selected stay in memory (a 2048 x 2048 model with its uncertainties
takes about 200 MB), so a dark pipeline calling ``subtract_bias(frame, library)`` for each
frame reads each model once.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits

from .dates import DATE_BEGIN_KEY, DATE_END_KEY, VALID_FROM_KEY, VALID_TO_KEY, format_date, parse_date
from .errors import InputDataError, fits_problem
from .model import BiasModel, read_model_header
from .registry import A_MAP_NAME, MODEL_DIR, MODEL_FILE_NAME

logger = logging.getLogger(__name__)

#: File names searched for model files in a folder of models.
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
#: Product types a model's header may carry (``None``: a file made elsewhere, taken as given).
MODEL_KINDS = ("BIAS_MODEL", "BIAS_A")
#: Models kept in memory after being selected (the others are read again when selected).
DEFAULT_CACHE_SIZE = 2


@dataclass(frozen=True)
class LibraryEntry:
    """One model of a library: where it is and its validity, read from its header.

    Attributes
    ----------
    path
        What :meth:`BiasModel.load` is given: an output folder, a ``bias_model`` folder or a
        model file.
    header_path
        The file the validity was read from (``bias_model.fits``, else the a-map).
    temperature_range
        ``(TMIN, TMAX)`` [deg C]; ``None`` when the header has neither.
    date_range
        ``(DATE-BEG, DATE-END)`` (UTC); ``None`` when the header lacks either.
    valid_from, valid_to
        The declared ``VALID-FROM`` and ``VALID-TO`` (UTC); ``None`` when not declared (that
        side open).
    """

    path: Path
    header_path: Path
    temperature_range: tuple[float, float] | None
    date_range: tuple[_dt.datetime, _dt.datetime] | None
    valid_from: _dt.datetime | None
    valid_to: _dt.datetime | None

    @property
    def declares_validity(self) -> bool:
        """Whether the header declares ``VALID-FROM`` or ``VALID-TO``."""
        return self.valid_from is not None or self.valid_to is not None

    def valid_on(self, date: _dt.datetime) -> bool:
        """Whether ``date`` lies inside the declared validity (always, when none is declared)."""
        return (self.valid_from is None or date >= self.valid_from) and (self.valid_to is None or date <= self.valid_to)

    def covers(self, temperature: float) -> bool:
        """Whether ``temperature`` lies inside ``TMIN..TMAX`` (never, when unknown)."""
        return self.temperature_distance(temperature) == 0.0

    def temperature_distance(self, temperature: float) -> float:
        """How far ``temperature`` lies outside ``TMIN..TMAX`` [deg C]: 0 inside, infinite
        when the range is unknown."""
        if self.temperature_range is None:
            return math.inf
        low, high = self.temperature_range
        return max(low - temperature, temperature - high, 0.0)

    def time_distance(self, date: _dt.datetime) -> float:
        """Seconds from ``date`` to ``DATE-BEG..DATE-END``: 0 inside, infinite without dates."""
        if self.date_range is None:
            return math.inf
        begin, end = self.date_range
        return max((begin - date).total_seconds(), (date - end).total_seconds(), 0.0)

    def rank(self, date: _dt.datetime | None) -> tuple[float, float, str]:
        """The sort key of :meth:`BiasLibrary.select` among models of equal temperature
        standing: nearest in time (no date: all equal), then the later ``DATE-END`` (undated
        last), then the path."""
        distance = 0.0 if date is None else self.time_distance(date)
        newest_first = -self.date_range[1].timestamp() if self.date_range is not None else math.inf
        return distance, newest_first, str(self.path)

    def row(self) -> dict[str, object]:
        """The entry as plain values (ISO dates, ``None`` where unknown): a row of
        :meth:`BiasLibrary.table`."""
        low, high = self.temperature_range if self.temperature_range is not None else (None, None)
        begin, end = self.date_range if self.date_range is not None else (None, None)
        return {
            "path": str(self.path),
            "tmin": low,
            "tmax": high,
            "date_beg": _iso(begin),
            "date_end": _iso(end),
            "valid_from": _iso(self.valid_from),
            "valid_to": _iso(self.valid_to),
        }


def _iso(date: _dt.datetime | None) -> str | None:
    return None if date is None else format_date(date)


class BiasLibrary:
    """Bias models of one sensor with their validity, and the choice of one for a frame.

    Parameters
    ----------
    paths
        One path or several. Each is a pipeline output folder, a ``bias_model`` folder, a model
        file (``bias_model.fits`` under any name, or an a-map), or a folder holding several of
        these: a folder that is not itself a model's is searched one level down for output
        folders and ``bias_model`` folders (sub-folders holding ``bias_model/``,
        ``bias_model.fits`` or ``bias_a_map.fits``) and one-file models (FITS files whose
        ``PRODTYPE`` is ``BIAS_MODEL``); other files there are ignored, and so are names
        beginning with a dot (a run's staging folder). The same file found twice counts once.
    cache_size
        How many selected models stay in memory.

    Raises
    ------
    InputDataError
        When no model is found, a path does not exist, or a model's header cannot be read or is
        not a model's (one line naming the file).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from bias_pipeline.dates import parse_date
    >>> root = Path(tempfile.mkdtemp())
    >>> for name, level, begin, end in (("march", 3000.0, "2026-03-01", "2026-03-08"),
    ...                                 ("june", 3010.0, "2026-06-01", "2026-06-08")):
    ...     _ = BiasModel.from_maps(np.full((2, 3), level), np.full((2, 3), 2.0), temperature_range=(-10.0, 30.0),
    ...                             date_range=(parse_date(begin), parse_date(end))).save(root / name)
    >>> library = BiasLibrary(root)
    >>> len(library), library.select_entry(5.0, "2026-04-01").path.name, library.select_entry(5.0).path.name
    (2, 'march', 'june')
    >>> float(library.select(5.0, "2026-05-20").predict(0.0)[0, 0])
    3010.0
    """

    def __init__(
        self, paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        entries: list[LibraryEntry] = []
        seen: set[Path] = set()
        for path in given:
            for entry in _entries_under(Path(path)):
                key = entry.header_path.resolve()
                if key in seen:
                    logger.debug("bias library: %s found twice, counted once", entry.header_path)
                    continue
                seen.add(key)
                entries.append(entry)
        if not entries:
            raise InputDataError(
                "the bias library holds no model: give output folders, bias_model folders or model files "
                "(or folders holding them)"
            )
        self._entries = tuple(sorted(entries, key=lambda e: str(e.path)))
        self._cache_size = max(0, int(cache_size))
        self._loaded: OrderedDict[Path, BiasModel] = OrderedDict()
        self._lock = threading.Lock()
        logger.info("bias library: %d model(s)", len(self._entries))

    # ------------------------------------------------------------------ the collection
    @property
    def entries(self) -> tuple[LibraryEntry, ...]:
        """Every model's path and validity (headers only), sorted by path."""
        return self._entries

    @property
    def models(self) -> list[BiasModel]:
        """Every model, in the order of :attr:`entries` (reads every model's maps)."""
        return [self.load(entry) for entry in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[LibraryEntry]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"BiasLibrary({len(self)} models: {', '.join(str(e.path) for e in self._entries)})"

    def load(self, entry: LibraryEntry) -> BiasModel:
        """The model of ``entry``, read on first use and kept among the last few used.

        Raises
        ------
        InputDataError
            When the model's files cannot be read.
        """
        # Read under the lock: threads of a dark pipeline asking for the same model at once
        # read it once, and the others wait for it rather than reading it again.
        with self._lock:
            if entry.path in self._loaded:
                self._loaded.move_to_end(entry.path)
                return self._loaded[entry.path]
            model = BiasModel.load(entry.path)
            if self._cache_size:
                self._loaded[entry.path] = model
                while len(self._loaded) > self._cache_size:
                    self._loaded.popitem(last=False)
            return model

    def table(self) -> list[dict[str, object]]:
        """The validity of every model as plain values (path, tmin, tmax, date_beg, date_end,
        valid_from, valid_to; ``None`` where unknown)."""
        return [entry.row() for entry in self._entries]

    def describe(self) -> str:
        """The validity of every model as a text table, one line per model."""
        lines = [
            f"bias library of {len(self)} model(s): the one whose TMIN..TMAX holds T, nearest in time to the "
            "frame's date (declared VALID-FROM..VALID-TO must hold it); no date: the latest DATE-END",
            f"  {'T range [deg C]':<17} {'dates DATE-BEG..DATE-END':<41} {'declared VALID-FROM..VALID-TO':<41} path",
        ]
        for entry in self._entries:
            row = entry.row()
            temperatures = "unknown" if row["tmin"] is None else f"{row['tmin']:.1f}..{row['tmax']:.1f}"
            dates = "none" if row["date_beg"] is None else f"{row['date_beg']}..{row['date_end']}"
            declared = (
                f"{row['valid_from'] or 'open'}..{row['valid_to'] or 'open'}" if entry.declares_validity else "none"
            )
            lines.append(f"  {temperatures:<17} {dates:<41} {declared:<41} {entry.path}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ the choice
    def select(self, temperature: float, date: object = None) -> BiasModel:
        """The model to use for a frame at ``temperature`` taken on ``date``.

        Parameters
        ----------
        temperature
            The frame's sensor temperature [deg C].
        date
            When the frame was taken: a datetime, an ISO string or an MJD number (UTC); ``None``
            for the newest model.

        Returns
        -------
        BiasModel
            Chosen by the rule of :mod:`bias_pipeline.library` (:meth:`select_entry`).

        Raises
        ------
        InputDataError
            When the temperature or date is unusable, or no model is valid on ``date``.
        """
        return self.load(self.select_entry(temperature, date))

    def select_entry(self, temperature: float, date: object = None) -> LibraryEntry:
        """The entry :meth:`select` chooses, without reading its maps (the rule is in the
        module's description); the choice is logged, and a warning when it extrapolates in
        temperature or has no dates for a dated frame.

        Raises
        ------
        InputDataError
            When the temperature or date is unusable, or no model is valid on ``date``.
        """
        temperature = _as_temperature(temperature)
        when = date_argument(date)
        candidates = list(self._entries)
        if when is not None:
            candidates = [entry for entry in candidates if entry.valid_on(when)]
            if not candidates:
                ranges = "; ".join(
                    f"{entry.path}: {_iso(entry.valid_from) or 'open'}..{_iso(entry.valid_to) or 'open'}"
                    for entry in self._entries
                )
                raise InputDataError(
                    f"no bias model of the library is valid on {format_date(when)} (declared VALID-FROM..VALID-TO: "
                    f"{ranges}); add a model for that date or correct its VALID-FROM/VALID-TO cards"
                )
        covering = [entry for entry in candidates if entry.covers(temperature)]
        if covering:
            pool = covering
        else:
            nearest = min(entry.temperature_distance(temperature) for entry in candidates)
            pool = [entry for entry in candidates if entry.temperature_distance(temperature) == nearest]
        chosen = min(pool, key=lambda entry: entry.rank(when))
        on = "" if when is None else f" on {format_date(when)}"
        if not covering:
            ranges = ", ".join(_temperatures(entry) for entry in candidates)
            logger.warning(
                "no bias model of the library covers %g deg C%s (their ranges: %s): using %s (%s), the nearest in "
                "temperature; it extrapolates",
                temperature,
                on,
                ranges,
                chosen.path,
                _temperatures(chosen),
            )
        if when is not None and chosen.date_range is None:
            logger.warning(
                "bias model %s has no DATE-BEG/DATE-END: chosen for a frame%s because no dated model fits it",
                chosen.path,
                on,
            )
        logger.info(
            "bias model for %g deg C%s: %s (%s, dates %s)",
            temperature,
            on or " (no date: the newest)",
            chosen.path,
            _temperatures(chosen),
            "none" if chosen.date_range is None else "..".join(format_date(d) for d in chosen.date_range),
        )
        return chosen


def _temperatures(entry: LibraryEntry) -> str:
    if entry.temperature_range is None:
        return "temperature range unknown"
    return f"{entry.temperature_range[0]:g}..{entry.temperature_range[1]:g} deg C"


def _as_temperature(temperature: object) -> float:
    try:
        value = float(temperature)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise InputDataError(f"temperature must be a finite number [deg C], got {temperature!r}")
    return value


def date_argument(date: object) -> _dt.datetime | None:
    """A caller's ``date=`` (ISO text, MJD, datetime or ``None``) as a UTC datetime.

    Raises
    ------
    InputDataError
        When it is not a date.
    """
    if date is None:
        return None
    try:
        return parse_date(date)
    except ValueError as exc:
        raise InputDataError(f"date= {exc}") from None


# ---------------------------------------------------------------------- finding the models
def is_model_folder(path: Path) -> bool:
    """Whether ``path`` is a folder :meth:`BiasModel.load` reads as one model: an output folder
    (holding ``bias_model/``), or a folder holding ``bias_model.fits`` or ``bias_a_map.fits``."""
    return path.is_dir() and (
        (path / MODEL_DIR).is_dir() or (path / MODEL_FILE_NAME).is_file() or (path / A_MAP_NAME).is_file()
    )


def _entries_under(path: Path) -> list[LibraryEntry]:
    """The models ``path`` stands for: itself (a model's folder or file), or those one level
    down (a folder of models)."""
    if not path.exists():
        raise InputDataError(
            f"bias library: {path} does not exist; give output folders, bias_model folders or model files"
        )
    if path.is_file() or is_model_folder(path):
        return [_entry(path)]
    found: list[LibraryEntry] = []
    for child in sorted(path.iterdir()):
        if child.name.startswith("."):
            continue
        if is_model_folder(child):
            found.append(_entry(child))
        elif child.is_file() and child.name.lower().endswith(FITS_SUFFIXES):
            if _header(child).get("PRODTYPE") == "BIAS_MODEL":
                found.append(_entry(child))
            else:
                logger.debug("bias library: %s is no one-file model, left out", child)
    if not found:
        raise InputDataError(
            f"bias library: no model in {path} nor one level down (looked for output folders, {MODEL_DIR} folders, "
            f"{MODEL_FILE_NAME} or {A_MAP_NAME}, and FITS files of PRODTYPE BIAS_MODEL)"
        )
    return found


def _header_file(path: Path) -> Path:
    """The file whose header holds the model's validity, as :meth:`BiasModel.load` would read it."""
    if path.is_file():
        return path
    folder = path / MODEL_DIR if (path / MODEL_DIR).is_dir() else path
    for name in (MODEL_FILE_NAME, A_MAP_NAME):
        if (folder / name).is_file():
            return folder / name
    raise InputDataError(f"bias library: no {MODEL_FILE_NAME} or {A_MAP_NAME} in {folder}; is {path} a model's folder?")


def _header(path: Path) -> fits.Header:
    try:
        return read_model_header(path)[0]
    except Exception as exc:  # astropy raises assorted errors on a damaged file
        raise InputDataError(f"bias library: {path} cannot be read: {fits_problem(exc)}") from None


def _entry(path: Path) -> LibraryEntry:
    header_path = _header_file(path)
    header = _header(header_path)
    kind = header.get("PRODTYPE")
    if kind is not None and kind not in MODEL_KINDS:
        raise InputDataError(
            f"bias library: {header_path} is no bias model (PRODTYPE = {kind}); give bias_model.fits, the a-map "
            "or a pipeline output folder"
        )
    dates: dict[str, _dt.datetime | None] = {}
    for key in (DATE_BEGIN_KEY, DATE_END_KEY, VALID_FROM_KEY, VALID_TO_KEY):
        try:
            dates[key] = parse_date(header[key]) if key in header else None
        except ValueError as exc:
            raise InputDataError(f"bias library: {header_path}: {key} {exc}; fix the card or remove it") from None
    try:
        temperatures = (float(header["TMIN"]), float(header["TMAX"])) if "TMIN" in header and "TMAX" in header else None
    except (TypeError, ValueError):
        raise InputDataError(f"bias library: {header_path}: TMIN/TMAX are not numbers; fix the cards") from None
    begin, end = dates[DATE_BEGIN_KEY], dates[DATE_END_KEY]
    return LibraryEntry(
        path=path,
        header_path=header_path,
        temperature_range=temperatures,
        date_range=(begin, end) if begin is not None and end is not None else None,
        valid_from=dates[VALID_FROM_KEY],
        valid_to=dates[VALID_TO_KEY],
    )

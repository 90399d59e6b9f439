"""Subtract the model bias from a frame: the call the dark-current pipeline makes.

``subtract_bias(frame, model_or_library, temperature=None)`` takes

- the frame as an array (16-bit ADU), the path of a raw FITS frame, or an
  :class:`astropy.nddata.CCDData`;
- a :class:`~bias_pipeline.model.BiasModel`, or a :class:`~bias_pipeline.library.BiasLibrary`
  from which the model valid for the frame's temperature and date is chosen
  (:meth:`BiasLibrary.select <bias_pipeline.library.BiasLibrary.select>`).

The temperature and date are the arguments when given, else the frame's header (a path's, or a
``CCDData``'s ``meta``), looked up by the same keyword lists as the pipeline's step 1. An array
has no header: it needs ``temperature=`` (and ``date=`` to choose from a library by date; without
one the newest model is used).

An array or a path gives a float32 array; a ``CCDData`` gives a ``CCDData``: the frame minus
:meth:`BiasModel.at`, by NDData arithmetic (uncertainties combined in quadrature, masks ORed),
with the frame's header and cards naming the bias used.

``row_correction=True`` also removes the frame's own row noise (the offset each row of a CMOS
frame shares, :mod:`bias_pipeline.row_noise`): each row's median of frame minus bias, over the
model's unflagged pixels, less the mean of those medians, is taken out of the row, so the
frame's level (a dark's dark current) is kept. This is safe only for a frame whose own signal is
flat along its rows and has no structure from row to row: a bias, or a dark without gradients
along its columns. Whatever differs from row to row goes, so a science frame with stars, or a
dark with a glow or a gradient, must not be corrected this way.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty

from ._version import __version__
from .config import DEFAULT_EXPOSURE_KEYS, DEFAULT_TEMPERATURE_KEYS
from .dates import DEFAULT_DATE_KEYS, format_date, parse_date
from .errors import FrameReadError, InputDataError
from .frames import inspect_frame, lookup_number, read_frame
from .library import BiasLibrary, LibraryEntry, date_argument
from .model import BiasModel
from .products import add_card
from .row_noise import MIN_ROW_PIXELS, FrameRows, measure_frame_rows
from .units import input_factor, to_adu16

logger = logging.getLogger(__name__)


def subtract_bias(
    frame_or_path: np.ndarray | str | Path | CCDData,
    model_or_library: BiasModel | BiasLibrary | None = None,
    temperature: float | None = None,
    *,
    date: object = None,
    temperature_keys: Sequence[str] = DEFAULT_TEMPERATURE_KEYS,
    date_keys: Sequence[str] = DEFAULT_DATE_KEYS,
    input_bits: int = 16,
    model: BiasModel | BiasLibrary | None = None,
    row_correction: bool = False,
) -> np.ndarray | CCDData:
    """The frame minus the model's bias at its temperature, in 16-bit ADU.

    Parameters
    ----------
    frame_or_path
        A 2-D array in 16-bit ADU, the path of a raw FITS frame, or a ``CCDData`` (unit ``adu``).
    model_or_library
        The bias model (:meth:`BiasModel.load`), or a :class:`BiasLibrary` to choose it from.
    temperature
        Sensor temperature [deg C]; read from the frame's header when not given (a path or a
        ``CCDData``).
    date
        When the frame was taken (datetime, ISO string or MJD number, UTC), to choose from a
        library; read from the header when not given (a path or a ``CCDData``). Without a date
        the library's newest model is used. Not used with a single model.
    temperature_keys, date_keys
        Header keywords tried for the temperature and the date, in order.
    input_bits
        16 when the frame's values are 16-bit ADU (12-bit values x16, the camera's files); 12
        when they are raw 12-bit values, which are then multiplied by the model's scale factor
        (a ``CCDData``'s uncertainty with them).
    model
        The former name of ``model_or_library``, still accepted as a keyword.
    row_correction
        Also remove the frame's own row offsets against the bias (row noise), keeping its mean
        level; the rows are measured on the model's unflagged pixels where the frame is finite.
        Only for a frame whose signal is flat along its rows with no row-to-row structure (a
        bias, a dark without gradients along its columns); never for a science frame with
        stars or a gradient, whose structure would be removed with the noise.

    Returns
    -------
    numpy.ndarray or astropy.nddata.CCDData
        For an array or a path: ``frame - model.predict(temperature)``, float32, NaN at the
        model's masked pixels. For a ``CCDData``: ``frame.subtract(model.at(temperature))``:
        float32 data (NaN where the model has none), the uncertainties combined in quadrature
        (the model's alone when the frame has none), the masks ORed (the model's mask is
        :attr:`BiasModel.flagged`), the frame's ``flags`` when it has some, else the model's DQ
        bits, and the frame's header with ``BIASTEMP``, ``BIASFILE`` (a library's model),
        ``BIASDBEG``/``BIASDEND`` and a ``HISTORY`` card; with ``row_correction``, also
        ``ROWCORR = True`` and ``ROWRMS``, the rms of the row offsets removed [ADU].

    Raises
    ------
    InputDataError
        When the frame cannot be read, has no usable temperature (or date, when its header
        holds an unreadable one), is not the model's shape or not in ADU, or no model of the
        library is valid for it; with ``row_correction``, when the frame has fewer than
        :data:`~bias_pipeline.row_noise.MIN_ROW_PIXELS` columns (a row's median would be its
        pixels' own signal).
    TypeError
        When no model is given, or it is given twice (``model_or_library`` and ``model``), or
        ``row_correction`` is not a bool (``"off"``, the command line's word, would be true).

    Examples
    --------
    >>> model = BiasModel.from_maps(np.full((2, 3), 3000.0), np.full((2, 3), 2.0))
    >>> dark = np.full((2, 3), 3100.0, dtype=np.float32)
    >>> subtract_bias(dark, model, temperature=20.0).tolist()
    [[60.0, 60.0, 60.0], [60.0, 60.0, 60.0]]
    >>> subtract_bias(CCDData(dark, unit="adu"), model, 20.0).header["BIASTEMP"]
    20.0
    """
    if not isinstance(row_correction, (bool, np.bool_)):
        # A string would be truthy: row_correction="off" must not remove the rows.
        raise TypeError(f"subtract_bias() takes row_correction=True or False, not {row_correction!r}")
    if model_or_library is not None and model is not None:
        raise TypeError("subtract_bias() got the model twice: as model_or_library and as model=")
    chooser = model_or_library if model_or_library is not None else model
    if chooser is None:
        raise TypeError("subtract_bias() needs a BiasModel or a BiasLibrary as its second argument")
    if not isinstance(chooser, (BiasModel, BiasLibrary)):
        raise TypeError(f"subtract_bias() takes a BiasModel or a BiasLibrary, not {type(chooser).__name__}")
    if isinstance(frame_or_path, CCDData):
        return _subtract_from_ccd(
            frame_or_path, chooser, temperature, date, temperature_keys, date_keys, input_bits, row_correction
        )
    if isinstance(frame_or_path, (str, Path)):
        path = Path(frame_or_path)
        temperature, when = _from_path(path, chooser, temperature, date, temperature_keys, date_keys)
        try:
            frame = read_frame(path)
        except FrameReadError as exc:
            raise InputDataError(f"{path}: {exc}") from None
        what = str(path)
    else:
        if temperature is None:
            raise InputDataError("an array has no header: pass temperature= (deg C)")
        frame = np.asarray(frame_or_path, dtype=np.float32)
        when, what = date_argument(date), "the frame"
    chosen, _ = _choose(chooser, float(temperature), when, what)
    _check_shape(frame.shape, chosen, what)
    frame = to_adu16(frame, input_bits, chosen.scale_factor)
    bias = chosen.predict(float(temperature))
    if row_correction:
        frame = _row_noise(frame, bias, chosen, what).removed_from(frame)
    return (frame - bias).astype(np.float32)


def _row_noise(
    frame: np.ndarray, bias: np.ndarray, model: BiasModel, what: str, mask: np.ndarray | None = None
) -> FrameRows:
    """The frame's row offsets against the bias, on the model's unflagged pixels (and those
    not in the frame's own ``mask``)."""
    if frame.shape[-1] < MIN_ROW_PIXELS:
        raise InputDataError(
            f"{what} has {frame.shape[-1]} columns: too few for row_correction=True (a row's median of fewer "
            f"than {MIN_ROW_PIXELS} pixels is their own signal); subtract without it"
        )
    valid = ~model.flagged if mask is None else ~(model.flagged | mask)
    rows = measure_frame_rows(np.asarray(frame, dtype=np.float32) - bias, valid)
    left = int(rows.measured.size - np.count_nonzero(rows.measured))
    if left:
        logger.warning(
            "%s: %d of %d rows have fewer than %d usable pixels (the model's flags, the frame's mask or NaN): "
            "their row offsets are left in",
            what, left, rows.measured.size, MIN_ROW_PIXELS,
        )  # fmt: skip
    logger.debug("%s: row offsets removed, rms %.3f ADU", what, rows.rms_removed)
    return rows


def _from_path(
    path: Path,
    chooser: BiasModel | BiasLibrary,
    temperature: float | None,
    date: object,
    temperature_keys: Sequence[str],
    date_keys: Sequence[str],
) -> tuple[float, _dt.datetime | None]:
    """The temperature and date of a frame file: the arguments, else its header."""
    when = date_argument(date)
    needs_date = isinstance(chooser, BiasLibrary) and when is None
    if temperature is not None and not needs_date:
        return float(temperature), when
    record = inspect_frame(path, tuple(temperature_keys), DEFAULT_EXPOSURE_KEYS, date_keys=tuple(date_keys))
    if temperature is None:
        if record.temperature is None:
            raise InputDataError(f"{path}: {record.reason or 'no temperature'}; pass temperature=")
        temperature = record.temperature
    if needs_date:
        if record.date_problem:
            raise InputDataError(f"{path}: {record.date_problem}; fix the header or pass date=")
        when = record.date_obs
        _note_undated(when, chooser, path, date_keys)
    return float(temperature), when


def _note_undated(
    when: _dt.datetime | None, chooser: BiasModel | BiasLibrary, what: object, keys: Sequence[str]
) -> None:
    if when is None and isinstance(chooser, BiasLibrary) and len(chooser) > 1:
        logger.warning(
            "%s has no date (looked for %s): the library's newest model is used; pass date= to choose by date",
            what,
            ", ".join(keys),
        )


def _choose(
    chooser: BiasModel | BiasLibrary, temperature: float, when: _dt.datetime | None, what: str
) -> tuple[BiasModel, LibraryEntry | None]:
    """The model to subtract, and the library's entry it came from (``None`` for a model)."""
    if isinstance(chooser, BiasModel):
        return chooser, None
    entry = chooser.select_entry(temperature, when)
    logger.debug("%s: bias model %s", what, entry.path)
    return chooser.load(entry), entry


def _check_shape(shape: tuple[int, ...], model: BiasModel, what: str = "the frame") -> None:
    if tuple(shape) != model.shape:
        detail = "x".join(str(n) for n in shape)
        raise InputDataError(
            f"{what} is {detail} but the model is {model.shape[0]}x{model.shape[1]}: subtract a model fitted to "
            "frames of this size (a cropped or binned frame needs its own)"
        )


def _meta_header(meta: object) -> fits.Header:
    """A ``CCDData``'s ``meta`` as a header to look keywords up in (a dict's cards that FITS
    cannot hold are left out of the look-up)."""
    if isinstance(meta, fits.Header):
        return meta
    header = fits.Header()
    for key, value in dict(meta or {}).items():  # type: ignore[call-overload]
        try:
            add_card(header, str(key).upper(), value)
        except (ValueError, TypeError, KeyError):  # not a FITS keyword or value
            continue
    return header


def _ccd_date(header: fits.Header, keys: Sequence[str], what: str) -> _dt.datetime | None:
    for key in keys:
        if key in header:
            try:
                return parse_date(header[key])
            except ValueError as exc:
                raise InputDataError(f"{what}: date keyword {key} {exc}; fix the header or pass date=") from None
    return None


def _subtract_from_ccd(
    ccd: CCDData,
    chooser: BiasModel | BiasLibrary,
    temperature: float | None,
    date: object,
    temperature_keys: Sequence[str],
    date_keys: Sequence[str],
    input_bits: int,
    row_correction: bool,
) -> CCDData:
    what = "the CCDData frame"
    header = _meta_header(ccd.meta)
    source = "argument"
    if temperature is None:
        try:
            found = lookup_number([header], tuple(temperature_keys), "temperature")
        except FrameReadError as exc:
            raise InputDataError(f"{what}: {exc}; pass temperature=") from None
        assert found is not None
        temperature, source = found[0], found[1]
    when = date_argument(date)
    if when is None and isinstance(chooser, BiasLibrary):
        when = _ccd_date(header, date_keys, what)
        _note_undated(when, chooser, what, date_keys)
    chosen, entry = _choose(chooser, float(temperature), when, what)
    _check_shape(ccd.shape, chosen, what)
    if ccd.unit != u.adu:
        raise InputDataError(
            f"{what} is in {ccd.unit}, the bias model in adu: give the frame in ADU (unit='adu') before the dark "
            "calibration scales it"
        )
    factor = float(input_factor(input_bits, chosen.scale_factor))
    frame = CCDData(
        np.asarray(ccd.data, dtype=np.float32) * np.float32(factor),
        unit=ccd.unit,
        uncertainty=_scaled(ccd.uncertainty, factor),
        mask=None if ccd.mask is None else np.asarray(ccd.mask, dtype=bool),
        wcs=ccd.wcs,
    )
    bias = chosen.at(float(temperature))
    rows = None
    if row_correction:
        rows = _row_noise(frame.data, np.asarray(bias.data, dtype=np.float32), chosen, what, frame.mask)
        frame.data = rows.removed_from(frame.data)
    if frame.uncertainty is not None and bias.uncertainty is not None:
        # NDData arithmetic combines uncertainties of one kind only: the model's in the frame's.
        bias.uncertainty = bias.uncertainty.represent_as(type(frame.uncertainty))
    result = frame.subtract(bias)
    result.data = np.asarray(result.data, dtype=np.float32)
    if result.uncertainty is not None:
        result.uncertainty.array = np.asarray(result.uncertainty.array, dtype=np.float32)
    result.flags = ccd.flags if ccd.flags is not None else bias.flags
    result.meta = _result_meta(ccd.meta, chosen, entry, float(temperature), source, rows)
    return result


def _scaled(uncertainty: object, factor: float) -> object:
    """The frame's uncertainty in 16-bit ADU (its values times ``factor`` for 12-bit input)."""
    if uncertainty is None or factor == 1.0:
        return uncertainty
    as_std = uncertainty.represent_as(StdDevUncertainty)  # type: ignore[attr-defined]
    return StdDevUncertainty(np.asarray(as_std.array) * factor).represent_as(type(uncertainty))


def _result_meta(
    meta: object,
    model: BiasModel,
    entry: LibraryEntry | None,
    temperature: float,
    source: str,
    rows: FrameRows | None = None,
) -> fits.Header | dict[str, object]:
    """The frame's header kept, with cards naming the bias subtracted."""
    cards: dict[str, tuple[object, str]] = {
        "BIASTEMP": (temperature, f"[deg C] bias modelled at (from {source})"),
        "BIASLAW": (model.law, "bias model subtracted, T in deg C"),
    }
    if entry is not None:
        cards["BIASFILE"] = (str(entry.path), "bias model chosen from the library")
    if model.date_range is not None:
        cards["BIASDBEG"] = (format_date(model.date_range[0]), "[UTC] bias model's DATE-BEG")
        cards["BIASDEND"] = (format_date(model.date_range[1]), "[UTC] bias model's DATE-END")
    if model.temperature_range is not None:
        low, high = model.temperature_range
        cards["BIASEXTR"] = (
            bool(temperature < low - 1e-9 or temperature > high + 1e-9),
            "bias model extrapolated in T",
        )
    if rows is not None:
        cards["ROWCORR"] = (bool(rows.measured.any()), "row offsets (row noise) removed, level kept")
        cards["ROWRMS"] = (round(rows.rms_removed, 4), "[adu] rms of the row offsets removed")
    history = f"bias_pipeline {__version__} subtract_bias: bias at {temperature:g} deg C from " + (
        str(entry.path) if entry is not None else "a BiasModel"
    )
    if rows is not None:
        history += "; row offsets removed"
    if isinstance(meta, fits.Header):
        header = meta.copy()
        for key, (value, comment) in cards.items():
            add_card(header, key, value, comment)
        header["HISTORY"] = history
        return header
    kept = dict(meta or {})  # type: ignore[call-overload]
    kept.update({key: value for key, (value, _) in cards.items()})
    kept["HISTORY"] = history
    return kept

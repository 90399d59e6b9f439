"""Raw frames: the record kept for each file, header keyword look-up and pixel reading.

This is the only module that opens raw FITS frames. A frame is inspected once by
:func:`inspect_frame` (header, shape, pixel checks; the camera's plain frames are read once
for both their checks and their checksum, see :class:`FrameReader`) and later read again in
row blocks by :func:`read_rows`, so the combine never holds more than a block of every frame
in memory.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gzip
import hashlib
import io
import logging
import math
import os
import re
import sys
import threading
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from .dates import DEFAULT_DATE_KEYS, parse_date
from .errors import FrameReadError, fits_problem, one_line
from .frame_checks import PixelStats, StoredUint16Checks, array_stats
from .units import DEFAULT_SCALE_FACTOR, TWELVE_BIT_MAX, adc_maximum

logger = logging.getLogger(__name__)

#: File name endings read as FITS (case-insensitive). Everything else is listed as ignored.
FITS_SUFFIXES: tuple[str, ...] = (
    ".fits",
    ".fit",
    ".fts",
    ".fits.gz",
    ".fit.gz",
    ".fts.gz",
    ".fits.fz",
    ".fz",
)

# Big-endian pixel types of the FITS BITPIX values, for positioned reads of plain files.
_BITPIX_DTYPES: dict[int, str] = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"

STATUS_USED = "used"
STATUS_ACCEPTED = "accepted"  # passed step 1; becomes used (or rejected) in step 2
STATUS_REJECTED = "rejected"
STATUS_IGNORED = "ignored"

# A value quoted in a reason (a header's text), which differs from file to file.
_QUOTED = re.compile(r"'[^']*'")
# A number in a reason (not inside a word or an option name such as 12-bit or --max-exposure).
_NUMBER = re.compile(r"(?<![A-Za-z_\d])(?<!\d\.)[-+]?\d+(?:\.\d+)?(?![A-Za-z_\d]|-[A-Za-z])")


def reason_kind(reason: str | None) -> str:
    """A rejection reason without its file-specific details, so that like reasons count
    together: the text before a colon, numbers replaced by ``N``.

    Examples
    --------
    >>> reason_kind("truncated: file has 5760 bytes, its header needs 8640")
    'truncated'
    >>> reason_kind("exposure 10 s is longer than a bias frame (--max-exposure 0.1 s)")
    'exposure N s is longer than a bias frame (--max-exposure N s)'
    >>> reason_kind("values up to 65520 do not fit the 12-bit data declared by --input-bits 12")
    'values up to N do not fit the 12-bit data declared by --input-bits N'
    >>> reason_kind("temperature keyword TEMP holds '0.008C', not a number")
    "temperature keyword TEMP holds '...', not a number"
    """
    text = (reason or "no reason recorded").strip()
    head, sep, _ = text.partition(":")
    if sep and len(head) <= 60:
        text = head
    return _NUMBER.sub("N", _QUOTED.sub("'...'", text))


@dataclass
class FrameRecord:
    """What the pipeline knows about one file found under the raw folder.

    Attributes
    ----------
    path
        The file as found (not resolved through links).
    status
        ``"accepted"`` after a successful inspection, then ``"used"`` once in a master;
        ``"rejected"`` or ``"ignored"`` otherwise.
    reason
        Why the file was rejected or ignored; empty for used frames.
    temperature, exposure
        Header values [deg C] and [s], when they could be read.
    temperature_key, exposure_key
        The header keyword each value came from.
    frame_type, frame_type_key
        The frame type the header states (``BIAS``, ``DARK``...) and its keyword; empty when the
        header states none.
    set_point, set_point_key
        The thermal set point [deg C] the header states, and its keyword; ``None`` when absent.
    date_obs, date_key
        The observation date (UTC) the header states and its keyword; ``None`` when absent or
        unreadable (dates are optional).
    date_problem
        Why a date card present could not be used (its value is not a date, or its cards
        disagree); empty otherwise. The frame is still used; step 1 warns, naming the file.
    shape
        ``(rows, columns)`` of the image.
    group
        Label of the temperature group the frame was combined in.
    hdu_index
        Index of the HDU holding the image.
    data_offset
        Byte offset of the pixels in a plain (uncompressed) file; ``None`` when the pixels
        must be decoded by astropy (gzip or tile-compressed files, BLANK values).
    bitpix, bzero, bscale
        Storage of the pixels at ``data_offset``.
    max_value
        Largest stored pixel value (after BZERO/BSCALE), for the bit-depth check.
    multiple_of_16
        Whether every pixel value is a multiple of 16 (12-bit data stored x16).
    integer_valued
        Whether every pixel value is a whole number (the quantisation step is then at least 1).
    saturated_fraction, saturated_fraction_12
        Fraction of pixels at the ADC maximum as stored x the scale factor (65520 and above
        with the default 16), and as raw 12-bit values (4095; which applies is decided with the
        data set's bit depth).
    zero_fraction
        Fraction of pixels that are exactly zero (a readout dropout of this camera).
    passed_checks
        True once the frame passed every check of step 1 (it may still be rejected later, by
        its group's size or by disagreeing with its master).
    offset, offset_sigma
        The frame's mean offset from its group's master (the other frames) [ADU], and that
        offset in units of its own standard error; ``None`` until step 2 combined it.
    negative_count, min_value
        Pixels below zero, and the smallest value (after BZERO/BSCALE).
    constant
        Whether every pixel holds the same value (a stuck readout).
    temperature_est, temperature_est_err
        The frame's temperature estimated from its own pixels with the fitted model [deg C].
    row_noise
        The frame's row-noise amplitude measured against its group's master [ADU]
        (:mod:`bias_pipeline.row_noise`); ``None`` when not measured.
    flag
        A warning that does not reject the frame (``temperature_mismatch``).
    sha256
        Checksum of the file, for frames that passed step 1 (provenance).
    """

    path: Path
    status: str = STATUS_ACCEPTED
    reason: str = ""
    temperature: float | None = None
    exposure: float | None = None
    temperature_key: str = ""
    exposure_key: str = ""
    frame_type: str = ""
    frame_type_key: str = ""
    set_point: float | None = None
    set_point_key: str = ""
    date_obs: _dt.datetime | None = None
    date_key: str = ""
    date_problem: str = ""
    shape: tuple[int, int] | None = None
    group: str = ""
    hdu_index: int = 0
    data_offset: int | None = None
    bitpix: int = 0
    bzero: float = 0.0
    bscale: float = 1.0
    max_value: float = math.nan
    multiple_of_16: bool = False
    integer_valued: bool = False
    zero_fraction: float = math.nan
    saturated_fraction: float = 0.0
    saturated_fraction_12: float = 0.0
    passed_checks: bool = False
    offset: float | None = None
    offset_sigma: float | None = None
    row_noise: float | None = None
    negative_count: int = 0
    min_value: float = math.nan
    constant: bool = False
    temperature_est: float | None = None
    temperature_est_err: float | None = None
    flag: str = ""
    sha256: str = ""

    def reject(self, reason: str) -> None:
        """Mark the frame rejected with ``reason`` (kept in the manifest)."""
        self.status = STATUS_REJECTED
        self.reason = reason
        logger.debug("rejected %s: %s", self.path, reason)

    def ignore(self, reason: str) -> None:
        """Mark the file ignored (not a frame) with ``reason``."""
        self.status = STATUS_IGNORED
        self.reason = reason
        logger.debug("ignored %s: %s", self.path, reason)

    @property
    def accepted(self) -> bool:
        """True while the frame is (still) a candidate for a master."""
        return self.status in (STATUS_ACCEPTED, STATUS_USED)


def reading(record: FrameRecord) -> float:
    """The frame's temperature reading [deg C]; every frame that passed step 1 has one.

    Raises
    ------
    ValueError
        For a record without a temperature (one step 1 did not accept).
    """
    if record.temperature is None:
        raise ValueError(f"{record.path} has no temperature reading")
    return float(record.temperature)


@dataclass(frozen=True)
class FrameDecision:
    """What a step decided about one frame, for the chaining code to apply to its record
    (:func:`apply_decisions`): a step returns decisions and never edits the records it was given.

    Attributes
    ----------
    status
        ``"used"`` (in a master) or ``"rejected"``.
    reason
        Why the frame was rejected; empty for used frames.
    group
        Label of the temperature group the frame was combined in (empty when it was rejected
        before it joined one).
    offset, offset_sigma
        The frame's level offset from the rest of its group [ADU] and that in units of its
        error; ``None`` when not measured.
    row_noise
        The frame's row-noise amplitude [ADU]; ``None`` when not measured.
    """

    status: str
    reason: str = ""
    group: str = ""
    offset: float | None = None
    offset_sigma: float | None = None
    row_noise: float | None = None

    @classmethod
    def rejected(
        cls,
        record: FrameRecord,
        reason: str,
        *,
        group: str = "",
        offset: float | None = None,
        offset_sigma: float | None = None,
        row_noise: float | None = None,
    ) -> FrameDecision:
        """A rejection of ``record`` with ``reason`` (logged, as :meth:`FrameRecord.reject` does)."""
        logger.debug("rejected %s: %s", record.path, reason)
        return cls(STATUS_REJECTED, reason, group, offset, offset_sigma, row_noise)


def apply_decisions(records: Sequence[FrameRecord], decisions: Mapping[Path, FrameDecision]) -> list[FrameRecord]:
    """New records with the decisions (keyed by the record's path) applied; records without a
    decision are returned as they are. The records given are not changed.

    >>> record = FrameRecord(path=Path("a.fits"), temperature=1.0)
    >>> (done,) = apply_decisions([record], {Path("a.fits"): FrameDecision("used", group="1.0")})
    >>> done.status, done.group, record.status, record.group
    ('used', '1.0', 'accepted', '')
    """
    out = []
    for record in records:
        decision = decisions.get(record.path)
        out.append(record if decision is None else dataclasses.replace(record, **dataclasses.asdict(decision)))
    return out


def is_fits_name(path: str | Path) -> bool:
    """Return whether the file name ends in one of :data:`FITS_SUFFIXES`."""
    name = Path(path).name.lower()
    return name.endswith(FITS_SUFFIXES)


def _cards(header: fits.Header, key: str) -> list[object]:
    """Values of every card of ``key`` in ``header`` (a keyword may appear more than once)."""
    try:
        if key not in header:
            return []
        return [header[(key, index)] for index in range(header.count(key))]
    except Exception:  # astropy raises assorted errors on malformed cards
        return []


def _first_present(
    headers: Sequence[fits.Header], keys: Sequence[str], accept: type | tuple[type, ...] = object
) -> tuple[str, list[object]] | None:
    """The first of ``keys`` present, in the first of ``headers`` that has it (the image HDU's
    header before the primary's), with the values of all its cards there of type ``accept``."""
    for key in keys:
        for header in headers:
            values = [value for value in _cards(header, key) if isinstance(value, accept)]
            if values:
                return key, values
    return None


def _comparable(value: object) -> object:
    """A card's value as compared with another card's: numbers by value, anything else as text."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    return str(value)


def _disagreeing(key: str, shown: Sequence[object], quantity: str) -> FrameReadError:
    listed = " and ".join(repr(v) if isinstance(v, str) else f"{v:g}" for v in shown)
    return FrameReadError(
        f"{len(shown)} {key} cards disagree ({listed}); which {quantity} is right cannot be told: fix the header"
    )


def lookup_number(
    headers: Sequence[fits.Header], keys: Sequence[str], quantity: str, *, required: bool = True
) -> tuple[float, str] | None:
    """Find the first of ``keys`` present in ``headers`` and return its value as a float.

    The keywords are tried in order; for each keyword the headers are tried in order (the image
    HDU's header first, then the primary header). The first keyword present decides: an
    unusable value there is an error, not a reason to try the next alias, because the first
    alias is the authoritative one. Cards of that keyword in that header that disagree are an
    error too, never a silent first pick.

    Parameters
    ----------
    headers
        Headers to search.
    keys
        Keywords in order of preference (``HIERARCH`` keywords are found by plain name).
    quantity
        What the value is, for the message (``"temperature"``).
    required
        When no keyword is present: an error (``True``), or ``None`` returned.

    Returns
    -------
    value, keyword
        The value as a finite float and the keyword it came from (``None`` when absent and not
        required).

    Raises
    ------
    FrameReadError
        When no keyword is present (and one is required), the value is not a finite number, or
        cards of the keyword disagree. Never any other exception, whatever the header holds.
    """
    found = _first_present(headers, keys)
    if found is None:
        if not required:
            return None
        raise FrameReadError(f"no {quantity} keyword in the header (looked for {', '.join(keys)})")
    key, values = found
    numbers = [_as_number(value, key, quantity) for value in values]
    if len(set(numbers)) > 1:
        raise _disagreeing(key, numbers, quantity)
    return numbers[0], key


def lookup_text(headers: Sequence[fits.Header], keys: Sequence[str], quantity: str) -> tuple[str, str] | None:
    """The first of ``keys`` present in ``headers`` with a text value (stripped), or ``None``.

    Cards holding a number do not count (``FRAME = 12`` is a frame counter in some headers, not
    a frame type).

    Raises
    ------
    FrameReadError
        When text cards of that keyword disagree (compared without case and surrounding blanks).
    """
    found = _first_present(headers, keys, str)
    if found is None:
        return None
    key, values = found
    texts = [str(value).strip() for value in values]
    if len({t.upper() for t in texts}) > 1:
        raise _disagreeing(key, texts, quantity)
    return texts[0], key


def normal_frame_type(text: str) -> str:
    """A frame type compared without case, blanks, dashes or underscores: ``'Bias Frame'`` ->
    ``'BIAS FRAME'``, ``'bias_frame'`` -> ``'BIAS FRAME'``.

    >>> normal_frame_type(" bias_frame "), normal_frame_type("ZERO")
    ('BIAS FRAME', 'ZERO')
    """
    return " ".join(re.sub(r"[-_]", " ", text).upper().split())


def _as_number(raw: object, key: str, quantity: str) -> float:
    if isinstance(raw, bool) or raw is None:
        raise FrameReadError(f"{quantity} keyword {key} holds {raw!r}, not a number")
    if isinstance(raw, (int, float, np.integer, np.floating)):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise FrameReadError(f"{quantity} keyword {key} holds {raw!r}, not a number") from None
    else:
        raise FrameReadError(f"{quantity} keyword {key} holds {raw!r}, not a number")
    if not math.isfinite(value):
        raise FrameReadError(f"{quantity} keyword {key} holds {raw!r}, not a finite number")
    return value


def _open_fits(path: Path) -> fits.HDUList:
    try:
        return fits.open(path, memmap=False, lazy_load_hdus=False)
    except FileNotFoundError:
        raise FrameReadError("cannot read: file not found (a broken link?)") from None
    except PermissionError:
        raise FrameReadError("cannot read: permission denied") from None
    except OSError as exc:
        raise FrameReadError(f"cannot read as FITS: {fits_problem(exc)}") from None
    except Exception as exc:  # astropy raises many kinds on corrupt headers
        raise FrameReadError(f"cannot read as FITS: {type(exc).__name__}: {one_line(exc)}") from None


def _find_image(hdul: fits.HDUList) -> int:
    """Return the index of the first HDU with image data, whatever its dimension."""
    for index, hdu in enumerate(hdul):
        if (
            hdu.is_image
            and hdu.header.get("NAXIS", 0) > 0
            and all(hdu.header.get(f"NAXIS{i + 1}", 0) > 0 for i in range(hdu.header.get("NAXIS", 0)))
        ):
            return index
    raise FrameReadError("no image data in any HDU")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


@dataclass(frozen=True)
class HeaderKeys:
    """The header keywords a scan looks up, each list in order of preference."""

    temperature: Sequence[str]
    exposure: Sequence[str]
    frame_type: Sequence[str] = ()
    set_point: Sequence[str] = ()
    date: Sequence[str] = DEFAULT_DATE_KEYS


#: Read buffer of one :class:`FrameReader` [bytes]: a file is read in pieces of this size, each
#: hashed and checked while it is in the CPU's cache (measured faster on a 2048 x 2048 frame
#: than one buffer of the whole 8 MiB file, which is copied to memory and read back twice).
READ_BUFFER_BYTES = 256 * 1024

# Warnings are caught by replacing process-wide state (warnings.catch_warnings is not thread
# safe): threads that inspect frames open them with astropy one at a time. The reads, the
# checksum and the pixel checks, which release the interpreter lock, run outside it.
_ASTROPY_LOCK = threading.Lock()


class FrameReader:
    """One worker's read buffer, reused for every file it inspects, and the checksum of the last
    file read through it.

    :func:`inspect_frame` reads a plain unsigned 16-bit file (the camera's frames) once: its
    bytes go into this buffer piece by piece, each piece hashed (when ``checksum``) and its
    pixels checked from the same buffer. Other files (gzip, tile-compressed, BLANK, other
    pixel types) are decoded by astropy, and are not hashed here (``sha256`` stays empty).

    Parameters
    ----------
    checksum
        Whether to compute the SHA-256 of the files read whole (the same digest as
        :func:`bias_pipeline.provenance.file_sha256`).
    buffer_bytes
        Size of the buffer [bytes]: files are read in pieces of this size.

    Attributes
    ----------
    sha256
        Hex SHA-256 of the whole file the last :func:`inspect_frame` read, or ``""`` when it
        computed none (no checksum asked, a file that is not plain, or one rejected first).
    """

    def __init__(self, *, checksum: bool = False, buffer_bytes: int = READ_BUFFER_BYTES) -> None:
        self.checksum = checksum
        self.sha256 = ""
        self._limit = max(2, int(buffer_bytes) // 2 * 2)  # even: pieces hold whole pixels
        self._buffer = np.empty(0, dtype=np.uint8)

    def buffer(self, nbytes: int) -> np.ndarray:
        """The buffer, grown to ``nbytes`` (even, at most the limit) if smaller: numpy's
        allocation is aligned, so its pieces can be viewed as ``uint16``."""
        wanted = min(self._limit, max(2, nbytes + nbytes % 2))
        if self._buffer.size < wanted:
            self._buffer = np.empty(wanted, dtype=np.uint8)
        return self._buffer

    def check_stored_uint16(self, record: FrameRecord, saturation: float) -> PixelStats:
        """Read a plain unsigned 16-bit frame once and compute its pixel statistics (and, when
        asked, the file's SHA-256 into :attr:`sha256`) from the bytes read.

        Parameters
        ----------
        record
            A frame whose stored layout is int16 + BZERO 32768 at ``data_offset``.
        saturation
            The saturation value [ADU].

        Returns
        -------
        PixelStats

        Raises
        ------
        FrameReadError
            When the file cannot be read or is shorter than its header says.
        """
        assert record.shape is not None and record.data_offset is not None
        start = record.data_offset
        stop = start + 2 * record.shape[0] * record.shape[1]
        checks = StoredUint16Checks(saturation)
        digest = hashlib.sha256() if self.checksum else None
        # The checksum covers the whole file; the checks only need the pixels.
        position = 0 if digest is not None else start
        try:
            with open(record.path, "rb", buffering=0) as handle:
                size = os.fstat(handle.fileno()).st_size if digest is not None else stop - start
                buffer = self.buffer(size)
                view = memoryview(buffer)
                handle.seek(position)
                while digest is not None or position < stop:
                    wanted = buffer.size if digest is not None else min(buffer.size, stop - position)
                    got = _fill(handle, view[:wanted])
                    if got == 0:
                        break
                    if digest is not None:
                        digest.update(view[:got])  # releases the interpreter lock
                    low, high = max(position, start), min(position + got, stop)
                    if low < high:  # even offsets: pieces are whole pixels (start and the buffer are even)
                        count = (high - low) // 2
                        checks.add(np.frombuffer(buffer, dtype=np.uint16, count=count, offset=low - position))
                    position += got
                    if got < wanted:
                        break
        except OSError as exc:
            raise FrameReadError(f"{record.path}: cannot read: {exc.strerror or exc}") from None
        if position < stop:
            raise FrameReadError(f"{record.path}: truncated since it was scanned")
        if digest is not None:
            self.sha256 = digest.hexdigest()
        return checks.result()


def _fill(handle: io.RawIOBase, view: memoryview) -> int:
    """Read into all of ``view`` unless the file ends first (a raw read may return less)."""
    filled = 0
    while filled < len(view):
        got = handle.readinto(view[filled:])
        if not got:
            break
        filled += got
    return filled


def inspect_frame(
    path: str | Path,
    temperature_keys: Sequence[str],
    exposure_keys: Sequence[str],
    *,
    frame_type_keys: Sequence[str] = (),
    set_point_keys: Sequence[str] = (),
    date_keys: Sequence[str] = DEFAULT_DATE_KEYS,
    scale_factor: float = DEFAULT_SCALE_FACTOR,
    reader: FrameReader | None = None,
) -> FrameRecord:
    """Open one FITS file, read its header values and its pixels, and check them.

    A plain unsigned 16-bit file is read once, its checks computed from the bytes read
    (and its checksum, when ``reader`` asks for one); other files are decoded by astropy.

    Parameters
    ----------
    path
        The FITS file.
    temperature_keys, exposure_keys
        Header keywords to look up, in order (both required).
    frame_type_keys, set_point_keys
        Keywords of the frame type and the thermal set point (optional in a header).
    date_keys
        Keywords of the observation date, in order (optional; ``()``: no date read). An ISO
        string or an MJD number; see :func:`bias_pipeline.dates.parse_date`.
    scale_factor
        The 12-bit to 16-bit factor: the ADC's maximum is 4095 stored as it is or as
        4095 x this (see :func:`bias_pipeline.units.adc_maximum`).
    reader
        The worker's :class:`FrameReader` (its buffer is reused, and it receives the file's
        checksum when it asks for one); a new one without checksum if ``None``.

    Returns
    -------
    FrameRecord
        Status ``"accepted"``, or ``"rejected"`` with its reason. Checks that depend on
        options or on the whole data set (exposure limit, frame type, shape, bit depth) are
        left to step 1, which has the values they need on the record.
    """
    record = FrameRecord(path=Path(path))
    keys = HeaderKeys(temperature_keys, exposure_keys, frame_type_keys, set_point_keys, date_keys)
    if reader is None:
        reader = FrameReader()
    reader.sha256 = ""
    try:
        _inspect(record, keys, scale_factor, reader)
    except FrameReadError as exc:
        reason = str(exc)
        if not reason.startswith("truncated") and _gzip_ends_early(record.path):
            reason = "truncated: the gzip stream ends before its end marker (a transfer cut short?)"
        record.reject(reason)
    return record


def _gzip_ends_early(path: Path) -> bool:
    """Whether ``path`` is a gzip file cut short (its stream ends before the end marker)."""
    try:
        if not _is_gzip(path):
            return False
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 22):
                pass
    except EOFError:
        return True
    except (OSError, zlib.error):
        return False
    return False


# Cards the pixel layout is read from: two that disagree make the pixels ambiguous.
_LAYOUT_KEYS = ("BITPIX", "NAXIS1", "NAXIS2", "BZERO", "BSCALE", "BLANK")


def _inspect(record: FrameRecord, keys: HeaderKeys, scale_factor: float, reader: FrameReader) -> None:
    path = record.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FrameReadError("cannot read: file not found (a broken link?)") from None
    except OSError as exc:
        raise FrameReadError(f"cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise FrameReadError("empty file (0 bytes)")
    with _ASTROPY_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hdul = _open_fits(path)
        try:
            index = _find_image(hdul)
            hdu = hdul[index]
            header = hdu.header
            ndim = int(header.get("NAXIS", 0)) if not isinstance(hdu, fits.CompImageHDU) else len(hdu.shape)
            shape = tuple(hdu.shape)
            if ndim != 2:
                raise FrameReadError(f"image in HDU {index} has {ndim} dimensions {shape}; expected a 2-D frame")
            headers = [header] if index == 0 else [header, hdul[0].header]
            record.hdu_index = index
            record.shape = (int(shape[0]), int(shape[1]))
            for key in _LAYOUT_KEYS:
                values = _cards(header, key)
                if len({_comparable(v) for v in values}) > 1:  # BZERO = 32768 and 32768.0 agree
                    raise _disagreeing(key, values, "pixel layout")
            record.temperature, record.temperature_key = lookup_number(headers, keys.temperature, "temperature")
            record.exposure, record.exposure_key = lookup_number(headers, keys.exposure, "exposure")
            frame_type = lookup_text(headers, keys.frame_type, "frame type") if keys.frame_type else None
            if frame_type is not None:
                record.frame_type, record.frame_type_key = frame_type
            set_point = lookup_number(headers, keys.set_point, "set point", required=False) if keys.set_point else None
            if set_point is not None:
                record.set_point, record.set_point_key = set_point
            _read_date(record, headers, keys.date)
            plain = (
                not isinstance(hdu, fits.CompImageHDU)
                and "BLANK" not in header
                and int(header.get("BITPIX", 0)) in _BITPIX_DTYPES
                and not _is_gzip(path)
            )
            if plain:
                info = hdul.fileinfo(index)
                record.data_offset = int(info["datLoc"])
                record.bitpix = int(header["BITPIX"])
                record.bzero = float(header.get("BZERO", 0.0))
                record.bscale = float(header.get("BSCALE", 1.0))
                needed = record.data_offset + shape[0] * shape[1] * abs(record.bitpix) // 8
                if size < needed:
                    raise FrameReadError(f"truncated: file has {size} bytes, its header needs {needed}")
            try:
                # The camera's plain unsigned 16-bit frames are checked from their stored
                # integers; astropy's scaling to float would cost more than everything else.
                pixels = None if plain_uint16(record) else np.asarray(hdu.data)
            except Exception as exc:
                if any("truncated" in str(w.message).lower() for w in caught):
                    raise FrameReadError(f"truncated: {exc}") from None
                raise FrameReadError(f"cannot decode the pixels: {exc}") from None
        finally:
            hdul.close()
    for warning in caught:
        text = str(warning.message)
        # A plain file whose pixels are all there (checked above) only lacks FITS padding.
        if "truncated" in text.lower() and record.data_offset is None:
            raise FrameReadError(f"truncated: {text}")
        logger.debug("%s: astropy warned: %s", path, text)
    saturation = adc_maximum(scale_factor)
    if pixels is None:
        stats = reader.check_stored_uint16(record, saturation)
    else:
        if pixels.shape != record.shape:
            raise FrameReadError(f"truncated: pixel array {pixels.shape} is not {record.shape}")
        stats = array_stats(pixels, saturation)
    _record_stats(stats, record, saturation)


def _read_date(record: FrameRecord, headers: Sequence[fits.Header], keys: Sequence[str]) -> None:
    """The frame's observation date from the first of ``keys`` present; a value that is not a
    date, or cards that disagree, leave it unknown with the problem recorded (dates are
    optional: the frame is not rejected for one)."""
    found = _first_present(headers, keys) if keys else None
    if found is None:
        return
    key, values = found
    try:
        dates = {parse_date(value) for value in values}
    except ValueError as exc:
        record.date_problem = f"date keyword {key} {exc}"
        return
    if len(dates) > 1:
        record.date_problem = f"{len(values)} {key} cards disagree ({', '.join(map(repr, values))})"
        return
    record.date_obs, record.date_key = dates.pop(), key


def plain_uint16(record: FrameRecord) -> bool:
    """Whether the frame is stored plainly as int16 + BZERO 32768 (unsigned 16-bit)."""
    return record.data_offset is not None and record.bitpix == 16 and record.bzero == 32768.0 and record.bscale == 1.0


def read_uint16_rows(record: FrameRecord, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``start:stop`` of a plain unsigned 16-bit frame as native ``uint16``, without floats.

    One positioned read straight into ``out`` (no file kept open), then the byte order and
    BZERO = 32768 (a flip of the sign bit) undone in place.

    Parameters
    ----------
    record
        A frame for which the stored layout is int16 + BZERO 32768 at ``data_offset``.
    start, stop
        Row range.
    out
        ``(stop - start, columns)`` C-contiguous uint16 array to fill (new if ``None``).

    Returns
    -------
    numpy.ndarray
        ``out``.

    Raises
    ------
    FrameReadError
        When the file cannot be read or is shorter than at inspection.
    """
    assert record.shape is not None
    if out is None:
        out = np.empty((stop - start, record.shape[1]), dtype=np.uint16)
    read_stored_rows(record, start, stop, out)
    if sys.byteorder == "little":
        out.byteswap(inplace=True)
    np.bitwise_xor(out, np.uint16(0x8000), out=out)
    return out


def read_stored_rows(record: FrameRecord, start: int, stop: int, out: np.ndarray) -> np.ndarray:
    """Rows ``start:stop`` of a plain unsigned 16-bit frame as stored: big-endian int16 bits.

    The compiled combine undoes the byte order and BZERO itself, in the pass that uses the
    values (:func:`bias_pipeline.combine_kernels.combine_block_compiled`); this is one
    positioned read and nothing else.

    Parameters
    ----------
    record
        A frame for which :func:`plain_uint16` holds.
    start, stop
        Row range.
    out
        ``(stop - start, columns)`` C-contiguous uint16 array to fill.

    Returns
    -------
    numpy.ndarray
        ``out``.

    Raises
    ------
    FrameReadError
        When the file cannot be read or is shorter than at inspection.
    """
    assert record.shape is not None and record.data_offset is not None
    try:
        with open(record.path, "rb", buffering=0) as handle:
            got = os.preadv(
                handle.fileno(), [memoryview(out).cast("B")], record.data_offset + 2 * start * record.shape[1]
            )
    except OSError as exc:
        raise FrameReadError(f"{record.path}: cannot read: {exc.strerror or exc}") from None
    if got != out.nbytes:
        raise FrameReadError(f"{record.path}: truncated since it was scanned")
    return out


def read_row_sample(record: FrameRecord, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """The given rows of a frame, float32 physical values, reading only those rows where the
    file allows (compressed files are decoded whole once).

    Parameters
    ----------
    record
        An inspected frame.
    rows
        Row indices.

    Returns
    -------
    numpy.ndarray
        ``(len(rows), columns)`` float32.

    Raises
    ------
    FrameReadError
        When the file can no longer be read as it was at inspection.
    """
    rows = np.asarray(rows, dtype=np.intp)
    if record.data_offset is None:
        return read_frame(record)[rows]
    if plain_uint16(record):
        assert record.shape is not None
        out = np.empty((rows.size, record.shape[1]), dtype=np.uint16)
        for index, row in enumerate(rows):
            read_uint16_rows(record, int(row), int(row) + 1, out[index : index + 1])
        return out.astype(np.float32)
    return np.concatenate([read_rows(record, int(row), int(row) + 1) for row in rows])


#: Frames of fewer pixels than this are too small to be judged by their noise: a few quantised
#: values can all coincide by chance, and a noise estimated from them means little. They are
#: not checked for one constant value (a stuck readout), for copies of another frame, or
#: against their group's master (outliers, level).
SMALL_FRAME_PIXELS = 16


def is_tiny(record: FrameRecord) -> bool:
    """Whether a frame has too few pixels for its noise to tell it from a copy or a stuck readout."""
    return record.shape is not None and record.shape[0] * record.shape[1] < SMALL_FRAME_PIXELS


def _record_stats(stats: PixelStats, record: FrameRecord, saturation: float) -> None:
    """Set the record's pixel fields from the frame's statistics (:mod:`bias_pipeline.frame_checks`).

    Raises
    ------
    FrameReadError
        When pixels are NaN or infinite.
    """
    if stats.nonfinite:
        raise FrameReadError(f"{stats.nonfinite} pixels are NaN or infinite")
    record.multiple_of_16 = stats.multiple_of_16
    record.integer_valued = stats.integer_valued
    record.max_value = stats.maximum
    record.min_value = stats.minimum
    record.negative_count = stats.negatives if stats.minimum < 0 else 0
    record.constant = stats.minimum == stats.maximum and not is_tiny(record)
    record.zero_fraction = float(stats.zeros) / stats.size
    # Which of the two applies is decided with the data set's bit depth (step 1).
    if stats.maximum >= saturation:
        record.saturated_fraction = float(stats.saturated) / stats.size
    elif stats.maximum == TWELVE_BIT_MAX:
        record.saturated_fraction_12 = float(stats.twelve_bit_max) / stats.size


def read_rows(record: FrameRecord, start: int, stop: int) -> np.ndarray:
    """Read rows ``start:stop`` of a frame as float32 physical values.

    Plain files are read with one positioned read of just those rows; compressed files are
    decoded whole by astropy and sliced.

    Parameters
    ----------
    record
        A frame that passed :func:`inspect_frame`.
    start, stop
        Row range (0-based, ``stop`` exclusive).

    Returns
    -------
    numpy.ndarray
        ``(stop - start, columns)`` float32 array.

    Raises
    ------
    FrameReadError
        When the file can no longer be read as it was at inspection.
    """
    if record.shape is None:
        raise FrameReadError(f"{record.path}: frame was not inspected")
    columns = record.shape[1]
    if record.data_offset is None:
        return read_frame(record)[start:stop]
    if plain_uint16(record):
        return read_uint16_rows(record, start, stop).astype(np.float32)
    dtype = np.dtype(_BITPIX_DTYPES[record.bitpix])
    count = (stop - start) * columns
    try:
        with open(record.path, "rb") as handle:
            handle.seek(record.data_offset + start * columns * dtype.itemsize)
            raw = np.fromfile(handle, dtype=dtype, count=count)
    except OSError as exc:
        raise FrameReadError(f"{record.path}: cannot read: {exc.strerror or exc}") from None
    if raw.size != count:
        raise FrameReadError(f"{record.path}: truncated since it was scanned")
    raw = raw.reshape(stop - start, columns)
    if record.bzero == 0.0 and record.bscale == 1.0:
        return raw.astype(np.float32)
    return (raw.astype(np.float64) * record.bscale + record.bzero).astype(np.float32)


def read_frame(record_or_path: FrameRecord | str | Path) -> np.ndarray:
    """Read a whole frame as float32 physical values (after BZERO/BSCALE).

    Parameters
    ----------
    record_or_path
        A :class:`FrameRecord` or the path of a FITS file (its first image HDU is read).

    Returns
    -------
    numpy.ndarray
        The 2-D image, float32.

    Raises
    ------
    FrameReadError
        When the file cannot be read or holds no 2-D image.
    """
    if isinstance(record_or_path, FrameRecord):
        path, index = record_or_path.path, record_or_path.hdu_index
    else:
        path, index = Path(record_or_path), None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdul = _open_fits(path)
        try:
            if index is None:
                index = _find_image(hdul)
            data = hdul[index].data
            if data is None or np.ndim(data) != 2:
                raise FrameReadError(f"{path}: HDU {index} holds no 2-D image")
            return np.asarray(data, dtype=np.float32)
        except FrameReadError:
            raise
        except Exception as exc:
            raise FrameReadError(f"{path}: cannot decode the pixels: {exc}") from None
        finally:
            hdul.close()

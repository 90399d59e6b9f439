"""Writing and naming the pipeline's FITS products.

Every product is float32 in 16-bit ADU, written atomically (a temporary name in the same
folder, then :func:`os.replace`) so an interrupted run never leaves a half-written file under
a product's final name, and carries cards saying what it is.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import errno
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
from astropy.io import fits

from ._version import __version__
from .dates import DATE_BEGIN_KEY, DATE_END_KEY, format_date
from .errors import InputDataError, OutputError, fits_problem

logger = logging.getLogger(__name__)

BUNIT = "adu"  # 16-bit ADU: 12-bit values times the scale factor


def _file_mode() -> int:
    # mkstemp makes 0600 files; products should get the permissions any new file would.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def temperature_label(temperature: float, decimals: int = 1) -> str:
    """Format a temperature for product names: ``-5.0`` for -5.0 deg C.

    >>> temperature_label(-4.96)
    '-5.0'
    >>> temperature_label(-0.01)
    '0.0'
    """
    text = f"{temperature:.{decimals}f}"
    # "-0.0" is a surprise in a file name; keep the sign only for values that show it.
    if float(text) == 0.0:
        text = text.lstrip("-")
    return text


def unique_labels(temperatures: Iterable[float]) -> list[str]:
    """Labels with one decimal, with more decimals only where two would collide.

    >>> unique_labels([4.949, 5.0])
    ['4.9', '5.0']
    >>> unique_labels([4.96, 5.04])
    ['4.96', '5.04']
    """
    temps = list(temperatures)
    decimals = [1] * len(temps)
    for _ in range(6):
        labels = [temperature_label(t, d) for t, d in zip(temps, decimals, strict=True)]
        clashes = {lab for lab in labels if labels.count(lab) > 1}
        if not clashes:
            return labels
        decimals = [d + 1 if lab in clashes else d for lab, d in zip(labels, decimals, strict=True)]
    return [f"{lab}_{i}" for i, lab in enumerate(labels)]


TEMPORARY_SUFFIX = ".bias_pipeline.tmp"  # names no user file has: a killed run's leftovers are safe to remove
# The run's provenance cards; a context variable, so runs in different threads keep their own.
_RUN_CARDS: contextvars.ContextVar[Mapping[str, tuple[object, str]] | None] = contextvars.ContextVar(
    "bias_pipeline_run_cards", default=None
)


@contextlib.contextmanager
def run_cards(cards: Mapping[str, tuple[object, str]]) -> Iterator[None]:
    """Within the block, every :func:`product_header` also carries ``cards`` (the run's
    provenance: input count and digest, start time)."""
    token = _RUN_CARDS.set({**(_RUN_CARDS.get() or {}), **cards})
    try:
        yield
    finally:
        _RUN_CARDS.reset(token)


def product_header(
    kind: str,
    description: str,
    *,
    bunit: str = BUNIT,
    scale_factor: float | None = None,
    cards: Mapping[str, object] | None = None,
) -> fits.Header:
    """Header cards common to every product.

    Parameters
    ----------
    kind
        Short product type, stored as ``PRODTYPE`` (``MASTER_BIAS``, ``BIAS_A``, ...).
    description
        One line saying what the image is, stored as ``CONTENT``.
    bunit
        Units of the pixel values.
    scale_factor
        The 12-bit to 16-bit factor the values are in (``SCALEFAC``).
    cards
        Further keyword/value pairs; a value may be a ``(value, comment)`` tuple. Keywords
        longer than 8 characters become HIERARCH cards.

    Returns
    -------
    astropy.io.fits.Header
    """
    header = fits.Header()
    add_card(header, "PRODTYPE", kind, "bias_pipeline product type")
    add_card(header, "CONTENT", description[:68], "what the pixel values are")
    add_card(header, "BUNIT", bunit, "16-bit ADU (12-bit value x SCALEFAC)" if bunit == BUNIT else "")
    if scale_factor is not None:
        add_card(header, "SCALEFAC", float(scale_factor), "12-bit to 16-bit ADU factor")
    for key, (value, comment) in (_RUN_CARDS.get() or {}).items():
        add_card(header, key, value, comment)
    add_card(header, "SOFTWARE", "bias_pipeline", "software that made this file")
    add_card(header, "BPVERS", __version__, "bias_pipeline version")
    add_card(
        header,
        "DATE",
        _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "UTC date the file was written",
    )
    for key, value in (cards or {}).items():
        comment = ""
        if isinstance(value, tuple):
            value, comment = value
        add_card(header, key, value, comment)
    return header


def date_cards(
    date_range: tuple[_dt.datetime, _dt.datetime] | None, what: str = "the frames behind it"
) -> dict[str, tuple[str, str]]:
    """``DATE-BEG`` and ``DATE-END`` cards (the FITS standard's first and last observation) of a
    product, or none when no date is known.

    Parameters
    ----------
    date_range
        ``(first, last)`` observation date (UTC), or ``None``.
    what
        What the dates are of, for the cards' comments.

    Returns
    -------
    dict
        ``{keyword: (ISO date, comment)}`` for :func:`product_header`'s ``cards``.

    Examples
    --------
    >>> from bias_pipeline.dates import parse_date
    >>> date_cards((parse_date("2026-03-01"), parse_date(61100.5)))["DATE-END"][0]
    '2026-03-01T12:00:00'
    >>> date_cards(None)
    {}
    """
    if date_range is None:
        return {}
    first, last = date_range
    return {
        DATE_BEGIN_KEY: (format_date(first), f"[UTC] first observation of {what}"),
        DATE_END_KEY: (format_date(last), f"[UTC] last observation of {what}"),
    }


def add_card(header: fits.Header, keyword: str, value: object, comment: str = "") -> None:
    """Set a card, as HIERARCH when the keyword is longer than 8 characters, shortening the
    comment so the card fits in 80 characters (astropy would warn and cut it). A number that is
    not finite (the noise of a one-frame master) has no FITS form: the card is left out."""
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        logger.debug("card %s left out: its value %r is not a finite number", keyword, value)
        return
    keyword = keyword if len(keyword) <= 8 else f"HIERARCH {keyword}"
    bare = len(fits.Card(keyword, value).image.rstrip())
    room = 80 - bare - 3  # " / " between value and comment
    header[keyword] = (value, comment[: max(0, room)] if room > 0 else "")


def _write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then move it to ``path``."""
    path = Path(path)
    try:
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write in {path.parent}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        advice = (
            "; free some space or choose another --output-dir, then run again"
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
            else ""
        )
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}{advice}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.debug("wrote %s", path)
    return path


def write_fits_atomic(path: str | Path, hdul: fits.HDUList) -> Path:
    """Write ``hdul`` to ``path`` through a temporary file in the same folder.

    Parameters
    ----------
    path
        Final file name; its folder must exist.
    hdul
        What to write.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputError
        When the folder is not writable or the disk is full; no file is left behind.
    """
    hdul.verify("silentfix")
    if len(hdul) == 0 or not _plain_image(hdul[0]):
        return _write_atomic(path, lambda stream: hdul.writeto(stream, output_verify="silentfix"))
    hdul.update_extend()
    return _write_atomic(path, lambda stream: _write_plain_images(stream, hdul))


#: Rows of an image converted to big-endian at a time: a few MB of buffer, not a whole copy.
_WRITE_CHUNK_BYTES = 4 << 20
_BLOCK = 2880  # FITS logical record


def _plain_image(hdu: object) -> bool:
    """Whether ``hdu`` is an image whose stored values are its array's values (no BZERO or
    BSCALE, a FITS BITPIX type), so its bytes are the array's in big-endian order."""
    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)):
        return False
    header = hdu.header
    if header.get("BZERO", 0) != 0 or header.get("BSCALE", 1) != 1:
        return False
    data = hdu.data
    return data is None or np.dtype(data.dtype).newbyteorder("=") in _FITS_DTYPES


_FITS_DTYPES = {np.dtype(t) for t in ("u1", "i2", "i4", "i8", "f4", "f8")}


def _write_plain_images(stream: BinaryIO, hdul: fits.HDUList) -> None:
    """Write HDUs as astropy would (the same bytes), without astropy's whole-array byte swaps:
    each image's header as astropy renders it, then its data converted to big-endian a few MB of
    rows at a time; tables as astropy writes them."""
    for hdu in hdul:
        if not _plain_image(hdu):  # a table (small): astropy renders it, as the extension it is
            rendered = io.BytesIO()
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(rendered, output_verify="silentfix")
            stream.write(rendered.getbuffer()[_BLOCK:])  # after the empty primary's one block
            continue
        hdu.update_header()
        stream.write(hdu.header.tostring().encode("ascii"))
        data = hdu.data
        if data is None or data.size == 0:
            continue
        big = np.dtype(data.dtype).newbyteorder(">")
        rows = data.reshape(data.shape[0], -1) if data.ndim > 1 else data.reshape(1, -1)
        step = max(1, _WRITE_CHUNK_BYTES // max(1, rows[0].nbytes))
        for start in range(0, rows.shape[0], step):
            chunk = np.ascontiguousarray(rows[start : start + step], dtype=big)
            stream.write(chunk.view(np.uint8))
        stream.write(b"\0" * (-data.nbytes % _BLOCK))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`write_fits_atomic`).

    A file name that is not UTF-8 (Python holds its bytes as surrogates) is written back as
    its original bytes, so a manifest row still names the file on disk.
    """
    data = text.encode("utf-8", errors="surrogateescape")
    return _write_atomic(path, lambda stream: stream.write(data))


def write_png_atomic(path: str | Path, figure: object) -> Path:
    """Save a matplotlib figure as PNG atomically (see :func:`write_fits_atomic`)."""
    # zlib level 1: the PNGs come out a little larger and are written several times faster.
    return _write_atomic(
        path,
        lambda stream: figure.savefig(stream, format="png", pil_kwargs={"compress_level": 1}),  # type: ignore[attr-defined]
    )


def write_image(
    path: str | Path,
    data: np.ndarray,
    header: fits.Header,
    extensions: Iterable[fits.ImageHDU | fits.BinTableHDU] = (),
) -> Path:
    """Write a float32 image (plus optional extensions) atomically.

    Parameters
    ----------
    path
        Final file name.
    data
        The image; written as float32.
    header
        Cards for the primary HDU (see :func:`product_header`).
    extensions
        Further HDUs.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    primary = fits.PrimaryHDU(np.asarray(data, dtype=np.float32), header=header)
    return write_fits_atomic(path, fits.HDUList([primary, *extensions]))


def read_image(path: str | Path, what: str = "image") -> tuple[np.ndarray, fits.Header]:
    """Read the primary image of a product file as float32.

    Parameters
    ----------
    path
        A FITS file written by this package (or any FITS with a 2-D primary image).
    what
        What the file should be, for the message (``"a-map"``).

    Returns
    -------
    data, header

    Raises
    ------
    InputDataError
        When the file is missing, unreadable or holds no 2-D primary image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{what} {path} does not exist; give the path of a FITS file")
    try:
        with fits.open(path, memmap=False) as hdul:
            data = hdul[0].data
            header = hdul[0].header.copy()
            if data is None and len(hdul) > 1:
                data, header = hdul[1].data, hdul[1].header.copy()
                for card in hdul[0].header.cards:  # what the file is (PRODTYPE) is said in the primary
                    if card.keyword not in header and card.keyword not in ("SIMPLE", "EXTEND", "COMMENT", "HISTORY"):
                        header.append(card)
            if data is None or np.ndim(data) != 2:
                raise InputDataError(f"{what} {path} holds no 2-D image")
            return np.asarray(data, dtype=np.float32), header
    except InputDataError:
        raise
    except Exception as exc:
        raise InputDataError(f"{what} {path} cannot be read as FITS: {fits_problem(exc)}") from None


def human_size(size: object) -> str:
    """A file size for people: ``12081`` -> ``'11.8 KiB'``; ``'?'`` when unknown.

    >>> human_size(512), human_size(12081), human_size(1346680), human_size(None)
    ('512 B', '11.8 KiB', '1.3 MiB', '?')
    """
    if not isinstance(size, int):
        return "?"
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def file_size(path: str | Path) -> int | None:
    """Size of a file in bytes; ``None`` when it cannot be read (gone, a dangling link)."""
    try:
        return Path(path).stat().st_size
    except OSError:
        return None

"""The staged master writer: a combined group written as ``master_bias_XX.XC.fits`` with its
``ERR``, ``NOISE`` and ``NUSED`` extensions (and, for groups of 4 or more frames, the
two-level statistics ``LEVELB`` and ``LEVELW`` of :mod:`bias_pipeline.telegraph`) under a
hidden staging name, and the staged set published (renamed to the final names, all or none) or
discarded.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from astropy.io import fits

from .combine import Combined
from .config import PipelineConfig
from .dates import date_span
from .errors import InputDataError, OutputError, fits_problem
from .grouping import FrameGroup
from .products import TEMPORARY_SUFFIX, date_cards, product_header, read_image, write_image
from .registry import MASTER, labelled_name
from .telegraph import BETWEEN_EXTENSION, WITHIN_EXTENSION

logger = logging.getLogger(__name__)

MASTER_PATTERN = labelled_name(MASTER, "{label}")  # older callers format it
STAGED_SUFFIX = ".staged" + TEMPORARY_SUFFIX  # step 0 removes those a killed run left


class MasterImage(Protocol):
    """What step 5 reads of a master: :class:`MasterFrame` is one, and so is a master given as
    an array to the legacy :func:`~bias_pipeline.legacy.evaluate_model`."""

    @property
    def label(self) -> str: ...
    @property
    def temperature(self) -> float: ...
    @property
    def n_frames(self) -> int: ...

    def load(self) -> np.ndarray:
        """The master's pixels, float32 16-bit ADU."""
        ...


class Master(MasterImage, Protocol):
    """What step 3 needs of a master bias besides its image (:class:`MasterFrame` is one)."""

    @property
    def method(self) -> str: ...

    def load_extension(self, name: str) -> np.ndarray | None: ...


@dataclass(frozen=True)
class MasterFrame:
    """A master bias written to disk, with what downstream steps need to know about it.

    The pixels are read back on demand with :meth:`load`, so steps 3 and 5 hold one master in
    memory at a time however many groups there are. ``date_range`` is the first and last
    observation date (UTC) of its frames (``DATE-BEG``, ``DATE-END``), ``None`` when none had one.
    """

    label: str
    temperature: float
    n_frames: int
    path: Path
    temperature_span: tuple[float, float] = (math.nan, math.nan)
    method: str = "median"
    noise_median: float = math.nan
    date_range: tuple[_dt.datetime, _dt.datetime] | None = None
    #: The rms row-noise amplitude removed from its frames before combining [ADU]; 0 when none
    #: was (header ``ROWNOISE``). Its ``NOISE`` map is then the pixels' own noise, and each of its
    #: rows still carries the mean of its frames' row offsets, ``row_noise / sqrt(n)``.
    row_noise: float = 0.0

    def load(self) -> np.ndarray:
        """The master's pixels, float32 16-bit ADU."""
        data, _ = read_image(self.path, "master bias")
        return data

    def load_extension(self, name: str) -> np.ndarray | None:
        """An extension of the master file (``ERR``, ``NOISE``, ``NUSED``, ``LEVELB``, ``LEVELW``), or ``None``.

        ``ERR`` and ``NOISE`` come as float32, ``NUSED`` (frames kept per pixel) as the
        integers it is stored in (int16, :func:`counts_array`)."""
        with fits.open(self.path, memmap=False) as hdul:
            if name not in [h.name for h in hdul]:
                return None
            data = np.asarray(hdul[name].data)
            if name == "NUSED" and data.dtype.kind in "iu":
                return data.astype(data.dtype.newbyteorder("="), copy=False)
            return np.asarray(data, dtype=np.float32)

    def open_rows(self) -> MasterRows:
        """A reader of row blocks of this master's images (:class:`MasterRows`)."""
        return MasterRows(self.path)


class MasterRows:
    """Row blocks of a master file's images read with positioned reads, only the rows asked
    for converted to native types: step 3 reads every master once, a block of rows at a time.

    The file's layout (where each HDU's data starts, its type and shape) is read once, on
    construction. Reads are thread-safe (``os.pread``), so worker threads can share one reader.

    Parameters
    ----------
    path
        A master file (:func:`write_master`), or any FITS file of unscaled 2-D images.

    Raises
    ------
    InputDataError
        When the file cannot be read as FITS.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._layout: dict[str, tuple[int, np.dtype, tuple[int, int]]] = {}
        try:
            with fits.open(self.path, memmap=False, lazy_load_hdus=False) as hdul:
                for index, hdu in enumerate(hdul):
                    header = hdu.header
                    if not hdu.is_image or header.get("NAXIS") != 2:
                        continue
                    if header.get("BZERO", 0) != 0 or header.get("BSCALE", 1) != 1:
                        continue  # not written by this package: load() reads those
                    dtype = np.dtype(_BITPIX[int(header["BITPIX"])])
                    offset = int(hdul.fileinfo(index)["datLoc"])
                    self._layout[hdu.name or "PRIMARY"] = (offset, dtype, (header["NAXIS2"], header["NAXIS1"]))
        except Exception as exc:
            raise InputDataError(f"master {self.path} cannot be read as FITS: {fits_problem(exc)}") from None
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> MasterRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> list[str]:
        """The images this reader can read by rows (``PRIMARY``, ``ERR``, ``NOISE``, ``NUSED``)."""
        return list(self._layout)

    def shape(self, name: str = "PRIMARY") -> tuple[int, int]:
        """``(rows, columns)`` of an image."""
        return self._layout[name][2]

    def read(self, name: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray | None:
        """Rows ``start:stop`` of image ``name`` in native byte order (float32 for the master
        and its noise maps, the stored integers for ``NUSED``), or ``None`` without that image.

        Parameters
        ----------
        name
            ``PRIMARY`` (the master), ``ERR``, ``NOISE`` or ``NUSED``.
        start, stop
            Row range.
        out
            A C-contiguous ``(stop - start, columns)`` array of the stored type to fill.

        Raises
        ------
        InputDataError
            When the file is shorter than its header says.
        """
        if name not in self._layout:
            return None
        offset, dtype, (_, columns) = self._layout[name]
        if out is None:
            out = np.empty((stop - start, columns), dtype=dtype.newbyteorder("="))
        buffer = out.view(np.uint8).reshape(-1)
        position = offset + start * columns * dtype.itemsize
        if hasattr(os, "preadv"):
            got = os.preadv(self._fd, [buffer], position)
        else:  # no positioned reads (Windows): a handle of its own per read, still thread-safe
            with open(self.path, "rb", buffering=0) as handle:
                handle.seek(position)
                got = handle.readinto(buffer)
        if got != buffer.size:
            raise InputDataError(f"master {self.path} is truncated: rows {start}..{stop} of {name} are missing")
        if dtype.itemsize > 1 and sys.byteorder == "little":
            out.byteswap(inplace=True)  # the stored order is big-endian
        return out


_BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def staged_name(final: Path) -> Path:
    """The hidden name a master has until every group is combined."""
    return final.with_name(f".{final.name}{STAGED_SUFFIX}")


def write_master(
    group: FrameGroup, combined: Combined, masters_dir: Path, config: PipelineConfig, input_bits: int
) -> MasterFrame:
    """Write ``group``'s master with its extensions under its staging name (:func:`staged_name`).

    Parameters
    ----------
    group
        The group as finally combined (the frames used).
    combined
        Its master and maps.
    masters_dir
        Folder of the masters.
    config
        The run's options (``combine_method``, ``scale_factor``).
    input_bits
        The data set's bit depth, for the header.

    Returns
    -------
    MasterFrame
        The master under its staging name.
    """
    low, high = group.temperature_span
    if len(group.records) < 2:
        noise_median = math.nan
    elif math.isnan(combined.typical_noise):  # a Combined from elsewhere: measure it here
        noise_median = float(np.nanmedian(combined.noise))
    else:
        noise_median = combined.typical_noise  # measured by the combiner (the same median)
    dates = date_span(r.date_obs for r in group.records)
    header = product_header(
        "MASTER_BIAS",
        f"master bias, {config.combine_method} of {len(group.records)} frames",
        scale_factor=config.scale_factor,
        cards={
            "TEMPERATURE": (group.temperature, "[deg C] mean temperature of the frames"),
            "TEMPMIN": (low, "[deg C] lowest frame temperature"),
            "TEMPMAX": (high, "[deg C] highest frame temperature"),
            "NCOMBINE": (len(group.records), "number of frames combined"),
            "COMBMETH": (config.combine_method, "how the frames were combined"),
            "INBITS": (input_bits, "bit depth of the input values"),
            "NOISEMED": (noise_median, "[adu] median temporal noise of one frame"),
            "ROWNOISE": (round(combined.row_noise, 3), "[adu] rms row noise removed from the frames"),
            **date_cards(dates, "the frames combined"),
        },
    )
    extensions = [
        _extension(combined.error, "ERR", "standard error of the master [adu]"),
        _extension(combined.noise, "NOISE", "temporal noise of one frame (read noise) [adu]"),
        fits.ImageHDU(counts_array(combined.n_used, len(group.records)), name="NUSED"),
    ]
    if combined.levels is not None:
        # What step 3 pools into the TELEGRAPH flag (bias_pipeline.telegraph): dimensionless.
        for plane, name, what in (
            (0, BETWEEN_EXTENSION, "two-level test: between-level sum of squares / sigma^2"),
            (1, WITHIN_EXTENSION, "two-level test: within-level sum of squares / sigma^2"),
        ):
            extensions.append(_extension(combined.levels[plane], name, what, unit=""))
    final = masters_dir / labelled_name(MASTER, group.label)
    path = write_image(staged_name(final), combined.master, header, extensions)
    logger.info(
        "master %s: %d frames at %.3f deg C, noise %.2f ADU",
        final.name,
        len(group.records),
        group.temperature,
        noise_median,
    )
    return MasterFrame(
        group.label,
        group.temperature,
        len(group.records),
        path,
        (low, high),
        method=config.combine_method,
        noise_median=noise_median,
        date_range=dates,
        row_noise=combined.row_noise,
    )


def counts_array(n_used: np.ndarray, most: int) -> np.ndarray:
    """``NUSED`` as int16 (FITS BITPIX 16, no BZERO), or int32 for groups of more than 32767
    frames; a count never exceeds the frames combined.

    Not uint8, although most groups would fit: numpy computes ``np.sqrt`` (and other float
    functions) of uint8 in float16, so a reader's ``noise / np.sqrt(nused)`` would lose four
    decimal digits, and int16 is what the files held before (no change for their readers).
    uint8 would save 4 MB of a 2048 x 2048 master's 56 MB.

    Parameters
    ----------
    n_used
        Frames kept per pixel, any integer type.
    most
        The largest possible count (the group's frames).

    Returns
    -------
    numpy.ndarray
        The counts in that type (``n_used`` itself when it has it already).
    """
    dtype = np.int16 if most <= np.iinfo(np.int16).max else np.int32
    return np.asarray(n_used).astype(dtype, copy=False)


def _extension(data: np.ndarray, name: str, what: str, unit: str = "adu") -> fits.ImageHDU:
    hdu = fits.ImageHDU(np.asarray(data, dtype=np.float32), name=name)
    hdu.header["BUNIT"] = unit
    hdu.header["CONTENT"] = what[:68]
    return hdu


def publish_masters(masters: Sequence[MasterFrame]) -> list[MasterFrame]:
    """Give staged masters their final names (all of them, or none and the staged files gone).

    Returns
    -------
    list of MasterFrame
        The masters under their final names.

    Raises
    ------
    OutputError
        When a final name cannot be taken (a folder in the way, a full disk).
    """
    done: list[MasterFrame] = []
    try:
        for master in masters:
            final = master.path.with_name(master.path.name.removeprefix(".").removesuffix(STAGED_SUFFIX))
            if final != master.path:
                os.replace(master.path, final)
            done.append(dataclasses.replace(master, path=final))
    except OSError as exc:
        # All or none: the ones already renamed go too, so no partial set is left.
        for master in done:
            master.path.unlink(missing_ok=True)
        discard_masters(masters)
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}; remove what is in the way") from None
    return done


def discard_masters(masters: Sequence[MasterFrame]) -> None:
    """Remove masters still under their staging names (a run that stops before publishing)."""
    for master in masters:
        if master.path.name.endswith(STAGED_SUFFIX):
            master.path.unlink(missing_ok=True)


def discard_staged_files(masters_dir: Path) -> None:
    """Remove every staged master in ``masters_dir``, listed or not: a signal can land after a
    staged file got its name and before its master was listed (step 0 cleared older runs'
    staged files, so all of these are this run's)."""
    for leftover in masters_dir.glob(f".master_bias_*{STAGED_SUFFIX}"):
        leftover.unlink(missing_ok=True)

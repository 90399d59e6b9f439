"""Step 1: find every file under the raw folder, read each FITS frame's header and pixels,
keep the short-exposure bias frames and record why every other file is not used.

:func:`classify_frames` is the pure part (records in, records out); :func:`scan_frames` walks
the folder and inspects files; :func:`write_manifest` writes ``frames_manifest.csv``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import queue
import stat
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from ..config import KELVIN_OFFSET, PipelineConfig
from ..dates import format_date
from ..errors import FrameReadError, InputDataError
from ..frames import (
    STATUS_ACCEPTED,
    FrameReader,
    FrameRecord,
    inspect_frame,
    is_fits_name,
    is_tiny,
    normal_frame_type,
)
from ..lazy import forward
from ..products import write_text_atomic
from ..provenance import file_sha256
from ..registry import MANIFEST_NAME
from ..units import TWELVE_BIT_MAX
from ..workers import default_threads, worker_pool
from .utils_scaling import decide_input_bits

logger = logging.getLogger(__name__)

#: The legacy call forms, defined in :mod:`bias_pipeline.legacy` and found here by name (PEP 562:
#: legacy.py imports this module, so importing it here at the top would be an import cycle).
LEGACY_NAMES = ("load_bias_files",)
__getattr__ = forward(__name__, LEGACY_NAMES, "bias_pipeline.legacy")
__all__ = [
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "MAX_SATURATED_FRACTION",
    "check_raw_folder",
    "classify_frames",
    "find_files",
    "manifest_text",
    "not_regular",
    "scan_frames",
    "warn_unreadable_dates",
    "write_manifest",
    *LEGACY_NAMES,
]

MAX_SATURATED_FRACTION = 0.10  # more saturated pixels than this and a frame is no bias frame
MANIFEST_COLUMNS = (
    "path",
    "status",
    "reason",
    "temperature",
    "exposure",
    "group",
    "temperature_key",
    "exposure_key",
    "frame_type",
    "set_point",
    "date_obs",
    "date_key",
    "date_problem",
    "offset_adu",
    "offset_sigma",
    "row_noise_adu",
    "temperature_est",
    "temperature_est_err",
    "flag",
    "sha256",
)


def find_files(base_path: Path, exclude: Sequence[Path] = ()) -> tuple[list[Path], list[FrameRecord]]:
    """List every file under ``base_path``, following links but never looping.

    Parameters
    ----------
    base_path
        The raw folder.
    exclude
        Folders not to descend into (the run's own output folder).

    Returns
    -------
    files, problems
        Files in sorted order, each real file once; and records (status ``rejected`` or
        ``ignored``) for folders that could not be listed and files reached a second time
        through a link.
    """
    excluded = {Path(os.path.realpath(p)) for p in exclude}
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: dict[str, list[Path]] = {}
    files: list[Path] = []
    problems: list[FrameRecord] = []

    def on_error(error: OSError) -> None:
        record = FrameRecord(path=Path(error.filename or base_path))
        record.reject(f"cannot list folder: {error.strerror or error}")
        problems.append(record)

    for root, dirs, names in os.walk(base_path, onerror=on_error, followlinks=True):
        root_path = Path(root)
        try:
            stat = root_path.stat()
        except OSError:
            dirs[:] = []
            continue
        key = (stat.st_dev, stat.st_ino)
        if key in seen_dirs:  # a link back up the tree, or a second link to a folder
            dirs[:] = []
            continue
        seen_dirs.add(key)
        kept = []
        for name in sorted(dirs):
            if Path(os.path.realpath(root_path / name)) in excluded:
                logger.info("not scanning %s: it is the run's output folder", root_path / name)
            else:
                kept.append(name)
        dirs[:] = kept
        for name in names:
            path = root_path / name
            seen_files.setdefault(os.path.realpath(path), []).append(path)
    for paths in seen_files.values():
        # The file itself, not a link to it, stands for it; links are listed as ignored.
        paths.sort(key=lambda p: (os.path.islink(p), len(p.parts), str(p)))
        files.append(paths[0])
        for duplicate in paths[1:]:
            record = FrameRecord(path=duplicate)
            record.ignore(f"same file as {paths[0]} (reached again through a link)")
            problems.append(record)
    return sorted(files), problems


def classify_frames(records: list[FrameRecord], config: PipelineConfig) -> int:
    """Apply the option- and data-set-dependent checks to inspected records (in place).

    Temperatures given in kelvin (``temperature_unit``) are converted to deg C first. Checks,
    in order: the frame type (when the header states one), negative pixels (values of an
    unsigned camera read as signed), exposure (negative, or longer than ``max_exposure``),
    temperature within ``temperature_limits``, saturated-pixel fraction (more than
    :data:`MAX_SATURATED_FRACTION` at 65520 ADU or above), zero-pixel fraction, the data set's
    shape (the most common shape among the remaining frames; ties go to the larger frame), the
    bit depth, and one constant value (a stuck readout).

    Parameters
    ----------
    records
        Records from :func:`~bias_pipeline.frames.inspect_frame` (others are left alone).
    config
        The run's options.

    Returns
    -------
    int
        The input bit depth decided for the data set (12 or 16).
    """
    low, high = config.temperature_limits
    for record in records:
        if record.status != STATUS_ACCEPTED:
            continue
        assert record.exposure is not None and record.temperature is not None
        if config.temperature_unit == "K":
            record.temperature -= KELVIN_OFFSET
            if record.set_point is not None:
                record.set_point -= KELVIN_OFFSET
        if (
            config.frame_type_keys
            and record.frame_type
            and normal_frame_type(record.frame_type) not in config.bias_types
        ):
            record.reject(
                f"frame type {record.frame_type!r} ({record.frame_type_key}) is not a bias frame "
                f"(--bias-types {','.join(config.bias_types)}; --frame-type-keys none skips this check)"
            )
        elif record.negative_count:
            record.reject(_negative_reason(record))
        elif record.exposure < 0:
            record.reject(f"negative exposure {record.exposure:g} s ({record.exposure_key})")
        elif record.exposure > config.max_exposure:
            record.reject(
                f"exposure {record.exposure:g} s is longer than a bias frame (--max-exposure {config.max_exposure:g} s)"
            )
        elif not low <= record.temperature <= high:
            record.reject(
                f"temperature {record.temperature:g} deg C ({record.temperature_key}) is outside "
                f"the plausible range {low:g}..{high:g} (--temperature-limits)" + _kelvin_hint(record, config)
            )
        elif record.saturated_fraction > MAX_SATURATED_FRACTION:
            record.reject(
                f"{100 * record.saturated_fraction:.1f} % of pixels are saturated (at the ADC maximum); "
                "a bias frame has hardly any (a frame taken with light, or a readout fault)"
            )
        elif record.zero_fraction > config.max_zero_fraction:
            record.reject(
                f"{100 * record.zero_fraction:.1f} % of pixels are zero (readout dropout; "
                f"limit {100 * config.max_zero_fraction:g} %, --max-zero-fraction)"
            )
    candidates = [r for r in records if r.status == STATUS_ACCEPTED]
    if candidates:
        counts = Counter(r.shape for r in candidates if r.shape is not None)  # every inspected frame has one
        shape = max(counts, key=lambda s: (counts[s], s[0] * s[1], s))
        for record in candidates:
            if record.shape != shape:
                assert record.shape is not None
                record.reject(
                    f"shape {record.shape[0]}x{record.shape[1]} differs from the data set's "
                    f"{shape[0]}x{shape[1]} ({counts[shape]} frames)"
                )
    candidates = [r for r in records if r.status == STATUS_ACCEPTED]
    bits = decide_input_bits(candidates, config.input_bits)
    for record in candidates:
        if bits == 12 and record.saturated_fraction_12 > MAX_SATURATED_FRACTION:
            record.reject(
                f"{100 * record.saturated_fraction_12:.1f} % of pixels are saturated (4095, the 12-bit "
                "maximum); a bias frame has hardly any (a frame taken with light, or a readout fault)"
            )
        elif bits == 12 and record.max_value > TWELVE_BIT_MAX:
            record.reject(
                f"values up to {record.max_value:g} do not fit the 12-bit data declared by "
                f"--input-bits {config.input_bits}"
            )
        elif record.constant:  # after the saturation checks, whose reasons say more
            record.reject(f"every pixel holds {record.max_value:g}: a stuck readout, not a bias frame")
        else:
            record.passed_checks = True
    return bits


def _negative_reason(record: FrameRecord) -> str:
    share = 100.0 * record.negative_count / (record.shape[0] * record.shape[1]) if record.shape else math.nan
    text = (
        f"{record.negative_count} pixels ({share:.1f} %) are negative, down to {record.min_value:g}: this "
        "camera's values are unsigned"
    )
    if record.bitpix == 16 and record.bzero == 0.0:
        return text + (
            "; the frame is stored as signed 16-bit without BZERO = 32768, so its unsigned values read "
            "as negative: restore the BZERO card"
        )
    return text + "; a frame converted with the wrong sign convention?"


def _kelvin_hint(record: FrameRecord, config: PipelineConfig) -> str:
    """A hint when a rejected temperature is a plausible one in kelvin."""
    assert record.temperature is not None
    celsius = record.temperature - KELVIN_OFFSET
    low, high = config.temperature_limits
    if config.temperature_unit == "C" and low <= celsius <= high:
        return f"; it looks like kelvin ({record.temperature:g} K = {celsius:.2f} deg C): give --temperature-unit K"
    return ""


def not_regular(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file (``"a FIFO"``), else ``None``.

    Only regular files are opened: reading a FIFO or a device under a FITS name would wait, or
    read, for ever. A path that cannot be examined (a broken link) is left to the inspection,
    which says why.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def check_raw_folder(base_path: str | Path) -> Path:
    """The raw folder, checked to be an existing folder (the one place that says so).

    Raises
    ------
    InputDataError
        When ``base_path`` does not exist or is not a folder.
    """
    base = Path(base_path)
    if not base.is_dir():
        raise InputDataError(
            f"--basepath {base} {'is not a folder' if base.exists() else 'does not exist'}; "
            "give the folder of raw FITS frames"
        )
    return base


def scan_frames(
    base_path: str | Path,
    config: PipelineConfig | None = None,
    *,
    exclude: Sequence[Path] = (),
    checksum: bool = False,
) -> tuple[list[FrameRecord], int]:
    """Scan the raw folder: one record per file found, with status and reason.

    Files are inspected on ``config.threads`` worker threads (0: the CPUs available), each
    plain frame read once for its pixel checks and its checksum
    (:class:`~bias_pipeline.frames.FrameReader`); the records do not depend on the number of
    threads or on the kernel engine.

    Parameters
    ----------
    base_path
        The raw folder (searched recursively).
    config
        The run's options (defaults if ``None``).
    exclude
        Folders to skip (the run's own output folder).
    checksum
        Fill ``sha256`` of every frame that passes the checks (provenance).

    Returns
    -------
    records, input_bits
        All records, sorted by path, and the data set's input bit depth.

    Raises
    ------
    InputDataError
        When ``base_path`` is not a folder or holds no file at all.
    """
    config = config or PipelineConfig()
    base = check_raw_folder(base_path)
    files, records = find_files(base, exclude)
    if not files and not records:
        raise InputDataError(f"--basepath {base} holds no files; give the folder of raw FITS frames")
    threads = config.threads or default_threads()
    readers: queue.SimpleQueue[FrameReader] = queue.SimpleQueue()  # one buffer per worker, reused

    def inspect(path: Path) -> tuple[FrameRecord, str]:
        try:
            reader = readers.get_nowait()
        except queue.Empty:
            reader = FrameReader(checksum=checksum)
        try:
            return _inspect_file(path, config, reader)
        finally:
            readers.put(reader)

    # Files are inspected on worker threads: reading, hashing and the pixel checks release the
    # interpreter lock (astropy's header parsing takes turns, see frames.FrameReader). Results
    # are taken in file order, so the records are the same whatever the number of threads.
    with worker_pool(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scan")) as pool:
        futures = [pool.submit(inspect, path) for path in files]
        progress = tqdm(
            futures,
            desc="scanning",
            unit="file",
            disable=None if config.show_progress else True,
            leave=False,
        )
        checksums = {}
        for future in progress:
            record, digest = future.result()
            records.append(record)
            if checksum:
                checksums[record.path] = digest
    records.sort(key=lambda r: str(r.path))
    bits = classify_frames(records, config)
    for record in records:
        if record.passed_checks and record.path in checksums:
            record.sha256 = checksums[record.path]
            if not record.sha256:
                record.passed_checks = False
                record.reject("cannot be read again for its checksum")
    _ignore_copies(records)
    for record in records:
        if record.status == STATUS_ACCEPTED:
            logger.debug("accepted %s: %.3f deg C, %g s", record.path, record.temperature, record.exposure)
    warn_unreadable_dates(records)
    return records, bits


#: Frames with an unreadable date named one by one in the log; the rest are counted.
NAMED_DATE_PROBLEMS = 5


def warn_unreadable_dates(records: Sequence[FrameRecord], named: int = NAMED_DATE_PROBLEMS) -> list[FrameRecord]:
    """Warn about the accepted frames whose date card could not be read: each is still used,
    undated. The first ``named`` are one warning each, naming the file and the problem; the
    others one warning that counts them (the manifest's ``date_problem`` column has them all).

    Parameters
    ----------
    records
        The scan's records.
    named
        How many frames to name one by one.

    Returns
    -------
    list of FrameRecord
        The accepted frames with a date problem.
    """
    troubled = [r for r in records if r.status == STATUS_ACCEPTED and r.date_problem]
    for record in troubled[:named]:
        logger.warning("%s: the date cannot be read (%s); the frame is used, undated", record.path, record.date_problem)
    if len(troubled) > named:
        logger.warning(
            "%d more frames with an unreadable date are used, undated (%d in all; see the date_problem column of %s)",
            len(troubled) - named,
            len(troubled),
            MANIFEST_NAME,
        )
    return troubled


def _ignore_copies(records: Sequence[FrameRecord]) -> None:
    """Byte-identical files under other names are one frame: the first by name is used (whatever
    order or times the files were copied in), the others are ignored, naming it. Frames too small to be told apart by
    their noise (:data:`~bias_pipeline.frames.SMALL_FRAME_PIXELS`) can coincide by chance
    and are all kept."""
    by_digest: dict[str, list[FrameRecord]] = {}
    for record in records:
        if record.passed_checks and record.sha256 and not is_tiny(record):
            by_digest.setdefault(record.sha256, []).append(record)
    for same in by_digest.values():
        if len(same) < 2:
            continue
        original, *copies = sorted(same, key=lambda r: str(r.path))
        for copy in copies:
            copy.passed_checks = False
            copy.ignore(f"byte-identical copy of {original.path} (the same frame under another name); used once")


def _inspect_file(path: Path, config: PipelineConfig, reader: FrameReader) -> tuple[FrameRecord, str]:
    """One file's record, and its SHA-256 when the reader asks for checksums and the frame passed
    its inspection (``""`` otherwise, or when it cannot be read for it)."""
    if not is_fits_name(path):
        record = FrameRecord(path=path)
        record.ignore(f"not a FITS file name ({path.suffix or 'no extension'})")
        return record, ""
    kind = not_regular(path)
    if kind is not None:
        record = FrameRecord(path=path)
        record.ignore(f"{kind}, not a regular file: only regular files are read")
        return record, ""
    record = inspect_frame(
        path,
        config.temperature_keys,
        config.exposure_keys,
        frame_type_keys=config.frame_type_keys,
        set_point_keys=config.set_point_keys,
        date_keys=config.date_keys,
        scale_factor=config.scale_factor,
        reader=reader,
    )
    digest = reader.sha256
    if reader.checksum and not digest and record.status == STATUS_ACCEPTED:
        digest = _checksum_or_empty(path)  # a file astropy decoded (gzip, compressed...): read again
    return record, digest


def _checksum_or_empty(path: Path) -> str:
    try:
        return file_sha256(path)
    except FrameReadError:
        return ""


def manifest_text(records: Sequence[FrameRecord], base_path: Path | None = None) -> str:
    """The manifest as CSV text: one row per record, paths relative to ``base_path``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for record in records:
        path = record.path
        if base_path is not None:
            try:
                path = path.relative_to(base_path)
            except ValueError:
                pass
        writer.writerow(
            [
                str(path),
                record.status,
                record.reason,
                "" if record.temperature is None else f"{record.temperature:.4f}",
                "" if record.exposure is None else f"{record.exposure:g}",
                record.group,
                record.temperature_key,
                record.exposure_key,
                record.frame_type,
                "" if record.set_point is None else f"{record.set_point:g}",
                "" if record.date_obs is None else format_date(record.date_obs),
                record.date_key,
                record.date_problem,
                "" if record.offset is None else f"{record.offset:.4f}",
                "" if record.offset_sigma is None else f"{record.offset_sigma:.2f}",
                "" if record.row_noise is None else f"{record.row_noise:.3f}",
                "" if record.temperature_est is None else f"{record.temperature_est:.4f}",
                "" if record.temperature_est_err is None else f"{record.temperature_est_err:.4f}",
                record.flag,
                record.sha256,
            ]
        )
    return buffer.getvalue()


def write_manifest(records: Sequence[FrameRecord], output_path: str | Path, base_path: Path | None = None) -> Path:
    """Write ``frames_manifest.csv`` atomically.

    Parameters
    ----------
    records
        Every record of the scan, in their final status.
    output_path
        The CSV file to write.
    base_path
        Paths are written relative to this folder when below it.

    Returns
    -------
    pathlib.Path
    """
    return write_text_atomic(output_path, manifest_text(records, base_path))

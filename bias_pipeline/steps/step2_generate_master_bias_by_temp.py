"""Step 2: group accepted frames by temperature and combine each group into a master bias.

Grouping splits the sorted temperatures at gaps wider than ``temp_bin_width`` deg C (and
cuts any group wider than that); the group's temperature used downstream is the mean of its
frames' temperatures.
Combining reads a block of rows of every frame of a group at a time, so memory depends on the
block height (chosen from ``memory_limit_mb``), not on the number of frames.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from tqdm import tqdm

from ..combine import (
    BYTES_PER_PIXEL_MAPS,
    COMBINE_METHODS,
    Combined,
    bytes_per_frame_pixel,
    combine_block,
    combine_sorted,
    sort_frames,
    typical_noise,
)
from ..config import PipelineConfig
from ..errors import FrameReadError, InputDataError, OutputError
from ..frames import STATUS_ACCEPTED, STATUS_USED, FrameRecord, plain_uint16, read_rows, read_uint16_rows
from ..products import TEMPORARY_SUFFIX, product_header, read_image, unique_labels, write_image
from ..workers import default_threads, worker_pool

logger = logging.getLogger(__name__)

MASTER_PATTERN = "master_bias_{label}C.fits"
STAGED_SUFFIX = ".staged" + TEMPORARY_SUFFIX  # step 0 removes those a killed run left


@dataclass
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
        return float(np.mean([r.temperature for r in self.records]))

    @property
    def temperature_span(self) -> tuple[float, float]:
        """Lowest and highest frame temperature [deg C]."""
        temps = [float(r.temperature) for r in self.records]  # type: ignore[arg-type]
        return min(temps), max(temps)


@dataclass
class MasterFrame:
    """A master bias written to disk, with what downstream steps need to know about it.

    The pixels are read back on demand with :meth:`load`, so steps 3 and 5 hold one master in
    memory at a time however many groups there are.
    """

    label: str
    temperature: float
    n_frames: int
    path: Path
    temperature_span: tuple[float, float] = (math.nan, math.nan)
    method: str = "median"
    noise_median: float = math.nan

    def load(self) -> np.ndarray:
        """The master's pixels, float32 16-bit ADU."""
        data, _ = read_image(self.path, "master bias")
        return data

    def load_extension(self, name: str) -> np.ndarray | None:
        """An extension of the master file (``ERR``, ``NOISE``, ``NUSED``), or ``None``."""
        with fits.open(self.path, memmap=False) as hdul:
            if name not in [h.name for h in hdul]:
                return None
            return np.asarray(hdul[name].data, dtype=np.float32)


def _entry_temperature(entry: object) -> float:
    if isinstance(entry, FrameRecord):
        value = entry.temperature
    elif isinstance(entry, Mapping):
        value = entry.get("temperature")
    else:
        value = getattr(entry, "temperature", None)
    if value is None:
        raise InputDataError(f"frame {entry!r} has no temperature")
    return float(value)


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


def group_by_temperature(
    entries: Iterable[object], round_decimals: int = 1, *, bin_width: float | None = None
) -> dict[float, list]:
    """Group frames by temperature (see :func:`temperature_clusters`).

    Parameters
    ----------
    entries
        :class:`~bias_pipeline.frames.FrameRecord` objects, or mappings/objects with a
        ``temperature``.
    round_decimals
        Group width ``10 ** -round_decimals`` deg C when ``bin_width`` is not given.
    bin_width
        Group width [deg C].

    Returns
    -------
    dict
        Mean temperature of the group, rounded to one decimal (more where two groups would
        collide) -> its entries, by increasing temperature.
    """
    width = bin_width if bin_width is not None else 10.0 ** (-round_decimals)
    entries = list(entries)
    if not entries:
        return {}
    temps = [_entry_temperature(e) for e in entries]
    labels = temperature_clusters(temps, width)
    members = [[e for e, g in zip(entries, labels, strict=True) if g == k] for k in range(labels.max() + 1)]
    means = [float(np.mean([t for t, g in zip(temps, labels, strict=True) if g == k])) for k in range(len(members))]
    keys = [float(label) for label in unique_labels(means)]
    return dict(zip(keys, members, strict=True))


def make_groups(records: Sequence[FrameRecord], config: PipelineConfig) -> list[FrameGroup]:
    """Group the accepted frames; reject those of groups smaller than the minimum (in place).

    Parameters
    ----------
    records
        All records of the scan; only status ``accepted`` ones are grouped.
    config
        The run's options (``temp_bin_width``, ``min_frames_per_group``).

    Returns
    -------
    list of FrameGroup
        Groups large enough to combine, by increasing temperature, with unique labels.
    """
    accepted = [r for r in records if r.status == STATUS_ACCEPTED]
    binned = group_by_temperature(accepted, bin_width=config.temp_bin_width)
    kept: list[list[FrameRecord]] = []
    for members in binned.values():
        if len(members) < config.min_frames_per_group:
            mean_t = float(np.mean([m.temperature for m in members]))
            for member in members:
                member.reject(
                    f"its temperature group ({mean_t:.2f} deg C) has {len(members)} frame(s), "
                    f"fewer than --min-frames-per-group {config.min_frames_per_group}"
                )
        else:
            kept.append(members)
    labels = unique_labels(float(np.mean([m.temperature for m in g])) for g in kept)
    groups = [FrameGroup(label, members) for label, members in zip(labels, kept, strict=True)]
    for group in groups:
        for member in group.records:
            member.group = group.label
    return groups


def combine_stack(stack: np.ndarray, method: str = "median") -> np.ndarray:
    """Combine a stack of frames along axis 0 into a float32 master.

    >>> combine_stack(np.array([[[1.0]], [[2.0]], [[9.0]]])).tolist()
    [[2.0]]
    >>> combine_stack(np.array([[[1.0]], [[2.0]], [[9.0]]]), "mean").tolist()
    [[4.0]]
    """
    if method not in COMBINE_METHODS:
        raise InputDataError(f"unknown combine method {method!r}; use {', '.join(COMBINE_METHODS)}")
    return combine_block(stack, method).master


MAX_BLOCK_ROWS = 128  # taller blocks gain nothing; shorter ones spend time in the interpreter
WORKING_SET_MB = 32.0  # frame buffers per worker: memory stays flat in the number of frames


def block_bytes_per_row(n_frames: int, columns: int, itemsize: int = 2) -> int:
    """Bytes one worker holds per row of its block: frame buffers plus per-pixel maps."""
    return columns * (max(1, n_frames) * bytes_per_frame_pixel(itemsize) + BYTES_PER_PIXEL_MAPS)


def block_rows(
    n_frames: int,
    columns: int,
    rows: int,
    memory_limit_mb: float,
    threads: int = 1,
    itemsize: int = 2,
    *,
    tall: bool = False,
) -> int:
    """Rows per block so that every worker's block buffers fit the memory limit together.

    Each worker holds, per row of its block, the raw values of every frame, their sorted
    copy and their deviations from the median
    (:func:`~bias_pipeline.combine.bytes_per_frame_pixel`) plus the per-pixel maps. The
    frame buffers are kept near :data:`WORKING_SET_MB` per worker, so memory does not grow
    with the group size, and never above the limit. At least one row (a group too large for
    the limit then exceeds it, and step 2 says so). ``tall`` asks for the tallest blocks the
    limit allows (compressed frames are decoded whole for every block).

    >>> block_rows(15, 2048, 2048, 512, threads=2)
    128
    >>> block_rows(60, 2048, 2048, 512, threads=2)
    34
    >>> block_rows(10_000, 2048, 2048, 512, threads=2)
    1
    >>> block_rows(5, 64, 48, 512)
    48
    """
    budget = memory_limit_mb * 1024 * 1024 / max(1, threads)
    by_limit = budget // block_bytes_per_row(n_frames, columns, itemsize)
    if tall:
        return int(max(1, min(rows, by_limit)))
    working_set = WORKING_SET_MB * 1024 * 1024 // (columns * max(1, n_frames) * bytes_per_frame_pixel(itemsize))
    return int(max(1, min(rows, MAX_BLOCK_ROWS, working_set, by_limit)))


@dataclass
class GroupResult:
    """A combined group: the maps of :class:`~bias_pipeline.combine.Combined` for the whole
    frame, and for each frame the fraction of its pixels far from the master."""

    combined: Combined
    outlier_fraction: np.ndarray


def _read_block(records: Sequence[FrameRecord], start: int, stop: int, out: np.ndarray, as_uint16: bool) -> None:
    """Read rows ``start:stop`` of every frame into ``out[k, : stop - start]``.

    Plain unsigned 16-bit frames (the camera's format) are read as integers straight into the
    buffer (:func:`~bias_pipeline.frames.read_uint16_rows`); no file is kept open, so any
    number of frames works within the open-file limit.
    """
    height = stop - start
    for index, record in enumerate(records):
        try:
            if as_uint16:
                read_uint16_rows(record, start, stop, out[index, :height])
            else:
                out[index, :height] = read_rows(record, start, stop)
        except FrameReadError as exc:
            exc.record = record  # type: ignore[attr-defined]
            raise


def _count_outliers(block: np.ndarray, combined: Combined, outlier_sigma: float, as_uint16: bool) -> np.ndarray:
    """Per frame, how many of its pixels lie further than ``outlier_sigma`` noise from the master."""
    # Noise floored at the row's typical value: a pixel whose frames happen to agree exactly
    # must not make every small difference an outlier.
    noise = np.fmax(combined.noise, typical_noise(combined.noise))
    reach = np.float32(outlier_sigma) * noise
    high = combined.master + reach
    low = combined.master - reach
    if as_uint16:
        # For whole numbers x: x > high <=> x > floor(high), x < low <=> x < ceil(low); clipped
        # to the uint16 range, the comparisons run on the raw values without conversion.
        high = np.clip(np.floor(high), 0, 65535).astype(np.uint16)
        low = np.clip(np.ceil(low), 0, 65535).astype(np.uint16)
    counts = np.empty(block.shape[0], dtype=np.int64)
    for index, frame in enumerate(block):
        counts[index] = np.count_nonzero(frame > high) + np.count_nonzero(frame < low)
    return counts


def combine_records(
    records: Sequence[FrameRecord],
    method: str = "median",
    *,
    input_bits: int = 16,
    scale_factor: float = 16.0,
    memory_limit_mb: float = 512.0,
    clip_sigma: float = 3.0,
    clip_iters: int = 5,
    outlier_sigma: float = 6.0,
    threads: int = 0,
    on_rows: Callable[[int], None] | None = None,
) -> GroupResult:
    """Combine frames on disk block by block into a master with its noise and error maps.

    Row blocks are shared out between worker threads (numpy releases the interpreter lock in
    its array loops); each worker reads a block of rows of every frame into its own buffer,
    sorts a copy along the frames axis with :func:`~bias_pipeline.combine.sort_frames` and
    combines it with :func:`~bias_pipeline.combine.combine_sorted`. Every result depends on
    its own row only, so the maps are the same whatever the block height or thread count.

    Parameters
    ----------
    records
        Inspected frames of one shape.
    method
        One of :data:`~bias_pipeline.combine.COMBINE_METHODS`.
    input_bits, scale_factor
        Units of the stored values (see :mod:`.utils_scaling`).
    memory_limit_mb
        Budget for the block buffers of all workers together.
    clip_sigma, clip_iters
        Options of ``sigma-clip``.
    outlier_sigma
        A frame's pixel counts as an outlier when it lies further than this many noise
        standard deviations from the master.
    threads
        Worker threads; 0 for :func:`default_threads`.
    on_rows
        Called with the number of frame-rows read after each block (progress).

    Returns
    -------
    GroupResult
        Maps float32 in 16-bit ADU.

    Raises
    ------
    FrameReadError
        When a frame can no longer be read; its message names the file and the exception
        carries the record as ``exc.record``.
    """
    if not records:
        raise InputDataError("no frames to combine")
    if method not in COMBINE_METHODS:
        raise InputDataError(f"unknown combine method {method!r}; use {', '.join(COMBINE_METHODS)}")
    rows, columns = records[0].shape  # type: ignore[misc]
    n = len(records)
    as_uint16 = all(plain_uint16(r) for r in records)
    dtype = np.dtype(np.uint16 if as_uint16 else np.float32)
    workers = min(threads or default_threads(), rows)
    compressed = any(r.data_offset is None for r in records)
    step = block_rows(n, columns, rows, memory_limit_mb, workers, dtype.itemsize, tall=compressed)
    needed_mb = workers * step * block_bytes_per_row(n, columns, dtype.itemsize) / 2**20
    if needed_mb > memory_limit_mb:
        logger.warning(
            "%d frames of %d columns need %.0f MiB per row block, more than --memory-limit %g MiB",
            n, columns, needed_mb, memory_limit_mb,
        )  # fmt: skip
    starts = list(range(0, rows, step))
    workers = min(workers, len(starts))
    master = np.empty((rows, columns), dtype=np.float32)
    noise = np.empty_like(master)
    error = np.empty_like(master)
    n_used = np.empty((rows, columns), dtype=np.int32)
    outliers = np.zeros((workers, n), dtype=np.int64)
    failed = threading.Event()

    def work(worker: int) -> None:
        try:
            combine_blocks(worker)
        except BaseException:
            failed.set()  # the other workers stop at their next block
            raise

    def combine_blocks(worker: int) -> None:
        raw = np.empty((n, step, columns), dtype=dtype)
        ordered = np.empty_like(raw)
        for start in starts[worker::workers]:
            if failed.is_set():
                return
            stop = min(rows, start + step)
            height = stop - start
            _read_block(records, start, stop, raw, as_uint16)
            block = raw[:, :height]
            work_copy = ordered[:, :height]
            np.copyto(work_copy, block)
            combined = combine_sorted(
                sort_frames(work_copy) if method != "mean" else list(work_copy),
                method,
                clip_sigma=clip_sigma,
                clip_iters=clip_iters,
            )
            master[start:stop] = combined.master
            noise[start:stop] = combined.noise
            error[start:stop] = combined.error
            n_used[start:stop] = combined.n_used
            if n >= 3:
                outliers[worker] += _count_outliers(block, combined, outlier_sigma, as_uint16)
            if on_rows is not None:
                on_rows(height * n)

    if workers == 1:
        work(0)
    else:
        with worker_pool(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="combine")) as pool:
            futures = [pool.submit(work, w) for w in range(workers)]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                failed.set()
                raise
    factor = np.float32(scale_factor if input_bits == 12 else 1.0)
    if factor != 1:
        for image in (master, noise, error):
            image *= factor
    combined = Combined(master, noise, error, n_used)
    return GroupResult(combined, outliers.sum(axis=0) / float(rows * columns))


def combine_frames(entries: Sequence[object], method: str = "median") -> np.ndarray:
    """Combine frames into a master.

    Parameters
    ----------
    entries
        Either :class:`~bias_pipeline.frames.FrameRecord` objects (read from disk block by
        block, values as stored) or 2-D arrays of one shape.
    method
        One of :data:`~bias_pipeline.combine.COMBINE_METHODS`.

    Returns
    -------
    numpy.ndarray
        float32 master.
    """
    entries = list(entries)
    if entries and all(isinstance(e, FrameRecord) for e in entries):
        return combine_records(entries, method).combined.master  # type: ignore[arg-type]
    return combine_stack(np.stack([np.asarray(e, dtype=np.float32) for e in entries]), method)


def build_masters(
    groups: Sequence[FrameGroup],
    masters_dir: str | Path,
    config: PipelineConfig,
    *,
    input_bits: int = 16,
    publish: bool = True,
) -> list[MasterFrame]:
    """Combine every group and write ``master_bias_XX.XC.fits``.

    The master file's primary image is the master; extensions ``ERR`` (its standard error),
    ``NOISE`` (the temporal noise of one frame) and ``NUSED`` (frames kept per pixel) follow.
    A frame that cannot be read any more, or that disagrees with its group's master far
    beyond the noise, is rejected and its group combined again without it; a group that
    falls below the minimum size is dropped, and the other groups go on.

    Parameters
    ----------
    groups
        Groups from :func:`make_groups`.
    masters_dir
        Folder for the master files.
    config
        The run's options.
    input_bits
        The data set's bit depth decided in step 1.
    publish
        Give the masters their final names at the end; with ``False`` they stay under hidden
        staging names until :func:`publish_masters` (or :func:`discard_masters`).

    Returns
    -------
    list of MasterFrame
        One per group combined, by increasing temperature.
    """
    masters_dir = Path(masters_dir)
    masters_dir.mkdir(parents=True, exist_ok=True)
    masters: list[MasterFrame] = []
    progress = tqdm(
        total=sum(len(g.records) for g in groups),
        desc="combining",
        unit="frame",
        unit_scale=True,  # counts whole frames read, in fractions as row blocks come in
        disable=None if config.show_progress else True,
        leave=False,
    )
    # Masters are written under hidden staging names and get their final names together once
    # every group is combined: a run stopped while combining leaves no master under a final
    # name (the staged files are removed here, or by the next run if the process was killed).
    try:
        _combine_all(groups, masters_dir, config, input_bits, progress, masters)
    except BaseException:
        # Every staged file in the folder, not only the masters listed so far: a signal can
        # land after a staged file got its name and before its master was listed (step 0
        # cleared older runs' staged files, so all of these are this run's).
        for leftover in masters_dir.glob(f".master_bias_*{STAGED_SUFFIX}"):
            leftover.unlink(missing_ok=True)
        raise
    if publish:
        publish_masters(masters)
    return masters


def publish_masters(masters: Sequence[MasterFrame]) -> None:
    """Give staged masters their final names (all of them, or none and the staged files gone).

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
                master.path = final
            done.append(master)
    except OSError as exc:
        # All or none: the ones already renamed go too, so no partial set is left.
        for master in done:
            master.path.unlink(missing_ok=True)
        discard_masters(masters)
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}; remove what is in the way") from None


def discard_masters(masters: Sequence[MasterFrame]) -> None:
    """Remove masters still under their staging names (a run that stops before publishing)."""
    for master in masters:
        if master.path.name.endswith(STAGED_SUFFIX):
            master.path.unlink(missing_ok=True)


def staged_name(final: Path) -> Path:
    """The hidden name a master has until every group is combined."""
    return final.with_name(f".{final.name}{STAGED_SUFFIX}")


def _combine_all(
    groups: Sequence[FrameGroup],
    masters_dir: Path,
    config: PipelineConfig,
    input_bits: int,
    progress: tqdm,
    masters: list[MasterFrame],
) -> None:
    with progress:
        for group in groups:
            height = float(group.records[0].shape[0])  # type: ignore[index]
            combined = _combine_group(group, config, input_bits, lambda rows, h=height: progress.update(rows / h))
            if combined is None:
                continue
            low, high = group.temperature_span
            noise_median = float(np.nanmedian(combined.noise)) if len(group.records) > 1 else math.nan
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
                },
            )
            extensions = [
                _extension(combined.error, "ERR", "standard error of the master [adu]"),
                _extension(combined.noise, "NOISE", "temporal noise of one frame (read noise) [adu]"),
                fits.ImageHDU(combined.n_used.astype(np.int16), name="NUSED"),
            ]
            final = masters_dir / MASTER_PATTERN.format(label=group.label)
            path = write_image(staged_name(final), combined.master, header, extensions)
            for record in group.records:
                record.status = STATUS_USED
                record.reason = ""
            masters.append(
                MasterFrame(
                    group.label,
                    group.temperature,
                    len(group.records),
                    path,
                    (low, high),
                    method=config.combine_method,
                    noise_median=noise_median,
                )
            )
            logger.info(
                "master %s: %d frames at %.3f deg C, noise %.2f ADU",
                final.name,
                len(group.records),
                group.temperature,
                noise_median,
            )


def _extension(data: np.ndarray, name: str, what: str) -> fits.ImageHDU:
    hdu = fits.ImageHDU(np.asarray(data, dtype=np.float32), name=name)
    hdu.header["BUNIT"] = "adu"
    hdu.header["CONTENT"] = what[:68]
    return hdu


def _combine_group(
    group: FrameGroup, config: PipelineConfig, input_bits: int, on_rows: Callable[[int], None]
) -> Combined | None:
    while len(group.records) >= config.min_frames_per_group:
        try:
            result = combine_records(
                group.records,
                config.combine_method,
                input_bits=input_bits,
                scale_factor=config.scale_factor,
                memory_limit_mb=config.memory_limit_mb,
                clip_sigma=config.clip_sigma,
                clip_iters=config.clip_iters,
                outlier_sigma=config.outlier_sigma,
                threads=config.threads,
                on_rows=on_rows,
            )
        except FrameReadError as exc:
            bad = exc.record  # type: ignore[attr-defined]
            bad.reject(f"became unreadable while combining: {exc}")
            group.records = [r for r in group.records if r is not bad]
            continue
        outlying = [
            (record, fraction)
            for record, fraction in zip(group.records, result.outlier_fraction, strict=True)
            if fraction > config.outlier_fraction
        ]
        if not outlying:
            return result.combined
        for record, fraction in outlying:
            record.reject(
                f"disagrees with its group's master: {100 * fraction:.1f} % of pixels beyond "
                f"{config.outlier_sigma:g} sigma (limit {100 * config.outlier_fraction:g} %; a readout "
                "glitch, light leak or another gain mode?)"
            )
        group.records = [r for r in group.records if r.status != "rejected"]
        logger.warning(
            "group %s C: %d frame(s) disagree with the master and were rejected; combining again",
            group.label,
            len(outlying),
        )
    for record in group.records:
        record.reject(
            f"its temperature group {group.label} C fell below --min-frames-per-group "
            f"{config.min_frames_per_group} after unusable frames were removed"
        )
    logger.warning("group %s C dropped: too few usable frames", group.label)
    return None


def generate_master_bias_by_temp(
    entries: Sequence[FrameRecord],
    output_dir: str | Path,
    method: str = "median",
    *,
    config: PipelineConfig | None = None,
) -> dict[float, np.ndarray]:
    """Group frames, combine each group and write the masters into ``output_dir``.

    Parameters
    ----------
    entries
        Accepted frames (from :func:`~.step1_load_data.load_bias_files`).
    output_dir
        Folder for ``master_bias_XX.XC.fits``.
    method
        ``"median"`` or ``"mean"``; overrides ``config.combine_method``.
    config
        Further options (defaults if ``None``).

    Returns
    -------
    dict
        Group temperature (mean of its frames, deg C) -> master array.
    """
    base = config or PipelineConfig()
    config = PipelineConfig(**{**base.as_dict(), "combine_method": method})
    groups = make_groups(list(entries), config)
    masters = build_masters(groups, output_dir, config)
    return {m.temperature: m.load() for m in masters}

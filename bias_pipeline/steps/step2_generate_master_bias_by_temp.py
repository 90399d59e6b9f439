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
    pool_rows,
    quantisation_floor,
    sort_frames,
    typical_noise,
)
from ..config import PipelineConfig
from ..errors import FrameReadError, InputDataError, OutputError
from ..frames import (
    STATUS_ACCEPTED,
    STATUS_REJECTED,
    STATUS_USED,
    FrameRecord,
    is_tiny,
    plain_uint16,
    read_rows,
    read_uint16_rows,
)
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
        by_set_point.setdefault(round(float(record.set_point), 6), []).append(record)  # type: ignore[arg-type]
    if len(by_set_point) < 2:
        return None
    limit = max(SETTLED_WIDTHS * width, MIN_SETTLED_DISTANCE)
    groups, far = [], []
    for set_point in sorted(by_set_point):
        members = by_set_point[set_point]
        median = float(np.median([r.temperature for r in members]))
        away = []
        for record in members:
            distance = float(record.temperature) - median  # type: ignore[arg-type]
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


def make_groups(records: Sequence[FrameRecord], config: PipelineConfig) -> list[FrameGroup]:
    """Group the accepted frames; reject those of groups smaller than the minimum (in place).

    Frames are grouped by their thermal set point when every one has a set-point keyword
    (``set_point_keys``), else by their temperature readings (:func:`temperature_clusters`) at
    least as coarsely as the thermometer's step (:func:`grouping_width`). Either way a group's
    temperature is the mean of its frames' readings.

    Parameters
    ----------
    records
        All records of the scan; only status ``accepted`` ones are grouped.
    config
        The run's options (``temp_bin_width``, ``min_frames_per_group``, ``set_point_keys``).

    Returns
    -------
    list of FrameGroup
        Groups large enough to combine, by increasing temperature, with unique labels.
    """
    accepted = [r for r in records if r.status == STATUS_ACCEPTED]
    width = grouping_width([float(r.temperature) for r in accepted], config.temp_bin_width)  # type: ignore[arg-type]
    with_set_point = sum(r.set_point is not None for r in accepted)
    by_set_point = _set_point_groups(accepted, width) if accepted and with_set_point == len(accepted) else None
    if by_set_point is not None:
        logger.info("grouping %d frames by their set point (%s)", len(accepted), accepted[0].set_point_key)
        binned, far = by_set_point
        for record, reason in far:
            record.reject(reason)
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
        binned = list(group_by_temperature(accepted, bin_width=width).values())
    kept: list[list[FrameRecord]] = []
    for members in binned:
        if len(members) < config.min_frames_per_group:
            mean_t = float(np.mean([m.temperature for m in members]))
            for member in members:
                member.reject(
                    f"its temperature group ({mean_t:.2f} deg C) has {len(members)} frame(s), "
                    f"fewer than --min-frames-per-group {config.min_frames_per_group}"
                )
        else:
            kept.append(members)
    kept.sort(key=lambda g: float(np.mean([m.temperature for m in g])))
    groups = [FrameGroup("", members) for members in kept]
    for group, label in zip(groups, unique_labels(g.temperature for g in groups), strict=True):
        group.label = label
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
    frame, and per frame how it compares with the master.

    Attributes
    ----------
    combined
        The master and its maps.
    outlier_fraction
        Per frame: the fraction of its pixels further than ``outlier_sigma`` noise from the master.
    offset, offset_error
        Per frame: its mean difference from the master over the pixels within ``outlier_sigma``
        of it [ADU], and the standard error of that mean (the scatter of the differences, at
        least the typical noise, over the square root of their number); NaN for groups of
        fewer than three frames. :func:`level_offsets` turns them into offsets from the rest
        of the group.
    fingerprint
        Per frame: sums that two frames with identical pixels share exactly (a copy is then
        confirmed pixel by pixel).
    """

    combined: Combined
    outlier_fraction: np.ndarray
    offset: np.ndarray
    offset_error: np.ndarray
    fingerprint: list[tuple[float, float, int]]


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


def _frame_statistics(
    block: np.ndarray, combined: Combined, outlier_sigma: float, pool: int, quantum: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per frame of a block: pixels further than ``outlier_sigma`` noise from the master, and the
    sum, sum of squares and count of the differences from the master of the other pixels."""
    # Noise floored at the rows' typical value and at the quantisation noise: a pixel whose
    # frames happen to agree exactly must not make every small difference an outlier.
    noise = np.fmax(np.fmax(combined.noise, typical_noise(combined.noise, pool)), quantisation_floor(quantum))
    reach = np.float32(outlier_sigma) * noise
    n = block.shape[0]
    outliers = np.empty(n, dtype=np.int64)
    sums = np.empty(n, dtype=np.float64)
    squares = np.empty(n, dtype=np.float64)
    inside = np.empty(n, dtype=np.int64)
    difference = np.empty(combined.master.shape, dtype=np.float32)
    far = np.empty(combined.master.shape, dtype=bool)
    for index, frame in enumerate(block):
        np.subtract(frame, combined.master, out=difference, dtype=np.float32)
        np.greater(np.abs(difference), reach, out=far)
        outliers[index] = np.count_nonzero(far)
        difference[far] = 0.0
        flat = difference.reshape(-1)
        sums[index] = flat.sum(dtype=np.float64)
        squares[index] = float(np.dot(flat, flat))
        inside[index] = flat.size - outliers[index]
    return outliers, sums, squares, inside


def value_step(records: Sequence[FrameRecord]) -> float:
    """The quantisation step of the frames' stored values: 16 when every value of every frame is a
    multiple of 16 (12-bit values stored x16), 1 when all are whole numbers, else 0."""
    if all(r.multiple_of_16 for r in records):
        return 16.0
    return 1.0 if all(r.integer_valued for r in records) else 0.0


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
    # A narrow frame's rows share their noise floor in pools; a block holds whole pools, so
    # the products do not depend on how the frame is cut into blocks.
    floor_pool = pool_rows(columns)
    step = min(rows, max(floor_pool, step // floor_pool * floor_pool))
    quantum = value_step(records)
    judged = n >= 3 and not is_tiny(records[0])  # frames are judged against the master
    needed_mb = workers * step * block_bytes_per_row(n, columns, dtype.itemsize) / 2**20
    if needed_mb > memory_limit_mb:
        logger.warning(
            "%d frames of %d columns need %.3g MiB per row block, more than --memory-limit %g MiB",
            n, columns, needed_mb, memory_limit_mb,
        )  # fmt: skip
    starts = list(range(0, rows, step))
    workers = min(workers, len(starts))
    logger.debug(
        "combining %d frames of %dx%d in %d blocks of up to %d rows on %d threads",
        n, rows, columns, len(starts), step, workers,
    )  # fmt: skip
    master = np.empty((rows, columns), dtype=np.float32)
    noise = np.empty_like(master)
    error = np.empty_like(master)
    n_used = np.empty((rows, columns), dtype=np.int32)
    # Per block, so that the totals are summed in one order whatever the thread count.
    outliers = np.zeros((len(starts), n), dtype=np.int64)
    sums = np.zeros((len(starts), n), dtype=np.float64)
    squares = np.zeros((len(starts), n), dtype=np.float64)
    inside = np.zeros((len(starts), n), dtype=np.int64)
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
        for block_index in range(worker, len(starts), workers):
            start = starts[block_index]
            if failed.is_set():
                return
            stop = min(rows, start + step)
            height = stop - start
            _read_block(records, start, stop, raw, as_uint16)
            block = raw[:, :height]
            work_copy = ordered[:, :height]
            np.copyto(work_copy, block)
            combined = combine_sorted(
                sort_frames(work_copy),  # sorted for "mean" too: sums in one order, whatever the files' order
                method,
                clip_sigma=clip_sigma,
                clip_iters=clip_iters,
                pool=floor_pool,
                quantum=quantum,
            )
            master[start:stop] = combined.master
            noise[start:stop] = combined.noise
            error[start:stop] = combined.error
            n_used[start:stop] = combined.n_used
            if judged:
                found = _frame_statistics(block, combined, outlier_sigma, floor_pool, quantum)
                outliers[block_index], sums[block_index], squares[block_index], inside[block_index] = found
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
    total_sum, total_squares, total_inside = sums.sum(axis=0), squares.sum(axis=0), inside.sum(axis=0)
    typical = float(np.nanmedian(noise)) / float(factor) if judged else math.nan  # in stored units, as the sums
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total_sum / total_inside
        # The scatter of a frame's differences, at least the typical noise: in a frame of a few
        # pixels the frame's own scatter says nothing.
        spread = np.fmax(np.sqrt(np.maximum(total_squares / total_inside - mean**2, 0.0)), typical)
        mean_error = spread / np.sqrt(total_inside)
    unknown = np.full(n, np.nan)
    return GroupResult(
        combined,
        outliers.sum(axis=0) / float(rows * columns),
        mean * float(factor) if judged else unknown,
        mean_error * float(factor) if judged else unknown,
        [(float(a), float(b), int(c)) for a, b, c in zip(total_sum, total_squares, total_inside, strict=True)],
    )


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
    if groups and is_tiny(groups[0].records[0]):
        logger.warning(
            "frames of %d pixels are too few to judge one frame against its group: none is rejected for "
            "disagreeing with its master", groups[0].records[0].shape[0] * groups[0].records[0].shape[1],  # type: ignore[index]
        )  # fmt: skip
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


#: A frame's mean offset from the rest of its group must be this many of its standard errors
#: to count as real (with millions of pixels a real shift is hundreds of them; chance, about 1).
OFFSET_SIGNIFICANCE = 5.0


def _combine_group(
    group: FrameGroup, config: PipelineConfig, input_bits: int, on_rows: Callable[[int], None]
) -> Combined | None:
    """Combine a group, rejecting frames that cannot be read, that disagree with the master pixel
    by pixel, whose whole level is offset from the rest, or that copy another frame's pixels,
    and combining again without them until none is left to reject."""
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
        offsets, sigmas = level_offsets(group.records, result)
        for record, offset, sigma in zip(group.records, offsets, sigmas, strict=True):
            record.offset = None if np.isnan(offset) else float(offset)
            record.offset_sigma = None if np.isnan(sigma) else float(sigma)
        rejected = (
            _reject_outlying(group, result, config)
            or _reject_copies(group, result)
            or _reject_offset(group, offsets, sigmas, result.combined, config)
        )
        if not rejected:
            return result.combined
        group.records = [r for r in group.records if r.status != STATUS_REJECTED]
        logger.warning(
            "group %s C: %d frame(s) rejected (%s); combining again", group.label, len(rejected), rejected[0].reason
        )
    for record in group.records:
        record.reject(
            f"its temperature group {group.label} C fell below --min-frames-per-group "
            f"{config.min_frames_per_group} after unusable frames were removed"
        )
    logger.warning("group %s C dropped: too few usable frames", group.label)
    return None


def _reject_outlying(group: FrameGroup, result: GroupResult, config: PipelineConfig) -> list[FrameRecord]:
    """Frames with too many pixels far from the master (a glitch, light, another gain mode)."""
    outlying = [
        (record, fraction)
        for record, fraction in zip(group.records, result.outlier_fraction, strict=True)
        if fraction > config.outlier_fraction
    ]
    for record, fraction in outlying:
        record.reject(
            f"disagrees with its group's master: {100 * fraction:.1f} % of pixels beyond "
            f"{config.outlier_sigma:g} sigma (limit {100 * config.outlier_fraction:g} %; a readout "
            "glitch, light leak or another gain mode?)"
        )
    return [record for record, _ in outlying]


def _reject_copies(group: FrameGroup, result: GroupResult) -> list[FrameRecord]:
    """Frames whose pixels are identical to another frame's of the group (one frame saved twice
    under different headers): the copies go, the first by name stays. Candidates share their
    sums exactly; they are compared pixel by pixel before anything is rejected. Only frames of
    one group are compared: a copy under another temperature lands in another group, where the
    temperature check flags its header."""
    same_sums: dict[tuple[float, float, int], list[FrameRecord]] = {}
    for record, fingerprint in zip(group.records, result.fingerprint, strict=True):
        if not is_tiny(record):
            same_sums.setdefault(fingerprint, []).append(record)
    copies = []
    for candidates in same_sums.values():
        original, *others = sorted(candidates, key=lambda r: str(r.path))
        for record in others:
            if _same_pixels(original, record):
                record.reject(f"its pixels are identical to those of {original.path} (one frame saved twice)")
                copies.append(record)
    return copies


def _same_pixels(one: FrameRecord, other: FrameRecord) -> bool:
    assert one.shape is not None
    try:
        for start in range(0, one.shape[0], MAX_BLOCK_ROWS):
            stop = min(one.shape[0], start + MAX_BLOCK_ROWS)
            if not np.array_equal(read_rows(one, start, stop), read_rows(other, start, stop)):
                return False
    except FrameReadError:
        return False
    return True


def level_offsets(records: Sequence[FrameRecord], result: GroupResult) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's level against the rest of its group [ADU], and that in units of its error.

    The differences from the master share the master's own pull (a frame far off moves a mean
    master towards it), and frames of a group taken at slightly different temperatures differ
    by the slope times that difference. Both are taken out by a robust line through the
    differences against the frames' readings: the median slope over pairs of frames
    (Theil-Sen; pairs half a group apart in a large group), zero when all read alike, and the
    median of what is left. A set point whose thermometer flips between two steps gives no
    slope (its frames are at one temperature), a drifting group the sensor's.

    Returns
    -------
    offset, significance
        NaN for groups of fewer than three frames.
    """
    raw = np.asarray(result.offset, dtype=np.float64)
    error = np.asarray(result.offset_error, dtype=np.float64)
    if raw.size < 3 or not np.all(np.isfinite(raw)):
        return np.full(raw.size, np.nan), np.full(raw.size, np.nan)
    readings = np.array([float(r.temperature) for r in records])  # type: ignore[arg-type]
    x = readings - readings.mean()
    slope = _median_slope(x, raw)
    offset = raw - slope * x
    offset -= np.median(offset)
    with np.errstate(invalid="ignore", divide="ignore"):
        significance = np.where(error > 0, offset / error, 0.0)
    return offset, significance


def _median_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Theil-Sen slope of ``y`` against ``x`` (0 when ``x`` does not vary); above 200 points, over
    the pairs half the sorted points apart, so the cost stays linear."""
    if np.ptp(x) == 0:
        return 0.0
    if x.size <= 200:
        i, j = np.triu_indices(x.size, k=1)
    else:
        order = np.argsort(x, kind="stable")
        half = x.size // 2
        i, j = order[:half], order[half : 2 * half]
    dx = x[j] - x[i]
    keep = dx != 0
    return float(np.median((y[j] - y[i])[keep] / dx[keep])) if keep.any() else 0.0


def _reject_offset(
    group: FrameGroup, offsets: np.ndarray, sigmas: np.ndarray, combined: Combined, config: PipelineConfig
) -> list[FrameRecord]:
    """Frames whose whole level is off the rest of their group, both really (more than
    :data:`OFFSET_SIGNIFICANCE` errors) and by more than ``max_frame_offset`` read-noise sigmas,
    all in one pass (the offsets are from the group's median frame, which a minority cannot
    pull; :func:`level_offsets`). When more than half the group would go, no frame is the odd
    one: none is rejected, and a warning says so."""
    records = group.records
    finite_noise = combined.noise[np.isfinite(combined.noise)]
    if not np.any(np.isfinite(offsets)) or finite_noise.size == 0:
        return []
    typical = float(np.median(finite_noise))
    tolerance = config.max_frame_offset * typical
    off = np.isfinite(offsets) & (np.abs(offsets) > tolerance) & (np.abs(sigmas) > OFFSET_SIGNIFICANCE)
    if not off.any():
        return []
    if 2 * off.sum() > len(records):
        logger.warning(
            "group %s C: %d of %d frames differ in level by more than --max-frame-offset %g read-noise sigmas: "
            "no level is typical (frames of several epochs or states?); none rejected",
            group.label, int(off.sum()), len(records), config.max_frame_offset,
        )  # fmt: skip
        return []
    rejected = []
    for record, offset, sigma, is_off in zip(records, offsets, sigmas, off, strict=True):
        if is_off:
            record.reject(
                f"its level is offset by {offset:+.2f} ADU from the rest of its group ({offset / typical:+.2f} "
                f"read-noise sigmas, {abs(sigma):.0f} times its error; limit --max-frame-offset "
                f"{config.max_frame_offset:g}): taken apart in time or while the sensor was not settled?"
            )
            rejected.append(record)
    return rejected


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

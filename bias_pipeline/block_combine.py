"""The block combiner: frames on disk combined row block by row block into a master, and
the tests that judge each frame against its group (pixels far from the master, a copy of
another frame, a level offset from the rest).

Memory depends on the block height (chosen from ``memory_limit``), not on the number of
frames. The judging functions return the frames to reject with their reasons and change no
record.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .combine import (
    BYTES_PER_PIXEL_MAPS,
    COMBINE_METHODS,
    Combined,
    bytes_per_frame_pixel,
    combine_sorted,
    pool_rows,
    quantisation_floor,
    sort_frames,
    typical_noise,
)
from .config import PipelineConfig
from .errors import FrameReadError, InputDataError
from .frames import FrameRecord, is_tiny, plain_uint16, read_rows, read_uint16_rows, reading
from .units import DEFAULT_SCALE_FACTOR, input_factor
from .workers import default_threads, worker_pool

logger = logging.getLogger(__name__)


class CombineReadError(FrameReadError):
    """A frame could not be read while combining; ``record`` is the frame."""

    def __init__(self, message: str, record: FrameRecord) -> None:
        super().__init__(message)
        self.record = record


MAX_BLOCK_ROWS = 128  # taller blocks gain nothing; shorter ones spend time in the interpreter
WORKING_SET_MB = 32.0  # frame buffers per worker: memory stays flat in the number of frames


def block_bytes_per_row(n_frames: int, columns: int, itemsize: int = 2) -> int:
    """Bytes one worker holds per row of its block: frame buffers plus per-pixel maps."""
    return columns * (max(1, n_frames) * bytes_per_frame_pixel(itemsize) + BYTES_PER_PIXEL_MAPS)


def block_rows(
    n_frames: int,
    columns: int,
    rows: int,
    memory_limit: float,
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
    budget = memory_limit * 1024 * 1024 / max(1, threads)
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
            raise CombineReadError(str(exc), record) from exc


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
    scale_factor: float = DEFAULT_SCALE_FACTOR,
    memory_limit: float = 512.0,
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
        Units of the stored values (see :mod:`bias_pipeline.units`).
    memory_limit
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
    CombineReadError
        When a frame can no longer be read (a :class:`FrameReadError`); its message names the
        file and the exception carries the record as ``exc.record``.
    """
    if not records:
        raise InputDataError("no frames to combine")
    if method not in COMBINE_METHODS:
        raise InputDataError(f"unknown combine method {method!r}; use {', '.join(COMBINE_METHODS)}")
    assert records[0].shape is not None  # every inspected frame has its shape
    rows, columns = records[0].shape
    n = len(records)
    as_uint16 = all(plain_uint16(r) for r in records)
    dtype = np.dtype(np.uint16 if as_uint16 else np.float32)
    workers = min(threads or default_threads(), rows)
    compressed = any(r.data_offset is None for r in records)
    step = block_rows(n, columns, rows, memory_limit, workers, dtype.itemsize, tall=compressed)
    # A narrow frame's rows share their noise floor in pools; a block holds whole pools, so
    # the products do not depend on how the frame is cut into blocks.
    floor_pool = pool_rows(columns)
    step = min(rows, max(floor_pool, step // floor_pool * floor_pool))
    quantum = value_step(records)
    judged = n >= 3 and not is_tiny(records[0])  # frames are judged against the master
    needed_mb = workers * step * block_bytes_per_row(n, columns, dtype.itemsize) / 2**20
    if needed_mb > memory_limit:
        logger.warning(
            "%d frames of %d columns need %.3g MiB per row block, more than --memory-limit %g MiB",
            n, columns, needed_mb, memory_limit,
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
    factor = input_factor(input_bits, scale_factor)
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


#: A frame's mean offset from the rest of its group must be this many of its standard errors
#: to count as real (with millions of pixels a real shift is hundreds of them; chance, about 1).
OFFSET_SIGNIFICANCE = 5.0

#: A frame to reject, and why.
Rejection = tuple[FrameRecord, str]


def outlying_frames(records: Sequence[FrameRecord], result: GroupResult, config: PipelineConfig) -> list[Rejection]:
    """Frames with too many pixels far from the master (a glitch, light, another gain mode)."""
    return [
        (
            record,
            f"disagrees with its group's master: {100 * fraction:.1f} % of pixels beyond "
            f"{config.outlier_sigma:g} sigma (limit {100 * config.outlier_fraction:g} %; a readout "
            "glitch, light leak or another gain mode?)",
        )
        for record, fraction in zip(records, result.outlier_fraction, strict=True)
        if fraction > config.outlier_fraction
    ]


def copied_frames(records: Sequence[FrameRecord], result: GroupResult) -> list[Rejection]:
    """Frames whose pixels are identical to another frame's of the group (one frame saved twice
    under different headers): the copies go, the first by name stays. Candidates share their
    sums exactly; they are compared pixel by pixel before anything is rejected. Only frames of
    one group are compared: a copy under another temperature lands in another group, where the
    temperature check flags its header."""
    same_sums: dict[tuple[float, float, int], list[FrameRecord]] = {}
    for record, fingerprint in zip(records, result.fingerprint, strict=True):
        if not is_tiny(record):
            same_sums.setdefault(fingerprint, []).append(record)
    copies = []
    for candidates in same_sums.values():
        original, *others = sorted(candidates, key=lambda r: str(r.path))
        for record in others:
            if _same_pixels(original, record):
                copies.append((record, f"its pixels are identical to those of {original.path} (one frame saved twice)"))
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
    readings = np.array([reading(r) for r in records])
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


def offset_frames(
    label: str,
    records: Sequence[FrameRecord],
    offsets: np.ndarray,
    sigmas: np.ndarray,
    combined: Combined,
    config: PipelineConfig,
) -> list[Rejection]:
    """Frames whose whole level is off the rest of their group ``label``, both really (more than
    :data:`OFFSET_SIGNIFICANCE` errors) and by more than ``max_frame_offset`` read-noise sigmas,
    all in one pass (the offsets are from the group's median frame, which a minority cannot
    pull; :func:`level_offsets`). When more than half the group would go, no frame is the odd
    one: none is rejected, and a warning says so."""
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
            label, int(off.sum()), len(records), config.max_frame_offset,
        )  # fmt: skip
        return []
    return [
        (
            record,
            f"its level is offset by {offset:+.2f} ADU from the rest of its group ({offset / typical:+.2f} "
            f"read-noise sigmas, {abs(sigma):.0f} times its error; limit --max-frame-offset "
            f"{config.max_frame_offset:g}): taken apart in time or while the sensor was not settled?",
        )
        for record, offset, sigma, is_off in zip(records, offsets, sigmas, off, strict=True)
        if is_off
    ]

"""The block combiner: frames on disk combined row block by row block into a master, and
the tests that judge each frame against its group (pixels far from the master, a periodic
pattern, a copy of another frame, a level offset from the rest).

Memory depends on the block height (chosen from ``memory_limit``), not on the number of
frames. The judging functions return the frames to reject with their reasons and change no
record.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from .cluster import BlockCluster
from .combine import (
    BYTES_PER_PIXEL_MAPS,
    COMBINE_METHODS,
    MEDIAN_EFFICIENCY,
    Combined,
    bytes_per_frame_pixel,
    combine_sorted,
    pool_rows,
    quantisation_floor,
    sort_frames,
    typical_noise,
)
from .combine_kernels import combine_block_compiled, count_dtype, nan_median
from .compiled import engine
from .config import PipelineConfig
from .errors import FrameReadError, InputDataError
from .frames import (
    FrameRecord,
    is_tiny,
    plain_uint16,
    read_rows,
    read_stored_rows,
    read_uint16_rows,
    reading,
)
from .pattern_noise import block_spectra, frame_pattern, is_patterned, pattern_reason
from .row_noise import (
    MIN_ROW_PIXELS,
    RowNoiseTest,
    frame_row_noise,
    row_noise_significant,
    split_row_offsets,
)
from .telegraph import MIN_FRAMES as TELEGRAPH_MIN_FRAMES
from .telegraph import level_statistics
from .units import DEFAULT_SCALE_FACTOR, input_factor
from .workers import default_threads, worker_pool

logger = logging.getLogger(__name__)


class CombineReadError(FrameReadError):
    """A frame could not be read while combining; ``record`` is the frame."""

    def __init__(self, message: str, record: FrameRecord) -> None:
        super().__init__(message)
        self.record = record

    def __reduce__(self) -> tuple[type, tuple[str, FrameRecord]]:
        # Raised on a cluster worker and re-raised in the driver: pickled with its record.
        return type(self), (str(self), self.record)


MAX_BLOCK_ROWS = 128  # taller blocks gain nothing; shorter ones spend time in the interpreter
WORKING_SET_MB = 12.0  # frame buffers per worker: memory stays flat in the number of frames


#: Bytes per frame pixel the row correction adds: the frames as float32 values, corrected.
BYTES_PER_CORRECTED_PIXEL = 4


def block_bytes_per_row(n_frames: int, columns: int, itemsize: int = 2, corrected: bool = False) -> int:
    """Bytes one worker holds per row of its block: frame buffers plus per-pixel maps (plus the
    corrected frames when row noise may be removed)."""
    per_frame_pixel = bytes_per_frame_pixel(itemsize) + (BYTES_PER_CORRECTED_PIXEL if corrected else 0)
    return columns * (max(1, n_frames) * per_frame_pixel + BYTES_PER_PIXEL_MAPS)


def block_rows(
    n_frames: int,
    columns: int,
    rows: int,
    memory_limit: float,
    threads: int = 1,
    itemsize: int = 2,
    *,
    tall: bool = False,
    corrected: bool = False,
) -> int:
    """Rows per block so that every worker's block buffers fit the memory limit together.

    Each worker holds, per row of its block, the raw values of every frame, their sorted
    copy and their deviations from the median
    (:func:`~bias_pipeline.combine.bytes_per_frame_pixel`) plus the per-pixel maps. The
    frame buffers are kept near :data:`WORKING_SET_MB` per worker, so memory does not grow
    with the group size, and never above the limit. At least one row (a group too large for
    the limit then exceeds it, and step 2 says so). ``tall`` asks for the tallest blocks the
    limit allows (compressed frames are decoded whole for every block). ``corrected``: the
    block also holds its frames as float32 for the row correction.

    >>> block_rows(15, 2048, 2048, 512, threads=2)
    51
    >>> block_rows(60, 2048, 2048, 512, threads=2)
    12
    >>> block_rows(10_000, 2048, 2048, 512, threads=2)
    1
    >>> block_rows(5, 64, 48, 512)
    48
    """
    budget = memory_limit * 1024 * 1024 / max(1, threads)
    by_limit = budget // block_bytes_per_row(n_frames, columns, itemsize, corrected)
    if tall:
        return int(max(1, min(rows, by_limit)))
    per_frame_pixel = bytes_per_frame_pixel(itemsize) + (BYTES_PER_CORRECTED_PIXEL if corrected else 0)
    working_set = WORKING_SET_MB * 1024 * 1024 // (columns * max(1, n_frames) * per_frame_pixel)
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
    row_offsets
        ``(n_frames, rows)`` each frame's row offsets against the preliminary master [ADU];
        ``None`` when row noise was not measured (one frame, or rows too short).
    row_noise
        Per frame: its row-noise amplitude [ADU] (:func:`~bias_pipeline.row_noise.frame_row_noise`);
        NaN when not measured.
    row_test
        The group's test of row noise against read noise (the ``auto`` rule).
    row_corrected
        Whether the row offsets were removed before the final combine.
    row_spectrum, row_means
        ``(n_frames, columns // 2 + 1)`` each frame's power along rows against the preliminary
        master, summed over its rows [ADU^2], and ``(n_frames, rows)`` its mean difference from
        that master in each row [ADU] (:mod:`bias_pipeline.pattern_noise`); ``None`` when row
        noise was not measured.
    """

    combined: Combined
    outlier_fraction: np.ndarray
    offset: np.ndarray
    offset_error: np.ndarray
    fingerprint: list[tuple[float, float, int]]
    row_offsets: np.ndarray | None = None
    row_noise: np.ndarray | None = None
    row_test: RowNoiseTest | None = None
    row_corrected: bool = False
    row_spectrum: np.ndarray | None = None
    row_means: np.ndarray | None = None


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


def quantisation_step(records: Sequence[FrameRecord], input_bits: int, scale_factor: float) -> float:
    """The frames' quantisation step in 16-bit ADU (16 for PhotSat's 12-bit values x16; 0 for
    values that are not quantised): :func:`value_step` in the stored units, converted."""
    return value_step(records) * float(input_factor(input_bits, scale_factor))


@dataclass(frozen=True)
class BlockPlan:
    """Everything needed to combine any row range of one group: plain values, so that any
    executor (a thread here, a process or a cluster worker elsewhere) can run
    :func:`combine_rows` on it.

    Attributes
    ----------
    records
        The group's frames (inspected, one shape).
    method, clip_sigma, clip_iters
        The combine.
    pool
        Rows sharing one typical noise (:func:`~bias_pipeline.combine.pool_rows`); every row
        range given to :func:`combine_rows` starts at a multiple of it.
    quantum
        The stored values' quantisation step (:func:`value_step`).
    outlier_sigma, judged
        The frame statistics' threshold, and whether frames are judged at all.
    factor
        Stored units to 16-bit ADU.
    as_uint16
        Whether every frame is plain unsigned 16-bit (read as integers, else as float32).
    engine
        ``"numba"`` or ``"numpy"`` (:func:`bias_pipeline.compiled.engine`).
    measure_rows, correct_rows
        Whether to measure each frame's row offsets against the block's preliminary master, and
        whether to remove them and combine again (:mod:`bias_pipeline.row_noise`).
    efficiency
        The combine's efficiency (1.2533 for a median, 1 otherwise), for the row offsets'
        expected variance.
    known_offsets
        ``(n_frames, rows)`` row offsets [ADU] a first pass measured: the frames are corrected
        by them and combined once, nothing measured or judged (``None``: measure as above).
    """

    records: tuple[FrameRecord, ...]
    method: str
    clip_sigma: float
    clip_iters: int
    pool: int
    quantum: float
    outlier_sigma: float
    judged: bool
    factor: float
    as_uint16: bool
    engine: str
    measure_rows: bool = False
    correct_rows: bool = False
    efficiency: float = 1.0
    known_offsets: np.ndarray | None = None


@dataclass
class BlockResult:
    """One row range of a group combined: the master's rows and per frame the block's sums.

    Attributes
    ----------
    start, stop
        The row range.
    master, noise, error
        ``(stop - start, columns)`` float32 in 16-bit ADU.
    n_used
        Frames kept per pixel (:func:`~bias_pipeline.combine_kernels.count_dtype`).
    outliers, sums, squares, inside
        Per frame: pixels beyond ``outlier_sigma`` noise of the master, and the sum, sum of
        squares and count of the other pixels' differences from it (stored units).
    row_offsets, row_expected
        ``(n_frames, stop - start)`` each frame's row offsets against the preliminary master
        [ADU] and the read noise's part of their squares [ADU^2]; ``None`` when not measured.
    row_spectrum, row_means
        ``(n_frames, columns // 2 + 1)`` each frame's power along the block's rows against the
        preliminary master, summed over them, and ``(n_frames, stop - start)`` its mean
        difference in each row (stored units; :func:`~bias_pipeline.pattern_noise.block_spectra`);
        ``None`` when not measured.
    """

    start: int
    stop: int
    master: np.ndarray
    noise: np.ndarray
    error: np.ndarray
    n_used: np.ndarray
    outliers: np.ndarray
    sums: np.ndarray
    squares: np.ndarray
    inside: np.ndarray
    row_offsets: np.ndarray | None = None
    row_expected: np.ndarray | None = None
    row_spectrum: np.ndarray | None = None
    row_means: np.ndarray | None = None
    levels: np.ndarray | None = None


# Buffers one thread reuses from block to block: allocating them anew for every block would
# spend more time faulting in fresh pages than the kernels spend on the pixels.
_thread_buffers = threading.local()


def _buffers() -> dict[str, np.ndarray]:
    held = getattr(_thread_buffers, "held", None)
    if held is None:
        held = _thread_buffers.held = {}
    return held


def _buffer(held: dict[str, np.ndarray], name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    size = int(np.prod(shape))
    array = held.get(name)
    if array is None or array.dtype != np.dtype(dtype) or array.size < size:
        array = held[name] = np.empty(size, dtype=dtype)
    return array[:size].reshape(shape)


def release_buffers() -> None:
    """Drop the calling thread's block buffers (after a group, so that they do not outlive it)."""
    _thread_buffers.held = {}


def combine_rows(plan: BlockPlan, start: int, stop: int) -> BlockResult:
    """Read rows ``start:stop`` of every frame of ``plan`` once and combine them.

    The one task of step 2: a function of (group, row range) returning plain arrays, so that
    any executor can run it. With the compiled kernels the block is read as stored and every
    per-pixel quantity (decoding, sorting, median, clip, noise, error, frame statistics) is
    computed in the kernels' passes over it; the numpy path
    (:func:`~bias_pipeline.combine.combine_sorted`) is the reference.

    Parameters
    ----------
    plan
        The group and its combine.
    start, stop
        Row range; ``start`` a multiple of ``plan.pool``.

    Returns
    -------
    BlockResult

    Raises
    ------
    CombineReadError
        When a frame can no longer be read; ``exc.record`` is the frame.
    """
    records = plan.records
    assert records[0].shape is not None
    columns = records[0].shape[1]
    n, height = len(records), stop - start
    held = _buffers()
    compiled = plan.engine == "numba"
    dtype = np.uint16 if plan.as_uint16 else np.float32
    raw = _buffer(held, "raw", (n, height, columns), dtype)
    for index, record in enumerate(records):
        try:
            if not plan.as_uint16:
                raw[index] = read_rows(record, start, stop)
            elif compiled:
                read_stored_rows(record, start, stop, raw[index])
            else:
                read_uint16_rows(record, start, stop, raw[index])
        except FrameReadError as exc:
            raise CombineReadError(str(exc), record) from exc
    if plan.known_offsets is not None:  # a second pass: the first measured the offsets and judged the frames
        values = _buffer(held, "values", raw.shape, np.float32)
        for index in range(n):
            _decode(plan, raw[index], values[index])
        values -= plan.known_offsets[:, start:stop, None] / np.float32(plan.factor)
        master, noise, error, n_used, statistics = _combine_values(plan, values, swapped=False)
        return BlockResult(start, stop, master, noise, error, n_used, *statistics, levels=_levels(plan, values, held))
    master, noise, error, n_used, statistics = _combine_values(plan, raw, swapped=compiled and plan.as_uint16)
    measured = _measure_rows(plan, raw, master, noise, held)
    if measured is None:
        return BlockResult(start, stop, master, noise, error, n_used, *statistics, levels=_levels(plan, raw, held))
    offsets, expected, values, (spectrum, means) = measured
    if values is not None:
        # Each frame's row offsets against the preliminary master removed, the frames combined
        # again: the noise map is then the pixels' own, and the master keeps the frames' mean
        # row offsets (which no estimator can tell from a static row pattern).
        # The frame statistics stay those against the preliminary master, before the correction:
        # a frame's level offset from the rest (a constant over its rows) must not be corrected
        # away before step 2 judges it.
        values -= offsets[:, :, None] / np.float32(plan.factor)
        master, noise, error, n_used, _ = _combine_values(plan, values, swapped=False)
    levels = _levels(plan, raw if values is None else values, held)
    return BlockResult(
        start, stop, master, noise, error, n_used, *statistics, offsets, expected, spectrum, means, levels=levels
    )


def _levels(plan: BlockPlan, values: np.ndarray, held: dict[str, np.ndarray]) -> np.ndarray | None:
    """The two-level statistics of the block (:func:`~bias_pipeline.telegraph.level_statistics`)
    from the values the last combine used: the compiled combine leaves them sorted along the
    frames in its ``ordered`` buffer (decoded, stored units); the numpy path sorts a copy."""
    n, height, columns = values.shape
    if n < TELEGRAPH_MIN_FRAMES:
        return None
    ordered = held.get("ordered") if plan.engine == "numba" else None
    if ordered is not None and ordered.size >= n * height * columns:
        return level_statistics(ordered[: n * height * columns].reshape(n, -1), columns, plan.pool, held)
    return level_statistics(np.sort(values, axis=0).reshape(n, -1), columns, plan.pool, held)


def _combine_values(
    plan: BlockPlan, values: np.ndarray, *, swapped: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """One block's frames (stored units; ``swapped``: the file's bytes) combined by ``plan``'s
    engine: the maps in 16-bit ADU, counts, and the frame statistics in stored units."""
    n = values.shape[0]
    held = _buffers()
    if plan.engine == "numba":
        return combine_block_compiled(
            values,
            swapped=swapped,
            method=plan.method,
            clip_sigma=plan.clip_sigma,
            clip_iters=plan.clip_iters,
            pool=plan.pool,
            quantum=plan.quantum,
            outlier_sigma=plan.outlier_sigma,
            judged=plan.judged,
            factor=plan.factor,
            scratch=held,
        )
    work_copy = _buffer(held, "sorted", values.shape, values.dtype.type)
    np.copyto(work_copy, values)
    combined = combine_sorted(
        sort_frames(work_copy),  # sorted for "mean" too: sums in one order, whatever the files' order
        plan.method,
        clip_sigma=plan.clip_sigma,
        clip_iters=plan.clip_iters,
        pool=plan.pool,
        quantum=plan.quantum,
    )
    if plan.judged:
        statistics = _frame_statistics(values, combined, plan.outlier_sigma, plan.pool, plan.quantum)
    else:
        statistics = (np.zeros(n, np.int64), np.zeros(n), np.zeros(n), np.zeros(n, np.int64))
    maps = [combined.master, combined.noise, combined.error]
    if plan.factor != 1:
        maps = [image * plan.factor for image in maps]
    return (*maps, combined.n_used.astype(count_dtype(n)), statistics)  # type: ignore[return-value]


def _decode(plan: BlockPlan, raw: np.ndarray, out: np.ndarray) -> np.ndarray:
    """One frame's block as read (the file's bytes for the compiled path) into float32 stored values."""
    if plan.engine == "numba" and plan.as_uint16:  # the file's bytes: big-endian int16 + 32768
        np.bitwise_xor(raw.view(np.dtype(">u2")), np.uint16(0x8000), out=out, casting="unsafe")
    else:
        np.copyto(out, raw, casting="unsafe")
    return out


def _measure_rows(
    plan: BlockPlan, raw: np.ndarray, master: np.ndarray, noise: np.ndarray, held: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[np.ndarray, np.ndarray]] | None:
    """Each frame's row offsets against the block's preliminary master [ADU] and the read noise's
    part of their squares [ADU^2] (:func:`~bias_pipeline.row_noise.split_row_offsets`), the frames
    as float32 stored values when the plan corrects (else ``None``), and each frame's spectra for the
    pattern-noise test (stored units; ``noise`` [ADU] says which pixels they leave out); ``None``
    when the plan measures no row noise."""
    if not plan.measure_rows:
        return None
    n = raw.shape[0]
    values = _buffer(held, "values", raw.shape, np.float32) if plan.correct_rows else None
    reference = master / np.float32(plan.factor)
    offsets = np.empty(raw.shape[:2], dtype=np.float32)
    expected = np.empty(raw.shape[:2], dtype=np.float64)
    difference = _buffer(held, "difference", raw.shape[1:], np.float32)
    spectra = np.empty((n, raw.shape[2] // 2 + 1), dtype=np.float64)
    means = np.empty(raw.shape[:2], dtype=np.float64)
    # Pixels far from the master (cosmic rays, telegraph jumps) are left out of the spectra (set to
    # 0): their power is white but large, and would hide a pattern. Floors as for the frame statistics.
    floor = np.fmax(noise, typical_noise(noise, plan.pool)) / np.float32(plan.factor)
    reach = np.float32(plan.outlier_sigma) * np.fmax(floor, quantisation_floor(plan.quantum))
    for index in range(n):
        frame = difference if values is None else values[index]
        _decode(plan, raw[index], frame)
        np.subtract(frame, reference, out=difference)
        offsets[index], expected[index] = split_row_offsets(difference)
        np.putmask(difference, ~(np.abs(difference) <= reach), np.float32(0.0))  # NaN too
        spectra[index], means[index] = block_spectra(difference)
    offsets *= np.float32(plan.factor)
    expected *= float(plan.factor) ** 2
    return offsets, expected, values, (spectra, means)


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
    row_correction: str = "off",
    cluster: BlockCluster | None = None,
) -> GroupResult:
    """Combine frames on disk block by block into a master with its noise and error maps.

    The frame is cut into row blocks; worker threads run :func:`combine_rows` on them (the
    kernels release the interpreter lock) and the blocks' rows are put together here. Every
    result depends on its own row (or pool of rows) only, so the maps are the same whatever
    the block height or thread count.

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
    row_correction
        ``"off"``: row noise measured (``GroupResult.row_noise``) but left in; ``"on"``: each
        frame's row offsets against the preliminary master removed before combining;
        ``"auto"``: removed when :func:`~bias_pipeline.row_noise.row_noise_significant` says so
        (the frames are then read and combined a second time).
    cluster
        Run the blocks on this Dask cluster (:mod:`bias_pipeline.cluster`) instead of local
        threads; the products are the same.

    Returns
    -------
    GroupResult
        Maps float32 in 16-bit ADU, counts int16 (int32 beyond 32767 frames).

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
    measurable = n >= 2 and columns >= MIN_ROW_PIXELS
    correctable = measurable and row_correction != "off"
    step = block_rows(n, columns, rows, memory_limit, workers, dtype.itemsize, tall=compressed, corrected=correctable)
    # A narrow frame's rows share their noise floor in pools; a block holds whole pools, so
    # the products do not depend on how the frame is cut into blocks.
    floor_pool = pool_rows(columns)
    step = min(rows, max(floor_pool, step // floor_pool * floor_pool))
    factor = input_factor(input_bits, scale_factor)
    plan = BlockPlan(
        records=tuple(records),
        method=method,
        clip_sigma=clip_sigma,
        clip_iters=clip_iters,
        pool=floor_pool,
        quantum=value_step(records),
        outlier_sigma=outlier_sigma,
        judged=n >= 3 and not is_tiny(records[0]),  # frames are judged against the master
        factor=factor,
        as_uint16=as_uint16,
        engine=engine(),
        measure_rows=measurable,
        correct_rows=correctable and row_correction == "on",
        efficiency=MEDIAN_EFFICIENCY if method == "median" else 1.0,
    )
    if row_correction == "on" and not plan.correct_rows:
        logger.warning(
            "--row-correction on: rows of %d pixels (%d frames) are too few to measure row noise on; not corrected",
            columns, n,
        )  # fmt: skip
    needed_mb = workers * step * block_bytes_per_row(n, columns, dtype.itemsize, correctable) / 2**20
    if needed_mb > memory_limit:
        logger.warning(
            "%d frames of %d columns need %.3g MiB per row block, more than --memory-limit %g MiB",
            n, columns, needed_mb, memory_limit,
        )  # fmt: skip
    starts = list(range(0, rows, step))
    workers = min(workers, len(starts))
    logger.debug(
        "combining %d frames of %dx%d in %d blocks of up to %d rows on %d threads (%s)",
        n, rows, columns, len(starts), step, workers, plan.engine,
    )  # fmt: skip
    result = _combine_pass(plan, starts, step, workers, on_rows, cluster)
    if row_correction == "auto" and result.row_test is not None and result.row_test.significant:
        # The second pass reads the frames again and combines them corrected by the offsets the
        # first measured (the same a one-pass "on" measures); the first's frame statistics,
        # offsets and spectra stand. Not counted again on the progress bar, whose total is one
        # reading of every frame.
        corrected = dataclasses.replace(
            plan, measure_rows=False, correct_rows=True, judged=False, known_offsets=result.row_offsets
        )
        maps = _combine_pass(corrected, starts, step, workers, None, cluster).combined
        removed = float(np.sqrt(np.mean(np.square(result.row_noise)))) if result.row_noise is not None else 0.0
        combined = dataclasses.replace(maps, row_noise=removed)
        levels = _frame_levels(result.fingerprint, plan, combined, result.row_noise, rows) if plan.judged else None
        result = dataclasses.replace(result, combined=combined, row_corrected=True)
        if levels is not None:  # judged against the final master's typical noise, as "on" does
            result = dataclasses.replace(result, offset=levels[0], offset_error=levels[1])
    return result


def _combine_pass(
    plan: BlockPlan,
    starts: Sequence[int],
    step: int,
    workers: int,
    on_rows: Callable[[int], None] | None,
    cluster: BlockCluster | None = None,
) -> GroupResult:
    """One pass of :func:`combine_rows` over every block of ``plan``, put together."""
    records = plan.records
    assert records[0].shape is not None
    rows, columns = records[0].shape
    n = len(records)
    master = np.empty((rows, columns), dtype=np.float32)
    noise = np.empty_like(master)
    error = np.empty_like(master)
    n_used = np.empty((rows, columns), dtype=count_dtype(n))
    offsets = np.zeros((n, rows), dtype=np.float32) if plan.measure_rows else None
    expected = np.zeros((n, rows), dtype=np.float64)
    spectrum = np.zeros((n, columns // 2 + 1)) if plan.measure_rows else None
    row_means = np.zeros((n, rows)) if plan.measure_rows else None
    level_maps = np.empty((2, rows, columns), dtype=np.float32) if n >= TELEGRAPH_MIN_FRAMES else None
    # The blocks' spectra are added in block order, whatever order they come in: the same sums
    # for any thread count. Blocks come about in order, so few wait.
    waiting: dict[int, np.ndarray] = {}
    added = 0
    # Per block, so that the totals are summed in one order whatever the thread count.
    outliers = np.zeros((len(starts), n), dtype=np.int64)
    sums = np.zeros((len(starts), n), dtype=np.float64)
    squares = np.zeros((len(starts), n), dtype=np.float64)
    inside = np.zeros((len(starts), n), dtype=np.int64)

    def place(block_index: int, result: BlockResult) -> None:
        nonlocal added
        rows_ = slice(result.start, result.stop)
        master[rows_], noise[rows_], error[rows_], n_used[rows_] = (
            result.master, result.noise, result.error, result.n_used
        )  # fmt: skip
        outliers[block_index], sums[block_index] = result.outliers, result.sums
        squares[block_index], inside[block_index] = result.squares, result.inside
        if level_maps is not None and result.levels is not None:
            level_maps[:, rows_] = result.levels
        if offsets is not None and result.row_offsets is not None and result.row_expected is not None:
            offsets[:, rows_], expected[:, rows_] = result.row_offsets, result.row_expected
        if spectrum is not None and row_means is not None and result.row_spectrum is not None:
            row_means[:, rows_] = result.row_means
            waiting[block_index] = result.row_spectrum
            while added in waiting:
                spectrum[:] += waiting.pop(added)
                added += 1
        if on_rows is not None:
            on_rows((result.stop - result.start) * n)

    def task(start: int) -> BlockResult:
        return combine_rows(plan, start, min(rows, start + step))

    try:
        if cluster is not None:
            cluster.run_blocks(combine_rows, plan, [(start, min(rows, start + step)) for start in starts], place)
        else:
            run_blocks(task, starts, workers, place)
    finally:
        release_buffers()  # the buffers of a single-threaded run live in this thread
    typical_noise = nan_median(noise) if plan.engine == "numba" else float(np.nanmedian(noise))
    row_test = row_noise = None
    removed = 0.0
    if offsets is not None:
        # About each frame's mean over its rows: a level offset of the whole frame is no row noise.
        centred = offsets.astype(np.float64)
        centred -= centred.mean(axis=1, keepdims=True)
        squared = np.square(centred)
        row_test = row_noise_significant(float(squared.sum()), float(expected.sum()), squared.size)
        row_noise = frame_row_noise(squared.mean(axis=1), expected.mean(axis=1))
        if plan.correct_rows:
            removed = float(np.sqrt(np.mean(np.square(row_noise))))
    combined = Combined(master, noise, error, n_used, typical_noise, row_noise=removed, levels=level_maps)
    total_sum, total_squares, total_inside = sums.sum(axis=0), squares.sum(axis=0), inside.sum(axis=0)
    fingerprint = [(float(a), float(b), int(c)) for a, b, c in zip(total_sum, total_squares, total_inside, strict=True)]
    unknown = np.full(n, np.nan)
    levels = _frame_levels(fingerprint, plan, combined, row_noise, rows) if plan.judged else (unknown, unknown)
    return GroupResult(
        combined,
        outliers.sum(axis=0) / float(rows * columns),
        *levels,
        fingerprint,
        row_offsets=offsets,
        row_noise=row_noise if row_noise is not None else unknown,
        row_test=row_test,
        row_corrected=plan.correct_rows,
        row_spectrum=spectrum * float(plan.factor) ** 2 if spectrum is not None else None,
        row_means=row_means * float(plan.factor) if row_means is not None else None,
    )


def _frame_levels(
    fingerprint: Sequence[tuple[float, float, int]],
    plan: BlockPlan,
    combined: Combined,
    row_noise: np.ndarray | None,
    rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's mean difference from the master [ADU] and its standard error, from the
    frame statistics' sums (stored units) and the final master's typical noise."""
    table = np.array(fingerprint, dtype=np.float64).reshape(-1, 3)
    total_sum, total_squares, total_inside = table[:, 0], table[:, 1], table[:, 2]
    typical = combined.typical_noise / float(plan.factor)  # in stored units, as the sums
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total_sum / total_inside
        # The scatter of a frame's differences, at least the typical noise: in a frame of a few
        # pixels the frame's own scatter says nothing.
        spread = np.fmax(np.sqrt(np.maximum(total_squares / total_inside - mean**2, 0.0)), typical)
        variance = spread**2 / total_inside
        if row_noise is not None:
            # Row noise is common to a row: the mean over the frame keeps its mean over the rows,
            # which its pixels' scatter alone would count as 1 / sqrt(pixels) of itself.
            n = len(fingerprint)
            variance = variance + np.nan_to_num(np.square(row_noise / float(plan.factor))) * (1.0 - 1.0 / n) / rows
        mean_error = np.sqrt(variance)
    return mean * float(plan.factor), mean_error * float(plan.factor)


def run_blocks(
    task: Callable[[int], BlockResult],
    starts: Sequence[int],
    workers: int,
    place: Callable[[int, BlockResult], None],
) -> None:
    """Run ``task`` on every block start on ``workers`` threads; ``place`` each result (in this
    thread, as it comes). The first failure stops the blocks not yet started and is raised."""
    if workers <= 1:
        for block_index, start in enumerate(starts):
            place(block_index, task(start))
        return

    with worker_pool(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="combine")) as pool:
        futures = {pool.submit(task, start): index for index, start in enumerate(starts)}
        for future in as_completed(futures):
            place(futures[future], future.result())


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
    if not np.any(np.isfinite(offsets)):
        return []
    typical = combined.typical_noise
    if math.isnan(typical):
        finite_noise = combined.noise[np.isfinite(combined.noise)]
        typical = float(np.median(finite_noise)) if finite_noise.size else math.nan
    if not math.isfinite(typical):
        return []
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


def patterned_frames(records: Sequence[FrameRecord], result: GroupResult) -> list[Rejection]:
    """Frames with a periodic pattern far beyond the noise against their group's master
    (interference on the readout; the rule: :mod:`bias_pipeline.pattern_noise`). Not judged in
    groups of fewer than three frames, of tiny frames, or whose rows were too short to measure."""
    if (
        len(records) < 3
        or is_tiny(records[0])
        or result.row_spectrum is None
        or result.row_means is None
        or records[0].shape is None
    ):
        return []
    rows, columns = records[0].shape
    read_noise = result.combined.typical_noise
    rejected = []
    for record, spectrum, means in zip(records, result.row_spectrum, result.row_means, strict=True):
        peak = frame_pattern(spectrum, means, rows, columns, len(records))
        if peak is not None and is_patterned(peak, read_noise):
            rejected.append((record, pattern_reason(peak, read_noise)))
    return rejected

"""Every figure of the package: step 5's maps and plots, and the report's figures.

Maps are drawn from a block-averaged copy when the frame is larger than :data:`PLOT_MAX_PIXELS`
on a side (the factor is in the title), with colour limits from the 0.5 and 99.5 percentiles so
one hot pixel does not wash out the picture. A 2048 x 2048 map becomes 512 x 512 means of 4 x 4
blocks: the map's axes are about 430 screen pixels wide, so more pixels would not be seen, and a
mean rather than a stride (every 4th pixel) because a stride would show one pixel in 16 at
random, hot pixels included or not by luck, while the mean keeps every pixel's share. Step 5 and
the report get the block sums from the same compiled pass that computes their statistics
(:mod:`bias_pipeline.eval_kernels`), not from a second pass over the full-size map. Histograms
count every unflagged pixel, none sampled.

Each figure is built by a ``*_figure`` function from arrays or rows in memory; step 5 saves it as
a PNG (``plot_*``), the report embeds its bytes (:func:`figure_png`), so the report never reads a
PNG back from disk. Step 5's maps are drawn one after another on one reused figure per process
(building a figure costs about as much as rendering it), in forked processes when there are
several; titles sit at a fixed height and margins are fixed, since matplotlib's automatic title
placement and ``tight_layout`` render the figure's texts once more to measure them.

matplotlib is imported on first use, because importing it costs a quarter of a second that a
run without plots should not pay; :func:`draw_plots` imports it before forking its workers, so
each process of a run imports it once.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import eval_kernels
from .compiled import engine
from .frames import FrameRecord
from .products import write_png_atomic
from .temperature_check import FLAG_TEMPERATURE, TemperatureCheck, with_temperature_checks

logger = logging.getLogger(__name__)

PLOT_MAX_PIXELS = 512
# Titles at a fixed height: matplotlib's automatic placement measures every tick label of
# the axes first, a third of a figure's drawing time, and our axes have none on top.
TITLE_Y = 1.0
PNG_COMPRESS_LEVEL = 1  # as write_png_atomic: the report embeds the same bytes step 5 writes


def _figure(**kwargs: Any) -> Any:
    """A matplotlib Figure (matplotlib imported here, on first use)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def figure_png(figure: Any, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """A figure as PNG bytes (for the report, which embeds its images)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", pil_kwargs={"compress_level": compress_level})
    return buffer.getvalue()


# --------------------------------------------------------------------------- maps


def plot_factor(shape: Sequence[int], max_pixels: int = PLOT_MAX_PIXELS) -> int:
    """The block-averaging factor of a map of ``shape`` drawn at most ``max_pixels`` a side."""
    return max(1, math.ceil(max(shape) / max_pixels))


def downsample(image: np.ndarray, max_pixels: int = PLOT_MAX_PIXELS) -> tuple[np.ndarray, int]:
    """Block-average ``image`` by the smallest integer factor that fits ``max_pixels`` a side.

    NaN pixels are left out of each block's mean. Returns the image and the factor.

    >>> small, factor = downsample(np.ones((48, 64)), 16)
    >>> small.shape, factor
    ((12, 16), 4)
    """
    factor = plot_factor(image.shape, max_pixels)
    if factor == 1:
        return image, 1
    rows = image.shape[0] // factor * factor
    cols = image.shape[1] // factor * factor
    blocks = image[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor)
    if image.dtype == np.float32 and np.isfinite(image).all():
        # Quicker path for the usual map without NaN or inf; the float64 sum keeps it exact.
        return (blocks.sum(axis=(1, 3), dtype=np.float64) / (factor * factor)).astype(np.float32), factor
    finite = np.isfinite(blocks)
    counts = finite.sum(axis=(1, 3))
    sums = np.where(finite, blocks, 0).sum(axis=(1, 3), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts).astype(np.float32), factor


def robust_limits(image: np.ndarray) -> tuple[float, float]:
    """Colour limits from the 0.5 and 99.5 percentiles of the finite pixels."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [0.5, 99.5])
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def symmetric_limits(image: np.ndarray) -> tuple[float, float]:
    """Colour limits ``(-m, m)`` for a signed map, ``m`` the 99.5 percentile of the finite
    pixels' absolute values, so that 0 sits in the middle of a diverging colour map.

    >>> symmetric_limits(np.array([-1.0, 0.5, 2.0, np.nan]))[1] > 1.9
    True
    """
    finite = np.abs(image[np.isfinite(image)])
    if finite.size == 0:
        return -1.0, 1.0
    largest = float(np.percentile(finite, 99.5))
    largest = largest if largest > 0 else 1.0
    return -largest, largest


def shared_limits(*images: np.ndarray) -> tuple[float, float]:
    """Colour limits common to several maps (:func:`robust_limits` of each, the widest range),
    so that maps drawn with them can be compared by eye."""
    limits = [robust_limits(image) for image in images]
    return min(low for low, _ in limits), max(high for _, high in limits)


def block_note(factor: int) -> str:
    """What a map downsampled by ``factor`` shows (empty for every pixel).

    >>> block_note(4), block_note(1)
    ('4 x 4 block means', '')
    """
    return f"{factor} x {factor} block means" if factor > 1 else ""


@dataclass
class ImagePlot:
    """One map to draw: the downsampled image and what the figure says about it (small enough
    to keep for every temperature and to hand to another process)."""

    shown: np.ndarray
    factor: int
    shape: tuple[int, int]
    path: Path
    title: str
    unit: str
    cmap: str = "viridis"
    #: Colour limits; None: :func:`robust_limits` of the map.
    limits: tuple[float, float] | None = None

    @classmethod
    def of(cls, image: np.ndarray, path: str | Path, title: str, unit: str, cmap: str = "viridis") -> ImagePlot:
        """Downsample ``image`` (see :func:`downsample`) for a plot at ``path``."""
        shown, factor = downsample(image)
        return cls(shown, factor, (int(image.shape[0]), int(image.shape[1])), Path(path), title, unit, cmap)

    def draw(self) -> Path:
        """Write the PNG."""
        return _draw_image(self)


def plot_image(image: np.ndarray, path: str | Path, title: str, unit: str, cmap: str = "viridis") -> Path:
    """Draw one map as a PNG with robust limits, a labelled colour bar and pixel axes."""
    return ImagePlot.of(image, path, title, unit, cmap).draw()


def draw_map(
    figure: Any,
    axes: Any,
    shown: np.ndarray,
    shape: tuple[int, int],
    cmap: str,
    unit: str,
    limits: tuple[float, float] | None = None,
) -> None:
    """Draw a (block-averaged) map on ``axes`` in the full frame's pixel coordinates, with
    colour limits ``limits`` (default: :func:`robust_limits`) and a colour bar labelled ``unit``."""
    rows, cols = shape
    low, high = limits if limits is not None else robust_limits(shown)
    artist = axes.imshow(
        shown,
        origin="lower",
        cmap=cmap,
        vmin=low,
        vmax=high,
        extent=(-0.5, cols - 0.5, -0.5, rows - 0.5),
        interpolation="nearest",
        aspect="equal",
    )
    axes.set_xlabel("column (pixel)")
    axes.set_ylabel("row (pixel)")
    figure.colorbar(artist, ax=axes).set_label(unit)


def _draw_image(plot: ImagePlot) -> Path:
    return _MapPainter().draw(plot)


class _MapPainter:
    """Draws maps one after another on one figure: the axes, colour bar and labels are made
    for the first map and only the image, its limits, colour map and texts change for the
    next (building a figure costs about as much as rendering it)."""

    def __init__(self) -> None:
        self.figure: Any = None
        self.image: Any = None
        self.key: tuple[object, ...] = ()

    def draw(self, plot: ImagePlot) -> Path:
        title = plot.title
        if plot.factor > 1:
            title = f"{title}\n({block_note(plot.factor)})"
        rows, cols = plot.shape
        key = (plot.shape, plot.shown.shape)
        if self.figure is None or key != self.key:
            self.figure = _figure(figsize=(7.0, 5.6), dpi=100)
            self.axes = self.figure.add_subplot()
            draw_map(self.figure, self.axes, plot.shown, plot.shape, plot.cmap, plot.unit, plot.limits)
            self.image = self.axes.images[0]
            self.colorbar = self.image.colorbar
            self.title = self.axes.set_title(title, fontsize=10, y=TITLE_Y)
            # Fixed margins: tight_layout measures every text and costs more than drawing the map.
            self.figure.subplots_adjust(left=0.1, right=0.92, bottom=0.1, top=0.9)
            self.key = key
        else:
            low, high = plot.limits if plot.limits is not None else robust_limits(plot.shown)
            self.image.set_data(plot.shown)
            self.image.set_cmap(plot.cmap)
            self.image.set_clim(low, high)
            self.colorbar.set_label(plot.unit)
            self.title.set_text(title)
        return write_png_atomic(plot.path, self.figure)


def _draw_chunk(plots: Sequence[ImagePlot]) -> list[Path]:
    """Draw ``plots`` in order with one :class:`_MapPainter` (a worker process's task)."""
    painter = _MapPainter()
    return [painter.draw(plot) for plot in plots]


# --------------------------------------------------------------------------- drawing in processes


def draw_plots(plots: Sequence[ImagePlot], workers: int = 1, show_progress: bool = False) -> list[Path]:
    """Draw maps, in ``workers`` forked processes when there are several (matplotlib holds the
    interpreter lock while drawing, so threads would not help); in order, same files either way.

    Parameters
    ----------
    plots
        The maps.
    workers
        Processes; 1 draws here. Forking is used only where the platform supports it.
    show_progress
        tqdm bar on a terminal.

    Returns
    -------
    list of Path
        The PNGs written.
    """
    # Fork only from a single-threaded process: forking while other threads hold locks (a
    # caller's own threads, tqdm's monitor) can deadlock the child.
    can_fork = "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
    if plots:
        _figure()  # matplotlib imported here, once: the forked workers inherit it
    progress = tqdm(total=len(plots), desc="plotting", unit="map", disable=None if show_progress else True, leave=False)
    with progress:
        if workers > 1 and len(plots) > 2 and can_fork:
            return _draw_in_processes(plots, min(workers, len(plots)), progress)
        painter = _MapPainter()
        return [_advance(progress, painter.draw(plot)) for plot in plots]


def _draw_in_processes(plots: Sequence[ImagePlot], workers: int, progress: tqdm) -> list[Path]:
    """Draw in forked worker processes; the plots a dead worker left (the kernel's OOM killer) are
    drawn here instead. On any exception (Ctrl-C, SIGTERM) the workers are killed, not waited
    for: a worker forked just as the signal came would otherwise wait on its queue for ever,
    and the exit with it."""
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_plot_worker_setup,
        initargs=(os.getpid(),),
    )
    drawn: list[Path] = []
    # A few chunks per worker: each chunk is drawn on one reused figure, and a worker that is
    # done early takes the next chunk.
    size = max(1, math.ceil(len(plots) / (2 * workers)))
    chunks = [plots[i : i + size] for i in range(0, len(plots), size)]
    try:
        for paths in pool.map(_draw_chunk, chunks):
            drawn += [_advance(progress, path) for path in paths]
    except BrokenProcessPool:
        logger.warning(
            "a plotting process died (out of memory?); the %d maps left are drawn here", len(plots) - len(drawn)
        )
        painter = _MapPainter()
        drawn += [_advance(progress, painter.draw(plot)) for plot in plots[len(drawn) :]]
    except BaseException:
        _kill_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return drawn


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """End a pool's worker processes now (the pool keeps them in ``_processes``, its only record)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.kill()


def _advance(progress: tqdm, path: Path) -> Path:
    progress.update()
    return path


def _plot_worker_setup(parent: int) -> None:
    """In a forked drawing process: die with the parent, die quietly on SIGTERM and leave Ctrl-C
    to the parent (which cancels the pool), instead of inheriting the parent's handler and its
    traceback.

    A parent killed outright (SIGKILL) cannot stop its pool; without this, the workers would
    wait on their pipe for ever and keep the caller's stdout and stderr open, so a caller
    waiting for the output (a scheduler, CI) would hang.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not _die_with_parent():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> bool:
    """Ask Linux to send SIGKILL to this process when its parent ends; whether it could."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    """Where Linux's parent-death signal is not available: end this process once its parent is gone."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


# --------------------------------------------------------------------------- step 5's plots


def summary_figure(rows: Sequence[Mapping[str, Any]]) -> Any:
    """MAE [ADU], MAPE [%] and MAE in read-noise units against temperature, each on its own
    axes, in-sample (fitted with the master) beside held-out (fitted without it).

    Parameters
    ----------
    rows
        Step 5's summary rows (keys of ``SUMMARY_COLUMNS``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    temps = [r["temperature"] for r in rows]
    figure = _figure(figsize=(7.0, 8.0), dpi=100)
    panels = figure.subplots(3, 1, sharex=True)
    for axes, key, unit in zip(panels, ("mae", "mape"), ("MAE (ADU)", "MAPE (%)"), strict=False):
        axes.plot(temps, [r[f"{key}_mean"] for r in rows], "o-", color="C0", label="in-sample mean")
        axes.plot(temps, [r[f"{key}_p95"] for r in rows], "^:", color="C0", label="in-sample 95th pct")
        axes.plot(temps, [r[f"heldout_{key}_mean"] for r in rows], "s-", color="C3", label="held-out mean")
        axes.plot(temps, [r[f"heldout_{key}_p95"] for r in rows], "v:", color="C3", label="held-out 95th pct")
        axes.set_ylabel(unit)
    axes = panels[2]
    axes.plot(temps, [r["mae_per_read_noise"] for r in rows], "o-", color="C0", label="in-sample")
    axes.plot(temps, [r["heldout_mae_per_read_noise"] for r in rows], "s-", color="C3", label="held-out")
    axes.set_ylabel("MAE / read noise")
    for axes in panels:
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, ncol=2)
    flagged = int(rows[0]["n_flagged"]) if rows else 0
    panels[0].set_title(
        f"Model error per master bias (held-out: refitted without it; {flagged} flagged pixels left out)",
        fontsize=9,
        y=TITLE_Y,
    )
    panels[2].set_xlabel("sensor temperature (deg C)")
    # Fixed margins rather than tight_layout, which renders the whole figure once more to measure it.
    figure.subplots_adjust(left=0.11, right=0.97, bottom=0.07, top=0.95, hspace=0.12)
    return figure


def plot_summary(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write :func:`summary_figure` of ``rows`` as a PNG at ``path``."""
    return write_png_atomic(path, summary_figure(rows))


def temperature_check_figure(
    records: Sequence[FrameRecord], tolerance: float, checks: Mapping[Path, TemperatureCheck] | None = None
) -> Any:
    """Header temperature against the temperature estimated from each frame's bias.

    Parameters
    ----------
    records
        The frames; those without an estimate are left out.
    tolerance
        ``--temperature-tolerance`` [deg C], shaded around zero difference.
    checks
        The check's results by record path (:func:`~bias_pipeline.temperature_check.check_frame_temperatures`);
        when ``None``, the records' own ``temperature_est`` and ``flag`` are shown.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if checks is not None:
        records = with_temperature_checks(records, checks)
    done = [r for r in records if r.temperature_est is not None]
    header = np.array([r.temperature for r in done], dtype=float)
    estimated = np.array([r.temperature_est for r in done], dtype=float)
    bad = np.array([r.flag == FLAG_TEMPERATURE for r in done], dtype=bool)
    figure = _figure(figsize=(7.0, 6.5), dpi=100)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    top.plot(header[~bad], estimated[~bad], "o", ms=4, label="frames")
    if bad.any():
        top.plot(header[bad], estimated[bad], "x", color="C3", ms=8, label=f"beyond {tolerance:g} deg C")
    if header.size:
        line = [min(header.min(), estimated.min()), max(header.max(), estimated.max())]
        top.plot(line, line, "k-", lw=0.8, label="equal")
    top.set_ylabel("estimated from the bias (deg C)")
    top.set_title(f"Housekeeping check: {int(bad.sum())} of {len(done)} frames beyond {tolerance:g} deg C", y=TITLE_Y)
    top.legend(fontsize=8)
    bottom.plot(header, estimated - header, "o", ms=4)
    bottom.axhspan(-tolerance, tolerance, color="0.9")
    bottom.set_xlabel("header temperature (deg C)")
    bottom.set_ylabel("estimated - header (deg C)")
    for axes in (top, bottom):
        axes.grid(True, alpha=0.3)
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.09, top=0.94, hspace=0.08)  # as summary_figure
    return figure


def plot_temperature_check(
    records: Sequence[FrameRecord],
    path: str | Path,
    tolerance: float,
    checks: Mapping[Path, TemperatureCheck] | None = None,
) -> Path:
    """Write :func:`temperature_check_figure` as a PNG at ``path``."""
    return write_png_atomic(path, temperature_check_figure(records, tolerance, checks))


# --------------------------------------------------------------------------- the report's maps


MAP_QUANTILES = (0.0, 0.1, 16.0, 50.0, 84.0, 99.9, 100.0)  # [%]: MapStats' order statistics
HISTOGRAM_BINS = 100


@dataclass
class MapStats:
    """Order statistics of a map's unflagged finite pixels, its histogram over the 0.1-99.9 %
    range and its block-averaged copy for display (every pixel counted, none sampled).

    :meth:`of` computes them in three passes by the kernels of
    :mod:`bias_pipeline.eval_kernels`, or with numpy when ``compiled.engine()`` is
    ``"numpy"`` (the reference: the same quantiles to the bit).
    """

    count: int = 0
    low: float = math.nan  # 0.1 %: the histogram's range
    p16: float = math.nan
    median: float = math.nan
    p84: float = math.nan
    high: float = math.nan  # 99.9 %
    minimum: float = math.nan
    maximum: float = math.nan
    histogram: tuple[np.ndarray, np.ndarray] | None = None  # (counts, edges)
    shown: tuple[np.ndarray, int] | None = None  # (block means of the unflagged pixels, factor)

    @classmethod
    def of(cls, image: np.ndarray, valid: np.ndarray) -> MapStats:
        """The statistics of ``image`` over ``valid`` finite pixels."""
        if engine() == "numba":
            return cls._compiled(np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(~valid))
        values = image[valid & np.isfinite(image)]
        shown = downsample(np.where(valid, image, np.float32(np.nan)).astype(np.float32))
        if not values.size:
            return cls(shown=shown)
        quantiles = np.percentile(values, MAP_QUANTILES)
        low_end, low, p16, median, p84, high, high_end = (float(q) for q in quantiles)
        lo, hi, bins = histogram_bins(_sample(values), *_histogram_range(low, high))
        histogram = np.histogram(values, bins=bins, range=(lo, hi))
        return cls(int(values.size), low, p16, median, p84, high, low_end, high_end, histogram, shown)

    @classmethod
    def _compiled(cls, image: np.ndarray, flagged: np.ndarray) -> MapStats:
        rows, cols = image.shape
        factor = plot_factor(image.shape)
        sums = np.zeros((rows // factor, cols // factor), dtype=np.float64)
        counts = np.zeros(sums.shape, dtype=np.int64)
        hist = np.zeros(eval_kernels.HI_BINS, dtype=np.int64)
        totals = np.zeros(2, dtype=np.float64)
        eval_kernels.map_pass(image, flagged, factor, sums, counts, hist, totals)
        with np.errstate(invalid="ignore", divide="ignore"):
            shown = ((sums / counts).astype(np.float32), factor)
        n = int(totals[0])
        if not n:
            return cls(shown=shown)
        previous, following, gamma = eval_kernels.percentile_ranks(n, MAP_QUANTILES)
        ranks = np.concatenate([previous, following])
        bins = eval_kernels.prefixes_for(hist, ranks)
        wanted, slots = eval_kernels.slot_table(bins)
        low_hist = np.zeros((wanted.size, eval_kernels.HI_BINS), dtype=np.int64)
        eval_kernels.map_select(image, flagged, slots, low_hist)
        values = eval_kernels.values_at(hist, bins, low_hist[slots[bins]], ranks)
        half = len(MAP_QUANTILES)
        quantiles = eval_kernels.interpolate(values[:half], values[half:], gamma)
        low_end, low, p16, median, p84, high, high_end = (float(q) for q in quantiles)
        stride = _stride(rows * cols)
        sample = image[::stride][~flagged[::stride]]
        lo, hi, bins = histogram_bins(sample[np.isfinite(sample)], *_histogram_range(low, high))
        binned = np.zeros(bins, dtype=np.int64)
        eval_kernels.map_histogram(image, flagged, lo, hi, binned)
        edges = np.linspace(lo, hi, bins + 1)
        return cls(n, low, p16, median, p84, high, low_end, high_end, (binned, edges), shown)

    @property
    def spread(self) -> float:
        """Half the 16-84 % range: the standard deviation of a normal distribution, robustly."""
        return (self.p84 - self.p16) / 2


#: Distinct values at most this fraction of a sample: the map is quantised (its values lie on
#: a lattice, as masters of 12-bit values x16 and maps made from them do).
QUANTISED_FRACTION = 0.25
#: Rows of a map sampled (an even stride) to find its quantum: about this many values.
QUANTUM_SAMPLE = 250_000


def _stride(size: int) -> int:
    return max(1, int(math.ceil(size / QUANTUM_SAMPLE)))


def _sample(values: np.ndarray) -> np.ndarray:
    return values[:: _stride(values.size)]


def value_quantum(sample: np.ndarray) -> float:
    """The lattice step of quantised values (0 for continuous ones): the smallest spacing of the
    distinct values, when they are few (at most :data:`QUANTISED_FRACTION` of the sample) and
    every spacing is a whole multiple of it.

    >>> value_quantum(np.tile([3216.0, 3232.0, 3264.0, 3248.0], 5))
    16.0
    >>> value_quantum(np.linspace(0.0, 1.0, 50))
    0.0
    """
    distinct = np.unique(sample.astype(np.float64))
    if distinct.size < 2 or distinct.size > QUANTISED_FRACTION * sample.size:
        return 0.0
    steps = np.diff(distinct)
    quantum = float(steps.min())
    multiples = steps / quantum
    if quantum <= 0 or np.max(np.abs(multiples - np.rint(multiples))) > 1e-3:
        return 0.0
    return quantum


def histogram_bins(sample: np.ndarray, low: float, high: float) -> tuple[float, float, int]:
    """The histogram's range and bin count: :data:`HISTOGRAM_BINS` equal bins of ``[low, high]``
    for continuous values; for quantised ones (:func:`value_quantum`) bins a whole number of
    quanta wide with edges half-way between lattice values, so that every bin holds the same
    number of lattice values (equal bins that straddle the quanta draw a comb).

    >>> histogram_bins(np.repeat(np.arange(0.0, 160.0, 16.0), 10), 0.0, 144.0)
    (-8.0, 152.0, 10)
    """
    quantum = value_quantum(sample)
    if quantum == 0.0:
        return low, high, HISTOGRAM_BINS
    width = quantum * max(1, math.ceil((high - low) / quantum / HISTOGRAM_BINS))
    anchor = float(sample[0])  # a lattice value: the lattice may be offset from zero
    first = anchor + (math.floor((low - anchor) / quantum) - 0.5) * quantum
    bins = max(1, math.ceil((high - first) / width))
    return first, first + bins * width, bins


def _histogram_range(low: float, high: float) -> tuple[float, float]:
    """The histogram's range: the 0.1-99.9 % range, widened when it is one value."""
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def map_histogram_png(
    image: np.ndarray, flagged: np.ndarray, stats: MapStats, title: str, unit: str, cmap: str
) -> tuple[bytes, int]:
    """A map (block-averaged for display, robust colour limits) beside the histogram of its
    unflagged pixels.

    Returns
    -------
    tuple of (bytes, int)
        The PNG and the block-averaging factor.
    """
    rows, cols = image.shape
    if stats.shown is not None:
        shown, factor = stats.shown
    else:
        shown, factor = downsample(np.where(flagged, np.float32(np.nan), image).astype(np.float32))
    figure = _figure(figsize=(10.0, 4.2), dpi=90)
    map_axes, hist_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": (1.25, 1.0)})
    draw_map(figure, map_axes, shown, (rows, cols), cmap, unit)
    shown_how = block_note(factor) if factor > 1 else "every pixel"
    map_axes.set_title(f"{title} ({rows}x{cols}; {shown_how})", fontsize=9, y=TITLE_Y)
    if stats.count and stats.histogram is not None:
        counts, edges = stats.histogram
        hist_axes.stairs(counts, edges, fill=True, color="C0")
        hist_axes.set_yscale("log")
        outside = stats.count - int(counts.sum())
        hist_axes.set_title(
            f"histogram of {stats.count} unflagged pixels\n({outside} beyond the 0.1-99.9 % range shown)",
            fontsize=9,
            y=TITLE_Y,
        )
    hist_axes.set_xlabel(unit)
    hist_axes.set_ylabel("pixels")
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.88, wspace=0.3)
    return figure_png(figure, compress_level=6), factor


# --------------------------------------------------------------------------- diagnostics

#: Percentiles of the band in :func:`bias_temperature_figure` [%].
BAND_PERCENTILES = (5.0, 95.0)
#: At most this many unflagged pixels (an even stride) make the model's curve in
#: :func:`bias_temperature_figure`: its percentiles are then good to ~0.1 % of the band.
CURVE_PIXELS = 200_000


def bias_temperature_figure(
    temperatures: Sequence[float],
    levels: Sequence[tuple[float, float, float]],
    a_map: np.ndarray,
    b_map: np.ndarray,
    flagged: np.ndarray,
    c_map: np.ndarray | None = None,
) -> Any:
    """The median bias of each master (and its 5-95 % band over unflagged pixels) against
    temperature, with the fitted law's median and band over the same pixels.

    Parameters
    ----------
    temperatures
        The masters' temperatures [deg C].
    levels
        Per master: ``(5 %, median, 95 %)`` of its unflagged pixels [ADU].
    a_map, b_map, c_map
        The model's coefficients.
    flagged
        Pixels left out.

    Returns
    -------
    matplotlib.figure.Figure
    """
    temps = np.asarray(temperatures, dtype=np.float64)
    valid = ~flagged & np.isfinite(a_map) & np.isfinite(b_map)
    stride = max(1, int(np.count_nonzero(valid)) // CURVE_PIXELS)
    a = a_map[valid][::stride].astype(np.float64)
    b = b_map[valid][::stride].astype(np.float64)
    c = None if c_map is None else np.nan_to_num(c_map[valid][::stride].astype(np.float64))
    grid = np.linspace(temps.min(), temps.max(), 25) if temps.size else np.zeros(0)
    curve = np.array(
        [np.percentile(a + t * b + (0.0 if c is None else t * t * c), [BAND_PERCENTILES[0], 50.0, BAND_PERCENTILES[1]])
         for t in grid]
    ).reshape(-1, 3)  # fmt: skip
    measured = np.asarray(levels, dtype=np.float64).reshape(-1, 3)
    figure = _figure(figsize=(8.0, 4.6), dpi=90)
    axes = figure.add_subplot()
    if grid.size and a.size:
        axes.fill_between(grid, curve[:, 0], curve[:, 2], color="C0", alpha=0.2, label="model, 5-95 % of pixels")
        axes.plot(grid, curve[:, 1], color="C0", label="model median (fitted law)")
    axes.errorbar(
        temps,
        measured[:, 1],
        yerr=[measured[:, 1] - measured[:, 0], measured[:, 2] - measured[:, 1]],
        fmt="o",
        color="C3",
        capsize=4,
        label="masters: median, 5-95 % of pixels",
    )
    axes.set_xlabel("temperature (deg C)")
    axes.set_ylabel("bias (ADU)")
    axes.set_title(f"Bias against temperature over {int(np.count_nonzero(valid))} unflagged pixels", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def flag_map_figure(dq: np.ndarray, bits: Sequence[tuple[str, int]], max_pixels: int = PLOT_MAX_PIXELS) -> Any:
    """Where the flagged pixels are: each pixel (or display block) coloured by its first flag.

    Parameters
    ----------
    dq
        The DQ map (bit flags).
    bits
        ``(name, value)`` of each flag, in the order of precedence for a pixel with several.
    max_pixels
        Largest side drawn; a larger map shows, per block, the first flag any of its pixels has.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap

    rows, cols = dq.shape
    factor = plot_factor(dq.shape, max_pixels)
    trimmed = dq[: rows // factor * factor, : cols // factor * factor].astype(np.int64)
    blocks = trimmed.reshape(rows // factor, factor, cols // factor, factor)
    present = np.bitwise_or.reduce(np.bitwise_or.reduce(blocks, axis=3), axis=1) if factor > 1 else trimmed
    category = np.zeros(present.shape, dtype=np.int64)
    for index, (_, value) in reversed(list(enumerate(bits, start=1))):
        category[(present & value) != 0] = index
    colours = ["#ffffff"] + [f"C{i % 10}" for i in range(len(bits))]
    figure = _figure(figsize=(8.0, 5.6), dpi=90)
    axes = figure.add_subplot()
    artist = axes.imshow(
        category,
        origin="lower",
        cmap=ListedColormap(colours),
        norm=BoundaryNorm(np.arange(len(bits) + 2) - 0.5, len(bits) + 1),
        extent=(-0.5, cols - 0.5, -0.5, rows - 0.5),
        interpolation="nearest",
    )
    bar = figure.colorbar(artist, ax=axes, ticks=range(len(bits) + 1))
    counts = [int(np.count_nonzero(dq & value)) for _, value in bits]
    bar.ax.set_yticklabels(["none"] + [f"{name} ({n})" for (name, _), n in zip(bits, counts, strict=True)], fontsize=8)
    how = f"; {block_note(factor)}: first flag in each block" if factor > 1 else ""
    axes.set_title(f"Flagged pixels by flag ({int(np.count_nonzero(dq))} of {dq.size}{how})", fontsize=10)
    axes.set_xlabel("column (pixel)")
    axes.set_ylabel("row (pixel)")
    figure.subplots_adjust(left=0.1, right=0.85, bottom=0.1, top=0.92)
    return figure


def profile_figure(maps: Sequence[tuple[str, np.ndarray, str]], flagged: np.ndarray) -> Any:
    """Row and column profiles (medians over unflagged pixels) of each map: a column pattern
    shows as structure in the column profile, a row pattern in the row profile.

    Parameters
    ----------
    maps
        ``(name, map, unit)``.
    flagged
        Pixels left out of the medians.

    Returns
    -------
    matplotlib.figure.Figure
    """
    figure = _figure(figsize=(10.0, 2.8 * len(maps)), dpi=90)
    grid = figure.subplots(len(maps), 2, squeeze=False)
    for (name, image, unit), (by_column, by_row) in zip(maps, grid, strict=True):
        values = np.where(flagged | ~np.isfinite(image), np.nan, image.astype(np.float64))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-flagged row or column
            columns = np.nanmedian(values, axis=0)
            rows = np.nanmedian(values, axis=1)
        by_column.plot(np.arange(columns.size), columns, lw=0.7, color="C0")
        by_column.set_title(f"{name}: median of each column", fontsize=9)
        by_column.set_xlabel("column (pixel)")
        by_row.plot(np.arange(rows.size), rows, lw=0.7, color="C1")
        by_row.set_title(f"{name}: median of each row", fontsize=9)
        by_row.set_xlabel("row (pixel)")
        for axes in (by_column, by_row):
            axes.set_ylabel(unit)
    figure.tight_layout()
    return figure

"""Step 5: how well the model reproduces each master.

Per pixel: ``MAE = |real - model|`` [ADU] and ``MAPE = 100 |real - model| / |real|`` [%]
(NaN where the real value is 0). Statistics leave out masked pixels. Images are drawn from a
block-averaged copy when the frame is larger than :data:`PLOT_MAX_PIXELS` on a side, with the
factor in the title, and with colour limits from the 0.5 and 99.5 percentiles so one hot
pixel does not wash out the picture.
"""

from __future__ import annotations

import contextlib
import csv
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
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..frames import FrameRecord, read_row_sample
from ..model import BiasModel
from ..products import product_header, unique_labels, write_image, write_png_atomic, write_text_atomic
from ..thermometry import TemperatureEstimate, estimate_temperature
from ..workers import default_threads, worker_pool

logger = logging.getLogger(__name__)


def _figure(**kwargs: object):
    """A matplotlib Figure; matplotlib is imported here, on first use, because importing it
    costs a quarter of a second that a run without plots should not pay."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)  # type: ignore[arg-type]


PLOT_MAX_PIXELS = 512
STATISTICS = ("mean", "median", "std", "p95")
THERMOMETRY_PIXELS = 2**17  # pixels per frame used to estimate its temperature
SUMMARY_CSV = "evaluation_summary.csv"
SUMMARY_PNG = "evaluation_summary.png"
SUMMARY_COLUMNS = (
    "temperature",
    "label",
    "n_frames",
    "n_pixels",
    "n_flagged",
    "mae_mean",
    "mae_median",
    "mae_std",
    "mae_p95",
    "mape_mean",
    "mape_median",
    "mape_std",
    "mape_p95",
    "heldout_mae_mean",
    "heldout_mae_median",
    "heldout_mae_std",
    "heldout_mae_p95",
    "heldout_mape_mean",
    "heldout_mape_median",
    "heldout_mape_std",
    "heldout_mape_p95",
    "mae_per_read_noise",
    "heldout_mae_per_read_noise",
)


def error_maps(real: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel absolute error [ADU] and absolute percentage error [%].

    >>> mae, mape = error_maps(np.array([[100.0, 0.0]]), np.array([[90.0, 5.0]]))
    >>> mae.tolist(), mape[0, 0].item(), bool(np.isnan(mape[0, 1]))
    ([[10.0, 5.0]], 10.0, True)
    """
    real = np.asarray(real, dtype=np.float32)
    diff = np.abs(real - np.asarray(predicted, dtype=np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):
        mape = np.where(real != 0, np.float32(100) * diff / np.abs(real), np.nan).astype(np.float32)
    return diff.astype(np.float32), mape


def summarize(values: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Mean, median, std and 95th percentile of ``values`` over ``valid`` finite pixels.

    >>> summarize(np.array([[1.0, 2.0, 3.0, 100.0]]), np.array([[True, True, True, False]]))
    {'mean': 2.0, 'median': 2.0, 'std': 0.816496580927726, 'p95': 2.9}
    """
    selected = values[valid & np.isfinite(values)]
    if selected.size == 0:
        return {"mean": math.nan, "median": math.nan, "std": math.nan, "p95": math.nan}
    median, p95 = np.percentile(selected, [50, 95])  # one partition for both
    return {
        "mean": float(selected.mean(dtype=np.float64)),
        "median": float(median),
        "std": float(selected.std(dtype=np.float64)),
        "p95": float(p95),
    }


def downsample(image: np.ndarray, max_pixels: int = PLOT_MAX_PIXELS) -> tuple[np.ndarray, int]:
    """Block-average ``image`` by the smallest integer factor that fits ``max_pixels`` a side.

    NaN pixels are left out of each block's mean. Returns the image and the factor.

    >>> small, factor = downsample(np.ones((48, 64)), 16)
    >>> small.shape, factor
    ((12, 16), 4)
    """
    factor = max(1, math.ceil(max(image.shape) / max_pixels))
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


@dataclass
class ImagePlot:
    """One map to draw: the downsampled image and what the figure says about it (small enough
    to hand to another process)."""

    shown: np.ndarray
    factor: int
    shape: tuple[int, int]
    path: Path
    title: str
    unit: str
    cmap: str = "viridis"

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
    progress = tqdm(total=len(plots), desc="plotting", unit="map", disable=None if show_progress else True, leave=False)
    with progress:
        if workers > 1 and len(plots) > 2 and can_fork:
            return _draw_in_processes(plots, min(workers, len(plots)), progress)
        return [_advance(progress, _draw_image(plot)) for plot in plots]


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
    try:
        for path in pool.map(_draw_image, plots):
            drawn.append(_advance(progress, path))
    except BrokenProcessPool:
        logger.warning(
            "a plotting process died (out of memory?); the %d maps left are drawn here", len(plots) - len(drawn)
        )
        drawn += [_advance(progress, _draw_image(plot)) for plot in plots[len(drawn) :]]
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


def draw_map(figure: object, axes: object, shown: np.ndarray, shape: tuple[int, int], cmap: str, unit: str) -> None:
    """Draw a (block-averaged) map on ``axes`` in the full frame's pixel coordinates, with
    robust colour limits (:func:`robust_limits`) and a colour bar labelled ``unit``."""
    rows, cols = shape
    low, high = robust_limits(shown)
    artist = axes.imshow(  # type: ignore[attr-defined]
        shown,
        origin="lower",
        cmap=cmap,
        vmin=low,
        vmax=high,
        extent=(-0.5, cols - 0.5, -0.5, rows - 0.5),
        interpolation="nearest",
        aspect="equal",
    )
    axes.set_xlabel("column (pixel)")  # type: ignore[attr-defined]
    axes.set_ylabel("row (pixel)")  # type: ignore[attr-defined]
    figure.colorbar(artist, ax=axes).set_label(unit)  # type: ignore[attr-defined]


def _draw_image(plot: ImagePlot) -> Path:
    title = plot.title
    if plot.factor > 1:
        title = f"{title}\n(mean of {plot.factor}x{plot.factor} pixel blocks)"
    figure = _figure(figsize=(7.0, 5.6), dpi=100)
    axes = figure.add_subplot()
    draw_map(figure, axes, plot.shown, plot.shape, plot.cmap, plot.unit)
    axes.set_title(title, fontsize=10)
    # Fixed margins: tight_layout measures every text and costs more than drawing the map.
    figure.subplots_adjust(left=0.1, right=0.92, bottom=0.1, top=0.9)
    return write_png_atomic(plot.path, figure)


def plot_summary(rows: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """MAE [ADU], MAPE [%] and MAE in read-noise units against temperature, each on its own
    axes, in-sample (fitted with the master) beside held-out (fitted without it)."""
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
    )
    panels[2].set_xlabel("sensor temperature (deg C)")
    figure.tight_layout()
    return write_png_atomic(path, figure)


def summary_csv_text(rows: Sequence[Mapping[str, object]]) -> str:
    """The per-temperature summary as CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def evaluate(
    model: BiasModel,
    masters: Sequence[object],
    evaluation_dir: str | Path,
    *,
    save_fits: bool = False,
    plots: bool = True,
    show_progress: bool = True,
    heldout_model: BiasModel | None = None,
    threads: int = 0,
) -> list[dict[str, object]]:
    """Compare the model with every master; write plots, the CSV and optional FITS.

    Parameters
    ----------
    model
        The fitted model.
    masters
        Objects with ``label``, ``temperature``, ``n_frames`` and ``load()``
        (:class:`~.step2_generate_master_bias_by_temp.MasterFrame`).
    evaluation_dir
        Output folder (created if missing).
    save_fits
        Also write ``synthetic_bias_XX.XC.fits``, ``mae_XX.XC.fits``, ``mape_XX.XC.fits``.
    plots
        Draw the PNGs.
    show_progress
        tqdm bar on a terminal.
    heldout_model
        The masters fit whose leverages give the held-out errors (default ``model``; a
        model fitted on frames has none, and its held-out columns then come from this one).
    threads
        Processes drawing the maps (0: as many as CPUs, at most 8).

    Returns
    -------
    list of dict
        One summary row per master (keys :data:`SUMMARY_COLUMNS`).
    """
    out = Path(evaluation_dir)
    out.mkdir(parents=True, exist_ok=True)
    flagged = model.flagged
    valid = ~flagged
    validation = heldout_model if heldout_model is not None else model
    leverage = list(validation.group_leverage) if len(validation.group_leverage) == len(masters) else None
    rows: list[dict[str, object]] = []
    pending: list[ImagePlot] = []  # drawn together at the end, in parallel processes
    progress = tqdm(masters, desc="evaluating", unit="master", disable=None if show_progress else True, leave=False)
    for index, master in enumerate(progress):
        label, temp, n_frames = master.label, float(master.temperature), int(master.n_frames)  # type: ignore[attr-defined]
        real = master.load()  # type: ignore[attr-defined]
        predicted = model.predict(temp)
        mae, mape = error_maps(real, predicted)
        # Leave-one-out: for a weighted linear fit the residual of input k refitted without
        # it is exactly its in-sample residual / (1 - h_k).
        h = leverage[index] if leverage is not None else math.nan
        inflation = np.float32(1.0 / (1.0 - h)) if h < 1.0 - 1e-9 else np.float32(np.nan)
        if validation is model:
            heldout_mae, heldout_mape = mae * inflation, mape * inflation
        else:
            heldout_mae, heldout_mape = (m * inflation for m in error_maps(real, validation.predict(temp)))
        row: dict[str, object] = {
            "temperature": temp,
            "label": label,
            "n_frames": n_frames,
            "n_pixels": int(np.count_nonzero(valid & np.isfinite(mape))),
            "n_flagged": int(np.count_nonzero(flagged)),
        }
        for name, values in (("mae", mae), ("mape", mape)):
            row.update({f"{name}_{k}": v for k, v in summarize(values, valid).items()})
        if validation is model:
            # The held-out maps are the in-sample ones times one positive factor, and so are
            # their mean, median, std and percentiles: no need to summarise them again.
            factor = float(inflation)
            for name in ("mae", "mape"):
                row.update({f"heldout_{name}_{k}": factor * float(row[f"{name}_{k}"]) for k in STATISTICS})  # type: ignore[arg-type]
        else:
            for name, values in (("heldout_mae", heldout_mae), ("heldout_mape", heldout_mape)):
                row.update({f"{name}_{k}": v for k, v in summarize(values, valid).items()})
        if model.read_noise is not None:
            with np.errstate(invalid="ignore", divide="ignore"):  # a dead pixel's noise is 0
                per_noise = mae / model.read_noise
                selected = per_noise[valid & np.isfinite(per_noise)]
                row["mae_per_read_noise"] = float(selected.mean(dtype=np.float64)) if selected.size else math.nan
                row["heldout_mae_per_read_noise"] = (
                    row["mae_per_read_noise"] * float(inflation)
                    if validation is model
                    else summarize(heldout_mae / model.read_noise, valid)["mean"]
                )
        else:
            row["mae_per_read_noise"] = row["heldout_mae_per_read_noise"] = math.nan
        rows.append(row)
        where = f"{label} deg C, {n_frames} frames"
        if plots:
            pending += [
                ImagePlot.of(real, out / f"real_bias_{label}C.png", f"Real master bias, {where}", "bias (ADU)"),
                ImagePlot.of(predicted, out / f"synthetic_bias_{label}C.png", f"Model bias, {where}", "bias (ADU)"),
                ImagePlot.of(mae, out / f"mae_{label}C.png", f"|real - model|, {where}", "MAE (ADU)", "magma"),
                ImagePlot.of(
                    mape, out / f"mape_{label}C.png", f"100 |real - model| / |real|, {where}", "MAPE (%)", "magma"
                ),
            ]
        if save_fits:
            cards = {
                "TEMPERATURE": (temp, "[deg C] temperature of the master"),
                "NCOMBINE": (n_frames, "frames in the master"),
            }
            scale = model.scale_factor
            products = [
                (
                    "synthetic_bias",
                    predicted,
                    "SYNTHETIC_BIAS",
                    "model bias at the master's temperature",
                    "adu",
                ),
                ("mae", mae, "MAE", "absolute error |real - model| per pixel", "adu"),
                ("mape", mape, "MAPE", "100 |real - model| / |real| per pixel", "%"),
                (
                    "heldout_mae",
                    heldout_mae,
                    "HELDOUT_MAE",
                    "|real - model fitted without this master|",
                    "adu",
                ),
            ]
            for stem, data, kind, what, unit in products:
                write_image(
                    out / f"{stem}_{label}C.fits",
                    data,
                    product_header(kind, what, bunit=unit, scale_factor=scale, cards=cards),
                )
        logger.info(
            "%s C: MAE mean %.3f ADU (held-out %.3f), median %.3f; MAPE mean %.4f %%",
            label,
            row["mae_mean"],
            row["heldout_mae_mean"],
            row["mae_median"],
            row["mape_mean"],
        )
    write_text_atomic(out / SUMMARY_CSV, summary_csv_text(rows))
    draw_plots(pending, workers=threads or default_threads(), show_progress=show_progress)
    if plots and rows:
        plot_summary(rows, out / SUMMARY_PNG)  # type: ignore[arg-type]
    return rows


TEMPERATURE_PLOT = "temperature_check.png"
FLAG_TEMPERATURE = "temperature_mismatch"
MISMATCH_SIGMAS = 3.0  # a header-bias difference must exceed this many of the estimate's errors
MOSTLY_MISMATCHED = 0.5  # more flagged frames than this share: the model is suspect, not the headers


def check_frame_temperatures(
    model: BiasModel,
    records: Sequence[FrameRecord],
    *,
    input_bits: int = 16,
    scale_factor: float = 16.0,
    tolerance: float = 0.5,
    show_progress: bool = True,
    threads: int = 0,
) -> list[FrameRecord]:
    """Estimate each frame's temperature from its pixels; flag header disagreements.

    Every frame that passed step 1 is estimated, used or not: a mislabelled header often
    lands a frame in a group of its own, rejected for its size, and that is exactly the frame
    to point out. Fills ``temperature_est`` and ``temperature_est_err`` and sets ``flag`` to
    ``"temperature_mismatch"`` when the header temperature differs from the estimate by more
    than ``tolerance`` deg C (a sensor read during a thermal transient, a mislabelled
    header), and by more than :data:`MISMATCH_SIGMAS` times the estimate's own error. The flag
    is a warning; it changes no status. When most frames are flagged, one warning says that the
    model, not the headers, is suspect.

    Returns
    -------
    list of FrameRecord
        The flagged records.
    """
    used = [r for r in records if r.passed_checks]
    flagged = []
    factor = np.float32(scale_factor if input_bits == 12 else 1.0)
    # Evenly spaced rows holding about THERMOMETRY_PIXELS pixels: the estimate's statistical
    # error (read noise / (slope sqrt(pixels)), ~0.02 deg C here) stays far below any useful
    # tolerance, and only those rows are read.
    rows = model.shape[0]
    step = max(1, round(rows / max(1, THERMOMETRY_PIXELS // model.shape[1])))
    sample = np.arange(step // 2, rows, step)

    def estimate(record: FrameRecord) -> TemperatureEstimate:
        frame = read_row_sample(record, sample) * factor
        return estimate_temperature(frame, model, start=record.temperature, rows=sample)

    progress = tqdm(
        total=len(used), desc="temperatures", unit="frame", disable=None if show_progress else True, leave=False
    )
    with progress, worker_pool(ThreadPoolExecutor(max_workers=max(1, threads or default_threads()))) as pool:
        estimates = []
        for result in pool.map(estimate, used):  # in order: the log reads the same every run
            estimates.append(result)
            progress.update()
    for record, estimate in zip(used, estimates, strict=True):
        record.temperature_est = estimate.temperature
        record.temperature_est_err = estimate.error
        assert record.temperature is not None
        difference = abs(estimate.temperature - record.temperature)
        # Beyond the tolerance and beyond the estimate's own error: a 1 x 1 frame's +-14 deg C
        # says nothing about its header.
        if difference > tolerance and difference > MISMATCH_SIGMAS * estimate.error:
            record.flag = FLAG_TEMPERATURE
            flagged.append(record)
    most = len(flagged) > MOSTLY_MISMATCHED * len(used) and len(flagged) >= 3
    for record in flagged:
        (logger.info if most else logger.warning)(
            "%s: header says %.2f deg C, its bias says %.2f +- %.2f deg C (--temperature-tolerance %g)",
            record.path.name,
            record.temperature,
            record.temperature_est,
            record.temperature_est_err,
            tolerance,
        )
    if most:
        logger.warning(
            "%d of %d frames disagree with the temperature the model gives their bias (by more than %g deg C): "
            "when most frames disagree, the model is more likely at fault than their headers (the bias drifting "
            "between the dates of the frames, temperature confounded with time, a law that is not linear); "
            "see temperature_check.png",
            len(flagged), len(used), tolerance,
        )  # fmt: skip
    return flagged


def plot_temperature_check(records: Sequence[FrameRecord], path: str | Path, tolerance: float) -> Path:
    """Header temperature against the temperature estimated from each frame's bias."""
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
    top.set_title(f"Housekeeping check: {int(bad.sum())} of {len(done)} frames beyond {tolerance:g} deg C")
    top.legend(fontsize=8)
    bottom.plot(header, estimated - header, "o", ms=4)
    bottom.axhspan(-tolerance, tolerance, color="0.9")
    bottom.set_xlabel("header temperature (deg C)")
    bottom.set_ylabel("estimated - header (deg C)")
    for axes in (top, bottom):
        axes.grid(True, alpha=0.3)
    figure.tight_layout()
    return write_png_atomic(path, figure)


class _InMemoryMaster:
    def __init__(self, label: str, temperature: float, data: np.ndarray, n_frames: int) -> None:
        self.label, self.temperature, self._data, self.n_frames = label, temperature, data, n_frames

    def load(self) -> np.ndarray:
        return np.asarray(self._data, dtype=np.float32)


def evaluate_model(
    a_map: np.ndarray,
    b_map: np.ndarray,
    master_bias_dict: Mapping[float, np.ndarray],
    output_dir: str | Path,
    save_fits: bool = False,
    *,
    frames_per_master: Mapping[float, int] | None = None,
) -> list[dict[str, object]]:
    """Evaluate ``a + b*T`` against masters given as a dict and write into ``output_dir``.

    Parameters
    ----------
    a_map, b_map
        The model maps.
    master_bias_dict
        Temperature [deg C] -> master array.
    output_dir
        The evaluation folder.
    save_fits
        Also write the synthetic, MAE and MAPE FITS.
    frames_per_master
        Temperature -> frames in the master (for titles and the CSV); 0 when unknown.

    Returns
    -------
    list of dict
        One summary row per temperature.
    """
    temps = sorted(master_bias_dict)
    labels = unique_labels(temps)
    masters = [
        _InMemoryMaster(label, t, master_bias_dict[t], (frames_per_master or {}).get(t, 0))
        for label, t in zip(labels, temps, strict=True)
    ]
    model = BiasModel.from_maps(a_map, b_map, temperature_range=(temps[0], temps[-1]) if temps else None)
    return evaluate(model, masters, output_dir, save_fits=save_fits)

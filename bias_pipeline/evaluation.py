"""Step 5's computation and its writer: how well the model reproduces each master.

Per pixel: ``MAE = |real - model|`` [ADU] and ``MAPE = 100 |real - model| / |real|`` [%]
(NaN where the real value is 0). Statistics leave out masked pixels. Held out: the error of
the model refitted without the master, from the fit's leverages (leave-one-out).

:func:`evaluate_masters` is the pure part (model and masters in, one
:class:`MasterEvaluation` per master out, no files); :func:`write_evaluation` saves them (FITS
when asked, the CSV, the PNGs through :mod:`bias_pipeline.plots`). The pure part is a
generator, and the writer keeps only the downsampled maps of each master it has seen: at
2048 x 2048 one master's full-size maps are ~100 MB, so memory stays that of one master
however many temperatures there are, while each master is still read and predicted once.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .master_writer import MasterImage
from .model import BiasModel
from .plots import ImagePlot, draw_plots, plot_summary
from .products import product_header, write_image, write_text_atomic
from .registry import HELDOUT_MAE, MAE, MAPE, REAL_PLOT, SUMMARY_CSV, SUMMARY_PNG, SYNTHETIC, labelled_name
from .units import DEFAULT_SCALE_FACTOR
from .workers import default_threads

logger = logging.getLogger(__name__)

STATISTICS = ("mean", "median", "std", "p95")
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


@dataclass
class MasterEvaluation:
    """The model against one master: the summary row and the full-size maps.

    Attributes
    ----------
    row
        The summary row (keys :data:`SUMMARY_COLUMNS`).
    real, predicted
        The master and the model at its temperature [ADU].
    mae, mape
        ``|real - model|`` [ADU] and ``100 |real - model| / |real|`` [%].
    heldout_mae, heldout_mape
        The same for the model fitted without this master (NaN when no leverages are known).
    """

    row: dict[str, object]
    real: np.ndarray
    predicted: np.ndarray
    mae: np.ndarray
    mape: np.ndarray
    heldout_mae: np.ndarray
    heldout_mape: np.ndarray

    @property
    def label(self) -> str:
        """The master's label (``"12.5"``)."""
        return str(self.row["label"])


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


def evaluate_master(
    model: BiasModel,
    master: MasterImage,
    *,
    leverage: float = math.nan,
    heldout_model: BiasModel | None = None,
) -> MasterEvaluation:
    """Compare ``model`` with one master (pure: no files).

    Parameters
    ----------
    model
        The fitted model.
    master
        The master (``label``, ``temperature``, ``n_frames``, ``load()``).
    leverage
        The master's leverage ``h`` in the fit that gives the held-out errors (NaN: unknown,
        and the held-out numbers are NaN).
    heldout_model
        The masters fit the leverage belongs to, when it is not ``model`` (a model fitted on
        frames): the held-out errors are then its own, inflated.

    Returns
    -------
    MasterEvaluation
    """
    label, temp, n_frames = master.label, float(master.temperature), int(master.n_frames)
    flagged = model.flagged
    valid = ~flagged
    real = master.load()
    predicted = model.predict(temp)
    mae, mape = error_maps(real, predicted)
    # Leave-one-out: for a weighted linear fit the residual of input k refitted without
    # it is exactly its in-sample residual / (1 - h_k).
    inflation = np.float32(1.0 / (1.0 - leverage)) if leverage < 1.0 - 1e-9 else np.float32(np.nan)
    same = heldout_model is None or heldout_model is model
    if same:
        heldout_mae, heldout_mape = mae * inflation, mape * inflation
    else:
        assert heldout_model is not None
        heldout_mae, heldout_mape = (m * inflation for m in error_maps(real, heldout_model.predict(temp)))
    stats = {name: summarize(values, valid) for name, values in (("mae", mae), ("mape", mape))}
    if same:
        # The held-out maps are the in-sample ones times one positive factor, and so are
        # their mean, median, std and percentiles: no need to summarise them again.
        factor = float(inflation)
        for name in ("mae", "mape"):
            stats[f"heldout_{name}"] = {k: factor * stats[name][k] for k in STATISTICS}
    else:
        for name, values in (("heldout_mae", heldout_mae), ("heldout_mape", heldout_mape)):
            stats[name] = summarize(values, valid)
    row: dict[str, object] = {
        "temperature": temp,
        "label": label,
        "n_frames": n_frames,
        "n_pixels": int(np.count_nonzero(valid & np.isfinite(mape))),
        "n_flagged": int(np.count_nonzero(flagged)),
    }
    for name in ("mae", "mape", "heldout_mae", "heldout_mape"):
        row.update({f"{name}_{k}": v for k, v in stats[name].items()})
    if model.read_noise is not None:
        with np.errstate(invalid="ignore", divide="ignore"):  # a dead pixel's noise is 0
            per_noise = mae / model.read_noise
            selected = per_noise[valid & np.isfinite(per_noise)]
            mean_per_noise = float(selected.mean(dtype=np.float64)) if selected.size else math.nan
            row["mae_per_read_noise"] = mean_per_noise
            row["heldout_mae_per_read_noise"] = (
                mean_per_noise * float(inflation) if same else summarize(heldout_mae / model.read_noise, valid)["mean"]
            )
    else:
        row["mae_per_read_noise"] = row["heldout_mae_per_read_noise"] = math.nan
    return MasterEvaluation(row, real, predicted, mae, mape, heldout_mae, heldout_mape)


def evaluate_masters(
    model: BiasModel, masters: Sequence[MasterImage], *, heldout_model: BiasModel | None = None
) -> Iterator[MasterEvaluation]:
    """Compare the model with every master, one at a time (pure: no files).

    Parameters
    ----------
    model
        The fitted model.
    masters
        The masters (``label``, ``temperature``, ``n_frames``, ``load()``), in the order of
        the fit's groups.
    heldout_model
        The masters fit whose leverages give the held-out errors (default ``model``; a
        model fitted on frames has none, and its held-out columns then come from this one).

    Yields
    ------
    MasterEvaluation
        One per master, in order; each master is read when its turn comes.
    """
    validation = heldout_model if heldout_model is not None else model
    leverage = list(validation.group_leverage) if len(validation.group_leverage) == len(masters) else None
    for index, master in enumerate(masters):
        yield evaluate_master(
            model,
            master,
            leverage=leverage[index] if leverage is not None else math.nan,
            heldout_model=heldout_model,
        )


def summary_csv_text(rows: Sequence[Mapping[str, object]]) -> str:
    """The per-temperature summary as CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _fits_products(evaluation: MasterEvaluation) -> list[tuple[str, np.ndarray, str, str, str]]:
    """``(file stem, data, kind, what, unit)`` of the FITS ``--save-eval-fits`` writes."""
    return [
        (SYNTHETIC, evaluation.predicted, "SYNTHETIC_BIAS", "model bias at the master's temperature", "adu"),
        (MAE, evaluation.mae, "MAE", "absolute error |real - model| per pixel", "adu"),
        (MAPE, evaluation.mape, "MAPE", "100 |real - model| / |real| per pixel", "%"),
        (HELDOUT_MAE, evaluation.heldout_mae, "HELDOUT_MAE", "|real - model fitted without this master|", "adu"),
    ]


def _map_plots(evaluation: MasterEvaluation, out: Path) -> list[ImagePlot]:
    """The four maps of one master, downsampled (see :func:`~bias_pipeline.plots.downsample`)."""
    label, n_frames = evaluation.label, evaluation.row["n_frames"]
    where = f"{label} deg C, {n_frames} frames"

    def png(stem: str) -> Path:
        return out / labelled_name(stem, label, ".png")

    return [
        ImagePlot.of(evaluation.real, png(REAL_PLOT), f"Real master bias, {where}", "bias (ADU)"),
        ImagePlot.of(evaluation.predicted, png(SYNTHETIC), f"Model bias, {where}", "bias (ADU)"),
        ImagePlot.of(evaluation.mae, png(MAE), f"|real - model|, {where}", "MAE (ADU)", "magma"),
        ImagePlot.of(evaluation.mape, png(MAPE), f"100 |real - model| / |real|, {where}", "MAPE (%)", "magma"),
    ]


def write_evaluation(
    evaluations: Iterable[MasterEvaluation],
    evaluation_dir: str | Path,
    *,
    scale_factor: float = DEFAULT_SCALE_FACTOR,
    save_fits: bool = False,
    plots: bool = True,
    show_progress: bool = True,
    threads: int = 0,
    total: int | None = None,
) -> list[dict[str, object]]:
    """Save step 5's results: optional FITS per master, the CSV, the maps and the summary plot.

    Parameters
    ----------
    evaluations
        :func:`evaluate_masters`' results; consumed one at a time, and only the downsampled
        maps of each are kept (drawn together at the end, in parallel processes).
    evaluation_dir
        Output folder (created if missing).
    scale_factor
        12-bit to 16-bit factor, for the FITS headers.
    save_fits
        Also write ``synthetic_bias_XX.XC.fits``, ``mae_XX.XC.fits``, ``mape_XX.XC.fits``,
        ``heldout_mae_XX.XC.fits``.
    plots
        Draw the PNGs.
    show_progress
        tqdm bar on a terminal.
    threads
        Processes drawing the maps (0: as many as CPUs, at most 8).
    total
        Number of masters, for the progress bar.

    Returns
    -------
    list of dict
        One summary row per master (keys :data:`SUMMARY_COLUMNS`).

    Raises
    ------
    OutputError
        When a file cannot be written.
    """
    out = Path(evaluation_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    pending: list[ImagePlot] = []
    # A bar updated by hand rather than wrapped round the iterable: tqdm's own loop would hold
    # the previous master's maps while the next one is computed.
    with tqdm(
        total=total, desc="evaluating", unit="master", disable=None if show_progress else True, leave=False
    ) as progress:
        for evaluation in evaluations:
            row = evaluation.row
            rows.append(row)
            if plots:
                pending += _map_plots(evaluation, out)
            if save_fits:
                cards = {
                    "TEMPERATURE": (row["temperature"], "[deg C] temperature of the master"),
                    "NCOMBINE": (row["n_frames"], "frames in the master"),
                }
                for stem, data, kind, what, unit in _fits_products(evaluation):
                    write_image(
                        out / labelled_name(stem, evaluation.label),
                        data,
                        product_header(kind, what, bunit=unit, scale_factor=scale_factor, cards=cards),
                    )
            logger.info(
                "%s C: MAE mean %.3f ADU (held-out %.3f), median %.3f; MAPE mean %.4f %%",
                evaluation.label,
                row["mae_mean"],
                row["heldout_mae_mean"],
                row["mae_median"],
                row["mape_mean"],
            )
            progress.update()
            # Let go of this master's full-size maps before the next one is computed.
            del evaluation
    write_text_atomic(out / SUMMARY_CSV, summary_csv_text(rows))
    draw_plots(pending, workers=threads or default_threads(), show_progress=show_progress)
    if plots and rows:
        plot_summary(rows, out / SUMMARY_PNG)
    return rows

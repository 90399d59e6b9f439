"""Step 5: how well the model reproduces each master.

:func:`evaluate` is the step: the comparison of the model with every master
(:func:`~bias_pipeline.evaluation.evaluate_masters`, pure, one master at a time) saved by
:func:`~bias_pipeline.evaluation.write_evaluation` (the CSV, the maps and the summary plot
drawn by :mod:`bias_pipeline.plots`, FITS when asked). The per-frame temperature check is
:mod:`bias_pipeline.temperature_check`. The names other code imports from this module stay
importable here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import PipelineConfig
from ..evaluation import (
    STATISTICS,
    SUMMARY_COLUMNS,
    SUMMARY_CSV,
    SUMMARY_PNG,
    MasterEvaluation,
    MasterImage,
    error_maps,
    evaluate_masters,
    summarize,
    summary_csv_text,
    write_evaluation,
)
from ..lazy import forward
from ..model import BiasModel
from ..plots import (
    PLOT_MAX_PIXELS,
    ImagePlot,
    downsample,
    draw_map,
    draw_plots,
    plot_image,
    plot_summary,
    plot_temperature_check,
    robust_limits,
)
from ..temperature_check import (
    FLAG_TEMPERATURE,
    MISMATCH_SIGMAS,
    MOSTLY_MISMATCHED,
    TEMPERATURE_PLOT,
    THERMOMETRY_PIXELS,
    TemperatureCheck,
    check_frame_temperatures,
    with_temperature_checks,
)

#: The legacy call form, defined in :mod:`bias_pipeline.legacy` and found here by name (PEP 562:
#: legacy.py imports the step modules, so importing it here at the top would load every step).
LEGACY_NAMES = ("evaluate_model",)
__getattr__ = forward(__name__, LEGACY_NAMES, "bias_pipeline.legacy")

__all__ = [
    "FLAG_TEMPERATURE",
    "MISMATCH_SIGMAS",
    "MOSTLY_MISMATCHED",
    "PLOT_MAX_PIXELS",
    "STATISTICS",
    "SUMMARY_COLUMNS",
    "SUMMARY_CSV",
    "SUMMARY_PNG",
    "TEMPERATURE_PLOT",
    "THERMOMETRY_PIXELS",
    "ImagePlot",
    "MasterImage",
    "MasterEvaluation",
    "TemperatureCheck",
    "check_frame_temperatures",
    "downsample",
    "draw_map",
    "draw_plots",
    "error_maps",
    "evaluate",
    "evaluate_masters",
    "plot_image",
    "plot_summary",
    "plot_temperature_check",
    "robust_limits",
    "summarize",
    "summary_csv_text",
    "with_temperature_checks",
    "write_evaluation",
    *LEGACY_NAMES,
]


def evaluate(
    model: BiasModel,
    masters: Sequence[MasterImage],
    evaluation_dir: str | Path,
    *,
    save_fits: bool = False,
    plots: bool = True,
    show_progress: bool = True,
    heldout_model: BiasModel | None = None,
    threads: int = 0,
    config: PipelineConfig | None = None,
) -> list[dict[str, object]]:
    """Compare the model with every master; write plots, the CSV and optional FITS.

    Parameters
    ----------
    model
        The fitted model.
    masters
        Objects with ``label``, ``temperature``, ``n_frames`` and ``load()``
        (:class:`~bias_pipeline.master_writer.MasterFrame`).
    evaluation_dir, save_fits, plots, show_progress, threads
        As :func:`~bias_pipeline.evaluation.write_evaluation`.
    heldout_model, config
        As :func:`~bias_pipeline.evaluation.evaluate_masters`.

    Returns
    -------
    list of dict
        One summary row per master (keys :data:`SUMMARY_COLUMNS`).
    """
    return write_evaluation(
        evaluate_masters(model, masters, heldout_model=heldout_model, config=config),
        evaluation_dir,
        scale_factor=model.scale_factor,
        save_fits=save_fits,
        plots=plots,
        show_progress=show_progress,
        threads=threads,
        total=len(masters),
    )

"""Every product name of a run, declared once.

The writers (steps 1 to 5, the model, the run record, the log, the report), the start-of-run
clean-up and publishing (:mod:`bias_pipeline.output_folder`), the command's summary and
``inspect`` all take their folder and file names from here, so a name cannot come apart between
the code that writes a file and the code that replaces, lists or reads it.

An output folder holds::

    frames_manifest.csv  pipeline.log  report.html  run_config.json      (RUN_FILES)
    bias_grouped_by_temp/master_bias_<T>C.fits                           (MASTER)
    bias_model/bias_a_map.fits  bias_b_map.fits  bias_model.fits
    bias_masks_by_temp/synthetic_bias_<T>C.fits                          (SYNTHETIC)
    evaluation/evaluation_summary.csv  evaluation_summary.png  temperature_check.png
    evaluation/bias_vs_temperature.png  flag_map.png  profiles.png  sigma_b.png  chi2.png  rms.png
    evaluation/{real_bias,synthetic_bias,residual,mape,significance}_<T>C.png
    evaluation/{synthetic_bias,mae,mape,heldout_mae}_<T>C.fits
    stopped_run/         the manifest and log of a run that stopped before publishing

``<T>`` is a temperature label such as ``12.0`` or ``-5.0``; a second master of the same label
gets ``_2``, ``_3`` ... before the ``C``.

This module imports nothing of the package: every other module may import it.
"""

from __future__ import annotations

import re
from pathlib import Path

# ------------------------------------------------------------------ run-level files
MANIFEST_NAME = "frames_manifest.csv"
LOG_NAME = "pipeline.log"
REPORT_NAME = "report.html"
RUN_CONFIG_NAME = "run_config.json"
#: Files a run writes at the top of the output folder (``run_config.json`` is published last).
RUN_FILES: tuple[str, ...] = (MANIFEST_NAME, LOG_NAME, REPORT_NAME, RUN_CONFIG_NAME)

# ------------------------------------------------------------------ folders
MASTERS_DIR = "bias_grouped_by_temp"
MODEL_DIR = "bias_model"
SYNTHETIC_DIR = "bias_masks_by_temp"
EVALUATION_DIR = "evaluation"
#: Key of a run's folders -> sub-folder of the output folder.
SUBDIRS: dict[str, str] = {
    "masters": MASTERS_DIR,
    "model": MODEL_DIR,
    "synthetic": SYNTHETIC_DIR,
    "evaluation": EVALUATION_DIR,
}
#: The manifest and log of the last run that stopped before publishing.
STOPPED_DIR = "stopped_run"
#: ``--demo``'s simulated raw frames and their truth (not a product: a rerun leaves it alone).
DEMO_DIR = "demo_data"

# ------------------------------------------------------------------ model files
A_MAP_NAME = "bias_a_map.fits"
B_MAP_NAME = "bias_b_map.fits"
MODEL_FILE_NAME = "bias_model.fits"

# ------------------------------------------------------------------ evaluation files
SUMMARY_CSV = "evaluation_summary.csv"
SUMMARY_PNG = "evaluation_summary.png"
TEMPERATURE_PLOT = "temperature_check.png"
#: The fit's diagnostics (step 5, with the plots).
BIAS_TEMPERATURE_PLOT = "bias_vs_temperature.png"
FLAG_MAP_PLOT = "flag_map.png"
PROFILES_PLOT = "profiles.png"
SIGMA_B_PLOT = "sigma_b.png"
CHI2_PLOT = "chi2.png"
RMS_PLOT = "rms.png"
DIAGNOSTIC_PLOTS: tuple[str, ...] = (
    BIAS_TEMPERATURE_PLOT,
    FLAG_MAP_PLOT,
    PROFILES_PLOT,
    SIGMA_B_PLOT,
    CHI2_PLOT,
    RMS_PLOT,
)

# ------------------------------------------------------------------ verify and compare
# The two lifetime commands write into an output folder of their own (``--output-dir``), not
# into a run's: a model is verified or compared, never changed.
VERIFICATION_CSV = "verification.csv"
VERIFICATION_REPORT = "verification.html"
COMPARISON_JSON = "comparison.json"
CHANGED_PIXELS_NAME = "changed_pixels.fits"
COMPARISON_REPORT = "comparison.html"

# ------------------------------------------------------------------ files per temperature
#: Stems of the files written once per temperature label (``<stem>_<T>C.fits`` or ``.png``).
MASTER = "master_bias"
SYNTHETIC = "synthetic_bias"
REAL_PLOT = "real_bias"
MAE = "mae"
MAPE = "mape"
HELDOUT_MAE = "heldout_mae"
RESIDUAL = "residual"  # real - model, the signed map of the plots
SIGNIFICANCE = "significance"  # held-out residual / expected error, the map of the plots
LABELLED_STEMS: tuple[str, ...] = (MASTER, SYNTHETIC, REAL_PLOT, HELDOUT_MAE, MAE, MAPE, RESIDUAL, SIGNIFICANCE)

#: The fixed names inside each sub-folder.
FIXED_NAMES: dict[str, tuple[str, ...]] = {
    MODEL_DIR: (A_MAP_NAME, B_MAP_NAME, MODEL_FILE_NAME),
    EVALUATION_DIR: (SUMMARY_CSV, SUMMARY_PNG, TEMPERATURE_PLOT, *DIAGNOSTIC_PLOTS),
}
_LABELLED = re.compile(r"^(" + "|".join(LABELLED_STEMS) + r")_-?\d+(\.\d+)?(_\d+)?C\.(fits|png)$")


def labelled_name(stem: str, label: str, suffix: str = ".fits") -> str:
    """The file name of a per-temperature product.

    Parameters
    ----------
    stem
        One of :data:`LABELLED_STEMS`.
    label
        The temperature label (``"12.0"``, ``"-5.0"``, ``"12.0_2"``).
    suffix
        ``".fits"`` or ``".png"``.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        For a stem that is not a product of this package.

    Examples
    --------
    >>> labelled_name(MASTER, "12.0"), labelled_name(MAE, "-5.0", ".png")
    ('master_bias_12.0C.fits', 'mae_-5.0C.png')
    """
    if stem not in LABELLED_STEMS:
        raise ValueError(f"{stem!r} is not a per-temperature product ({', '.join(LABELLED_STEMS)})")
    return f"{stem}_{label}C{suffix}"


def is_product(relative: Path) -> bool:
    """Whether a path inside the output folder is a product name of this package (a user's own
    files there are never moved or removed).

    Examples
    --------
    >>> is_product(Path("bias_model/bias_a_map.fits")), is_product(Path("evaluation/mae_-5.0C.png"))
    (True, True)
    >>> is_product(Path("evaluation/notes.txt")), is_product(Path("demo_data/raw/a.fits"))
    (False, False)
    """
    parts = relative.parts
    if len(parts) == 1:
        return parts[0] in RUN_FILES
    if len(parts) == 2 and parts[0] in SUBDIRS.values():
        return bool(_LABELLED.match(parts[1])) or parts[1] in FIXED_NAMES.get(parts[0], ())
    return len(parts) == 2 and parts[0] == STOPPED_DIR

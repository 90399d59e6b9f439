"""Step 0: create the output folder tree and clear the products of an earlier run."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..errors import OutputError
from ..products import TEMPORARY_SUFFIX

logger = logging.getLogger(__name__)

#: Key of :func:`create_directories`'s result -> sub-folder of the output folder.
SUBDIRS: dict[str, str] = {
    "masters": "bias_grouped_by_temp",
    "model": "bias_model",
    "synthetic": "bias_masks_by_temp",
    "evaluation": "evaluation",
}

# Files a run writes under a temperature label; an earlier run's copies are removed so a
# re-run leaves exactly this run's products (temperatures may differ between runs).
_PRODUCT_PATTERN = re.compile(r"^(master_bias|synthetic_bias|real_bias|mae|mape)_-?\d+(\.\d+)?(_\d+)?C\.(fits|png)$")


# Temporary and staged files of this package (see products.TEMPORARY_SUFFIX), nothing else.
_TEMPORARY_PATTERN = re.compile(r"^\..+" + re.escape(TEMPORARY_SUFFIX) + "$")
# Whole-run products an earlier run left: removed at the start so that a run which stops early
# never leaves them beside its own new files.
_RUN_PRODUCTS = (
    "run_config.json",
    "report.html",
    "evaluation/evaluation_summary.csv",
    "evaluation/evaluation_summary.png",
    "evaluation/temperature_check.png",
    "bias_model/bias_a_map.fits",
    "bias_model/bias_b_map.fits",
    "bias_model/bias_model.fits",
)


def create_directories(output_dir: str | Path, *, clear_old_products: bool = True) -> dict[str, Path]:
    """Create ``output_dir`` and its product folders, checking they are writable.

    Parameters
    ----------
    output_dir
        The run's output folder (created with its parents if missing).
    clear_old_products
        Remove the products an earlier run left (per-temperature files such as
        ``master_bias_XX.XC.fits``, the model files and ``run_config.json``); nothing else is
        touched. Temporary files of a killed run (names ending in
        :data:`~bias_pipeline.products.TEMPORARY_SUFFIX`) are always removed.

    Returns
    -------
    dict
        ``{"root": output_dir, "masters": ..., "model": ..., "synthetic": ..., "evaluation": ...}``.

    Raises
    ------
    OutputError
        When a folder cannot be created or written; raised before any work is done.
    """
    root = Path(output_dir)
    dirs = {"root": root, **{key: root / name for key, name in SUBDIRS.items()}}
    for path in dirs.values():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise OutputError(f"--output-dir: {path} exists and is not a folder") from None
        except OSError as exc:
            raise OutputError(
                f"--output-dir: cannot create {path}: {exc.strerror or exc}; choose a writable folder"
            ) from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"--output-dir: {path} is not writable; choose a writable folder")
    for path in dirs.values():
        # Temporary files of a run killed outright (SIGKILL, power loss) never got renamed.
        for stale in path.glob(f".*{TEMPORARY_SUFFIX}"):
            if stale.is_file() and _TEMPORARY_PATTERN.match(stale.name):
                stale.unlink()
                logger.info("removed %s, left by an interrupted run", stale)
    if clear_old_products:
        for name in _RUN_PRODUCTS:
            old = root / name
            if old.is_file():
                old.unlink()
                logger.debug("removed earlier product %s", old)
        for key in ("masters", "synthetic", "evaluation"):
            for old in dirs[key].iterdir():
                if old.is_file() and _PRODUCT_PATTERN.match(old.name):
                    old.unlink()
                    logger.debug("removed earlier product %s", old)
    return dirs

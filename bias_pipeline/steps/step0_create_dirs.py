"""Step 0: the output folder: created and checked writable before any work.

A run writes its products into a staging folder and publishes them together at its end (see
:mod:`bias_pipeline.output_folder`); :func:`create_directories` is the older call form, which
makes the product folders themselves and clears an earlier run's products from them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import OutputError
from ..output_folder import remove_temporary_files
from ..registry import SUBDIRS, is_product

logger = logging.getLogger(__name__)

__all__ = ["SUBDIRS", "create_directories", "make_output_folder"]


def make_output_folder(path: str | Path) -> Path:
    """Create ``path`` (with its parents) and check that it is a writable folder.

    Parameters
    ----------
    path
        The folder.

    Returns
    -------
    Path

    Raises
    ------
    OutputError
        When it cannot be created, is a file, or is not writable; before any work is done.
    """
    path = Path(path)
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
    return path


def create_directories(output_dir: str | Path, *, clear_old_products: bool = True) -> dict[str, Path]:
    """Create ``output_dir`` and its product folders, checking they are writable.

    Parameters
    ----------
    output_dir
        The output folder (created with its parents if missing).
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
        make_output_folder(path)
    for path in dirs.values():
        remove_temporary_files(path)
    if clear_old_products:
        for path in dirs.values():
            for old in path.iterdir():
                if old.is_file() and is_product(old.relative_to(root)):
                    old.unlink()
                    logger.debug("removed earlier product %s", old)
    return dirs

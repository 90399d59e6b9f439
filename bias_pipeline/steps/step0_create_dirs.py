"""Step 0: the output folder: created and checked writable before any work.

A run writes its products into a staging folder and publishes them together at its end (see
:mod:`bias_pipeline.output_folder`); ``create_directories``, the older call form that makes the
product folders themselves and clears an earlier run's products from them, is in
:mod:`bias_pipeline.legacy` and found here too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import OutputError
from ..lazy import forward
from ..registry import SUBDIRS

logger = logging.getLogger(__name__)

#: The legacy call forms, defined in :mod:`bias_pipeline.legacy` and found here by name (PEP 562:
#: legacy.py imports this module, so importing it here at the top would be an import cycle).
LEGACY_NAMES = ("create_directories",)
__getattr__ = forward(__name__, LEGACY_NAMES, "bias_pipeline.legacy")
__all__ = ["SUBDIRS", "make_output_folder", *LEGACY_NAMES]


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

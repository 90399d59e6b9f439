"""Compiled per-pixel kernels: numba, its compile cache, and the numpy reference path.

The pipeline's per-pixel loops (sort, median, MAD, clip, statistics, fit sums) are compiled
by numba the first time they run and kept in numba's on-disk cache, so only the first run
after an install pays for compiling (a few seconds; ``benchmarks/`` measures it).

Where the cache goes:

- ``BIAS_PIPELINE_CACHE_DIR`` (or numba's own ``NUMBA_CACHE_DIR``) names a folder for it;
- otherwise numba's default: ``__pycache__`` beside the package's sources when that folder
  is writable, else the user's cache folder (``~/.cache/numba`` on Linux);
- when no folder is writable, the kernels are compiled in every run (a warning says so once
  and names the variable to set).

Every kernel has a numpy reference that computes the same thing; the tests compare the two.
``BIAS_PIPELINE_KERNELS=numpy`` runs the reference path instead (slower, same products to
float32 rounding), and so does a machine where numba cannot be imported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

#: Environment variable naming the compile-cache folder.
CACHE_DIR_VARIABLE = "BIAS_PIPELINE_CACHE_DIR"
#: Environment variable choosing the path: ``numba`` (default) or ``numpy`` (the reference).
ENGINE_VARIABLE = "BIAS_PIPELINE_KERNELS"
ENGINES = ("numba", "numpy")

FunctionT = TypeVar("FunctionT", bound=Callable[..., Any])


def _writable_folder(folder: str) -> str:
    """Why ``folder`` cannot hold the cache ("" when it can; it is made when missing)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not os.access(folder, os.W_OK | os.X_OK):
        return "not writable"
    return ""


_cache_dir = os.environ.get(CACHE_DIR_VARIABLE, "").strip()
_cache_problem = _writable_folder(_cache_dir) if _cache_dir else ""
if _cache_dir and not _cache_problem:
    # numba reads its configuration when it is first imported; set it before.
    os.environ["NUMBA_CACHE_DIR"] = _cache_dir

try:
    import numba
except ImportError as _exc:  # a platform without numba wheels: the numpy path still works
    numba = None
    _IMPORT_ERROR = str(_exc)
else:
    _IMPORT_ERROR = ""
    if _cache_dir and not _cache_problem:
        numba.config.CACHE_DIR = _cache_dir  # numba may have been imported before us
    elif _cache_problem:
        logger.warning(
            "%s=%s cannot hold the compile cache (%s); numba's default folder is used instead",
            CACHE_DIR_VARIABLE, _cache_dir, _cache_problem,
        )  # fmt: skip

_warned_uncached = False


def engine() -> str:
    """The path the pipeline runs: ``"numba"`` (compiled kernels) or ``"numpy"`` (the reference).

    Returns
    -------
    str
        ``"numpy"`` when ``BIAS_PIPELINE_KERNELS=numpy`` or numba cannot be imported.
    """
    chosen = os.environ.get(ENGINE_VARIABLE, "numba").strip().lower() or "numba"
    if chosen not in ENGINES:
        logger.warning("%s=%s is not one of %s; using numba", ENGINE_VARIABLE, chosen, ", ".join(ENGINES))
        chosen = "numba"
    if chosen == "numba" and numba is None:
        return "numpy"
    return chosen


def describe_engine() -> str:
    """One line for the run's log: which path runs and where its compile cache is."""
    if numba is None:
        return f"numpy reference path (numba cannot be imported: {_IMPORT_ERROR})"
    if engine() == "numpy":
        return f"numpy reference path ({ENGINE_VARIABLE}=numpy)"
    where = numba.config.CACHE_DIR or "numba's default (__pycache__ beside the sources, else ~/.cache/numba)"
    return f"numba {numba.__version__} kernels, compile cache: {where}"


def kernel(function: FunctionT | None = None, *, reassociate: bool = False) -> Any:
    """Compile ``function`` with numba (no Python objects, interpreter lock released, cached).

    The lock is released so that worker threads run kernels on separate row blocks at once.
    Without numba the plain Python function is returned (callers choose the numpy path by
    :func:`engine` instead of running that). Use as ``@kernel`` or ``@kernel(reassociate=True)``.

    Parameters
    ----------
    function
        A function numba can compile in nopython mode.
    reassociate
        Let the compiler reorder floating-point sums (numba's ``fastmath={"reassoc"}``), so that
        it can vectorise a reduction. Only for sums whose order does not matter beyond their
        last bits; never for arithmetic that must match the numpy path bit for bit.

    Returns
    -------
    callable
        The compiled dispatcher (or a decorator, when called with options only).
    """
    if function is None:
        return lambda f: kernel(f, reassociate=reassociate)
    global _warned_uncached
    if numba is None:
        return function
    options: dict[str, Any] = {"nogil": True}
    if reassociate:
        options["fastmath"] = {"reassoc"}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError as exc:  # no writable cache folder anywhere
        if not _warned_uncached:
            _warned_uncached = True
            logger.warning(
                "compiled kernels cannot be cached (%s); they are compiled again in every run: "
                "set %s to a writable folder",
                exc, CACHE_DIR_VARIABLE,
            )  # fmt: skip
        return numba.njit(**options)(function)

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
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: Environment variable naming the compile-cache folder.
CACHE_DIR_VARIABLE = "BIAS_PIPELINE_CACHE_DIR"
#: Environment variable choosing the path: ``numba`` (default) or ``numpy`` (the reference).
ENGINE_VARIABLE = "BIAS_PIPELINE_KERNELS"
ENGINES = ("numba", "numpy")


def _writable_folder(folder: str) -> str:
    """Why ``folder`` cannot hold the cache ("" when it can; it is made when missing)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not os.access(folder, os.W_OK | os.X_OK):
        return "not writable"
    return ""


_numba: Any = None  # the numba module once imported (numba is imported on first use)
_import_error: str | None = None  # why numba cannot be imported, once tried
_warned_uncached = False


def _load_numba() -> Any:
    """numba, imported on first use with the cache folder set; ``None`` when it cannot be.

    Not at import time: a command that compiles nothing (``inspect``, ``generate-bias``, a
    run stopped by a bad option, the dark pipeline loading a model) does not pay numba's
    import (about half a second and 55 MiB).
    """
    global _numba, _import_error
    if _numba is not None or _import_error is not None:
        return _numba
    cache_dir = os.environ.get(CACHE_DIR_VARIABLE, "").strip()
    problem = _writable_folder(cache_dir) if cache_dir else ""
    if cache_dir and not problem:
        os.environ["NUMBA_CACHE_DIR"] = cache_dir  # numba reads it when it is first imported
    try:
        import numba
    except ImportError as exc:  # a platform without numba wheels: the numpy path still works
        _import_error = str(exc)
        return None
    if cache_dir and not problem:
        numba.config.CACHE_DIR = cache_dir  # numba may have been imported before us
    elif problem:
        logger.warning(
            "%s=%s cannot hold the compile cache (%s); numba's default folder is used instead",
            CACHE_DIR_VARIABLE, cache_dir, problem,
        )  # fmt: skip
    _numba = numba
    return numba


def available() -> bool:
    """Whether numba can be imported (the kernels can run)."""
    return _load_numba() is not None


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
    if chosen == "numba" and not available():
        return "numpy"
    return chosen


def describe_engine() -> str:
    """One line for the run's log: which path runs and where its compile cache is."""
    numba = _load_numba()
    if numba is None:
        return f"numpy reference path (numba cannot be imported: {_import_error})"
    if engine() == "numpy":
        return f"numpy reference path ({ENGINE_VARIABLE}=numpy)"
    where = numba.config.CACHE_DIR or "numba's default (__pycache__ beside the sources, else ~/.cache/numba)"
    return f"numba {numba.__version__} kernels, compile cache: {where}"


class Kernel:
    """A function to be compiled by numba on its first call (see :func:`kernel`).

    Compiling, and importing numba, wait until a kernel is first called from Python. Then
    every kernel its module's functions can call (``Kernel`` objects among the module's
    globals) is replaced there by its numba dispatcher, so that compiled code calls compiled
    code; later calls through this object go straight to the dispatcher.
    """

    def __init__(self, function: Callable[..., Any], reassociate: bool) -> None:
        self.py_func = function
        self.reassociate = reassociate
        self.dispatcher: Any = None
        self.__name__ = function.__name__
        self.__qualname__ = function.__qualname__
        self.__doc__ = function.__doc__
        self.__module__ = function.__module__
        self.__wrapped__ = function

    def __repr__(self) -> str:
        return f"<kernel {self.__module__}.{self.__qualname__}>"

    def __call__(self, *args: Any) -> Any:
        return (self.dispatcher or self.compile())(*args)

    def compile(self) -> Any:
        """The numba dispatcher (made once; compiled per argument types on first call).

        Made under a lock together with those of every kernel of the module, and published
        only then: another thread must not call (and so compile) a kernel whose callees are
        not yet dispatchers."""
        with _compile_lock:
            if self.dispatcher is None:
                _compile_module_kernels(self.py_func.__globals__)
            if self.dispatcher is None:  # not among its module's globals
                self.dispatcher = self._make_dispatcher()
            return self.dispatcher

    def _make_dispatcher(self) -> Any:
        global _warned_uncached
        numba = _load_numba()
        if numba is None:
            raise RuntimeError(f"numba cannot be imported ({_import_error}); use {ENGINE_VARIABLE}=numpy")
        options: dict[str, Any] = {"nogil": True}
        if self.reassociate:
            options["fastmath"] = {"reassoc"}
        try:
            return numba.njit(cache=True, **options)(self.py_func)
        except RuntimeError as exc:  # no writable cache folder anywhere
            if not _warned_uncached:
                _warned_uncached = True
                logger.warning(
                    "compiled kernels cannot be cached (%s); they are compiled again in every run: "
                    "set %s to a writable folder",
                    exc, CACHE_DIR_VARIABLE,
                )  # fmt: skip
            return numba.njit(**options)(self.py_func)


_compile_lock = threading.RLock()  # re-entrant: a module's kernels may call another module's
_converted_modules: set[int] = set()


def _compile_module_kernels(namespace: dict[str, Any]) -> None:
    """Replace every :class:`Kernel` among a module's globals by its dispatcher, once per module
    (numba looks a compiled function's callees up there when it compiles it); the kernels
    learn their dispatchers last. Called under ``_compile_lock``."""
    if id(namespace) in _converted_modules:
        return
    _converted_modules.add(id(namespace))
    kernels = {name: value for name, value in namespace.items() if isinstance(value, Kernel)}
    made = {}
    for name, value in kernels.items():
        if value.dispatcher is not None:
            made[name] = value.dispatcher
        elif value.py_func.__globals__ is namespace:
            made[name] = value._make_dispatcher()
        else:  # imported from another module: that module's kernels too
            made[name] = value.compile()
    namespace.update(made)
    for name, value in kernels.items():
        if value.dispatcher is None:
            value.dispatcher = made[name]


def kernel(function: Callable[..., Any] | None = None, *, reassociate: bool = False) -> Any:
    """Mark ``function`` as a compiled kernel: numba, no Python objects, interpreter lock
    released, compile cache on; compiled on its first call (:class:`Kernel`).

    The lock is released so that worker threads run kernels on separate row blocks at once.
    Callers choose the numpy path by :func:`engine` rather than calling a kernel without
    numba. Use as ``@kernel`` or ``@kernel(reassociate=True)``.

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
    Kernel
        (or a decorator, when called with options only).
    """
    if function is None:
        return lambda f: Kernel(f, reassociate)
    return Kernel(function, reassociate)

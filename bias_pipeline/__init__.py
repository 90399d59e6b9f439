"""bias_pipeline: temperature-dependent bias model of PhotSat's CMOS camera.

The public API: :func:`run_bias_pipeline`, :class:`BiasModel`, :class:`BiasLibrary` (several
models and the choice of one for a frame's temperature and date), :func:`subtract_bias`,
:class:`PipelineConfig`, ``__version__``, and the errors the user can cause (:class:`BiasPipelineError`).

The names are imported on first use (``from bias_pipeline import BiasModel`` works as ever):
the commands then start without numpy and astropy, and answer a Ctrl-C in one line from the
first instant (see :mod:`bias_pipeline.entry`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:
    from .config import PipelineConfig
    from .errors import BiasPipelineError, ConfigError, FrameReadError, InputDataError, OutputError
    from .library import BiasLibrary
    from .main_pipeline import PipelineResult, run_bias_pipeline
    from .model import BiasModel
    from .subtract import subtract_bias

#: Public name -> the module that defines it.
_HOMES = {
    "PipelineConfig": ".config",
    "BiasPipelineError": ".errors",
    "ConfigError": ".errors",
    "FrameReadError": ".errors",
    "InputDataError": ".errors",
    "OutputError": ".errors",
    "BiasLibrary": ".library",
    "PipelineResult": ".main_pipeline",
    "run_bias_pipeline": ".main_pipeline",
    "BiasModel": ".model",
    "subtract_bias": ".subtract",
}

__all__ = [
    "BiasLibrary",
    "BiasModel",
    "BiasPipelineError",
    "ConfigError",
    "FrameReadError",
    "InputDataError",
    "OutputError",
    "PipelineConfig",
    "PipelineResult",
    "__version__",
    "run_bias_pipeline",
    "subtract_bias",
]


def __getattr__(name: str) -> object:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""bias_pipeline: temperature-dependent bias model of PhotSat's CMOS camera.

The public API: :func:`run_bias_pipeline`, :class:`BiasModel`, :func:`subtract_bias`,
:class:`PipelineConfig`,
``__version__``, and the errors the user can cause (:class:`BiasPipelineError`).
"""

from ._version import __version__
from .config import PipelineConfig
from .errors import BiasPipelineError, ConfigError, FrameReadError, InputDataError, OutputError
from .main_pipeline import PipelineResult, run_bias_pipeline
from .model import BiasModel
from .subtract import subtract_bias

__all__ = [
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

"""Deprecated name of :mod:`bias_pipeline.inspection` (``inspect`` shadowed the standard library's)."""

import warnings

from .inspection import *  # noqa: F403

warnings.warn("bias_pipeline.inspect is deprecated; import bias_pipeline.inspection", DeprecationWarning, stacklevel=2)

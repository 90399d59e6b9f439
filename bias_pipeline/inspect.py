"""Deprecated name of :mod:`bias_pipeline.inspection` (``inspect`` shadowed the standard library's)."""

import warnings

from . import inspection
from .inspection import *  # noqa: F403

warnings.warn("bias_pipeline.inspect is deprecated; import bias_pipeline.inspection", DeprecationWarning, stacklevel=2)


def __getattr__(name: str) -> object:
    """Every other name of :mod:`bias_pipeline.inspection` too (the old module had no ``__all__``)."""
    try:
        return getattr(inspection, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


if __name__ == "__main__":  # python -m bias_pipeline.inspect PATH, as before the rename
    import sys

    sys.exit(inspection.main())

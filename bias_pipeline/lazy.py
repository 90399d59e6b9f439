"""Names a module finds in another module on first use (PEP 562), where importing that module
at the top would be an import cycle."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable


def forward(module: str, names: Iterable[str], home: str) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``module`` that finds ``names`` in the module ``home``.

    Parameters
    ----------
    module
        The forwarding module's ``__name__`` (for the error message).
    names
        The names it forwards.
    home
        The module that defines them, imported on the first look-up.

    Returns
    -------
    callable
        Assign it to ``__getattr__`` in ``module``.

    Examples
    --------
    >>> getattr_ = forward("mine", ["sqrt"], "math")
    >>> getattr_("sqrt")(4.0)
    2.0
    """
    wanted = frozenset(names)

    def __getattr__(name: str) -> object:
        if name in wanted:
            return getattr(importlib.import_module(home), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__

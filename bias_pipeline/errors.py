"""Errors a user can cause.

Every error here carries a message that names the file or option at fault and says what to
do; the command-line interface prints it as one line and exits with ``exit_code``.
"""

from __future__ import annotations


class BiasPipelineError(Exception):
    """Base class of every error the user can cause (bad option, bad input, bad output)."""

    exit_code = 1


class ConfigError(BiasPipelineError):
    """An option has an invalid value or options contradict each other."""

    exit_code = 2


class InputDataError(BiasPipelineError):
    """The input folder, a mask or a model file cannot be used."""

    exit_code = 3


class OutputError(BiasPipelineError):
    """The output location cannot be written."""

    exit_code = 4


class FrameReadError(BiasPipelineError):
    """One raw frame cannot be used; the scan records the message as the rejection reason."""


def one_line(exc: BaseException) -> str:
    r"""An exception's message on one line (a parser's multi-line message folded), or its
    type's name when it has none.

    >>> one_line(ValueError("bad value\n  at line 3"))
    'bad value at line 3'
    """
    return " ".join(str(exc).split()) or type(exc).__name__


def fits_problem(exc: BaseException) -> str:
    """What astropy's failure to open a file says, in the user's terms and on one line (its
    advice to pass ``ignore_missing_simple=True`` means nothing outside Python).

    >>> fits_problem(OSError("No SIMPLE card found, this file does not appear to be a valid FITS file. "
    ...                      "If this is really a FITS file, try with ignore_missing_simple=True"))
    'not a FITS file (it does not begin with a SIMPLE card)'
    >>> fits_problem(OSError("Empty or corrupt FITS file"))
    'empty or corrupt: no complete FITS header'
    """
    text = one_line(exc)
    if "SIMPLE card" in text or "ignore_missing_simple" in text:
        return "not a FITS file (it does not begin with a SIMPLE card)"
    if "Empty or corrupt FITS file" in text:
        return "empty or corrupt: no complete FITS header"
    return text

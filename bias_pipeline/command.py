"""What every command of the package shares: a parser whose errors are one line, the guard
that turns errors and signals into one line and an exit code, and the console's logging.

The run and generate commands (:mod:`bias_pipeline.cli`), ``simulate`` and ``inspect`` all use
these; this module imports none of them, so none of them imports another's command line.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from ._version import __version__
from .config import CHOICE, DATE, INTEGER, KEYWORDS, NUMBER, PATH, SWITCH, Option, help_text, options
from .dates import parse_date
from .errors import BiasPipelineError
from .interrupts import Terminated, raise_terminated
from .provenance import PACKAGE_LOGGER

logger = logging.getLogger("bias_pipeline.cli")

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process killed by it
EXIT_INTERNAL = 70


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the option, and that takes negative
    numbers in any notation as values (``--temperature -1e-3``, ``-inf``), not as options."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> None:  # type: ignore[override]
        hint = self.suggestion(message)
        self.exit(2, f"{self.prog}: error: {message}{f' ({hint})' if hint else ' (see --help)'}\n")

    def suggestion(self, message: str) -> str:
        """The hint for argparse's error ``message`` about a mistyped option or choice.

        Parameters
        ----------
        message
            argparse's message (``unrecognized arguments: --basepth x``, ``argument --m: invalid choice: ...``).

        Returns
        -------
        str
            ``did you mean --basepath?``, or ``""`` when nothing the parser knows is close
            (``difflib``'s 0.6 similarity).
        """
        unknown = re.match(r"unrecognized arguments: (.*)$", message)
        if unknown:
            known = [flag for flag in self._option_string_actions if flag.startswith("--")]
            tokens = [token.split("=", 1)[0] for token in unknown.group(1).split() if token.startswith("--")]
            guesses = [guess for guess in (close_match(token, known) for token in tokens) if guess]
            return f"did you mean {', '.join(guesses)}?" if guesses else ""
        choice = re.match(r"argument (\S+): invalid choice: '?(.*?)'? \(choose from", message)
        if choice:
            for action in self._actions:
                names = "/".join(action.option_strings) or str(action.metavar or action.dest)
                if names == choice.group(1) and action.choices is not None:
                    guess = close_match(choice.group(2), (str(c) for c in action.choices))
                    return f"did you mean {guess}?" if guess else ""
        return ""


# Every float() spelling of a negative number (argparse alone knows -1 and -1.5, not -1e-3 or -inf).
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


def finite_float(text: str) -> float:
    """A finite number for argparse (``nan`` and ``inf`` refused with the reason)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def argparse_type(opt: Option) -> Callable[[str], object] | None:
    """The argparse ``type`` of a schema option's kind (every command that offers schema options uses it)."""
    if opt.kind == NUMBER:
        return finite_float
    if opt.kind == INTEGER:
        return int
    if opt.kind == PATH:
        return Path
    if opt.kind == KEYWORDS:
        parse = opt.parse
        assert parse is not None

        def keywords(text: str) -> object:
            try:
                return parse(text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        return keywords
    if opt.kind == DATE:
        return _date_argument
    return None  # a choice (argparse checks it) or a switch


def add_schema_option(group: argparse._ActionsContainer, name: str, help: str | None = None) -> None:
    """One option of the run's schema added to a parser (or one of its groups) as the run's own
    parser has it: unset unless given, a switch as ``--x/--no-x``, typed by :func:`argparse_type`.

    Parameters
    ----------
    group
        The parser or argument group.
    name
        The option's field name in :class:`~bias_pipeline.config.PipelineConfig`.
    help
        Its help; the schema's (:func:`~bias_pipeline.config.help_text`) when ``None``.
    """
    opt = options()[name]
    kwargs: dict[str, object] = {
        "default": argparse.SUPPRESS,
        "dest": name,
        "help": help_text(name) if help is None else help,
    }
    if opt.kind == SWITCH:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs.update(type=argparse_type(opt), metavar=opt.metavar, choices=opt.choices, nargs=opt.nargs)
        if opt.kind == CHOICE or (opt.choices is not None and opt.metavar is None):
            del kwargs["metavar"]
    group.add_argument(opt.flag, **kwargs)  # type: ignore[arg-type]


def _date_argument(text: str) -> object:
    """A date option's text as a UTC datetime (ISO or an MJD number)."""
    try:
        return parse_date(text)
    except ValueError as exc:
        example = "2026-03-01 or 2026-03-01T12:00:00 (UTC)"
        raise argparse.ArgumentTypeError(f"{exc}; give a date such as {example}") from None


def add_message_options(
    parser: argparse.ArgumentParser,
    verbose: str = "more messages (and internal error details)",
    quiet: str = "nothing on stdout but what was asked for (--json); on stderr only warnings and errors",
) -> None:
    """The options every command shares, in a ``messages`` group: ``-v``/``--verbose`` and
    ``-q``/``--quiet`` (one or the other) and ``--version``.

    Parameters
    ----------
    parser
        The command's parser.
    verbose, quiet
        Their help, when the command's own words say more.
    """
    group = parser.add_argument_group("messages")
    either = group.add_mutually_exclusive_group()
    either.add_argument("-v", "--verbose", action="store_true", help=verbose)
    either.add_argument("-q", "--quiet", action="store_true", help=quiet)
    group.add_argument("--version", action="version", version=f"bias_pipeline {__version__}")


def close_match(word: str, known: Iterable[str]) -> str | None:
    """The one of ``known`` that ``word`` most likely mistypes.

    Parameters
    ----------
    word
        What the user typed.
    known
        The words it may stand for.

    Returns
    -------
    str or None
        The closest of ``known`` by ``difflib`` (similarity 0.6 or more), or ``None``.
    """
    found = difflib.get_close_matches(word, list(known), n=1)
    return found[0] if found else None


class ConsoleHandler(logging.StreamHandler):
    """stderr, written through tqdm so that a message does not tear a progress bar apart."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Send the package's log records to stderr at the level the flags ask for, and let stdout
    show a file name that is not UTF-8 with escapes instead of failing on it.

    The package logger makes every record (DEBUG); the console handler keeps those at the
    ``-v`` / ``-q`` level, and a run's ``pipeline.log`` handler
    (:func:`bias_pipeline.provenance.run_log`) all of them.

    Parameters
    ----------
    verbose
        Show debug records (every file's decision).
    quiet
        Show only warnings and errors.
    """
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = ConsoleHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    package = logging.getLogger(PACKAGE_LOGGER)
    package.handlers[:] = [handler]  # a second call in one process replaces the first's console
    package.setLevel(logging.DEBUG)
    package.propagate = False  # the command owns the console: a root handler would print records twice
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers[:] = [handler]
    warnings_logger.setLevel(logging.DEBUG if verbose else logging.ERROR)
    warnings_logger.propagate = False


def guarded(prog: str, body: Callable[[], int], interrupted: Callable[[KeyboardInterrupt], str] | None = None) -> int:
    """Run a command's ``body``: errors the user can cause become one line and their exit code,
    Ctrl-C and SIGTERM one line saying what was left (``interrupted(exc)``, or that nothing was
    half-written), a bug one line asking for a report."""
    previous = previous_int = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, raise_terminated)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored (nohup, `&`): left so
            previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C: KeyboardInterrupt
    try:
        return body()
    except BiasPipelineError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _stopped(prog, exc, interrupted)
    except Exception as exc:  # a bug: one line, the traceback only with -v
        interrupt = _interrupt_inside(exc)
        if interrupt is not None:  # Ctrl-C or SIGTERM that Python wrapped (in an import's __set_name__)
            return _stopped(prog, interrupt, interrupted)
        logger.debug("internal error", exc_info=True)
        sys.stderr.write(
            f"{prog}: internal error: {type(exc).__name__}: {exc} (rerun with -v for details and report it)\n"
        )
        return EXIT_INTERNAL
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


def _stopped(prog: str, exc: KeyboardInterrupt, interrupted: Callable[[KeyboardInterrupt], str] | None) -> int:
    """The one line of a command stopped by Ctrl-C or SIGTERM, and its exit code."""
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    left = interrupted(exc) if interrupted is not None else "no file was left half-written"
    sys.stderr.write(f"{prog}: {what}; {left}\n")
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def _interrupt_inside(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM an exception was raised from (its cause or context), if any."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None

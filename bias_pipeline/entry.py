"""The commands' entry points (``run_pipeline.py``, ``generate_bias.py``, ``bias-pipeline``,
``generate-bias``, ``python -m bias_pipeline``): Ctrl-C and SIGTERM answered in one line from the
first instant.

Importing numpy, astropy and matplotlib takes most of a second; a Ctrl-C then would print
Python's traceback. Until a command's own handling takes over (:func:`bias_pipeline.command.guarded`),
a signal ends the process with one line, since nothing has been written yet.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


@contextlib.contextmanager
def starting(prog: str) -> Iterator[None]:
    """While the block runs, Ctrl-C or SIGTERM end the process at once with one line on stderr."""

    def stop(signum: int, frame: object) -> None:
        what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        os.write(2, f"{prog}: {what} while starting; nothing was written\n".encode())
        os._exit(EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED)

    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ():
            if signal.getsignal(signum) is not signal.SIG_IGN:  # a caller's nohup or `&` is respected
                previous[signum] = signal.signal(signum, stop)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run(prog: str | None = None) -> int:
    """``run_pipeline.py`` and ``bias-pipeline``; ``bias-pipeline COMMAND ...`` runs another
    command of :data:`COMMANDS` (``bias-pipeline verify ...``), as ``python -m bias_pipeline``."""
    name = prog or os.path.basename(sys.argv[0])
    with starting(name):
        args = sys.argv[1:]
        if args and (args[0] in COMMANDS or mistyped_command(args[0])):
            return dispatch(args, name)
        from .cli import run_main

        return run_main(prog=name)


def generate(prog: str | None = None) -> int:
    """``generate_bias.py`` and ``generate-bias``."""
    name = prog or os.path.basename(sys.argv[0])
    with starting(name):
        from .cli import generate_main

        return generate_main(prog=name)


# ------------------------------------------------------------------ the commands
def _run(argv: list[str], prog: str) -> int:
    from .cli import run_main

    return run_main(argv, prog=prog)


def _generate(argv: list[str], prog: str) -> int:
    from .cli import generate_main

    return generate_main(argv, prog=prog)


def _simulate(argv: list[str], prog: str) -> int:
    from .simulate import main

    return main(argv, prog=prog)


def _inspect(argv: list[str], prog: str) -> int:
    from .inspection import main

    return main(argv, prog=prog)


def _verify(argv: list[str], prog: str) -> int:
    from .verification import main

    return main(argv, prog=prog)


def _compare(argv: list[str], prog: str) -> int:
    from .comparison import main

    return main(argv, prog=prog)


#: Command -> (one-line description, entry point taking ``(argv, prog)``).
COMMANDS: dict[str, tuple[str, Callable[[list[str], str], int]]] = {
    "run": ("run the pipeline on a folder of raw bias frames (as run_pipeline.py, bias-pipeline)", _run),
    "generate": ("write one synthetic bias frame at a temperature from a model (as generate_bias.py)", _generate),
    "simulate": ("write a simulated raw data set with its truth, to try the pipeline", _simulate),
    "inspect": ("summarise a model file or a pipeline output folder (--json for scripts)", _inspect),
    "verify": ("check a model against new bias frames (exit 0: it holds, 1: it does not)", _verify),
    "compare": ("compare two models: global offset and changed pixels (exit 0: agree, 1: differ)", _compare),
}


def usage(prog: str) -> str:
    """The text of ``python -m bias_pipeline --help`` (``prog``: the command's name)."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"usage: {prog} COMMAND [options]",
        "",
        "Temperature-dependent bias model of a CMOS camera.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, (text, _) in COMMANDS.items()),
        "",
        f"'{prog} COMMAND --help' shows a command's options; '{prog} --version' the version.",
        f"Options without a command run the pipeline, as before: {prog} --demo --output-dir demo_out/",
    ]
    return "\n".join(lines) + "\n"


def mistyped_command(word: str) -> str | None:
    """The command of :data:`COMMANDS` that ``word`` most likely mistypes (``verfy``: ``verify``),
    or ``None``; an option (``-x``) or a path (``raw/``) is no command."""
    if word.startswith("-") or "/" in word or "\\" in word:
        return None
    import difflib  # here: light, and only a mistyped command needs it

    found = difflib.get_close_matches(word, list(COMMANDS), n=1)
    return found[0] if found else None


def dispatch(args: list[str], prog: str) -> int:
    """Run the command ``args[0]`` names with the rest of ``args``; options without a command
    run the pipeline. ``prog`` is the name the user typed (``python -m bias_pipeline``,
    ``bias-pipeline``)."""
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(usage(prog))
        return 0
    first = args[0]
    if first == "--version":
        from ._version import __version__

        sys.stdout.write(f"bias_pipeline {__version__}\n")
        return 0
    if first.startswith("-"):  # the pipeline's options, as before commands existed
        return _run(args, prog)
    if first in COMMANDS:
        return COMMANDS[first][1](args[1:], f"{prog} {first}")
    guess = mistyped_command(first)
    if guess:
        sys.stderr.write(f"{prog}: error: unknown command {first!r} (did you mean {guess}?)\n")
    else:
        sys.stderr.write(f"{prog}: error: unknown command {first!r}; give one of {', '.join(COMMANDS)} (see --help)\n")
    return 2

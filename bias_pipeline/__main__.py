"""``python -m bias_pipeline COMMAND [options]``: the package's commands under one name.

``run`` is the pipeline (``run_pipeline.py``, ``bias-pipeline``), ``generate`` one synthetic
frame (``generate_bias.py``, ``generate-bias``), ``simulate`` a simulated raw data set
(``python -m bias_pipeline.simulate``), ``inspect`` a summary of a model or an output folder,
``verify`` a model checked on new bias frames and ``compare`` two models of one sensor.
Options without a command (``python -m bias_pipeline --demo --output-dir out``) run the
pipeline, as this module did before it had commands.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

PROG = "python -m bias_pipeline"


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


def usage() -> str:
    """The text of ``python -m bias_pipeline --help``."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"usage: {PROG} COMMAND [options]",
        "",
        "Temperature-dependent bias model of a CMOS camera.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, (text, _) in COMMANDS.items()),
        "",
        f"'{PROG} COMMAND --help' shows a command's options; '{PROG} --version' the version.",
        f"Options without a command run the pipeline, as before: {PROG} --demo --output-dir demo_out/",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a command; see :func:`usage`.

    Parameters
    ----------
    argv
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The command's exit code; 2 for an unknown command.
    """
    from .entry import starting

    with starting(PROG):
        return _dispatch(list(sys.argv[1:] if argv is None else argv))


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0
    first = args[0]
    if first == "--version":
        from ._version import __version__

        sys.stdout.write(f"bias_pipeline {__version__}\n")
        return 0
    if first.startswith("-"):  # the pipeline's options, as before commands existed
        return _run(args, PROG)
    if first in COMMANDS:
        return COMMANDS[first][1](args[1:], f"{PROG} {first}")
    sys.stderr.write(f"{PROG}: error: unknown command {first!r}; give one of {', '.join(COMMANDS)} (see --help)\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())

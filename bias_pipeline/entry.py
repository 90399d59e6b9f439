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
from collections.abc import Iterator

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
    """``run_pipeline.py`` and ``bias-pipeline``."""
    name = prog or os.path.basename(sys.argv[0])
    with starting(name):
        from .cli import run_main

        return run_main(prog=name)


def generate(prog: str | None = None) -> int:
    """``generate_bias.py`` and ``generate-bias``."""
    name = prog or os.path.basename(sys.argv[0])
    with starting(name):
        from .cli import generate_main

        return generate_main(prog=name)

"""Ctrl-C and SIGTERM: the exception a SIGTERM becomes, and a block they cannot cut in half.

A run turns SIGTERM (a batch scheduler's kill) into :class:`Terminated`, a
``KeyboardInterrupt``, so that it unwinds like Ctrl-C. The few renames that publish a run's
products must not be interrupted half-way: :func:`deferred_interrupts` holds both signals
until the block is over and then acts on them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the run unwinds like Ctrl-C: temporary files are
    removed and the message is one line."""


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler that raises :class:`Terminated`."""
    raise Terminated


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs; deliver them when it ends.

    Only the main thread receives signals in Python; elsewhere the block runs unguarded. A
    signal that arrived meanwhile is raised again once the earlier handlers are back, so
    Ctrl-C still raises ``KeyboardInterrupt`` (and SIGTERM whatever its handler does), right
    after the block.

    >>> with deferred_interrupts():
    ...     pass
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in HELD_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])

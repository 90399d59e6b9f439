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
    after the block; SIGTERM when both came. When the block itself raises, its exception
    goes on and the held signal is dropped (the run stops either way).

    >>> with deferred_interrupts():
    ...     pass
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    previous: dict[int, object] = {}
    failed = False
    try:
        for signum in HELD_SIGNALS:  # inside the try: a signal landing between two is not lost either
            previous[signum] = signal.signal(signum, hold)
        yield
    except BaseException:
        failed = True  # the block's own error is what the caller must see; a held signal adds nothing
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        if received and not failed:
            # SIGTERM first: a scheduler's stop outranks a Ctrl-C that came with it.
            signal.raise_signal(signal.SIGTERM if signal.SIGTERM in received else received[0])

"""Worker pools that stop promptly: how many workers to use, and an executor that, when the
run is interrupted (Ctrl-C, SIGTERM) or fails, drops its queued tasks instead of finishing them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import TypeVar

PoolT = TypeVar("PoolT", bound=Executor)


def default_threads() -> int:
    """Workers when ``threads`` is 0: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


@contextlib.contextmanager
def worker_pool(executor: PoolT) -> Iterator[PoolT]:
    """Use ``executor`` in a ``with`` block; on any exception, cancel what has not started.

    A plain ``with ThreadPoolExecutor()`` waits for every queued task before an exception
    leaves the block, so Ctrl-C during a pool of 120 tasks would wait for all of them.

    >>> from concurrent.futures import ThreadPoolExecutor
    >>> with worker_pool(ThreadPoolExecutor(2)) as pool:
    ...     list(pool.map(abs, [-1, -2]))
    [1, 2]
    """
    try:
        yield executor
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)  # running tasks are short; queued ones dropped
        raise
    executor.shutdown(wait=True)

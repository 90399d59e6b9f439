"""Step 2's block tasks on a Dask cluster (``--dask-scheduler``).

The combine's one task, :func:`~bias_pipeline.block_combine.combine_rows` (a group's row range
in, the master's rows, noise, counts and frame statistics out), depends on nothing but its
:class:`~bias_pipeline.block_combine.BlockPlan` and its rows, so it runs unchanged on the
workers of a running ``dask.distributed`` scheduler: the workers read the frames from the paths
the scan found (they must see the same file system), the driver puts the rows together and
writes every product, as a local run does. The products are bit-identical to a local run's: the
same function runs on the same rows, and the driver sums the blocks' statistics in block order.

``dask[distributed]`` is an optional extra (``pip install 'bias_pipeline[dask]'``); it is
imported only when a scheduler is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import BiasPipelineError, ConfigError

logger = logging.getLogger(__name__)

#: ``--dask-scheduler local:N``: a ``LocalCluster`` of N worker processes for one run.
LOCAL_PREFIX = "local:"
#: What to install for ``--dask-scheduler``.
INSTALL_HINT = "pip install 'bias_pipeline[dask]'"
#: Seconds to wait for a scheduler to answer before the run stops with a message (not a hang).
CONNECT_TIMEOUT_S = 10.0
#: Most worker processes ``local:N`` starts.
MAX_LOCAL_WORKERS = 256

_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss|inproc)://)?[\w.\-\[\]:]+:\d+$|^(?:tcp|tls|ucx|ws|wss|inproc)://\S+$")


class ClusterError(BiasPipelineError):
    """The cluster could not be reached or could not finish the blocks."""

    exit_code = 1


def local_workers(address: str) -> int | None:
    """The N of ``local:N`` (``None`` for the address of a running scheduler).

    >>> local_workers("local:4"), local_workers("tcp://host:8786")
    (4, None)
    """
    if not address.startswith(LOCAL_PREFIX):
        return None
    text = address[len(LOCAL_PREFIX) :]
    if not text.isdigit() or not 1 <= int(text) <= MAX_LOCAL_WORKERS:
        raise ConfigError(
            f"--dask-scheduler {address}: give local:N with N worker processes from 1 to {MAX_LOCAL_WORKERS}"
        )
    return int(text)


def check_scheduler(value: object, flag: str) -> None:
    """The check of ``--dask-scheduler``: an address such as ``tcp://host:8786`` or ``local:N``,
    and ``dask.distributed`` importable (else a one-line error that says what to install).

    Raises
    ------
    ConfigError
        For a malformed address or a missing extra.
    """
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{flag} must be a scheduler address such as tcp://host:8786 or local:N, got {value!r}")
    if local_workers(value) is None and not _ADDRESS.match(value):
        raise ConfigError(f"{flag} {value}: not a scheduler address; give one such as tcp://host:8786, or local:N")
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ConfigError(f"{flag} needs dask.distributed, which is not installed: {INSTALL_HINT}") from None


@dataclass
class BlockCluster:
    """A connection to a scheduler that runs block tasks (:func:`block_cluster` makes it and
    closes it, with the ``LocalCluster`` it started for ``local:N``).

    Attributes
    ----------
    client
        The ``distributed.Client``.
    address
        As the user gave it (``local:N`` or the scheduler's address).
    """

    client: Any
    address: str

    def run_blocks(
        self,
        task: Callable[..., Any],
        plan: Any,
        spans: Sequence[tuple[int, int]],
        place: Callable[[int, Any], None],
    ) -> None:
        """Run ``task(plan, start, stop)`` for every span on the cluster; ``place(index, result)``
        each result in this process as it comes. The plan goes to the workers once.

        A worker that dies has its tasks run again elsewhere (Dask retries them); a task that
        raises re-raises here, the frame read error of a worker included. Any failure or an
        interrupt cancels the tasks not yet finished.

        Raises
        ------
        ClusterError
            When a task killed its workers too often or the scheduler went away.
        """
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        client = self.client
        shared = client.scatter(plan, broadcast=True, hash=False)
        futures = [client.submit(task, shared, start, stop, pure=False) for start, stop in spans]
        order = {future.key: index for index, future in enumerate(futures)}
        try:
            for future in as_completed(futures):
                try:
                    result = future.result()
                except KilledWorker as exc:
                    raise ClusterError(
                        f"--dask-scheduler {self.address}: a block task killed its workers several times ({exc}); "
                        "check the workers' memory (--memory-limit) and their logs"
                    ) from None
                except OSError as exc:
                    if type(exc).__module__.startswith("distributed"):  # a lost connection, not a file
                        raise ClusterError(f"--dask-scheduler {self.address}: the cluster went away: {exc}") from None
                    raise
                place(order[future.key], result)
                future.release()
        finally:
            # The blocks not finished (after a failure or Ctrl-C) stop on the cluster; a scheduler
            # already gone must not hide the error that brought us here.
            with contextlib.suppress(Exception):
                client.cancel([*futures, shared])


@contextlib.contextmanager
def block_cluster(address: str | None) -> Iterator[BlockCluster | None]:
    """Connect to the scheduler at ``address`` (or start ``local:N``) for the ``with`` block;
    ``None`` yields ``None`` (a local run). Everything started here is closed on the way out.

    Raises
    ------
    ConfigError
        For a malformed address or a missing extra.
    ClusterError
        When the scheduler does not answer within :data:`CONNECT_TIMEOUT_S`.
    """
    if address is None:
        yield None
        return
    check_scheduler(address, "--dask-scheduler")
    from distributed import Client, LocalCluster

    workers = local_workers(address)
    with contextlib.ExitStack() as stack:
        if workers is not None:
            # Processes, one thread each: the kernels are compiled and release the interpreter
            # lock, but a process per core keeps the workers' reads apart too.
            cluster = stack.enter_context(
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
            )
            target: Any = cluster
        else:
            target = address
        try:
            # The default client while the blocks run: distributed.as_completed waits on it.
            client = stack.enter_context(Client(target, timeout=CONNECT_TIMEOUT_S))
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"--dask-scheduler {address}: no scheduler answered within {CONNECT_TIMEOUT_S:g} s ({exc}); "
                "start one with `dask scheduler` and workers with `dask worker ADDRESS`, or use local:N"
            ) from None
        found = len(client.scheduler_info().get("workers", {}))
        logger.info("combining on the Dask scheduler %s (%d workers now)", address, found)
        if found == 0:
            logger.warning("--dask-scheduler %s has no workers yet: the blocks wait until one joins", address)
        yield BlockCluster(client, address)

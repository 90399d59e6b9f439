"""Provenance: which inputs and settings made a run's products.

A run writes ``OUT_DIR/run_config.json`` (every option, the command line, software and
dependency versions, start and end time, and the SHA-256 of every input frame it accepted) and
stamps every FITS product it writes with the number of those inputs and one digest over their
checksums (``NINPUTS``, ``INPUTSHA``), so a product found on its own can be matched to the run
that made it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import platform
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path

from ._version import __version__
from .errors import BiasPipelineError, FrameReadError
from .frames import FrameRecord
from .products import file_size, write_text_atomic
from .registry import LOG_NAME, RUN_CONFIG_NAME

PACKAGE_LOGGER = "bias_pipeline"
DEPENDENCIES = ("numpy", "astropy", "matplotlib", "tqdm", "scipy", "numba")
_CHUNK = 8 * 1024 * 1024


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, hex.

    Raises
    ------
    FrameReadError
        When the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)  # releases the interpreter lock: threads hash in parallel
    except OSError as exc:
        raise FrameReadError(f"{path}: cannot read for its checksum: {exc.strerror or exc}") from None
    return digest.hexdigest()


def input_digest(records: Sequence[FrameRecord], base: Path) -> tuple[int, str]:
    """Number of checksummed inputs and the SHA-256 of their ``"sha256  path"`` lines, sorted by path.

    >>> r = FrameRecord(path=Path("/raw/a.fits"))
    >>> r.sha256 = "0" * 64
    >>> count, digest = input_digest([r], Path("/raw"))
    >>> count, digest[:12]
    (1, 'd5e9ed0bf384')
    """
    lines = sorted(f"{r.sha256}  {_relative(r.path, base)}\n" for r in records if r.sha256)
    # A name that is not UTF-8 (held as surrogates) counts by its own bytes.
    return len(lines), hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def provenance_cards(count: int, digest: str, started: str = "") -> dict[str, tuple[object, str]]:
    """The header cards that tie a product to its run: the inputs (count and digest) and the
    run's start time (``started`` in ``run_config.json``), which tells apart two runs on the
    same inputs."""
    cards: dict[str, tuple[object, str]] = {
        "NINPUTS": (count, "input frames checksummed by the run"),
        "INPUTSHA": (digest, f"SHA-256 over the input checksums ({RUN_CONFIG_NAME})"),
    }
    if started:
        cards["RUNSTART"] = (started, f"UTC start of the run ({RUN_CONFIG_NAME})")
    return cards


def software_versions() -> dict[str, str]:
    """Versions of bias_pipeline, Python and the run-time dependencies."""
    versions = {"bias_pipeline": __version__, "python": platform.python_version()}
    for name in DEPENDENCIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def now_utc() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_config_document(
    *,
    options: Mapping[str, object],
    records: Sequence[FrameRecord],
    base: Path,
    started: str,
    command_line: Sequence[str] | None = None,
    extra: Mapping[str, object] | None = None,
    warnings: Sequence[str] = (),
) -> dict[str, object]:
    """What ``OUT_DIR/run_config.json`` records of a run, as a JSON-friendly dict that
    :func:`write_run_config` writes.

    Parameters
    ----------
    options
        Every option's value by its name (``PipelineConfig.options_record()``: the schema's
        options, paths and switches included), as ``--config`` reads it back.
    records
        All records of the run; those with a checksum are listed as inputs.
    base
        The raw folder (input paths are given relative to it).
    started
        Start time (:func:`now_utc`).
    command_line
        The command as typed (default ``sys.argv``).
    extra
        Further facts of the run (input bit depth, counts, dates).
    warnings
        Warnings about the run's result as a whole (temperature confounded with date), each one
        line; recorded as ``warnings`` (an empty list when there are none).

    Returns
    -------
    dict
        ``software``, ``command_line``, ``started``, ``finished``, ``options``, ``run``,
        ``warnings`` and ``inputs`` (count, digest, and path, SHA-256, size and status of each
        input).
    """
    count, digest = input_digest(records, base)
    return {
        "software": software_versions(),
        "command_line": list(sys.argv if command_line is None else command_line),
        "started": started,
        "finished": now_utc(),
        "options": dict(options),
        "run": dict(extra or {}),
        "warnings": list(warnings),
        "inputs": {
            "count": count,
            "digest_sha256": digest,
            "files": [
                {"path": _relative(r.path, base), "sha256": r.sha256, "bytes": file_size(r.path), "status": r.status}
                for r in sorted(records, key=lambda r: str(r.path))
                if r.sha256
            ],
        },
    }


def write_run_config(out_dir: Path, document: Mapping[str, object]) -> Path:
    """Write ``OUT_DIR/run_config.json`` (atomically).

    Parameters
    ----------
    out_dir
        The run's output folder.
    document
        :func:`run_config_document` of the run.

    Returns
    -------
    Path
        The file written.
    """
    return write_text_atomic(out_dir / RUN_CONFIG_NAME, json.dumps(document, indent=2, default=str) + "\n")


def _relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


class _RunLogFile(logging.FileHandler):
    """The run's log file. A write that fails (a full disk) turns it off with one warning
    instead of a traceback for every later message; the run goes on."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last flush of a file that could not be written: already warned
            if not self.failed:
                raise

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if self.failed:
            return
        self.failed = True
        error = sys.exc_info()[1]
        logging.getLogger(PACKAGE_LOGGER).warning(
            "cannot write %s (%s); the rest of this run is not logged there", self.baseFilename, error
        )


class _CallerGate(logging.Handler):
    """Keeps a library caller's view of the package's messages while runs log at DEBUG.

    Used only when the package logger does not already make DEBUG records (a program that
    imports the package and configures logging its own way, e.g. ``basicConfig(level=WARNING)``
    on the root). Lowering the package logger's level would then pass DEBUG and INFO records to
    the root's handlers, since propagation does not ask the ancestors' levels. So while runs
    log, the logger stops propagating and this handler passes on to the ancestors' handlers
    what they saw before (records at or above the old effective level); the logger's own
    handlers get a filter at that level too. The gate sits in the logger's handler list, which
    is where concurrent runs find it: the first run installs it, the last removes it and puts
    the logger back as it was. (The command line needs none of this: it sets the package logger
    to DEBUG and its console handler to the -v/-q level, see :func:`bias_pipeline.command.setup_logging`.)
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.NOTSET)
        self.logger = logger
        self.threshold = logger.getEffectiveLevel()
        self.saved = (logger.level, logger.propagate)
        self.users = 0
        self.gate: Callable[[logging.LogRecord], bool] = lambda record: record.levelno >= self.threshold
        self.own = list(logger.handlers)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= self.threshold and self.saved[1] and self.logger.parent is not None:
            self.logger.parent.handle(record)

    def install(self) -> None:
        for handler in self.own:
            handler.addFilter(self.gate)
        self.logger.addHandler(self)
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)

    def uninstall(self) -> None:
        self.logger.removeHandler(self)
        for handler in self.own:
            handler.removeFilter(self.gate)
        self.logger.setLevel(self.saved[0])
        self.logger.propagate = self.saved[1]


# Runs in parallel threads attach and detach their handlers one at a time.
_HANDLERS_LOCK = threading.Lock()


def _attach(logger: logging.Logger, file_handler: logging.Handler) -> _CallerGate | None:
    with _HANDLERS_LOCK:
        gate = next((h for h in logger.handlers if isinstance(h, _CallerGate)), None)
        if gate is None and not logger.isEnabledFor(logging.DEBUG):
            gate = _CallerGate(logger)
            gate.install()
        if gate is not None:
            gate.users += 1
        logger.addHandler(file_handler)
        return gate


def _detach(logger: logging.Logger, file_handler: logging.Handler, gate: _CallerGate | None) -> None:
    with _HANDLERS_LOCK:
        logger.removeHandler(file_handler)
        if gate is not None:
            gate.users -= 1
            if gate.users == 0:
                gate.uninstall()


@contextlib.contextmanager
def run_log(out_dir: Path) -> Iterator[Path]:
    """Record every message of the package, debug included, in ``OUT_DIR/pipeline.log``
    while the block runs, whatever the console shows.

    The file's handler is attached to the package logger at DEBUG. Under the command line the
    package logger makes DEBUG records already and the console handler keeps its -v/-q level,
    so nothing else changes. Under a library caller whose logger would not make DEBUG records,
    the level is lowered for the block and the caller's handlers keep seeing only what they saw
    before (see :class:`_CallerGate`), so a library caller's output does not change. The file is
    replaced at each run: it holds this run's record. Runs in parallel threads of one process
    each get their log file, but each file then holds the messages of all of them.

    Parameters
    ----------
    out_dir
        The run's output folder (must exist).

    Yields
    ------
    Path
        The log file.
    """
    path = Path(out_dir) / LOG_NAME
    logger = logging.getLogger(PACKAGE_LOGGER)
    try:
        # Names that are not UTF-8 (held as surrogates) are written with backslash escapes.
        file_handler = _RunLogFile(path, mode="w", encoding="utf-8", errors="backslashreplace")
    except OSError as exc:  # the folder was checked writable; say so and go on without a log
        logger.warning("cannot write %s: %s; the run goes on without a log file", path, exc.strerror or exc)
        yield path
        return
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    gate = _attach(logger, file_handler)
    logger.debug("bias_pipeline %s, Python %s; log of this run: %s", __version__, platform.python_version(), path)
    try:
        yield path
    except BaseException as exc:
        # Into the file only: the caller (the CLI) shows the error its own way.
        trace = None if isinstance(exc, KeyboardInterrupt | BiasPipelineError) else sys.exc_info()
        text = str(exc) or "no message"
        file_handler.handle(
            logger.makeRecord(
                logger.name, logging.ERROR, __file__, 0, "run stopped: %s: %s", (type(exc).__name__, text), trace
            )  # fmt: skip
        )
        raise
    finally:
        _detach(logger, file_handler, gate)
        file_handler.close()

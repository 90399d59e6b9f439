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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from ._version import __version__
from .errors import BiasPipelineError, FrameReadError
from .frames import FrameRecord
from .products import file_size, write_text_atomic

RUN_CONFIG_NAME = "run_config.json"
LOG_NAME = "pipeline.log"
PACKAGE_LOGGER = "bias_pipeline"
DEPENDENCIES = ("numpy", "astropy", "matplotlib", "tqdm", "scipy")
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
) -> Path:
    """What ``OUT_DIR/run_config.json`` records of a run (see :func:`write_run_config`).

    Parameters
    ----------
    options
        Every option's value (``PipelineConfig.as_dict()`` plus the run's paths and flags).
    records
        All records of the run; those with a checksum are listed as inputs.
    base
        The raw folder (input paths are given relative to it).
    started
        Start time (:func:`now_utc`).
    command_line
        The command as typed (default ``sys.argv``).
    extra
        Further facts of the run (input bit depth, counts).

    Returns
    -------
    dict
        ``software``, ``command_line``, ``started``, ``finished``, ``options``, ``run`` and
        ``inputs`` (count, digest, and path, SHA-256, size and status of each input).
    """
    count, digest = input_digest(records, base)
    return {
        "software": software_versions(),
        "command_line": list(sys.argv if command_line is None else command_line),
        "started": started,
        "finished": now_utc(),
        "options": dict(options),
        "run": dict(extra or {}),
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


class _ForwardAbove(logging.Handler):
    """Pass records at or above ``threshold`` on to ``logger``'s ancestors' handlers, as
    propagation would have done before the run log lowered the package logger's level."""

    def __init__(self, logger: logging.Logger, threshold: int) -> None:
        super().__init__(logging.NOTSET)
        self.logger = logger
        self.threshold = threshold

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= self.threshold and self.logger.parent is not None:
            self.logger.parent.handle(record)


class _AtLeast(logging.Filter):
    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.threshold


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


@dataclass
class _SharedState:
    """What :func:`run_log` changed on the package logger, held while any run is logging
    (runs in parallel threads share it: the first saves, the last restores)."""

    users: int = 0
    level: int = logging.NOTSET
    propagate: bool = True
    gate: _AtLeast | None = None
    console: list[logging.Handler] = field(default_factory=list)
    forward: _ForwardAbove | None = None


_STATE = _SharedState()
_STATE_LOCK = threading.Lock()


def _lower_package_level(logger: logging.Logger) -> None:
    with _STATE_LOCK:
        _STATE.users += 1
        if _STATE.users > 1:
            return
        threshold = logger.getEffectiveLevel()
        _STATE.level, _STATE.propagate = logger.level, logger.propagate
        _STATE.gate = _AtLeast(threshold)
        _STATE.console = list(logger.handlers)
        for handler in _STATE.console:
            handler.addFilter(_STATE.gate)
        _STATE.forward = _ForwardAbove(logger, threshold) if logger.propagate else None
        if _STATE.forward is not None:
            logger.addHandler(_STATE.forward)
            logger.propagate = False
        logger.setLevel(logging.DEBUG)


def _restore_package_level(logger: logging.Logger) -> None:
    with _STATE_LOCK:
        _STATE.users -= 1
        if _STATE.users > 0:
            return
        logger.setLevel(_STATE.level)
        logger.propagate = _STATE.propagate
        if _STATE.forward is not None:
            logger.removeHandler(_STATE.forward)
        for handler in _STATE.console:
            handler.removeFilter(_STATE.gate)
        _STATE.console, _STATE.forward, _STATE.gate = [], None, None


@contextlib.contextmanager
def run_log(out_dir: Path) -> Iterator[Path]:
    """Record every message of the package, debug included, in ``OUT_DIR/pipeline.log``
    while the block runs, whatever the console shows.

    The package logger's level is lowered to DEBUG for the block; its own handlers (the CLI's
    console) and its ancestors' (a calling program's ``logging.basicConfig``) keep seeing only
    the messages they saw before, so a library caller's output does not change. The file is
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
    _lower_package_level(logger)
    logger.addHandler(file_handler)
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
        logger.removeHandler(file_handler)
        _restore_package_level(logger)
        file_handler.close()

"""Provenance: which inputs and settings made a run's products.

A run writes ``OUT_DIR/run_config.json`` (every option, the command line, software and
dependency versions, start and end time, and the SHA-256 of every input frame it accepted) and
stamps every FITS product it writes with the number of those inputs and one digest over their
checksums (``NINPUTS``, ``INPUTSHA``), so a product found on its own can be matched to the run
that made it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

from ._version import __version__
from .errors import FrameReadError
from .frames import FrameRecord
from .products import write_text_atomic

RUN_CONFIG_NAME = "run_config.json"
DEPENDENCIES = ("numpy", "astropy", "matplotlib", "tqdm")
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
    return len(lines), hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


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


def write_run_config(
    out_dir: Path,
    *,
    options: Mapping[str, object],
    records: Sequence[FrameRecord],
    base: Path,
    started: str,
    command_line: Sequence[str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write ``OUT_DIR/run_config.json`` (atomically).

    Parameters
    ----------
    out_dir
        The run's output folder.
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
    Path
        The file written.
    """
    count, digest = input_digest(records, base)
    document = {
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
                {"path": _relative(r.path, base), "sha256": r.sha256, "bytes": _size(r.path), "status": r.status}
                for r in sorted(records, key=lambda r: str(r.path))
                if r.sha256
            ],
        },
    }
    return write_text_atomic(out_dir / RUN_CONFIG_NAME, json.dumps(document, indent=2, default=str) + "\n")


def _relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


def _size(path: Path) -> int | None:
    try:
        return Path(path).stat().st_size
    except OSError:
        return None

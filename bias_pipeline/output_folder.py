"""The output folder of a run: one run at a time, and a rerun that publishes all or nothing.

A run takes an advisory lock on ``OUT_DIR`` (:func:`output_lock`), so a second run into the same
folder stops at once with a one-line message instead of mixing its products with the first
one's. The kernel drops the lock whenever the process ends, however it ends, so the lock of a
killed run never has to be cleared by hand.

Every product of a run is written into a hidden staging folder inside ``OUT_DIR``
(:func:`stage_run`); the earlier run's products stay where they are, untouched, until the new
set is complete. :func:`publish` then moves the earlier products aside, moves the new ones in
(``run_config.json`` last: a folder shows a finished run only once everything is in place) and
removes the earlier set. Ctrl-C and SIGTERM are held while it does so. Should the process be
killed outright in those milliseconds, the next run finds the staging folder marked complete and
finishes the publishing before it starts (:func:`stage_run`). A run that stops before it
publishes leaves the earlier products exactly as they were, and its own manifest and log in
``OUT_DIR/stopped_run/`` (:func:`keep_stopped_run`), for the user to see why.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError
from .interrupts import deferred_interrupts
from .products import TEMPORARY_SUFFIX, write_text_atomic
from .provenance import now_utc
from .registry import LOG_NAME, MANIFEST_NAME, RUN_CONFIG_NAME, RUN_FILES, STOPPED_DIR, SUBDIRS, is_product

try:  # advisory locks: POSIX only; elsewhere runs are not guarded against each other
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_NAME = ".bias_pipeline.lock"
LOCK_ATTEMPTS = 10
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
LOCK_RETRY_S = 0.05
STAGING_NAME = ".staging" + TEMPORARY_SUFFIX  # products of the run in progress
PREVIOUS_NAME = ".previous" + TEMPORARY_SUFFIX  # the earlier run's products while publishing
PUBLISHING_NAME = ".publishing"  # in the staging folder: the set is complete, being published
# Temporary and staged files of this package (see products.TEMPORARY_SUFFIX), nothing else.
TEMPORARY_PATTERN = re.compile(r"^\..+" + re.escape(TEMPORARY_SUFFIX) + "$")


# ------------------------------------------------------------------------------- the lock
@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[Path]:
    """Hold the output folder for one run (an advisory ``flock`` on ``OUT_DIR/.bias_pipeline.lock``).

    Parameters
    ----------
    out_dir
        The output folder (must exist).

    Yields
    ------
    Path
        The lock file, which says who holds it. It is removed when the block ends; the lock of a
        process killed outright ends with the process (the kernel drops it), so a stale lock
        file never stops the next run.

    Raises
    ------
    OutputError
        When another run holds the folder (saying which process, since when), or the lock file
        cannot be created.
    """
    path = out_dir / LOCK_NAME
    fd = _take_lock(path, out_dir)
    try:
        holder = f"pid {os.getpid()} on {socket.gethostname()}, started {now_utc()}"
        with contextlib.suppress(OSError):  # a read-only lock file still locks; it just cannot say who
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode("utf-8") + b"\n", 0)
        yield path
    finally:
        # Removed while still held: a run that opens the name now gets a new file, and one that
        # opened the old file before finds it gone once it holds it (see _take_lock).
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # closing drops the lock


def _take_lock(path: Path, out_dir: Path) -> int:
    """Open and lock ``path``; the descriptor holding the lock."""
    for attempt in range(LOCK_ATTEMPTS):
        if path.is_symlink():  # never follow the name to another file, which would be written
            path.unlink()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o666)
        except PermissionError:
            try:  # a lock file another user's killed run left: flock works on it read-only
                fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
            except OSError:
                raise OutputError(
                    f"--output-dir {out_dir}: the lock file {path} belongs to another user and cannot be opened; "
                    "if no run is writing there, remove it"
                ) from None
        except OSError as exc:
            raise OutputError(
                f"--output-dir: cannot create {path}: {exc.strerror or exc}; choose a writable folder"
            ) from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if not holder and attempt < LOCK_ATTEMPTS - 1:
                # A holder that wrote nothing: `inspect` looking for a minute, or a run that is
                # just starting; a moment later it is clear which.
                time.sleep(LOCK_RETRY_S)
                continue
            raise OutputError(
                f"--output-dir {out_dir}: another run is writing there ({holder or 'another process'}); wait for "
                "it to end or choose another --output-dir"
            ) from None
        except OSError as exc:  # a file system without locks (some network mounts)
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            logger.warning("cannot lock %s (%s): runs into this folder are not kept apart", path, exc.strerror)
            return fd
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed this file as it finished: lock the new one
    raise OutputError(f"--output-dir {out_dir}: cannot take {path}: it keeps being replaced by another run")


def locked_by(out_dir: Path) -> str | None:
    """Who holds ``out_dir`` now (``"pid 123 on host, started ..."``), or ``None`` when no run does."""
    path = out_dir / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another process"
        except OSError:
            return None
        return None
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------- staging
@dataclass(frozen=True)
class StagedRun:
    """Where a run writes (``staging``) and where its products go when it is complete (``final``).

    Attributes
    ----------
    final
        The output folder the user named.
    staging
        The hidden folder inside it that holds this run's products until :func:`publish`.
    """

    final: Path
    staging: Path

    @property
    def dirs(self) -> dict[str, Path]:
        """``{"root": staging, "masters": ..., "model": ..., "synthetic": ..., "evaluation": ...}``."""
        return {"root": self.staging, **{key: self.staging / name for key, name in SUBDIRS.items()}}

    @property
    def stopped_dir(self) -> Path:
        """Where a run that stops before publishing leaves its manifest and log."""
        return self.final / STOPPED_DIR

    def final_path(self, path: Path) -> Path:
        """Where a file written under ``staging`` will be once published."""
        try:
            return self.final / Path(path).relative_to(self.staging)
        except ValueError:
            return Path(path)

    def files_after_publish(self, exclude: Sequence[Path] = ()) -> list[tuple[Path, Path]]:
        """``(relative path, file holding it now)`` of every file the output folder will hold once
        this run is published: the staged products, and the files of the folder that publishing
        leaves alone (a user's own; not hidden ones, nor those under ``exclude``), sorted by path."""
        files: dict[Path, Path] = {rel: self.staging / rel for rel in _walk(self.staging)}
        for rel in _walk(self.final, exclude):
            if not is_product(rel) and rel not in files:
                files[rel] = self.final / rel
        return sorted(files.items(), key=lambda item: (item[0].parent.as_posix(), item[0].name))


def _walk(root: Path, exclude: Sequence[Path] = ()) -> list[Path]:
    """Files under ``root`` (links to files included), relative; hidden files and folders, and the
    ``exclude`` folders, left out."""
    excluded = {os.path.realpath(p) for p in exclude}
    found = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not d.startswith(".") and os.path.realpath(here / d) not in excluded]
        found += [(here / n).relative_to(root) for n in names if not n.startswith(".")]
    return found


def _earlier_products(root: Path) -> list[Path]:
    """Files of a product name in ``root`` (relative): the top level and the product folders."""
    folders = [root, *(root / name for name in (*SUBDIRS.values(), STOPPED_DIR))]
    found = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            rel = Path(entry.path).relative_to(root)
            if not entry.name.startswith(".") and not entry.is_dir(follow_symlinks=False) and is_product(rel):
                found.append(rel)
    return found


def stage_run(out_dir: Path) -> StagedRun:
    """Prepare a run's staging folder inside ``out_dir`` (whose lock the caller holds).

    What a run killed outright (SIGKILL, power loss) left is dealt with first: a staging folder
    marked complete is published (the run had finished; only its renames were cut short), an
    incomplete one is removed and its log and manifest kept in ``stopped_run/``; temporary
    files of this package are removed.

    Parameters
    ----------
    out_dir
        The output folder (exists, writable).

    Returns
    -------
    StagedRun

    Raises
    ------
    OutputError
        When the staging folder cannot be created.
    """
    out_dir = Path(out_dir)
    run = StagedRun(out_dir, out_dir / STAGING_NAME)
    if run.staging.is_dir():
        if _read_marker(run) is not None:
            logger.warning("%s: completing the publishing of a run that was killed while publishing", out_dir)
            publish(run)
        else:
            logger.info("%s: removing the unfinished products of a run that was killed", out_dir)
            keep_stopped_run(run, note=f"{now_utc()} run killed before it finished (found by the next run)")
    _remove_tree(out_dir / PREVIOUS_NAME)
    for folder in (out_dir, *(out_dir / name for name in SUBDIRS.values())):
        remove_temporary_files(folder)
    _check_names_free(out_dir)
    try:
        for path in run.dirs.values():
            path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--output-dir: cannot create {run.staging}: {exc.strerror or exc}") from None
    return run


def remove_temporary_files(folder: Path) -> None:
    """Remove this package's temporary files in ``folder`` (names matching
    :data:`TEMPORARY_PATTERN`), which a run killed outright (SIGKILL, power loss) never renamed."""
    if not folder.is_dir():
        return
    for stale in folder.glob(f".*{TEMPORARY_SUFFIX}"):
        if stale.is_file() and TEMPORARY_PATTERN.match(stale.name):
            stale.unlink()
            logger.info("removed %s, left by an interrupted run", stale)


def _check_names_free(out_dir: Path) -> None:
    """Refuse, before any work, an output folder where a product folder's name is taken by a
    file, or a run file's name by a folder (publishing would fail after all the work)."""
    for name in (*SUBDIRS.values(), STOPPED_DIR):
        path = out_dir / name
        if path.exists() and not path.is_dir():
            raise OutputError(f"--output-dir: {path} is in the way of the product folder {name}/; remove it")
        if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"--output-dir: {path} is not writable: its products could not be replaced; fix its "
                              "permissions or choose another --output-dir")  # fmt: skip
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir():
            raise OutputError(f"--output-dir: a folder {path} is in the way of {name}; remove it")


def publish(run: StagedRun) -> None:
    """Replace the earlier run's products in ``run.final`` by the staged ones, all together.

    The earlier products (every file of a product name, see :func:`is_product`) are moved
    aside first, then the staged files are moved in, ``run_config.json`` last. Ctrl-C and
    SIGTERM wait until it is done. Repeating it after a kill part-way finishes the job: the
    list of files to publish is written into the staging folder before anything moves.

    Raises
    ------
    OutputError
        When a file cannot be moved in (a folder in the way of a product's name): everything
        is moved back, the earlier products are as they were, and the staged run is discarded
        as a stopped one.
    """
    previous = run.final / PREVIOUS_NAME
    marker = run.staging / PUBLISHING_NAME
    with deferred_interrupts():
        resumed = _read_marker(run)  # a publishing cut short: its list is the one to finish
        if resumed is not None:
            staged = resumed
        else:
            staged = sorted(_walk(run.staging), key=lambda rel: rel.name == RUN_CONFIG_NAME)
            _write_marker(marker, [str(p) for p in staged])
        listed = set(staged)
        placed: list[Path] = []
        try:
            for name in SUBDIRS.values():
                try:
                    (run.final / name).mkdir(exist_ok=True)
                except OSError as exc:
                    raise _MoveError(run.final / name, exc) from None
            # After a kill part-way, the run_config.json in place may already be this run's.
            config_placed = Path(RUN_CONFIG_NAME) in listed and not (run.staging / RUN_CONFIG_NAME).exists()
            if (run.final / RUN_CONFIG_NAME).exists() and not config_placed:
                _move(run.final / RUN_CONFIG_NAME, previous / RUN_CONFIG_NAME)  # from here on: no finished run
            for rel in _earlier_products(run.final):
                # An earlier product; a listed name already gone from staging is this run's, placed.
                if is_product(rel) and (rel not in listed or (run.staging / rel).exists()):
                    _move(run.final / rel, previous / rel)
            for rel in staged:
                if (run.staging / rel).exists():
                    _move(run.staging / rel, run.final / rel)
                    placed.append(rel)
        except _MoveError as exc:
            # Back as it was: this run's files to staging, the earlier ones to their places. Each
            # move on its own, so that one that fails (the cause may persist) does not stop the rest.
            for source, target in [*((run.final / rel, run.staging / rel) for rel in reversed(placed)),
                                   *((previous / rel, run.final / rel) for rel in _walk(previous))]:  # fmt: skip
                try:
                    _move(source, target)
                except _MoveError as again:
                    logger.warning("could not move %s back: %s", _shown(run, again.target), again.reason)
            marker.unlink(missing_ok=True)
            raise OutputError(f"cannot write {_shown(run, exc.target)}: {exc.reason}; {exc.advice}") from None
        marker.unlink()  # published: a staging folder left by a kill from here on is only leftovers
        _remove_tree(previous)
        _remove_tree(run.staging)
        with contextlib.suppress(OSError):  # a finished run makes a stopped one's files stale
            (run.final / STOPPED_DIR).rmdir()


def _shown(run: StagedRun, path: Path) -> Path:
    """A path as the user knows it: inside the hidden folders, where it is in the output folder."""
    for hidden in (run.staging, run.final / PREVIOUS_NAME):
        try:
            return run.final / Path(path).relative_to(hidden)
        except ValueError:
            continue
    return Path(path)


def _read_marker(run: StagedRun) -> list[Path] | None:
    """The list of files a publish in progress moves, or ``None`` when there is no valid one (no
    marker, or one a crash or a hand left unreadable, empty, without ``run_config.json``, or
    naming a path outside the staging folder: such a staging folder is not a complete run)."""
    marker = run.staging / PUBLISHING_NAME
    if not marker.is_file():
        return None
    try:
        names = json.loads(marker.read_text(encoding="utf-8", errors="surrogateescape"))
    except (OSError, ValueError):
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        return None
    paths = [Path(n) for n in names]
    if Path(RUN_CONFIG_NAME) not in paths or any(p.is_absolute() or ".." in p.parts for p in paths):
        return None
    return paths


def _write_marker(marker: Path, names: list[str]) -> None:
    """Write the publish list for good (synced), so that a power cut cannot leave half of it."""
    write_text_atomic(marker, json.dumps(names))
    for path in (marker, marker.parent):
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def keep_stopped_run(run: StagedRun, note: str = "") -> Path | None:
    """After a run that stopped before publishing: keep its manifest and log in
    ``OUT_DIR/stopped_run/`` (replacing those of an earlier stopped run) and remove the rest of
    its staging folder. The earlier products are not touched.

    Parameters
    ----------
    run
        The stopped run.
    note
        A line appended to the kept log (why it stopped, when the log could not say so).

    Returns
    -------
    Path or None
        The folder with the kept files; ``None`` when there was nothing to keep.
    """
    kept = [run.staging / name for name in (MANIFEST_NAME, LOG_NAME) if (run.staging / name).is_file()]
    with deferred_interrupts():
        if kept:  # only the last stopped run's files: never a mix of two (a user's own files there stay)
            for name in (MANIFEST_NAME, LOG_NAME):
                with contextlib.suppress(OSError):
                    (run.stopped_dir / name).unlink()
        for source in kept:
            try:
                run.stopped_dir.mkdir(exist_ok=True)
                if source.name == LOG_NAME and note:
                    with open(source, "a", encoding="utf-8") as log:
                        log.write(note + "\n")
                os.replace(source, run.stopped_dir / source.name)
            except OSError as exc:
                logger.warning("cannot keep %s in %s: %s", source.name, run.stopped_dir, exc.strerror or exc)
        _remove_tree(run.staging)
    return run.stopped_dir if kept else None


class _MoveError(Exception):
    """A file could not be moved to ``target`` (a folder in the way, no permission)."""

    def __init__(self, target: Path, error: OSError) -> None:
        super().__init__(f"{target}: {error.strerror or error}")
        self.target, self.reason = target, error.strerror or str(error)
        self.advice = {
            errno.EACCES: "check the permissions of its folder",
            errno.EPERM: "check the permissions of its folder",
            errno.EROFS: "the file system is read-only; choose another --output-dir",
            errno.ENOSPC: "free some space or choose another --output-dir",
            errno.EDQUOT: "free some space or choose another --output-dir",
        }.get(error.errno or 0, "remove what is in the way")


def _move(source: Path, target: Path) -> None:
    """Move a file, by a rename; to a product folder that is a link to another file system, by a
    copy beside the target renamed into place.

    Raises
    ------
    _MoveError
        Naming the target, whatever the cause.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            temporary = target.with_name(f".{target.name}.moving{TEMPORARY_SUFFIX}")
            shutil.copy2(source, temporary)
            os.replace(temporary, target)
            os.unlink(source)
    except OSError as exc:
        raise _MoveError(target, exc) from None


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)

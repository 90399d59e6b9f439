"""What a model file or a pipeline output folder holds: ``python -m bias_pipeline inspect PATH``.

For a model (``bias_model.fits``, or ``bias_a_map.fits`` with ``bias_b_map.fits`` beside it):
its shape, degree, reference temperature, fitted temperature range and groups, masked and
flagged pixels (by DQ bit), the spread of ``a`` and ``b`` (and the noise maps) over the
unflagged pixels, and the provenance cards of its header. For an output folder, in addition:
what happened to the frames (``frames_manifest.csv``), the run's times and options
(``run_config.json``), the per-temperature evaluation (``evaluation/evaluation_summary.csv``)
and the products found.

:func:`inspect_facts` gathers these as plain JSON-friendly values, :func:`format_facts` turns
them into text, :func:`inspect_summary` does both. Nothing is written.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.stats import mad_std

from ._version import __version__
from .config import DEPRECATED_NAMES, GROUP_IO, SWITCH, PipelineConfig, options
from .errors import InputDataError, one_line
from .frames import reason_kind
from .model import BiasModel, read_model_header
from .output_folder import locked_by
from .products import file_size, human_size
from .quality import DQ_BITS
from .registry import (
    A_MAP_NAME,
    B_MAP_NAME,
    LOG_NAME,
    MANIFEST_NAME,
    MODEL_FILE_NAME,
    RUN_CONFIG_NAME,
    STOPPED_DIR,
    SUBDIRS,
    SUMMARY_CSV,
)
from .registry import MODEL_DIR as MODEL_DIR_NAME

__all__ = [
    "GIVE",
    "build_parser",
    "format_facts",
    "inspect_facts",
    "inspect_summary",
    "main",
    "model_facts",
    "reason_kind",
]

GIVE = f"give a model file ({MODEL_FILE_NAME} or {A_MAP_NAME}) or a pipeline output folder"
PERCENTILES = (1.0, 5.0, 50.0, 95.0, 99.0)
MAX_GROUP_ROWS = 24  # longer group tables show their first and last rows (--json has all)
PROVENANCE_CARDS = ("BPVERS", "DATE", "RUNSTART", "NINPUTS", "INPUTSHA", "INBITS", "SCALEFAC", "BUNIT")

if TYPE_CHECKING:
    from astropy.io import fits

EXAMPLE = """\
examples:
  python -m bias_pipeline inspect results/                          a whole run
  python -m bias_pipeline inspect results/bias_model/bias_model.fits
  python -m bias_pipeline inspect results/ --json > summary.json    the same facts for scripts
"""


# ---------------------------------------------------------------------------------- facts
def inspect_facts(path: str | Path) -> dict[str, object]:
    """Everything :func:`inspect_summary` reports, as JSON-friendly values.

    Parameters
    ----------
    path
        A model file (``bias_model.fits``, ``bias_a_map.fits`` or ``bias_b_map.fits`` with the
        a-map beside it), a ``bias_model`` folder, or a pipeline output folder.

    Returns
    -------
    dict
        ``kind`` (``"model"`` or ``"output folder"``), ``path`` and ``model``; for a folder also
        ``run``, ``frames``, ``evaluation`` and ``products`` (``None`` when that file is absent).

    Raises
    ------
    InputDataError
        When ``path`` does not exist, is not a model or an output folder, or a file in it
        cannot be read. The message names the file and what to give instead.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path} does not exist; {GIVE}")
    if path.is_dir():
        model_file = _folder_model(path)  # a bias_model folder
        if model_file is not None:
            return {"kind": "model", "path": str(path), "model": model_facts(model_file)}
        return _folder_facts(path)
    return {"kind": "model", "path": str(path), "model": model_facts(_model_file(path))}


def model_facts(path: str | Path) -> dict[str, object]:
    """Shape, fit, flags, map statistics and provenance of one model file.

    Parameters
    ----------
    path
        ``bias_model.fits`` (or a one-file model under another name) or an a-map with its
        b-map beside it.

    Returns
    -------
    dict
        JSON-friendly facts; statistics are over the pixels neither masked nor flagged.

    Raises
    ------
    InputDataError
        When the file (or the b-map beside an a-map) is missing or unreadable.
    """
    path = Path(path)
    header, extensions = _header_and_extensions(path)
    one_file = header.get("PRODTYPE") == "BIAS_MODEL"
    _check_complete(path, header, extensions, one_file)
    model = BiasModel.load(path)
    rows, columns = model.shape
    good = ~model.flagged & np.isfinite(model.a_map) & np.isfinite(model.b_map)
    stats: dict[str, object] = {
        "a": _stats(model.a_map, good, "ADU", "intercept a (bias at 0 deg C)"),
        "b": _stats(model.b_map, good, "ADU/deg C", "slope b"),
    }
    if model.c_map is not None:
        stats["c"] = _stats(model.c_map, good, "ADU/deg C^2", "quadratic term c")
    for name, data, unit, what in (
        ("read_noise", model.read_noise, "ADU", "read noise of one frame"),
        ("rms", model.rms, "ADU", "rms of the fit residuals"),
        ("chi2", model.chi2, "", "reduced chi-square of the fit"),
    ):
        if data is not None and data.shape == model.shape:
            stats[name] = _stats(data, good, unit, what)
    dq: dict[str, object] | None = None
    if model.dq is not None:
        dq = {
            "any": int(np.count_nonzero(model.dq)),
            "bits": [
                {
                    "bit": bit.bit,
                    "value": bit.value,
                    "name": bit.name,
                    "pixels": int(np.count_nonzero(model.dq & bit.value)),
                    "description": bit.description,
                }
                for bit in DQ_BITS
            ],
        }
    return {
        "file": str(path),
        "b_map_file": None if one_file else str(path.with_name(B_MAP_NAME)),
        "one_file_model": one_file,
        "shape": [rows, columns],
        "pixels": rows * columns,
        "degree": model.degree,
        "law": "bias(T) = A + B*T" + (" + C*T^2" if model.degree == 2 else ""),
        "tref": model.tref,
        "temperature_range": list(model.temperature_range) if model.temperature_range else None,
        "groups": [
            {"temperature": t, "frames": n} for t, n in zip(model.group_temperatures, model.group_frames, strict=False)
        ],
        "frames": int(sum(model.group_frames)),
        "masked_pixels": int(model.mask.sum()),
        "dq": dq,
        "unflagged_pixels": int(good.sum()),
        "stats": stats,
        "header": {key: header[key] for key in PROVENANCE_CARDS if key in header},
    }


def _stopped_run(folder: Path) -> dict[str, object] | None:
    """The last run into ``folder`` that stopped before publishing: its log and why it stopped."""
    log = folder / STOPPED_DIR / LOG_NAME
    if not log.is_file():
        return None
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    reasons = [line.split(" run stopped: ", 1)[-1] for line in lines if "run stopped" in line or "run killed" in line]
    return {"log": str(log), "reason": reasons[-1].strip() if reasons else "no reason recorded"}


def _folder_facts(folder: Path) -> dict[str, object]:
    manifest = folder / MANIFEST_NAME
    run_config = folder / RUN_CONFIG_NAME
    model_dir = folder / MODEL_DIR_NAME
    stopped = _stopped_run(folder)
    if not run_config.is_file() and stopped is not None and not model_dir.is_dir():
        busy = locked_by(folder)
        raise InputDataError(
            f"{folder} holds no finished run"
            + (f" (a run is writing there now: {busy})" if busy else "")
            + f"; the last run stopped: {stopped['reason']} (see {stopped['log']})"
        )
    if not (manifest.is_file() or run_config.is_file() or model_dir.is_dir()):
        raise InputDataError(
            f"{folder} is a folder but not a pipeline output folder (no {MODEL_DIR_NAME}/, {RUN_CONFIG_NAME} "
            f"or {MANIFEST_NAME}); {GIVE}"
        )
    model_file = _folder_model(model_dir) if model_dir.is_dir() else None
    summary = folder / SUBDIRS["evaluation"] / SUMMARY_CSV
    run = _run_facts(run_config) if run_config.is_file() else None
    model = model_facts(model_file) if model_file is not None else None
    if run is not None and model is not None:
        header = model["header"]
        assert isinstance(header, dict)
        inputs = run.get("inputs") or {}
        assert isinstance(inputs, dict)
        if "INPUTSHA" in header and inputs.get("digest_sha256"):
            model["matches_run_config"] = header["INPUTSHA"] == inputs["digest_sha256"]
    return {
        "kind": "output folder",
        "path": str(folder),
        "in_progress": locked_by(folder),
        "stopped_run": stopped,
        "run": run,
        "frames": _manifest_facts(manifest) if manifest.is_file() else None,
        "model": model,
        "evaluation": _evaluation_rows(summary) if summary.is_file() else None,
        "products": _products(folder),
    }


def _folder_model(model_dir: Path) -> Path | None:
    for name in (MODEL_FILE_NAME, A_MAP_NAME):
        if (model_dir / name).is_file():
            return model_dir / name
    return None


def _header_and_extensions(path: Path) -> tuple[fits.Header, list[str]]:
    """The primary header and the names of the extensions (no data is read), through
    :func:`bias_pipeline.model.read_model_header`; :func:`_check_complete` says what is missing."""
    try:
        return read_model_header(path)
    except Exception as exc:
        raise InputDataError(f"{path} cannot be read as FITS ({one_line(exc)}); {GIVE}") from None


def _check_complete(path: Path, header: fits.Header, extensions: Sequence[str], one_file: bool) -> None:
    """Refuse a model file that lacks extensions its own header promises (a truncated or partly
    copied file), which would otherwise load as a smaller model. Only files this package wrote
    (``PRODTYPE``) are checked: a plain a-map of another origin has no promises to keep."""
    if header.get("PRODTYPE") not in ("BIAS_MODEL", "BIAS_A"):
        return
    if one_file:
        degree = int(header.get("DEGREE", 1))
        expected = ["A", "B", "C"][: degree + 1] + ["MASK"]
    else:
        expected = ["MASK"]
    if "NGROUPS" in header:
        expected.append("GROUPS")
    missing = [name for name in expected if name not in extensions]
    if missing:
        raise InputDataError(
            f"{path} is incomplete: no {', '.join(missing)} extension{'s' if len(missing) > 1 else ''} "
            "(a truncated or partly copied file?); "
            "give a complete model file or re-run the pipeline"
        )


def _model_file(path: Path) -> Path:
    """The file to load for ``path``: itself, or the a-map beside a b-map."""
    header, _ = _header_and_extensions(path)
    kind = header.get("PRODTYPE")
    if kind == "BIAS_MODEL" or (kind is None and path.name == MODEL_FILE_NAME):
        return path
    if kind == "BIAS_A" or (kind is None and path.name == A_MAP_NAME):
        if not path.with_name(B_MAP_NAME).is_file():
            raise InputDataError(
                f"{path} is an a-map and no {B_MAP_NAME} is beside it; give {MODEL_FILE_NAME}, or keep a run's "
                "a-map and b-map together"
            )
        return path
    if kind == "BIAS_B" or (kind is None and path.name == B_MAP_NAME):
        a_map = path.with_name(A_MAP_NAME)
        if a_map.is_file():
            return a_map
        raise InputDataError(f"{path} is a b-map and no {A_MAP_NAME} is beside it; {GIVE}")
    what = "no PRODTYPE card: not a bias_pipeline product"
    if kind:
        what = f"a {kind} product: {header.get('CONTENT', '')}".rstrip(": ")
    raise InputDataError(f"{path} is not a bias model ({what}); {GIVE}")


def _stats(values: np.ndarray, good: np.ndarray, unit: str, what: str) -> dict[str, object] | None:
    selected = np.asarray(values, dtype=np.float64)[good]
    selected = selected[np.isfinite(selected)]
    if selected.size == 0:
        return None
    p1, p5, median, p95, p99 = (float(v) for v in np.percentile(selected, PERCENTILES))
    spread = float(mad_std(selected))
    return {
        "what": what,
        "unit": unit,
        "pixels": int(selected.size),
        "median": median,
        "robust_std": spread,
        "p1": p1,
        "p5": p5,
        "p95": p95,
        "p99": p99,
    }


def _read_text(path: Path, what: str) -> str:
    try:
        # File names that are not UTF-8 were written as their own bytes: read them back as such.
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{what} {path} cannot be read ({one_line(exc)}); re-run the pipeline") from None


def _run_facts(path: Path) -> dict[str, object]:
    try:
        document = json.loads(_read_text(path, "run configuration"))
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{path} is not valid JSON ({exc}); re-run the pipeline to rewrite it") from None
    if not isinstance(document, dict):
        raise InputDataError(f"{path} is not a run configuration (no JSON object); re-run the pipeline")
    # Older records name two options by their earlier names, and hold show_progress (not an option).
    recorded = {DEPRECATED_NAMES.get(key, key): value for key, value in (document.get("options") or {}).items()}
    defaults = PipelineConfig().options_record()
    # The run's paths and product switches are shown on their own lines, not among the options changed.
    own_lines = [name for name, opt in options().items() if opt.group == GROUP_IO]
    changed = {
        key: value
        for key, value in recorded.items()
        if key in defaults and key not in own_lines and value != defaults[key]
    }
    inputs = document.get("inputs") or {}
    return {
        "file": str(path),
        "started": document.get("started"),
        "finished": document.get("finished"),
        "duration_s": _duration(document.get("started"), document.get("finished")),
        "software": document.get("software") or {},
        "command_line": document.get("command_line") or [],
        "paths": {key: recorded[key] for key in own_lines if key in recorded},
        "options": recorded,
        "options_changed": changed,
        "run": document.get("run") or {},
        "inputs": {"count": inputs.get("count"), "digest_sha256": inputs.get("digest_sha256")},
    }


def _duration(start: object, end: object) -> float | None:
    try:
        t0 = _dt.datetime.strptime(str(start), "%Y-%m-%dT%H:%M:%SZ")
        t1 = _dt.datetime.strptime(str(end), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return (t1 - t0).total_seconds()


def _read_csv(path: Path, what: str) -> list[dict[str, str]]:
    text = _read_text(path, what)
    try:
        rows = list(csv.DictReader(text.splitlines()))
    except csv.Error as exc:
        raise InputDataError(f"{what} {path} is not valid CSV ({exc}); re-run the pipeline") from None
    return rows


def _manifest_facts(path: Path) -> dict[str, object]:
    rows = _read_csv(path, "frames manifest")
    if rows and not {"path", "status"} <= set(rows[0]):
        raise InputDataError(f"{path} has no path and status columns: not a frames manifest; re-run the pipeline")
    status = Counter(row["status"] for row in rows)

    def by_reason(wanted: str) -> list[dict[str, object]]:
        kinds: dict[str, list[str]] = {}
        for row in rows:
            if row["status"] == wanted:
                kinds.setdefault(reason_kind(row.get("reason")), []).append(row["path"])
        ordered = sorted(kinds.items(), key=lambda item: (-len(item[1]), item[0]))
        return [{"reason": kind, "count": len(paths), "example": paths[0]} for kind, paths in ordered]

    flagged = [row for row in rows if row.get("flag")]
    return {
        "file": str(path),
        "found": len(rows),
        "status": dict(sorted(status.items())),
        "rejected": by_reason("rejected"),
        "ignored": by_reason("ignored"),
        "flagged": dict(Counter(row["flag"] for row in flagged)),
        "flagged_files": [row["path"] for row in flagged],
    }


def _number(text: str) -> object:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _evaluation_rows(path: Path) -> list[dict[str, object]]:
    rows = _read_csv(path, "evaluation summary")
    return [{key: value if key == "label" else _number(value) for key, value in row.items()} for row in rows]


def _products(folder: Path) -> list[dict[str, object]]:
    products: list[dict[str, object]] = []
    for entry in sorted(folder.iterdir(), key=lambda p: (p.is_dir(), p.name)):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            files = sorted(p for p in entry.rglob("*") if p.is_file() and not p.name.startswith("."))
            kinds = Counter(p.suffix.lstrip(".").upper() or "no extension" for p in files)
            products.append(
                {
                    "path": entry.name + "/",
                    "files": len(files),
                    "by_type": dict(sorted(kinds.items())),
                    "names": [str(p.relative_to(entry)) for p in files] if len(files) <= 4 else [],
                }
            )
        else:
            products.append({"path": entry.name, "bytes": file_size(entry)})
    return products


# ----------------------------------------------------------------------------------- text
def inspect_summary(path: str | Path) -> str:
    """A readable summary of a model file or a pipeline output folder.

    Parameters
    ----------
    path
        See :func:`inspect_facts`.

    Returns
    -------
    str
        Several lines, without a final newline.

    Raises
    ------
    InputDataError
        See :func:`inspect_facts`.
    """
    return format_facts(inspect_facts(path))


def format_facts(facts: Mapping[str, object]) -> str:
    """Render :func:`inspect_facts`'s result as text."""
    lines = [f"bias_pipeline {__version__} inspect: {facts['path']} ({facts['kind']})"]
    if facts["kind"] == "output folder":
        run, frames = facts.get("run"), facts.get("frames")
        no_run = f"run          no {RUN_CONFIG_NAME} (the run did not finish?)"
        lines += _run_lines(run) if isinstance(run, dict) else ["", no_run]
        if facts.get("in_progress"):
            lines.append(
                f"  now        another run is writing here ({facts['in_progress']}); it publishes when complete"
            )
        stopped = facts.get("stopped_run")
        if isinstance(stopped, dict):
            lines.append(f"  last run   stopped: {stopped['reason']} (see {stopped['log']}); products above are older")
        lines += _frames_lines(frames) if isinstance(frames, dict) else ["", f"frames       no {MANIFEST_NAME}"]
    model = facts.get("model")
    lines += _model_lines(model) if isinstance(model, dict) else ["", f"model        none in {MODEL_DIR_NAME}/"]
    if facts["kind"] == "output folder":
        evaluation = facts.get("evaluation")
        if isinstance(evaluation, list):
            lines += _evaluation_lines(evaluation)
        else:
            lines += ["", f"evaluation   no {SUBDIRS['evaluation']}/{SUMMARY_CSV} (run without evaluation?)"]
        lines += _products_lines(facts.get("products") or [])  # type: ignore[arg-type]
    return "\n".join(lines)


def _fmt(value: object, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _run_lines(run: Mapping[str, object]) -> list[str]:
    software = run.get("software") or {}
    assert isinstance(software, dict)
    duration = run.get("duration_s")
    took = f" ({duration:.0f} s)" if isinstance(duration, float) else ""
    lines = [
        "",
        f"run          {run.get('started')} .. {run.get('finished')}{took}, "
        f"bias_pipeline {software.get('bias_pipeline', '?')}, Python {software.get('python', '?')}",
        f"  command    {' '.join(str(a) for a in run.get('command_line') or [])}",  # type: ignore[union-attr]
    ]
    paths = run.get("paths") or {}
    assert isinstance(paths, dict)
    lines.append(f"  raw data   {paths.get('basepath', '?')}")
    lines.append(f"  hot mask   {paths.get('hot_pixel_mask') or 'none'}")
    facts = run.get("run") or {}
    assert isinstance(facts, dict)
    if "input_bits" in facts:
        lines.append(f"  input      read as {facts['input_bits']}-bit")
    changed = run.get("options_changed") or {}
    assert isinstance(changed, dict)
    flags = [name for name, opt in options().items() if opt.kind == SWITCH and paths.get(name)]
    shown = [f"{key}={_option(value)}" for key, value in changed.items()] + flags
    summary = ", ".join(shown) + " (the others at their defaults)" if shown else "all at their defaults"
    lines.append(f"  options    {summary}")
    inputs = run.get("inputs") or {}
    assert isinstance(inputs, dict)
    lines.append(f"  inputs     {inputs.get('count')} checksummed, digest {inputs.get('digest_sha256')}")
    return lines


def _option(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _frames_lines(frames: Mapping[str, object]) -> list[str]:
    status = frames.get("status") or {}
    assert isinstance(status, dict)
    counts = ", ".join(f"{n} {name}" for name, n in sorted(status.items(), key=lambda item: -item[1]))
    found = f"{frames['found']} file{'' if frames['found'] == 1 else 's'}"
    lines = ["", f"frames       {found} in {MANIFEST_NAME}: {counts or 'none'}"]
    for status_name in ("rejected", "ignored"):
        for row in frames.get(status_name) or []:  # type: ignore[union-attr]
            lines.append(f"  {status_name:<9} {row['count']:>4}  {row['reason']}  (e.g. {row['example']})")
    flagged = frames.get("flagged") or {}
    assert isinstance(flagged, dict)
    for flag, n in flagged.items():
        names = frames.get("flagged_files") or []
        assert isinstance(names, list)
        example = f" (e.g. {names[0]})" if names else ""
        lines.append(f"  flagged   {n:>4}  {flag.replace('_', ' ')}{example}")
    return lines


def _model_lines(model: Mapping[str, object]) -> list[str]:
    rows, columns = model["shape"]  # type: ignore[misc]
    pixels = int(model["pixels"])  # type: ignore[call-overload]
    which = (
        "one-file model: maps, uncertainties, flags"
        if model["one_file_model"]
        else f"a-map, with {Path(str(model['b_map_file'])).name}; DQ flags and noise maps are in {MODEL_FILE_NAME}"
    )
    lines = [
        "",
        f"model        {model['file']} ({which})",
        f"  shape      {rows} x {columns} pixels (rows x columns)",
        f"  law        {model['law']}, degree {model['degree']}, T in deg C; "
        + (f"TREF {model['tref']:.2f} deg C (reference of the fit)" if model["tref"] is not None else "no TREF"),
    ]
    span = model.get("temperature_range")
    groups = model.get("groups") or []
    assert isinstance(groups, list)
    if span:
        low, high = span  # type: ignore[misc]
        lines.append(f"  fitted     {low:.2f} .. {high:.2f} deg C: {len(groups)} groups, {model['frames']} frames")
    else:
        lines.append("  fitted     temperature range not recorded")
    if groups:
        lines.append("               T [deg C]   frames")
        shown = groups if len(groups) <= MAX_GROUP_ROWS else groups[:10] + [None] + groups[-5:]
        for group in shown:
            if group is None:
                lines.append(f"               ... {len(groups) - 15} more (--json lists them all)")
            else:
                lines.append(f"               {group['temperature']:9.3f}   {group['frames']:6d}")
    masked = int(model["masked_pixels"])  # type: ignore[call-overload]
    lines.append(f"  masked     {masked} pixels ({100 * masked / pixels:.2f} %): hot-pixel mask, NaN in the maps")
    dq = model.get("dq")
    if isinstance(dq, dict):
        lines.append(f"  DQ flags   {dq['any']} pixels ({100 * dq['any'] / pixels:.2f} %) carry a flag")
        lines.append("               bit  value  name         pixels")
        for bit in dq["bits"]:
            lines.append(f"               {bit['bit']:3d}  {bit['value']:5d}  {bit['name']:<11} {bit['pixels']:7d}")
    else:
        lines.append(f"  DQ flags   not in this file (see {MODEL_FILE_NAME})")
    stats = model.get("stats") or {}
    assert isinstance(stats, dict)
    lines.append(f"  over the {model['unflagged_pixels']} unflagged pixels:")
    lines.append(f"    {'':<26}{'median':>12}{'robust sd':>12}{'5 %':>12}{'95 %':>12}")
    labels = {"a": "a", "b": "b", "c": "c", "read_noise": "read noise", "rms": "fit rms", "chi2": "reduced chi2"}
    digits = {"a": 2, "b": 4, "c": 5, "read_noise": 2, "rms": 2, "chi2": 3}
    for key, row in stats.items():
        if row is None:
            continue
        name = labels.get(key, key) + (f" [{row['unit']}]" if row["unit"] else "")
        d = digits.get(key, 3)
        values = "".join(f"{_fmt(row[k], d):>12}" for k in ("median", "robust_std", "p5", "p95"))
        lines.append(f"    {name:<26}{values}")
    header = model.get("header") or {}
    assert isinstance(header, dict)
    if "BPVERS" in header:
        written = f"bias_pipeline {header['BPVERS']}" + (f", {header['DATE']} UTC" if "DATE" in header else "")
        lines.append(f"  written by {written}")
    else:
        lines.append("  written by (no BPVERS card: not a bias_pipeline product?)")
    if "NINPUTS" in header or "INPUTSHA" in header:
        match = model.get("matches_run_config")
        note = ""
        if match is not None:
            note = (
                f" (matches {RUN_CONFIG_NAME})" if match else f" (DIFFERS from {RUN_CONFIG_NAME}: another run's model)"
            )
        lines.append(f"  inputs     NINPUTS {header.get('NINPUTS', '?')}, INPUTSHA {header.get('INPUTSHA', '?')}{note}")
    if "RUNSTART" in header:
        lines.append(f"  run start  {header['RUNSTART']}")
    return lines


def _evaluation_lines(rows: Sequence[Mapping[str, object]]) -> list[str]:
    columns = [
        ("temperature", "T [deg C]", 2),
        ("n_frames", "frames", 0),
        ("mae_mean", "MAE mean", 2),
        ("mae_p95", "MAE p95", 2),
        ("mape_mean", "MAPE mean", 3),
        ("heldout_mae_mean", "held-out MAE", 2),
        ("mae_per_read_noise", "MAE/noise", 3),
    ]
    present = [c for c in columns if rows and c[0] in rows[0]]
    lines = [
        "",
        f"evaluation   {SUBDIRS['evaluation']}/{SUMMARY_CSV}: the model against each master, unflagged pixels",
        "  MAE in ADU, MAPE in %; held-out: refitted without that master; MAE/noise: MAE in read-noise units",
        "    " + "".join(f"{title:>13}" for _, title, _ in present),
    ]
    for row in rows:
        lines.append("    " + "".join(f"{_fmt(row.get(key), d):>13}" for key, _, d in present))
    return lines


def _products_lines(products: Sequence[Mapping[str, object]]) -> list[str]:
    lines = ["", "products"]
    for product in products:
        if "files" in product:
            names = product.get("names") or []
            by_type = product.get("by_type") or {}
            assert isinstance(names, list) and isinstance(by_type, dict)
            detail = ", ".join(names) if names else ", ".join(f"{n} {kind}" for kind, n in by_type.items())
            count = f"{product['files']} file{'' if product['files'] == 1 else 's'}"
            lines.append(f"  {product['path']:<24} {count:>9}" + (f": {detail}" if detail else ""))
        else:
            lines.append(f"  {product['path']:<24} {human_size(product.get('bytes')):>9}")
    return lines


# ------------------------------------------------------------------------------ command
def _json_ready(value: object) -> object:
    """Plain JSON: numpy scalars as Python numbers, NaN as null."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_parser(prog: str = "python -m bias_pipeline inspect") -> argparse.ArgumentParser:
    """The argument parser of ``inspect``."""
    from .command import OneLineParser, add_message_options

    parser = OneLineParser(
        prog=prog,
        description=(
            "Summarise a bias model (shape, fit, temperatures, flags, spread of a and b, provenance) "
            "or a pipeline output folder (also the frames, the run's options, the evaluation and the products)."
        ),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "path",
        type=Path,
        metavar="PATH",
        help=f"a pipeline output folder, or a model file ({MODEL_FILE_NAME}, {A_MAP_NAME})",
    )
    parser.add_argument("--json", action="store_true", help="print the facts as JSON instead of text")
    add_message_options(
        parser,
        quiet="print the facts only with --json; otherwise nothing: the exit code says whether PATH is readable",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m bias_pipeline inspect") -> int:
    """Command line: ``python -m bias_pipeline inspect PATH [--json]``.

    Parameters
    ----------
    argv
        The arguments (default ``sys.argv[1:]``).
    prog
        The command's name in its usage and error messages.

    Returns
    -------
    int
        0, or the exit code of the error (one line on stderr, never a traceback).
    """
    from .command import guarded, setup_logging

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    setup_logging(args.verbose, quiet=args.quiet)

    def body() -> int:
        if args.json:
            text = json.dumps(_json_ready(inspect_facts(args.path)), indent=2)
        else:
            text = inspect_summary(args.path)
            if args.quiet:  # as grep -q: the exit code is the answer
                return 0
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # `... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

    return guarded(parser.prog, body, lambda exc: "nothing was written (inspect only reads)")


if __name__ == "__main__":
    sys.exit(main())

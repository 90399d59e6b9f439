"""``OUT_DIR/report.html``: one self-contained page that shows a calibration run.

The page has no external resource (images are embedded as ``data:`` URIs, the style sheet is
inline, no script), so it opens from a file, from an e-mail attachment or from an archive. Its
links to the products are relative, so they keep working when the output folder is moved.

Sections: the run's warnings about its result (temperature confounded with date), the
noise-floor verdict in one sentence (:func:`~bias_pipeline.evaluation.noise_floor_verdict`), the run
(software, command, times), the frames (found, used, rejected by reason, ignored; when they
were taken, and their date clusters), the temperature groups (with their dates), the model
(a, b, and read-noise maps with histograms, drawn from a block-averaged copy whose factor is
stated), the pixel flags, the per-temperature errors (residuals over their expected errors) and
their plot, the diagnostics (bias against temperature with the fitted law, the flag map, sigma_b,
chi-square and rms maps, profiles of a and b), the worst unflagged pixels, and a list of every product.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import math
import os
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from . import eval_kernels
from ._version import __version__
from .compiled import engine
from .dates import date_span, format_date
from .epochs import EpochCheck
from .evaluation import diagnostic_maps, floor_limit, master_levels, noise_floor_verdict
from .frames import STATUS_IGNORED, STATUS_REJECTED, STATUS_USED, FrameRecord, reason_kind
from .master_writer import MasterFrame
from .model import BiasModel
from .plots import (
    MapStats,
    bias_temperature_figure,
    block_note,
    figure_png,
    flag_map_figure,
    map_histogram_png,
    profile_figure,
    summary_figure,
    temperature_check_figure,
)
from .products import TEMPORARY_SUFFIX, human_size, write_text_atomic
from .quality import DQ_BITS
from .registry import EVALUATION_DIR, MANIFEST_NAME, REPORT_NAME, RESIDUAL, RUN_CONFIG_NAME, labelled_name

logger = logging.getLogger(__name__)

WORST_PIXELS = 20  # rows of the worst-pixel table
LISTED_FILES = 200  # rejected/ignored files listed one by one; the manifest has them all
LISTED_PRODUCTS = 2000  # files of the output folder linked one by one


@dataclass
class GroupRow:
    """One master of the run, as the report lists it."""

    label: str
    temperature: float
    n_frames: int
    path: Path | None = None
    temperature_span: tuple[float, float] = (math.nan, math.nan)
    date_range: tuple[_dt.datetime, _dt.datetime] | None = None
    #: The rms row noise removed from its frames [ADU]; 0 when none was.
    row_noise: float = 0.0


@dataclass
class ReportData:
    """Everything the report shows; built from a run by :func:`report_data`.

    Attributes
    ----------
    output_dir
        The run's output folder; links are relative to it.
    records
        Every file the scan found, with its status and reason.
    groups
        The masters, by increasing temperature.
    model
        The fitted model.
    input_bits
        Bit depth the input was read as.
    summary
        Per-temperature evaluation rows (empty when step 5 was skipped).
    run_info
        ``run_config.json`` as a dict (empty when it is not there).
    exclude
        Folders under ``output_dir`` whose files are not products (the raw folder of a demo).
    files_dir
        Where the run's files are while the report is written (a run writes into a staging
        folder and publishes it afterwards); ``output_dir`` when ``None``.
    files
        ``(path relative to output_dir, file holding it now)`` of every file the folder will
        hold, for the list of products; the folder is walked when ``None``.
    temperature_tolerance
        ``--temperature-tolerance`` of the run [deg C], for the temperature-check figure (not
        drawn when ``None``).
    warnings
        Warnings about the run as a whole (temperature confounded with date), shown in a block
        at the top of the page.
    epochs
        The used frames' date clusters (:mod:`bias_pipeline.epochs`), listed when there are two
        or more.
    """

    output_dir: Path
    records: Sequence[FrameRecord]
    groups: Sequence[GroupRow]
    model: BiasModel
    input_bits: int | None = None
    summary: Sequence[Mapping[str, object]] = ()
    run_info: Mapping[str, object] = field(default_factory=dict)
    exclude: Sequence[Path] = ()
    files_dir: Path | None = None
    files: Sequence[tuple[Path, Path]] | None = None
    temperature_tolerance: float | None = None
    warnings: Sequence[str] = ()
    epochs: EpochCheck | None = None

    @property
    def source(self) -> Path:
        """The folder the run's files can be read from now."""
        return self.files_dir or self.output_dir


class RunResult(Protocol):
    """What the report reads of a finished run (:class:`~bias_pipeline.main_pipeline.PipelineResult`)."""

    @property
    def output_dir(self) -> Path: ...
    @property
    def records(self) -> Sequence[FrameRecord]: ...
    @property
    def masters(self) -> Sequence[MasterFrame]: ...
    @property
    def model(self) -> BiasModel: ...
    @property
    def input_bits(self) -> int: ...
    @property
    def summary(self) -> Sequence[dict[str, object]]: ...


def report_data(
    result: RunResult,
    run_info: Mapping[str, object] | None = None,
    *,
    temperature_tolerance: float | None = None,
    files_dir: Path | None = None,
    files: Sequence[tuple[Path, Path]] | None = None,
) -> ReportData:
    """The report's content for a :class:`~bias_pipeline.main_pipeline.PipelineResult`.

    Parameters
    ----------
    result
        The finished run.
    run_info
        ``run_config.json`` of the run (read from the output folder when ``None``).
    temperature_tolerance
        ``--temperature-tolerance`` of the run [deg C] (default: from ``run_info``'s options).
    files_dir, files
        Where the run's files are now (the staging folder) and ``(path relative to output_dir,
        file holding it now)`` of each, for a report written before the run is published (see
        :class:`ReportData`).

    Returns
    -------
    ReportData
    """
    out = Path(result.output_dir)
    if run_info is None:
        run_info = read_run_info(out)
    groups = [
        GroupRow(
            m.label,
            float(m.temperature),
            int(m.n_frames),
            Path(m.path),
            tuple(m.temperature_span),
            getattr(m, "date_range", None),
            float(getattr(m, "row_noise", 0.0)),
        )
        for m in result.masters
    ]
    warnings = getattr(result, "warnings", None)
    if warnings is None:  # a result without them: those the run recorded
        recorded = run_info.get("warnings")
        warnings = [str(w) for w in recorded] if isinstance(recorded, list) else []
    found = run_info.get("options")
    options: Mapping[str, object] = found if isinstance(found, dict) else {}
    raw = options.get("basepath")
    given = options.get("temperature_tolerance")
    if temperature_tolerance is None and isinstance(given, (int, float)):
        temperature_tolerance = float(given)
    return ReportData(
        output_dir=out,
        records=list(result.records),
        groups=groups,
        model=result.model,
        input_bits=result.input_bits,
        summary=list(result.summary),
        run_info=run_info,
        exclude=[Path(raw)] if raw else [],
        temperature_tolerance=temperature_tolerance,
        files_dir=files_dir,
        files=files,
        warnings=list(warnings),
        epochs=getattr(result, "epochs", None),
    )


def read_run_info(output_dir: Path) -> dict[str, object]:
    """``run_config.json`` of ``output_dir`` as a dict.

    Parameters
    ----------
    output_dir
        A run's output folder.

    Returns
    -------
    dict
        The file's content; empty when it is missing or unreadable (a report still shows the
        rest).
    """
    try:
        return json.loads((output_dir / RUN_CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_report(data: ReportData) -> Path:
    """Write ``report.html`` into ``data.output_dir`` (atomically).

    Parameters
    ----------
    data
        What to show (:func:`report_data` builds it from a finished run).

    Returns
    -------
    Path
        The report.

    Raises
    ------
    OutputError
        When the file cannot be written (a full disk, a folder in the way).
    """
    path = data.source / REPORT_NAME
    write_text_atomic(path, render_report(data))
    logger.info("report: %s", data.output_dir / REPORT_NAME)  # where the user will find it
    return path


# --------------------------------------------------------------------------- rendering


def render_report(data: ReportData) -> str:
    """The report as one HTML document (see the module docstring).

    Parameters
    ----------
    data
        What to show.

    Returns
    -------
    str
        The page.
    """
    model = data.model
    low, high = model.temperature_range or (math.nan, math.nan)
    sections = [
        _warnings_section(data.warnings),
        _verdict_section(data),
        _run_section(data),
        _frames_section(data.records, data.epochs),
        _groups_section(data),
        _model_section(model),
        _flags_section(model),
        _evaluation_section(data),
        _diagnostics_section(data),
        _worst_pixels_section(model),
        _products_section(data),
    ]
    title = f"Bias model report: {model.shape[0]}x{model.shape[1]} pixels, {low:.2f} to {high:.2f} deg C"
    return _PAGE.format(title=_esc(title), style=_STYLE, body="\n".join(s for s in sections if s))


def _run_section(data: ReportData) -> str:
    info = data.run_info
    software = info.get("software") if isinstance(info.get("software"), dict) else {}
    facts: list[tuple[str, str]] = [
        ("bias_pipeline", str(software.get("bias_pipeline", __version__))),
    ]
    if software:
        facts.append(("software", ", ".join(f"{k} {v}" for k, v in software.items() if k != "bias_pipeline")))
    if info.get("command_line"):
        facts.append(("command", " ".join(str(p) for p in info["command_line"])))  # type: ignore[union-attr]
    for key in ("started", "finished"):
        if info.get(key):
            facts.append((key, f"{info[key]} (UTC)"))
    options = info.get("options") if isinstance(info.get("options"), dict) else {}
    if options.get("basepath"):
        facts.append(("raw frames", str(options["basepath"])))
    if data.input_bits:
        facts.append(
            ("input read as", f"{data.input_bits}-bit (values in 16-bit ADU, 12-bit x{data.model.scale_factor:g})")
        )
    if options:
        shown = ("combine_method", "clip_sigma", "row_correction", "temp_bin_width", "max_exposure", "degree", "fit_on")
        facts.append(("options", ", ".join(f"{k} = {options[k]}" for k in shown if k in options)))
    body = _facts(facts)
    if (data.source / RUN_CONFIG_NAME).is_file():
        link = f'<a href="{RUN_CONFIG_NAME}">{RUN_CONFIG_NAME}</a>'
        body += f'<p class="note">Every option and input checksum: {link}.</p>'
    return _section("Run", body)


def _verdict_section(data: ReportData) -> str:
    """The noise-floor verdict in one sentence (:func:`~bias_pipeline.evaluation.noise_floor_verdict`),
    above everything but the warnings."""
    if not data.summary:
        return ""
    verdict = noise_floor_verdict(data.summary)
    css = {True: "verdict good", False: "verdict bad", None: "verdict"}[verdict.at_floor]
    return f'<div class="{css}" id="verdict"><strong>Summary.</strong> {_esc(verdict.sentence)}</div>'


def _warnings_section(warnings: Sequence[str]) -> str:
    """The run's warnings about its result as a whole, in a block above everything else."""
    if not warnings:
        return ""
    items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
    return f'<div class="warning" id="warnings" role="alert"><strong>Warning</strong><ul>{items}</ul></div>'


def _dates_paragraph(used: Sequence[FrameRecord], epochs: EpochCheck | None) -> str:
    """When the used frames were taken, and their date clusters when there are several."""
    span = date_span(r.date_obs for r in used)
    undated = sum(r.date_obs is None for r in used)
    if span is None:
        return "<p>No frame used has an observation date (see --date-keys).</p>" if used else ""
    text = (
        f'<p>Frames used were taken <span id="date-range">{format_date(span[0])} to {format_date(span[1])}</span> '
        "(UTC, first and last observation)" + (f"; {undated} without a date" if undated else "") + ".</p>"
    )
    if epochs is not None and len(epochs.clusters) > 1:
        rows = [
            (
                str(i + 1),
                format_date(c.begin),
                format_date(c.end),
                str(c.n_frames),
                ", ".join(f"{label} ({n})" for label, _, n in c.groups),
            )
            for i, c in enumerate(epochs.clusters)
        ]
        text += f"<h3>Date clusters (gaps longer than {epochs.gap_days:g} days)</h3>" + _table(
            ("epoch", "first (UTC)", "last (UTC)", "frames", "groups (frames)"), rows, css="epochs"
        )
    return text


def _frames_section(records: Sequence[FrameRecord], epochs: EpochCheck | None = None) -> str:
    counts = Counter(r.status for r in records)
    rejected = [r for r in records if r.status == STATUS_REJECTED]
    ignored = [r for r in records if r.status == STATUS_IGNORED]
    used = [r for r in records if r.status == STATUS_USED]
    numbers = [
        ("files found", len(records)),
        ("frames used", counts[STATUS_USED]),
        ("frames rejected", counts[STATUS_REJECTED]),
        ("files ignored", counts[STATUS_IGNORED]),
    ]
    body = (
        '<div class="numbers">'
        + "".join(
            f'<div class="number"><span class="value" id="count-{_slug(name)}">{value}</span>'
            f'<span class="label">{_esc(name)}</span></div>'
            for name, value in numbers
        )
        + "</div>"
    )
    if used:
        temps = [float(r.temperature) for r in used if r.temperature is not None]
        if temps:
            body += f"<p>Frames used span {min(temps):.2f} to {max(temps):.2f} deg C (header temperatures).</p>"
        body += _dates_paragraph(used, epochs)
    for what, chosen in (("Rejected", rejected), ("Ignored", ignored)):
        if not chosen:
            continue
        rows = [(str(n), kind, example) for kind, n, example in reason_groups([r.reason for r in chosen])]
        body += f"<h3>{what} by reason</h3>" + _table(
            ("files", "reason", "example"), rows, css=f"{what.lower()}-reasons"
        )
        listed = [(_esc(r.path), _esc(r.reason or "")) for r in chosen[:LISTED_FILES]]
        more = f" (first {LISTED_FILES} of {len(chosen)})" if len(chosen) > LISTED_FILES else ""
        body += (
            f"<details><summary>{what} files{more}</summary>"
            + _table(("file", "reason"), listed, escape=False)
            + "</details>"
        )
    body += f'<p class="note">Every file and its decision: <a href="{MANIFEST_NAME}">{MANIFEST_NAME}</a>.</p>'
    return _section("Frames", body)


def reason_groups(reasons: Sequence[str | None]) -> list[tuple[str, int, str]]:
    """Like reasons together: ``(kind, count, example)`` per group, most frequent first.

    The kind is the reason with its numbers and quoted values replaced
    (:func:`~bias_pipeline.frames.reason_kind`), the example the first real reason of the group.

    >>> reason_groups(["exposure 10 s is too long", "exposure 2 s is too long", None])
    [('exposure N s is too long', 2, 'exposure 10 s is too long'), ('no reason recorded', 1, 'no reason recorded')]
    """
    examples: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for reason in reasons:
        kind = reason_kind(reason)
        counts[kind] += 1
        examples.setdefault(kind, (reason or "no reason recorded").strip())
    return [(kind, n, examples[kind]) for kind, n in counts.most_common()]


def _groups_section(data: ReportData) -> str:
    if not data.groups:
        return ""
    low, high = data.model.temperature_range or (math.nan, math.nan)
    rows = []
    for g in data.groups:
        span = g.temperature_span
        spread = f"{span[0]:.2f} to {span[1]:.2f}" if all(math.isfinite(s) for s in span) else ""
        link = _link(data.output_dir, g.path) if g.path else ""
        dates = f"{format_date(g.date_range[0])} to {format_date(g.date_range[1])}" if g.date_range else ""
        removed = f"{g.row_noise:.2f}" if g.row_noise > 0 else "none"
        rows.append((_esc(g.label), f"{g.temperature:.3f}", spread, str(g.n_frames), removed, dates, link))
    body = (
        f"<p>{len(data.groups)} temperature groups, {sum(g.n_frames for g in data.groups)} frames, "
        f'fitted temperature range <span id="temperature-range">{low:.2f} to {high:.2f}</span> deg C.</p>'
    )
    body += _table(
        (
            "group (deg C)",
            "mean temperature (deg C)",
            "frame temperatures (deg C)",
            "frames",
            "row noise removed (ADU rms)",
            "dates (UTC)",
            "master",
        ),
        rows,
        escape=False,
        css="groups",
    )
    return _section("Temperature groups", body)


def _model_section(model: BiasModel) -> str:
    flagged = model.flagged
    maps = [
        ("a: bias at 0 deg C", model.a_map, "ADU", "viridis"),
        ("b: slope", model.b_map, "ADU / deg C", "coolwarm"),
    ]
    if model.c_map is not None:
        maps.append(("c: quadratic term", model.c_map, "ADU / deg C^2", "coolwarm"))
    if model.read_noise is not None:
        maps.append(("read noise of one frame", model.read_noise, "ADU", "magma"))
    formula = "bias(T) = a + b T" + (" + c T^2" if model.c_map is not None else "")
    body = f"<p>Per pixel, {_esc(formula)}, T in deg C, values in 16-bit ADU.</p>"
    valid = ~flagged
    stats = [MapStats.of(image, valid) for _, image, _, _ in maps]
    rows = [
        (title, unit, f"{st.median:.4g}", f"{st.spread:.3g}", f"{st.minimum:.4g}", f"{st.maximum:.4g}")
        for (title, _, unit, _), st in zip(maps, stats, strict=True)
        if st.count
    ]
    body += _table(("map", "unit", "median", "spread (half 16-84 %)", "min", "max"), rows, css="maps")
    body += '<p class="note">Statistics and histograms leave out masked and flagged pixels.</p>'
    for (title, image, unit, cmap), st in zip(maps, stats, strict=True):
        png, factor = map_histogram_png(image, flagged, st, title, unit, cmap)
        shown = f"shown as {block_note(factor)}" if factor > 1 else "every pixel shown"
        body += _figure_html(png, f"{title} [{unit}]: map ({shown}) and histogram")
    return _section("Model", body)


def _flags_section(model: BiasModel) -> str:
    if model.dq is None:
        masked = int(model.mask.sum())
        return _section("Pixel flags", f"<p>{masked} pixels masked (hot-pixel mask); no other flags recorded.</p>")
    total = model.dq.size
    rows = []
    for bit in DQ_BITS:
        n = int(np.count_nonzero(model.dq & bit.value))
        rows.append((bit.name, str(bit.value), str(n), f"{100 * n / total:.3f} %", bit.description))
    flagged = int(np.count_nonzero(model.dq))
    body = f"<p>{flagged} of {total} pixels ({100 * flagged / total:.3f} %) carry a flag.</p>"
    body += _table(("flag", "value", "pixels", "fraction", "meaning"), rows, css="flags")
    return _section("Pixel flags", body)


def _diagnostics_section(data: ReportData) -> str:
    """The figures that show whether the fit is sound (the PNGs step 5 writes, drawn here from
    memory): the bias against temperature with the fitted law, where the flags are, the fit's
    uncertainty and quality maps, and the profiles of a and b (a column or row pattern shows there)."""
    model = data.model
    flagged = model.flagged
    body = ""
    levels = master_levels(data.summary) if data.summary else None
    if levels:
        temps = [float(r["temperature"]) for r in data.summary]  # type: ignore[arg-type]
        figure = bias_temperature_figure(temps, levels, model.a_map, model.b_map, flagged, model.c_map)
        body += _figure_html(
            figure_png(figure), "Median bias of each master (bars: 5-95 % of its unflagged pixels) and the fitted law"
        )
    if model.dq is not None:
        bits = [(bit.name, bit.value) for bit in DQ_BITS]
        body += _figure_html(figure_png(flag_map_figure(model.dq, bits)), "Where the flagged pixels are, by flag")
    for _, title, image, unit in diagnostic_maps(model):
        stats = MapStats.of(image, ~flagged)
        png, factor = map_histogram_png(image, flagged, stats, title, unit, "magma")
        shown = f"shown as {block_note(factor)}" if factor > 1 else "every pixel shown"
        body += _figure_html(png, f"{title} [{unit}]: map ({shown}) and histogram")
    profiles = [("a", model.a_map, "ADU"), ("b", model.b_map, "ADU / deg C")]
    body += _figure_html(
        figure_png(profile_figure(profiles, flagged)), "Row and column profiles of a and b (unflagged pixels)"
    )
    return _section("Diagnostics", body)


def _evaluation_section(data: ReportData) -> str:
    evaluation = data.output_dir / EVALUATION_DIR
    if not data.summary:
        return _section("Model error", "<p>The evaluation was not run (--no-evaluation).</p>")
    verdict = noise_floor_verdict(data.summary)
    rows = []
    for r in data.summary:
        limit = floor_limit(_float(r.get("per_error_tolerance")))
        rows.append(
            (
                str(r["label"]),
                str(r["n_frames"]),
                _num(r.get("expected_error_median"), 3, "f"),
                _ratio(r.get("residual_per_error"), limit),
                _ratio(r.get("heldout_residual_per_error"), limit),
                _num(r["mae_mean"], 3, "f"),
                _num(r["heldout_mae_mean"], 3, "f"),
                _num(r["mape_mean"], 4, "f"),
                _num(r["mae_per_read_noise"], 3, "f"),
                _link(data.output_dir, evaluation / labelled_name(RESIDUAL, str(r["label"]), ".png"), "map"),
            )
        )
    body = f'<p class="verdict-line"><strong>{_esc(verdict.sentence)}</strong></p>'
    body += (
        "<p>Per master, over unflagged pixels. <em>Expected error</em>: the master's standard error from the "
        "pooled read noise, its frame count and the combine's efficiency (as the fit weighted it). "
        "<em>Residual / expected error</em>: the robust rms (median |z| / 0.6745) of (real - model) over that "
        "error times sqrt(1 - h), h the master's leverage (the fit absorbs that part of the master's noise), so "
        "1.00 is the noise floor. <em>Held out</em>: the model refitted without that master (leave-one-out), "
        "its residual over the prediction's expected error (master and model combined); for a fit on the "
        "masters the two ratios are the same number by construction. MAE / read noise divides by one frame's "
        "noise, not the master's; MAPE of an offset of thousands of ADU is small whatever the fit.</p>"
    )
    body += _table(
        (
            "group (deg C)",
            "frames",
            "expected error (ADU)",
            "residual / expected error",
            "held-out residual / expected error",
            "MAE mean (ADU)",
            "held-out MAE mean (ADU)",
            "MAPE mean (%)",
            "MAE / read noise",
            "residual map",
        ),
        rows,
        escape=False,
        css="errors",
    )
    # Drawn here from the rows and records in memory (the same figures step 5 saved as PNGs).
    body += _figure_html(figure_png(summary_figure(data.summary)), "Model error against temperature")
    if data.temperature_tolerance is not None and any(r.temperature_est is not None for r in data.records):
        body += _figure_html(
            figure_png(temperature_check_figure(data.records, data.temperature_tolerance)),
            "Header temperature against the temperature each frame's bias shows",
        )
    return _section("Model error", body)


def _float(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _ratio(value: object, limit: float) -> str:
    """A residual / expected error ratio, marked when above the noise floor's ``limit``."""
    text = _num(value, 3, "f")
    number = _float(value)
    return f'<span class="above">{text}</span>' if math.isfinite(number) and number > limit else text


def _worst_pixels_section(model: BiasModel) -> str:
    if model.rms is None:
        return ""
    flagged = model.flagged
    flat = worst_pixels(model.rms, flagged, WORST_PIXELS)
    count = int(flat.size)
    n_flagged = int(np.count_nonzero(flagged))
    flagged_note = (
        f"<p>{n_flagged} flagged or masked pixels are left out of this table (see Pixel flags).</p>"
        if n_flagged
        else ""
    )
    if count == 0:
        return _section("Worst pixels", "<p>No unflagged pixel has a fit rms.</p>" + flagged_note) if n_flagged else ""
    rows = []
    for index in flat:
        row, col = (int(i) for i in np.unravel_index(index, model.shape))
        quadratic = [] if model.c_map is None else [_num(model.c_map[row, col], 4)]
        rows.append(
            (
                str(row),
                str(col),
                _num(model.a_map[row, col], 5),
                _num(model.b_map[row, col], 4),
                *quadratic,
                _num(model.rms[row, col], 4),
                _num(model.chi2[row, col], 4) if model.chi2 is not None else "",
                _num(model.read_noise[row, col], 3) if model.read_noise is not None else "",
            )
        )
    body = (
        f"<p>The {count} unflagged pixels that follow the model worst: largest rms of the fit residuals over "
        "the temperature groups. Rows and columns count from 0 (numpy order; FITS pixel = index + 1).</p>"
    ) + flagged_note
    body += _table(
        (
            "row",
            "column",
            "a (ADU)",
            "b (ADU/deg C)",
            *([] if model.c_map is None else ["c (ADU/deg C^2)"]),
            "residual rms (ADU)",
            "reduced chi2",
            "read noise (ADU)",
        ),
        rows,
        css="worst",
    )
    return _section("Worst pixels", body)


def worst_pixels(rms: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
    """Flat indices of the ``count`` largest finite ``rms`` values outside ``mask``, largest
    first (fewer when fewer pixels qualify).

    A compiled pass keeps the few largest as it goes (:func:`~bias_pipeline.eval_kernels.largest`);
    the numpy reference (``compiled.engine() == "numpy"``) partitions a full-frame copy, and
    its 4M-entry index array was the report's largest allocation. Equal values may come in
    another order on the two paths.
    """
    if engine() == "numba":
        indices = np.zeros(count, dtype=np.int64)
        values = np.zeros(count, dtype=np.float32)
        image = np.ascontiguousarray(rms, dtype=np.float32)
        found = eval_kernels.largest(image, np.ascontiguousarray(mask, dtype=np.bool_), indices, values)
        return indices[:found]
    masked = np.where(mask | ~np.isfinite(rms), -np.inf, rms)
    count = min(count, int(np.count_nonzero(np.isfinite(masked))))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    flat = np.argpartition(masked.ravel(), -count)[-count:]
    return flat[np.argsort(masked.ravel()[flat])[::-1]]


def _products_section(data: ReportData) -> str:
    if data.files is None:
        products = [(p.relative_to(data.output_dir), p) for p in _products(data.output_dir, data.exclude)]
    else:
        products = [(rel, now) for rel, now in data.files if rel.name != REPORT_NAME]
    rows = []
    for relative, now in products[:LISTED_PRODUCTS]:
        try:
            size = human_size(now.stat().st_size)
        except OSError as exc:  # a dangling link, a file removed meanwhile
            size = _esc(exc.strerror or "cannot read")
        rows.append((_link(data.output_dir, data.output_dir / relative), size))
    body = _table(("file", "size"), rows, escape=False, css="products")
    if len(products) > LISTED_PRODUCTS:
        body += f'<p class="note">... and {len(products) - LISTED_PRODUCTS} more files in the folder.</p>'
    return _section("Products", body)


def _products(root: Path, exclude: Iterable[Path]) -> list[Path]:
    """Every file of the run under ``root``: not this report, temporary files or the
    ``exclude`` folders (raw data), sorted by folder then name."""
    excluded = [Path(p).resolve() for p in exclude]
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if (here / d).resolve() not in excluded and not d.startswith("."))
        for name in sorted(files):
            if name == REPORT_NAME or name.startswith(".") or name.endswith(TEMPORARY_SUFFIX):
                continue
            found.append(here / name)
    return found


# --------------------------------------------------------------------------- figures


def _figure_html(png: bytes, caption: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{_esc(caption)}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


# --------------------------------------------------------------------------- HTML helpers


def _esc(text: object) -> str:
    # A name that is not UTF-8 (its bytes held as surrogates) is shown with U+FFFD in their place.
    clean = str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return html.escape(clean, quote=True)


def _slug(text: str) -> str:
    return "-".join(text.lower().split())


def _num(value: object, digits: int, style: str = "g") -> str:
    """``value`` with ``digits`` significant digits (``style="g"``) or decimals (``"f"``)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return _esc(value)
    return "n/a" if not math.isfinite(number) else f"{number:.{digits}{style}}"


def _link(root: Path, path: Path, text: str | None = None) -> str:
    try:
        relative = Path(path).relative_to(root).as_posix()
    except ValueError:
        relative = Path(path).as_posix()
    href = urllib.parse.quote(relative, errors="surrogateescape")  # the file's own bytes, percent-encoded
    return f'<a href="{_esc(href)}">{_esc(text or relative)}</a>'


def _facts(facts: Sequence[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts) + "</dl>"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, escape: bool = True, css: str = "") -> str:
    cell = _esc if escape else str
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _section(title: str, body: str) -> str:
    return f'<section id="{_slug(title)}"><h2>{_esc(title)}</h2>\n{body}\n</section>'


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 70em; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.8em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tbody tr:nth-child(even) { background: #fafafa; }
td:not(:last-child) { font-variant-numeric: tabular-nums; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; } dt { font-weight: 600; }
dd { margin: 0; overflow-wrap: anywhere; }
.numbers { display: flex; gap: 1em; flex-wrap: wrap; }
.number { border: 1px solid #ddd; border-radius: 6px; padding: 0.5em 1em; min-width: 8em; }
.number .value { display: block; font-size: 1.8em; font-weight: 600; } .number .label { color: #555; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } .note { color: #555; font-size: 0.9em; }
.warning { border: 2px solid #c60; background: #fff4e5; border-radius: 6px; padding: 0.6em 1em; margin: 1em 0; }
.warning ul { margin: 0.3em 0 0 0; }
.verdict { border: 2px solid #888; border-radius: 6px; padding: 0.6em 1em; margin: 1em 0; }
.verdict.good { border-color: #2a7; background: #effaf3; } .verdict.bad { border-color: #c33; background: #fdeeee; }
.above { color: #b00; font-weight: 600; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""

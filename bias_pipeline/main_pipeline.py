"""The pipeline: chains the steps in one staged run, composes the records from what the steps
decide, and writes the run's manifest, record and report; the work is in the steps."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .block_combine import quantisation_step
from .compiled import describe_engine
from .config import PipelineConfig, resolve_path
from .dates import date_span, format_date
from .epochs import EpochCheck, check_run_epochs
from .errors import BiasPipelineError, InputDataError, OutputError
from .frames import (
    STATUS_ACCEPTED,
    STATUS_IGNORED,
    STATUS_REJECTED,
    STATUS_USED,
    FrameRecord,
    apply_decisions,
    reason_kind,
)
from .grouping import make_groups
from .interrupts import Terminated, deferred_interrupts
from .master_writer import MasterFrame
from .model import BiasModel
from .output_folder import StagedRun, keep_stopped_run, output_lock, publish, stage_run
from .plots import plot_temperature_check
from .products import date_cards, run_cards
from .provenance import input_digest, now_utc, provenance_cards, run_config_document, run_log, write_run_config
from .registry import MANIFEST_NAME, TEMPERATURE_PLOT
from .report import report_data, write_report
from .steps.step0_create_dirs import make_output_folder
from .steps.step1_load_data import check_raw_folder, scan_frames, write_manifest
from .steps.step2_generate_master_bias_by_temp import build_masters
from .steps.step3_fit_bias_model import fit_model, fit_model_on_frames, load_hot_pixel_mask
from .steps.step4_generate_synthetic_bias import write_synthetic_set
from .steps.step5_evaluate_model import evaluate
from .temperature_check import TemperatureCheck, check_frame_temperatures, with_temperature_checks

logger = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    """What a run produced.

    Attributes
    ----------
    output_dir
        The run's output folder.
    records
        One record per file found, with its final status and reason.
    masters
        The master frames written, by increasing temperature.
    model
        The fitted model.
    input_bits
        Bit depth the input was read as (12 or 16).
    summary
        Per-temperature evaluation rows (empty when evaluation was skipped).
    synthetic_paths
        Synthetic frames written with ``generate_set``.
    epochs
        The used frames' date clusters and whether temperature is confounded with date
        (:mod:`bias_pipeline.epochs`).
    warnings
        The run's warnings about its result as a whole (the confounding warning), also in
        ``run_config.json`` and the report.
    """

    output_dir: Path
    records: list[FrameRecord]
    masters: list[MasterFrame]
    model: BiasModel
    input_bits: int
    summary: list[dict[str, object]] = field(default_factory=list)
    synthetic_paths: list[Path] = field(default_factory=list)
    epochs: EpochCheck = field(default_factory=EpochCheck)
    warnings: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        """Number of files with ``status`` (``"used"``, ``"rejected"``, ``"ignored"``)."""
        return sum(r.status == status for r in self.records)

    @property
    def manifest_path(self) -> Path:
        """``frames_manifest.csv`` of the run."""
        return self.output_dir / MANIFEST_NAME


def _no_usable_frames(records: list[FrameRecord], raw: Path, manifest: Path) -> InputDataError:
    rejected = [r for r in records if r.status == STATUS_REJECTED]
    ignored = sum(r.status == STATUS_IGNORED for r in records)
    if rejected:
        kinds = Counter(reason_kind(r.reason) for r in rejected)
        kind, count = kinds.most_common(1)[0]
        example = next(r.reason for r in rejected if reason_kind(r.reason) == kind)
        if len(kinds) == 1:
            detail = f"all {len(rejected)} rejected for one reason, e.g. {example}"
        else:
            detail = f"{len(rejected)} rejected; most often ({count} of them): {example}"
    else:
        detail = "none is a FITS frame"
    return InputDataError(
        f"--basepath {raw}: no usable bias frames among {len(records)} files "
        f"({detail}; {ignored} ignored); see {manifest}"
    )


def run_bias_pipeline(
    observations_dir: str | Path,
    output_dir: str | Path,
    hot_pixel_mask_path: str | Path | None = None,
    generate_set: bool | None = None,
    eval_save_fits: bool | None = None,
    *,
    config: PipelineConfig | None = None,
    command_line: Sequence[str] | None = None,
    dask_scheduler: str | None = None,
) -> PipelineResult:
    """Run the whole pipeline on a folder of raw bias frames.

    Parameters
    ----------
    observations_dir
        Folder of raw FITS frames (searched recursively).
    output_dir
        Folder for the products (created; may lie inside ``observations_dir``, and is then
        not scanned).
    hot_pixel_mask_path
        FITS mask, non-zero = hot pixel left out of the fit (``None``: ``config.hot_pixel_mask``).
    generate_set
        Write a synthetic frame for every master temperature in ``bias_masks_by_temp/``
        (``None``: ``config.generate_set``; without a ``config``, True as in the first version).
    eval_save_fits
        Write synthetic, MAE and MAPE FITS in ``evaluation/`` (``None``: ``config.save_eval_fits``).
    config
        Every option (defaults if ``None``). The arguments above, when given, win over the same
        options in it.
    command_line
        The command as typed, for ``run_config.json`` (default ``sys.argv``).
    dask_scheduler
        Combine on the Dask scheduler at this address (``tcp://host:8786``) or on a local
        cluster of N processes (``local:N``); ``None``: ``config.dask_scheduler``
        (:mod:`bias_pipeline.cluster`).

    Returns
    -------
    PipelineResult

    Raises
    ------
    BiasPipelineError
        For anything the user can fix (bad folder, no usable frames, one temperature only,
        bad mask, unwritable output); the message names the file or option.

    Examples
    --------
    >>> import tempfile
    >>> from bias_pipeline import BiasModel, subtract_bias
    >>> from bias_pipeline.simulate import SimulationSpec, simulate_dataset
    >>> work = Path(tempfile.mkdtemp())
    >>> spec = SimulationSpec(shape=(16, 24), temperatures=(0.0, 10.0, 20.0), frames_per_temperature=3)
    >>> truth = simulate_dataset(work / "sim", spec)
    >>> config = PipelineConfig(show_progress=False, evaluation=False)  # evaluation=True adds step 5
    >>> result = run_bias_pipeline(truth.raw_dir, work / "out", config=config)
    >>> result.count("used"), [m.label for m in result.masters]
    (9, ['0.0', '10.0', '20.0'])
    >>> sorted(p.name for p in (work / "out").iterdir() if p.is_file())
    ['frames_manifest.csv', 'pipeline.log', 'report.html', 'run_config.json']
    >>> model = BiasModel.load(work / "out")
    >>> model.shape, [round(t, 1) for t in model.temperature_range]
    ((16, 24), [0.0, 20.0])
    >>> path = model.to_fits(work / "photsat_bias_model.fits")
    >>> BiasModel.load(path).shape
    (16, 24)
    >>> signal = subtract_bias(truth.frame_paths[0], model)  # temperature from the header
    >>> bool(abs(float(signal.mean())) < 5.0)  # a bias frame minus the bias: about zero ADU
    True
    """
    if config is None:  # the first version's call form: synthetic frames by default
        config = PipelineConfig(generate_set=True)
    # The legacy positional arguments win over the same options inside config (None leaves
    # config's); the run record then shows the paths resolved.
    if hot_pixel_mask_path is None:
        hot_pixel_mask_path = config.hot_pixel_mask
    generate_set = config.generate_set if generate_set is None else generate_set
    eval_save_fits = config.save_eval_fits if eval_save_fits is None else eval_save_fits
    raw = resolve_path(observations_dir)
    out = resolve_path(output_dir)
    config = dataclasses.replace(
        config,
        basepath=raw,
        output_dir=out,
        hot_pixel_mask=None if hot_pixel_mask_path is None else resolve_path(hot_pixel_mask_path),
        generate_set=generate_set,
        save_eval_fits=eval_save_fits,
        dask_scheduler=config.dask_scheduler if dask_scheduler is None else dask_scheduler,
    )
    if out == raw:
        raise InputDataError(f"--output-dir {out} is the raw folder itself; give a separate folder for the products")
    if hot_pixel_mask_path is not None and not Path(hot_pixel_mask_path).is_file():
        raise InputDataError(f"--hot-pixel-mask {hot_pixel_mask_path} does not exist; give a FITS mask file")
    check_raw_folder(raw)
    make_output_folder(out)
    with output_lock(out):
        run = stage_run(out)
        try:
            with run_log(run.staging):
                context = RunContext(raw, run, config, command_line)
                result = _run_logged(context)
        except BaseException:
            keep_stopped_run(run)
            raise
        published = False
        try:
            with deferred_interrupts():  # a Ctrl-C now waits for the renames, then says they are done
                try:
                    publish(run)
                except OutputError as exc:
                    keep_stopped_run(run, note=f"run stopped while publishing: {exc}")
                    raise
                published = True
        except KeyboardInterrupt as exc:
            exc.published_to = out if published else None  # type: ignore[attr-defined]
            raise
    return result


@dataclass(frozen=True)
class RunContext:
    """What one run works with, fixed before the steps start (step 1 adds ``input_bits``).

    Attributes
    ----------
    raw
        The raw folder (resolved).
    run
        The staged run: products go to ``run.staging`` until published to ``run.final``.
    config
        Every option, the paths and switches of :func:`run_bias_pipeline` included.
    command_line
        The command as typed (``None``: ``sys.argv``).
    input_bits
        Bit depth the input was read as, decided by step 1.
    """

    raw: Path
    run: StagedRun
    config: PipelineConfig
    command_line: Sequence[str] | None = None
    input_bits: int = 16

    @property
    def manifest(self) -> Path:
        """Where the run writes ``frames_manifest.csv`` (the staging folder)."""
        return self.run.staging / MANIFEST_NAME


def _run_logged(context: RunContext) -> PipelineResult:
    """Steps 1 to 5, run_config.json and the report, all into the staging folder (see
    :func:`run_bias_pipeline`); the result names the files where they will be once published."""
    raw, run, config = context.raw, context.run, context.config
    logger.debug("raw frames: %s; products: %s (staged in %s until complete)", raw, run.final, run.staging)
    logger.debug("per-pixel kernels: %s", describe_engine())
    # Step 1: every file, accepted or with its reason, and the checksums of those accepted.
    started = now_utc()
    records, input_bits = scan_frames(raw, config, exclude=[run.final], checksum=True)
    context = dataclasses.replace(context, input_bits=input_bits)
    with run_cards(provenance_cards(*input_digest(records, raw), started)):
        staged = _run_steps(context, records)
    result = _as_published(staged, run)
    options = {**config.options_record(), "output_dir": str(run.final)}
    facts = {
        "input_bits": input_bits,
        "frames_used": result.count(STATUS_USED),
        "frames_rejected": result.count(STATUS_REJECTED),
        "files_ignored": result.count(STATUS_IGNORED),
        "masters": [
            {
                "label": m.label,
                "temperature": m.temperature,
                "frames": m.n_frames,
                "row_noise_removed": m.row_noise,
                **_date_record(m.date_range),
            }
            for m in result.masters
        ],
        "date_range": _date_record(result.model.date_range) or None,
        "epochs": result.epochs.as_dict(),
    }
    document = run_config_document(options=options, records=result.records, base=raw, started=started,
                                   command_line=context.command_line, extra=facts,
                                   warnings=result.warnings)  # fmt: skip
    write_run_config(run.staging, document)
    data = report_data(
        result,
        document,
        temperature_tolerance=config.temperature_tolerance,
        files_dir=run.staging,
        files=run.files_after_publish(exclude=[raw]),
    )
    try:
        write_report(data)
    except OutputError:
        raise  # a full disk: the run is not complete, and the earlier products stay
    except Exception as exc:  # a fault of the report itself must not cost the user the model
        logger.warning("report.html not written: %s: %s (the other products are complete)", type(exc).__name__, exc)
        logger.debug("report failure", exc_info=True)
    return result


def _date_record(date_range: tuple[_dt.datetime, _dt.datetime] | None) -> dict[str, str]:
    """``{"date_beg": ..., "date_end": ...}`` (ISO UTC) of a date range, empty when unknown."""
    if date_range is None:
        return {}
    return {"date_beg": format_date(date_range[0]), "date_end": format_date(date_range[1])}


def _as_published(result: PipelineResult, run: StagedRun) -> PipelineResult:
    """``result`` with every path where :func:`publish` will put the file."""
    return dataclasses.replace(
        result,
        output_dir=run.final,
        masters=[dataclasses.replace(m, path=run.final_path(m.path)) for m in result.masters],
        synthetic_paths=[run.final_path(p) for p in result.synthetic_paths],
    )


def _run_steps(context: RunContext, records: list[FrameRecord]) -> PipelineResult:
    """Steps 2 to 5 into the staging folder (see :func:`run_bias_pipeline`).

    Each step takes its inputs and returns its results; the records are composed here, from
    step 1's records and step 2's decisions, and ``frames_manifest.csv`` is written once from
    the final ones, or, when the run stops, once on the way out, saying so for the frames not
    decided."""
    raw, config, input_bits, dirs = context.raw, context.config, context.input_bits, context.run.dirs
    stopped_manifest = context.run.stopped_dir / MANIFEST_NAME  # where the user finds it if the run stops
    decided = records  # the records with every decision made so far: the manifest if the run stops
    try:
        # Step 2: groups and masters.
        grouping = make_groups(records, config)
        decided = apply_decisions(records, grouping.decisions)
        if not grouping.groups:
            raise _no_usable_frames(decided, raw, stopped_manifest)
        if len(grouping.groups) < 2:
            only = grouping.groups[0]
            raise InputDataError(
                f"--basepath {raw}: all usable frames are at one temperature ({only.label} deg C, "
                f"{len(only.records)} frames); the fit needs two or more temperature groups "
                f"(--temp-bin-width {config.temp_bin_width:g})"
            )
        shape = grouping.groups[0].records[0].shape
        mask = None if config.hot_pixel_mask is None else load_hot_pixel_mask(config.hot_pixel_mask, shape)
        made = build_masters(grouping, dirs["masters"], config, input_bits=input_bits)
        masters = made.masters
        # Step 1's records with step 2's decisions: the records steps 3 to 5 see; step 5's
        # temperature checks join them below, and the manifest is written from the result.
        decided = final = apply_decisions(records, made.decisions)
        if len(masters) < 2:
            raise InputDataError(
                f"--basepath {raw}: fewer than two temperature groups could be combined; see {stopped_manifest}"
            )
        logger.info(
            "%d frames used in %d masters, %d rejected, %d ignored",
            sum(r.status == STATUS_USED for r in final),
            len(masters),
            sum(r.status == STATUS_REJECTED for r in final),
            sum(r.status == STATUS_IGNORED for r in final),
        )
        epochs = check_run_epochs(final, {m.label: m.temperature for m in masters}, config.date_gap)
        # Step 3: the model. The fit on the masters also serves step 5's held-out check, so with
        # --fit-on frames it is made only when the evaluation runs.
        quantum = quantisation_step([r for r in final if r.status == STATUS_USED], input_bits, config.scale_factor)
        fitted_on_masters = config.fit_on == "masters" or config.evaluation
        masters_model = fit_model(masters, mask, config, quantum=quantum) if fitted_on_masters else None
        if config.fit_on == "frames":
            used = [r for r in final if r.status == STATUS_USED]
            model = fit_model_on_frames(used, masters, mask, config, input_bits=input_bits)
        else:
            assert masters_model is not None
            model = masters_model
        # The model's dates: those of the frames behind it, and the validity the user declared.
        used_dates = date_span(r.date_obs for r in final if r.status == STATUS_USED)
        model = dataclasses.replace(
            model, date_range=used_dates, valid_from=config.valid_from, valid_to=config.valid_to
        )
        model.save(dirs["model"], cards={"INBITS": (input_bits, "bit depth of the input values")})
        result = PipelineResult(
            context.run.staging,
            final,
            masters,
            model,
            input_bits,
            epochs=epochs,
            warnings=[epochs.warning] if epochs.warning else [],
        )
        # Step 4: synthetic frames at the masters' temperatures.
        if config.generate_set:
            result.synthetic_paths = write_synthetic_set(
                model, [m.temperature for m in masters], dirs["synthetic"], [m.label for m in masters]
            )
            logger.info(
                "%d synthetic frames for %s", len(result.synthetic_paths), context.run.final_path(dirs["synthetic"])
            )
        if config.evaluation:
            with run_cards(date_cards(model.date_range, "the frames behind the model")):
                result.summary, checks = _evaluate(context, model, masters, final, masters_model)
            result.records = decided = with_temperature_checks(final, checks)
            plot_temperature_check(result.records, dirs["evaluation"] / TEMPERATURE_PLOT, config.temperature_tolerance)
    except BaseException as exc:
        _write_manifest_on_the_way_out(context, decided, exc)
        raise
    write_manifest(result.records, context.manifest, raw)  # once, from the final records
    return result


def _evaluate(
    context: RunContext,
    model: BiasModel,
    masters: Sequence[MasterFrame],
    records: Sequence[FrameRecord],
    masters_model: BiasModel | None,
) -> tuple[list[dict[str, object]], dict[Path, TemperatureCheck]]:
    """Step 5: the evaluation's summary rows, and the model as a check of each frame's header
    temperature (by path)."""
    config, dirs = context.config, context.run.dirs
    summary = evaluate(
        model,
        masters,
        dirs["evaluation"],
        save_fits=config.save_eval_fits,
        show_progress=config.show_progress,
        heldout_model=masters_model,
        threads=config.threads,
        config=config,
    )
    checks = check_frame_temperatures(
        model,
        records,
        input_bits=context.input_bits,
        scale_factor=config.scale_factor,
        tolerance=config.temperature_tolerance,
        show_progress=config.show_progress,
        threads=config.threads,
        row_correction=config.row_correction,
    )
    return summary, checks


def _write_manifest_on_the_way_out(context: RunContext, records: Sequence[FrameRecord], exc: BaseException) -> None:
    """The manifest of a run that stopped: every decision made, and for each frame still
    undecided that it was not combined and why the run stopped. A failure to write it is only
    logged: the error that stopped the run is the one to report."""
    if isinstance(exc, Terminated):
        why = "terminated (SIGTERM)"
    elif isinstance(exc, KeyboardInterrupt):
        why = "interrupted (Ctrl-C)"
    elif isinstance(exc, BiasPipelineError):
        why = str(exc)
    else:
        why = f"{type(exc).__name__}: {exc}"
    note = f"not combined: the run stopped: {why}"
    final = [
        dataclasses.replace(r, reason=note) if r.status == STATUS_ACCEPTED and not r.reason else r for r in records
    ]
    try:
        write_manifest(final, context.manifest, context.raw)
    except (OSError, BiasPipelineError) as error:
        logger.warning("frames_manifest.csv of the stopped run not written: %s", error)

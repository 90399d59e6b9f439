"""Command-line interfaces: ``run_pipeline.py`` / ``bias-pipeline`` and ``generate_bias.py`` /
``generate-bias``.

The CLI is the only place that configures logging and prints; every error the user can cause
becomes one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ._version import __version__
from .combine import COMBINE_METHODS
from .config import (
    DEFAULT_BIAS_TYPES,
    DEFAULT_EXPOSURE_KEYS,
    DEFAULT_FRAME_TYPE_KEYS,
    DEFAULT_SET_POINT_KEYS,
    DEFAULT_TEMPERATURE_KEYS,
    NO_KEYS,
    TEMPERATURE_UNITS,
    PipelineConfig,
)
from .config_file import KEYWORDS, NUMBER, blame_file, format_config, merge_config_file
from .errors import BiasPipelineError, ConfigError
from .frames import normal_frame_type
from .interrupts import Terminated, raise_terminated
from .output_folder import STOPPED_DIR
from .provenance import LOG_NAME

logger = logging.getLogger("bias_pipeline.cli")

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process killed by it
EXIT_INTERNAL = 70

RUN_EXAMPLE = """\
example:
  python run_pipeline.py --basepath /data/photsat/tvac_bias/ --output-dir results/ \\
      --hot-pixel-mask hot_pixels.fits --generate-set --save-eval-fits

  Scans /data/photsat/tvac_bias/ recursively, keeps frames of at most 0.1 s, groups them in
  0.1 deg C bins, writes masters, the a/b model, synthetic frames and the evaluation under
  results/; results/frames_manifest.csv says what happened to every file.
  Try it first on simulated data:  python run_pipeline.py --demo --output-dir demo_out/
"""

GENERATE_EXAMPLE = """\
example:
  python generate_bias.py --a-map results/bias_model/bias_a_map.fits \\
      --b-map results/bias_model/bias_b_map.fits --temperature 12.0 --output synthetic/
  python generate_bias.py --model results/bias_model/bias_model.fits --temperature 12.0 --output synthetic/

  writes synthetic/synthetic_bias_12.0C.fits and prints its mean and standard deviation. --model
  takes the whole model (any degree); a degree-2 run's a-map is read with its bias_model.fits.
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the option, and that takes negative
    numbers in any notation as values (``--temperature -1e-3``, ``-inf``), not as options."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# Every float() spelling of a negative number (argparse alone knows -1 and -1.5, not -1e-3 or -inf).
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _keys(text: str) -> tuple[str, ...]:
    keys = tuple(k.strip().upper() for k in text.split(",") if k.strip())
    if not keys:
        raise argparse.ArgumentTypeError("give at least one keyword, e.g. TEMPERATURE,TEMP")
    return keys


def _optional_keys(text: str) -> tuple[str, ...]:
    """Keywords, or ``none`` (or nothing) to switch the look-up off."""
    keys = tuple(k.strip().upper() for k in text.split(",") if k.strip())
    return () if keys in ((), (NO_KEYS.upper(),)) else keys


def _frame_types(text: str) -> tuple[str, ...]:
    types = tuple(normal_frame_type(t) for t in text.split(",") if t.strip())
    if not types:
        raise argparse.ArgumentTypeError("give at least one frame type, e.g. BIAS,ZERO")
    return types


def build_run_parser(prog: str = "run_pipeline.py") -> argparse.ArgumentParser:
    """The argument parser of the pipeline command."""
    parser = _Parser(
        prog=prog,
        description=(
            "Model the temperature dependence of a CMOS camera's bias: scan raw FITS bias "
            "frames, combine them into masters per temperature, fit bias = a + b*T per pixel, "
            "write synthetic frames and evaluate the model. Products are float32 in 16-bit ADU."
        ),
        epilog=RUN_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    files = parser.add_argument_group("configuration file")
    files.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="take options from a TOML file: keys are the long options without the dashes "
        '(basepath = "raw/", temperature-limits = [-60, 80], generate-set = true); relative paths '
        "in it are relative to the file's folder; flags on the command line win over the file. A "
        "finished run's OUT_DIR/run_config.json is accepted too, to repeat that run. -v, -q, --demo "
        "are command-line only",
    )
    files.add_argument(
        "--write-config",
        action="store_true",
        help="print the options in effect (defaults, --config file, flags) as TOML and exit without running",
    )

    io_group = parser.add_argument_group("input and output")
    io_group.add_argument(
        "--basepath",
        type=Path,
        metavar="RAW_DIR",
        help="folder of raw FITS bias frames, searched recursively",
    )
    io_group.add_argument(
        "--output-dir",
        type=Path,
        metavar="OUT_DIR",
        help="folder for the products (created; re-runs replace them); required, here or in --config",
    )
    io_group.add_argument(
        "--hot-pixel-mask",
        type=Path,
        metavar="MASK.fits",
        help="FITS mask, non-zero = hot pixel, left out of the fit (NaN in the a/b maps)",
    )
    io_group.add_argument(
        "--generate-set",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="write a synthetic frame for every master temperature in bias_masks_by_temp/",
    )
    io_group.add_argument(
        "--save-eval-fits",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also write synthetic, MAE and MAPE FITS in evaluation/",
    )
    io_group.add_argument(
        "--demo",
        action="store_true",
        help="simulate a small PhotSat data set in OUT_DIR/demo_data and run on it",
    )

    frames = parser.add_argument_group("frame selection")
    frames.add_argument(
        "--temperature-keys",
        type=_keys,
        default=DEFAULT_TEMPERATURE_KEYS,
        metavar="KEY[,KEY...]",
        help="header keywords for the temperature in deg C, first found wins "
        f"(default {','.join(DEFAULT_TEMPERATURE_KEYS)})",
    )
    frames.add_argument(
        "--exposure-keys",
        type=_keys,
        default=DEFAULT_EXPOSURE_KEYS,
        metavar="KEY[,KEY...]",
        help=f"header keywords for the exposure in s (default {','.join(DEFAULT_EXPOSURE_KEYS)})",
    )
    frames.add_argument(
        "--temperature-unit",
        choices=TEMPERATURE_UNITS,
        default="C",
        help="unit of the header temperatures: C (default) or K, converted to deg C on reading",
    )
    frames.add_argument(
        "--frame-type-keys",
        type=_optional_keys,
        default=DEFAULT_FRAME_TYPE_KEYS,
        metavar="KEY[,KEY...]",
        help="header keywords for the frame type, first found wins; a frame whose type is not one of "
        f"--bias-types is rejected, one without a type is used (default {','.join(DEFAULT_FRAME_TYPE_KEYS)}; "
        f"{NO_KEYS}: no check)",
    )
    frames.add_argument(
        "--bias-types",
        type=_frame_types,
        default=DEFAULT_BIAS_TYPES,
        metavar="TYPE[,TYPE...]",
        help="frame types that mean a bias frame, compared without case, blanks or underscores "
        f"(default {','.join(DEFAULT_BIAS_TYPES)})",
    )
    frames.add_argument(
        "--set-point-keys",
        type=_optional_keys,
        default=DEFAULT_SET_POINT_KEYS,
        metavar="KEY[,KEY...]",
        help="header keywords for the thermal set point, deg C; when every frame has one, frames are "
        f"grouped by it (default {','.join(DEFAULT_SET_POINT_KEYS)}; {NO_KEYS}: group by the readings)",
    )
    frames.add_argument(
        "--max-exposure",
        type=_finite_float,
        default=0.1,
        metavar="S",
        help="longest exposure kept as a bias frame, seconds (default 0.1)",
    )
    frames.add_argument(
        "--max-zero-fraction",
        type=_finite_float,
        default=0.10,
        metavar="F",
        help="reject frames with more than this fraction of zero pixels, a readout dropout (default 0.10)",
    )
    frames.add_argument(
        "--temperature-limits",
        type=_finite_float,
        nargs=2,
        default=(-60.0, 80.0),
        metavar=("LOW", "HIGH"),
        help="reject frames whose temperature is outside LOW..HIGH deg C (default -60 80)",
    )
    frames.add_argument(
        "--input-bits",
        choices=("auto", "12", "16"),
        default="16",
        help="16: values are 12-bit x16 already (default); 12: raw 12-bit, multiplied by "
        "--scale-factor; auto: decide from the data (12 when most frames have values < 4096 "
        "that are not multiples of 16)",
    )
    frames.add_argument(
        "--scale-factor",
        type=_finite_float,
        default=16.0,
        metavar="F",
        help="12-bit to 16-bit factor (default 16)",
    )

    combine = parser.add_argument_group("grouping, combining and evaluation")
    combine.add_argument(
        "--temp-bin-width",
        type=_finite_float,
        default=0.1,
        metavar="C",
        help="width of the temperature bins, deg C (default 0.1)",
    )
    combine.add_argument(
        "--min-frames-per-group",
        type=int,
        default=3,
        metavar="N",
        help="groups with fewer frames are not combined (default 3)",
    )
    combine.add_argument(
        "--combine-method",
        choices=COMBINE_METHODS,
        default="sigma-clip",
        help="how a group becomes a master: sigma-clipped mean (default; the smallest error on "
        "simulated data with cosmic rays), median or mean",
    )
    combine.add_argument(
        "--clip-sigma",
        type=_finite_float,
        default=3.0,
        metavar="K",
        help="sigma-clip: drop values more than K robust standard deviations from the median (default 3)",
    )
    combine.add_argument(
        "--clip-iters", type=int, default=5, metavar="N", help="sigma-clip: at most N passes (default 5)"
    )
    combine.add_argument(
        "--outlier-sigma",
        type=_finite_float,
        default=6.0,
        metavar="K",
        help="a frame pixel further than K noise sigmas from its master is an outlier (default 6)",
    )
    combine.add_argument(
        "--outlier-fraction",
        type=_finite_float,
        default=0.05,
        metavar="F",
        help="reject a frame with more than this fraction of outlier pixels and remake its master (default 0.05)",
    )
    combine.add_argument(
        "--max-frame-offset",
        type=_finite_float,
        default=0.5,
        metavar="SIGMA",
        help="reject a frame whose mean level differs from the rest of its group by more than this many "
        "read-noise sigmas, and significantly, and remake its master (default 0.5; see the README)",
    )
    combine.add_argument(
        "--memory-limit",
        type=_finite_float,
        default=512.0,
        metavar="MIB",
        help="memory for the combine's pixel buffers, MiB (default 512)",
    )
    combine.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="worker threads for combining (default 0: as many as CPUs, at most 8); results do not depend on it",
    )
    combine.add_argument(
        "--degree",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: bias = a + b*T (default); 2: adds c*T^2, and the log says in how many pixels it is warranted",
    )
    combine.add_argument(
        "--fit-on",
        choices=("masters", "frames"),
        default="masters",
        help="fit the masters (default) or every frame at its own temperature in one streaming pass",
    )
    combine.add_argument(
        "--nonlinear-pvalue",
        type=_finite_float,
        default=1e-4,
        metavar="P",
        help="flag a pixel NONLINEAR when its fit chi-square is this improbable (default 1e-4)",
    )
    combine.add_argument(
        "--temperature-tolerance",
        type=_finite_float,
        default=0.5,
        metavar="C",
        help="flag frames whose header temperature differs from the one their bias shows by more "
        "than C deg C (default 0.5)",
    )
    combine.add_argument(
        "--evaluation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run step 5, the evaluation and plots; --no-evaluation skips it",
    )

    general = parser.add_argument_group("messages")
    general.add_argument("-v", "--verbose", action="store_true", help="show every file's decision")
    general.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    general.add_argument("--version", action="version", version=f"bias_pipeline {__version__}")
    return parser


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The :class:`PipelineConfig` for parsed command-line arguments."""
    return PipelineConfig(
        temperature_keys=args.temperature_keys,
        exposure_keys=args.exposure_keys,
        temperature_unit=args.temperature_unit,
        frame_type_keys=args.frame_type_keys,
        bias_types=args.bias_types,
        set_point_keys=args.set_point_keys,
        max_exposure=args.max_exposure,
        temp_bin_width=args.temp_bin_width,
        min_frames_per_group=args.min_frames_per_group,
        combine_method=args.combine_method,
        clip_sigma=args.clip_sigma,
        clip_iters=args.clip_iters,
        outlier_sigma=args.outlier_sigma,
        outlier_fraction=args.outlier_fraction,
        max_frame_offset=args.max_frame_offset,
        input_bits=args.input_bits,
        scale_factor=args.scale_factor,
        max_zero_fraction=args.max_zero_fraction,
        temperature_limits=tuple(args.temperature_limits),
        memory_limit_mb=args.memory_limit,
        threads=args.threads,
        degree=args.degree,
        fit_on=args.fit_on,
        nonlinear_pvalue=args.nonlinear_pvalue,
        temperature_tolerance=args.temperature_tolerance,
        evaluate=args.evaluation,
        show_progress=not args.quiet,
    )


class _ConsoleHandler(logging.StreamHandler):
    """stderr, written through tqdm so that a message does not tear a progress bar apart."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Send the package's log records to stderr at the level the flags ask for (a run also
    writes every record, debug included, to ``OUT_DIR/pipeline.log``), and let stdout show a
    file name that is not UTF-8 with escapes instead of failing on it."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("bias_pipeline")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers[:] = [handler]
    warnings_logger.setLevel(logging.DEBUG if verbose else logging.ERROR)
    warnings_logger.propagate = False


def _guarded(prog: str, body: Callable[[], int], interrupted: Callable[[KeyboardInterrupt], str] | None = None) -> int:
    """Run a command's ``body``: errors the user can cause become one line and their exit code,
    Ctrl-C and SIGTERM one line saying what was left (``interrupted(exc)``, or that nothing was
    half-written), a bug one line asking for a report."""
    previous = previous_int = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, raise_terminated)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored (nohup, `&`): left so
            previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C: KeyboardInterrupt
    try:
        return body()
    except BiasPipelineError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _stopped(prog, exc, interrupted)
    except Exception as exc:  # a bug: one line, the traceback only with -v
        interrupt = _interrupt_inside(exc)
        if interrupt is not None:  # Ctrl-C or SIGTERM that Python wrapped (in an import's __set_name__)
            return _stopped(prog, interrupt, interrupted)
        logger.debug("internal error", exc_info=True)
        sys.stderr.write(
            f"{prog}: internal error: {type(exc).__name__}: {exc} (rerun with -v for details and report it)\n"
        )
        return EXIT_INTERNAL
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


def _stopped(prog: str, exc: KeyboardInterrupt, interrupted: Callable[[KeyboardInterrupt], str] | None) -> int:
    """The one line of a command stopped by Ctrl-C or SIGTERM, and its exit code."""
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    left = interrupted(exc) if interrupted is not None else "no file was left half-written"
    sys.stderr.write(f"{prog}: {what}; {left}\n")
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def _interrupt_inside(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM an exception was raised from (its cause or context), if any."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _run_demo(out_dir: Path, config: PipelineConfig, hot_pixel_mask: Path | None, save_eval_fits: bool) -> int:
    from .main_pipeline import run_bias_pipeline
    from .simulate import SimulationSpec, simulate_dataset

    demo_dir = out_dir / "demo_data"
    spec = SimulationSpec(
        shape=(256, 320),
        temperatures=(-10.0, 0.0, 10.0, 20.0, 30.0),
        frames_per_temperature=16,
        seed=2026,
    )
    logger.info(
        "demo: simulating %d frames of %dx%d in %s",
        len(spec.temperatures) * spec.frames_per_temperature,
        *spec.shape,
        demo_dir,
    )
    truth = simulate_dataset(demo_dir, spec, faults=True)
    assert truth.raw_dir is not None and truth.truth_dir is not None
    mask = hot_pixel_mask or truth.truth_dir / "hot_pixel_mask.fits"
    result = run_bias_pipeline(
        truth.raw_dir, out_dir, mask, generate_set=True, eval_save_fits=save_eval_fits, config=config
    )
    _print_summary(result)
    good = ~result.model.flagged  # masked and flagged pixels are not part of the model's promise
    b_error = result.model.b_map[good] - truth.b_map[good]
    a_error = result.model.a_map[good] - truth.a_map[good]
    # What the noise allows: a master of n frames has sigma / sqrt(n) noise (sigma: read noise
    # and 12-bit quantisation; sqrt(pi/2) more for a median), and the slope that over sqrt(Sxx).
    temps = np.asarray(result.model.group_temperatures)
    sigma_frame = math.hypot(truth.read_noise_adu, config.scale_factor / math.sqrt(12))
    efficiency = math.sqrt(math.pi / 2) if config.combine_method == "median" else 1.0
    sigma_master = efficiency * sigma_frame / math.sqrt(spec.frames_per_temperature)
    sigma_b = sigma_master / math.sqrt(float(np.sum((temps - temps.mean()) ** 2)))
    print(
        "demo: against the simulator's truth, slope b is off by "
        f"{np.sqrt(np.mean(b_error**2)):.3f} ADU/deg C rms (the noise allows about {sigma_b:.3f}; "
        f"true pixel-to-pixel spread {truth.b_map[good].std():.3f}), intercept a by "
        f"{np.sqrt(np.mean(a_error**2)):.2f} ADU rms, over the {int(good.sum())} unflagged pixels"
    )
    return 0


def _print_summary(result: object) -> None:
    from .main_pipeline import PipelineResult

    assert isinstance(result, PipelineResult)
    out = result.output_dir
    low, high = result.model.temperature_range or (math.nan, math.nan)
    lines = [
        f"bias_pipeline {__version__}: {result.count('used')} frames used in {len(result.masters)} masters "
        f"({low:.2f}..{high:.2f} deg C), {result.count('rejected')} rejected, "
        f"{result.count('ignored')} ignored; input read as {result.input_bits}-bit",
        f"  manifest    {result.manifest_path}",
        f"  masters     {out / 'bias_grouped_by_temp'} ({len(result.masters)} files)",
        f"  model       {out / 'bias_model'} (bias_a_map.fits, bias_b_map.fits; "
        f"{int(result.model.mask.sum())} masked pixels)",
    ]
    if result.synthetic_paths:
        lines.append(f"  synthetic   {out / 'bias_masks_by_temp'} ({len(result.synthetic_paths)} files)")
    if result.summary:
        worst = max(result.summary, key=lambda r: float(r["mae_mean"]))  # type: ignore[arg-type]
        lines.append(
            f"  evaluation  {out / 'evaluation'} (worst mean MAE {float(worst['mae_mean']):.2f} ADU "  # type: ignore[arg-type]
            f"at {worst['label']} deg C)"
        )
    print("\n".join(lines))


#: Options that choose how one invocation behaves rather than what it computes: not in a --config file.
COMMAND_LINE_ONLY = ("help", "version", "config", "write_config", "verbose", "quiet", "demo")
#: Kinds of value a --config file gives for the run command's own argparse types.
_FILE_KINDS = {_finite_float: NUMBER, _keys: KEYWORDS, _optional_keys: KEYWORDS, _frame_types: KEYWORDS}


def parse_run_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> tuple[argparse.Namespace, dict[str, str]]:
    """The run command's arguments: the command line merged with its ``--config`` file.

    Flags on the command line win over the file, the file wins over the defaults (see
    :mod:`bias_pipeline.config_file`).

    Parameters
    ----------
    parser
        :func:`build_run_parser`'s parser (its defaults are changed to the file's values).
    argv
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    args : argparse.Namespace
        The merged arguments; :func:`config_from_args` makes the :class:`PipelineConfig`.
    from_file : dict
        ``{dest: key as written in the file}`` of the values the file supplied.

    Raises
    ------
    ConfigError
        For a bad ``--config`` file (naming it and the key) and a missing ``--output-dir``.
    """
    args = parser.parse_args(argv)
    from_file: dict[str, str] = {}
    if args.config is not None:
        args, from_file = merge_config_file(
            parser, argv, args.config, kinds=_FILE_KINDS, command_line_only=COMMAND_LINE_ONLY
        )
        if args.demo and from_file.pop("basepath", None):
            logger.info("--demo makes its own data: basepath of --config %s is not used", args.config)
            args.basepath = None
    if args.output_dir is None and not args.write_config:
        raise ConfigError(
            "--output-dir OUT_DIR is required: give it on the command line or as output-dir in a --config file"
        )
    return args, from_file


def run_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``run_pipeline.py`` and ``bias-pipeline``."""
    parser = build_run_parser(prog or Path(sys.argv[0]).name)
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    # tqdm's monitor thread only retunes refresh rates; without it the process stays
    # single-threaded between steps, so the plots can be drawn in forked processes.
    tqdm.monitor_interval = 0

    def body() -> int:
        nonlocal args
        args, from_file = parse_run_args(parser, argv)
        try:
            return run()
        except BiasPipelineError as exc:
            blame_file(exc, parser, from_file, args.config)
            raise

    def run() -> int:
        from .main_pipeline import run_bias_pipeline

        if args.verbose and args.quiet:
            raise ConfigError("-v and -q contradict each other; give one")
        config = config_from_args(args)
        if args.write_config:
            header = (
                f"bias_pipeline {__version__}: options of {parser.prog}, for {parser.prog} --config FILE.",
                "Flags on the command line win over these values; relative paths are relative to this file's folder.",
            )
            sys.stdout.write(format_config(parser, args, exclude=COMMAND_LINE_ONLY, header=header))
            return 0
        if args.demo:
            if args.basepath is not None:
                raise ConfigError("--demo makes its own data; leave out --basepath")
            return _run_demo(args.output_dir, config, args.hot_pixel_mask, args.save_eval_fits)
        if args.basepath is None:
            raise ConfigError("--basepath RAW_DIR is required (or --demo to try simulated data)")
        result = run_bias_pipeline(
            args.basepath,
            args.output_dir,
            args.hot_pixel_mask,
            generate_set=args.generate_set,
            eval_save_fits=args.save_eval_fits,
            config=config,
            command_line=[prog or Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        )
        _print_summary(result)
        return 0

    def interrupted(exc: KeyboardInterrupt) -> str:
        out = getattr(args, "output_dir", None)
        if out is None:
            return "nothing was written"
        if getattr(exc, "published_to", None):
            return f"the run had finished: its products in {out} are complete"
        return (
            f"nothing of this run was published: {out} holds the earlier run's products as they were "
            f"(this run's log: {Path(out) / STOPPED_DIR / LOG_NAME}); run it again to complete"
        )

    return _guarded(parser.prog, body, interrupted)


def build_generate_parser(prog: str = "generate_bias.py") -> argparse.ArgumentParser:
    """The argument parser of the one-frame generator."""
    parser = _Parser(
        prog=prog,
        description="Write one synthetic bias frame, the model at a temperature, float32 in 16-bit ADU.",
        epilog=GENERATE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models = parser.add_argument_group("the model (give --model, or --a-map with --b-map)")
    models.add_argument(
        "--model",
        type=Path,
        metavar="MODEL",
        help="bias_model.fits, its bias_model/ folder or a run's output folder: the whole model, any degree",
    )
    models.add_argument("--a-map", type=Path, metavar="A.fits", help="intercept map (bias_model/bias_a_map.fits)")
    models.add_argument(
        "--b-map", type=Path, metavar="B.fits", help="slope map (default: bias_b_map.fits beside --a-map)"
    )
    parser.add_argument(
        "--temperature", type=_finite_float, required=True, metavar="T", help="sensor temperature in deg C"
    )
    parser.add_argument(
        "--output",
        type=str,  # not Path: it would drop the trailing "/" that marks a folder still to be made
        required=True,
        metavar="PATH",
        help="a folder (gets synthetic_bias_T.TC.fits) or a file name; missing folders are created; an input "
        "of the command, or a file that is not a synthetic frame, is never overwritten",
    )
    parser.add_argument(
        "--noise",
        action="store_true",
        help="add the sensor's read noise and 12-bit quantisation: a raw-like frame instead of the mean",
    )
    parser.add_argument("--seed", type=_seed, metavar="N", help="seed of --noise (0 or more), for a reproducible frame")
    parser.add_argument(
        "--noise-map",
        type=Path,
        metavar="MODEL.fits",
        help="bias_model.fits (or a FITS read-noise image) for --noise; default: the model's own, or bias_model.fits "
        "beside --a-map",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="more messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors and warnings")
    parser.add_argument("--version", action="version", version=f"bias_pipeline {__version__}")
    return parser


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more")
    return value


def generate_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``generate_bias.py`` and ``generate-bias``."""
    parser = build_generate_parser(prog or Path(sys.argv[0]).name)
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)

    def body() -> int:
        from .model import MODEL_FILE_NAME, BiasModel, load_read_noise
        from .steps.step4_generate_synthetic_bias import write_synthetic

        if args.model is not None and (args.a_map is not None or args.b_map is not None):
            raise ConfigError("--model is the whole model: leave out --a-map and --b-map")
        if args.model is None and args.a_map is None:
            raise ConfigError("give the model: --model bias_model/bias_model.fits (or --a-map A.fits --b-map B.fits)")
        if args.model is not None:
            _check_is_model(args.model)
            model = BiasModel.load(args.model)
            inputs = {"--model": args.model}
        else:
            model = BiasModel.load(args.a_map, args.b_map)
            inputs = {"--a-map": args.a_map, "--b-map": args.b_map or args.a_map.with_name("bias_b_map.fits")}
        if args.noise:
            if args.noise_map is not None or model.read_noise is None:
                beside = args.model if args.model is not None and args.model.is_file() else args.a_map
                noise_map = args.noise_map or (beside.with_name(MODEL_FILE_NAME) if beside is not None else None)
                if noise_map is None:
                    raise ConfigError("--noise needs a read-noise map: give --noise-map bias_model/bias_model.fits")
                model.read_noise = load_read_noise(noise_map, model.shape)
                inputs["--noise-map"] = noise_map
        elif args.seed is not None or args.noise_map is not None:
            raise ConfigError("--seed and --noise-map only apply with --noise")
        output = _synthetic_output(args.output, args.temperature, inputs)
        path, frame = write_synthetic(model, args.temperature, output, noise=args.noise, noise_seed=args.seed)
        good = np.isfinite(frame)
        rows, columns = frame.shape
        print(
            textwrap.dedent(
                f"""\
                wrote {path}: synthetic bias at {args.temperature:g} deg C ({model.law}), {rows}x{columns}
                  mean {float(frame[good].mean()):.3f} ADU, std {float(frame[good].std()):.3f} ADU"""
            )
            + (f" ({int((~good).sum())} masked pixels, NaN, left out)" if not good.all() else "")
        )
        return 0

    return _guarded(parser.prog, body, lambda exc: "no file was written (a frame is written whole or not at all)")


def _check_is_model(path: Path) -> None:
    """Refuse a ``--model`` file that is no model of this package (a raw frame, a master) before
    it is read as an a-map looking for its b-map."""
    from astropy.io import fits

    from .errors import InputDataError

    if not path.is_file():
        return  # a folder, or missing: BiasModel.load says which
    try:
        kind = fits.getheader(path).get("PRODTYPE")
    except Exception:
        kind = None
    if kind not in ("BIAS_MODEL", "BIAS_A"):
        what = f"a {kind} product" if kind else "not a product of this package (no PRODTYPE)"
        raise InputDataError(
            f"--model {path} is {what}; give bias_model.fits, its bias_model/ folder or a run's output folder"
        )


def _synthetic_output(text: str, temperature: float, inputs: dict[str, Path]) -> Path:
    """The file ``--output`` names (in a folder: ``synthetic_bias_T.TC.fits``), its folder made.

    Raises
    ------
    OutputError
        When the path is one of the command's inputs, an existing file that is not a synthetic
        frame, or a folder cannot be made there (a file in the way).
    """
    from .errors import OutputError
    from .steps.step1_load_data import not_regular
    from .steps.step4_generate_synthetic_bias import synthetic_name

    if not text.strip() or text == "-":
        raise OutputError(
            f"--output {text!r}: give a file or folder name (the frame is not written to standard output)"
        )
    output = Path(text)
    if output.is_dir() or text.endswith(("/", "\\")):
        output = output / synthetic_name(temperature)
    for parent in reversed(output.parents):
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"--output {text}: {parent} is a file, not a folder; give a folder or a file name")
    for option, source in inputs.items():
        if output.exists() and Path(source).exists() and os.path.samefile(output, source):
            raise OutputError(f"--output {output} is the command's own input ({option}); give another name")
    if output.exists() and not_regular(output):
        raise OutputError(f"--output {output} is {not_regular(output)}, not a file; give a file or folder name")
    if output.exists():
        earlier = _synthetic_temperature(output)
        if earlier is None:
            raise OutputError(f"--output {output} exists and is not a synthetic frame; give another name or remove it")
        if round(earlier, 6) != round(temperature, 6):
            logger.warning(
                "%s held the frame at %g deg C; it is replaced by the frame at %g", output, earlier, temperature
            )
        else:
            logger.info("replacing %s (the frame at the same temperature)", output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--output: cannot create {output.parent}: {exc.strerror or exc}") from None
    return output


def _synthetic_temperature(path: Path) -> float | None:
    """The temperature of an existing synthetic frame of this package, or ``None`` when ``path`` is not one."""
    from astropy.io import fits

    try:
        header = fits.getheader(path)
    except Exception:
        return None
    if header.get("PRODTYPE") != "SYNTHETIC_BIAS":
        return None
    try:
        return float(header["TEMPERATURE"])
    except (KeyError, TypeError, ValueError):
        return math.nan

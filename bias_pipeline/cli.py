"""Command-line interfaces: ``run_pipeline.py`` / ``bias-pipeline`` and ``generate_bias.py`` /
``generate-bias``.

The CLI is the only place that configures logging and prints; every error the user can cause
becomes one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
from tqdm import tqdm

from ._version import __version__
from .command import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    ConsoleHandler,
    OneLineParser,
    add_message_options,
    add_schema_option,
    finite_float,
    guarded,
    setup_logging,
)
from .config import (
    GROUP_IO,
    GROUPS,
    PipelineConfig,
    option_defaults,
    options,
)
from .config_file import blame_file, format_config, load_config_file
from .errors import BiasPipelineError, ConfigError
from .registry import (
    A_MAP_NAME,
    B_MAP_NAME,
    DEMO_DIR,
    EVALUATION_DIR,
    LOG_NAME,
    MASTERS_DIR,
    MODEL_DIR,
    MODEL_FILE_NAME,
    STOPPED_DIR,
    SYNTHETIC,
    SYNTHETIC_DIR,
    labelled_name,
)

__all__ = [
    "COMMAND_LINE_ONLY",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "ConsoleHandler",
    "OneLineParser",
    "build_generate_parser",
    "build_run_parser",
    "config_from_args",
    "finite_float",
    "generate_main",
    "guarded",
    "merge_run_args",
    "parse_run_args",
    "run_main",
    "setup_logging",
]

logger = logging.getLogger("bias_pipeline.cli")

RUN_EXAMPLE = """\
examples:
  {cmd} --demo --output-dir demo_out/
  {cmd} --basepath /data/photsat/tvac_bias/ --output-dir results/ \\
      --hot-pixel-mask hot_pixels.fits --generate-set --save-eval-fits
  {cmd} --config results/run_config.json --output-dir rerun/ -q

  The first tries the pipeline on simulated data. The second scans /data/photsat/tvac_bias/
  recursively, keeps frames of at most 0.1 s, groups them in 0.1 deg C bins, writes masters,
  the a/b model, synthetic frames and the evaluation under results/; results/frames_manifest.csv
  says what happened to every file. The third repeats that run into rerun/, silently (-q).
"""

GENERATE_EXAMPLE = """\
examples:
  {cmd} --model results/bias_model/bias_model.fits --temperature 12.0 --output synthetic/
  {cmd} --a-map results/bias_model/bias_a_map.fits \\
      --b-map results/bias_model/bias_b_map.fits --temperature 12.0 --output synthetic/
  {cmd} --model results/ --temperature -5 --output raw_like.fits --noise --seed 1

  The first two write synthetic/synthetic_bias_12.0C.fits and print its mean and standard deviation.
  --model takes the whole model (any degree); a degree-2 run's a-map is read with its bias_model.fits.
  The third adds the sensor's read noise and 12-bit quantisation: a raw-like frame.
"""


def _typed(prog: str) -> str:
    """What a user types to run the command ``prog`` (``python run_pipeline.py`` for a script)."""
    return f"python {prog}" if prog.endswith(".py") else prog


#: Options that choose how one invocation behaves rather than what it computes: declared here
#: once, not in the schema, and refused in a --config file. ``{key: (flags, argparse keywords)}``.
COMMAND_LINE_ONLY: dict[str, tuple[tuple[str, ...], dict[str, object]]] = {
    "config": (
        ("--config",),
        {
            "type": Path,
            "metavar": "FILE",
            "help": "take options from a TOML file: keys are the long options without the dashes "
            '(basepath = "raw/", temperature-limits = [-60, 80], generate-set = true); relative paths '
            "in it are relative to the file's folder; flags on the command line win over the file. A "
            "finished run's OUT_DIR/run_config.json is accepted too, to repeat that run. -v, -q, --demo "
            "are command-line only",
        },
    ),
    "write-config": (
        ("--write-config",),
        {
            "action": "store_true",
            "help": "print the options in effect (defaults, --config file, flags) as TOML and exit without running",
        },
    ),
    "demo": (
        ("--demo",),
        {"action": "store_true", "help": f"simulate a small PhotSat data set in OUT_DIR/{DEMO_DIR} and run on it"},
    ),
    "verbose": (("-v", "--verbose"), {"action": "store_true", "help": "show every file's decision"}),
    "quiet": (
        ("-q", "--quiet"),
        {
            "action": "store_true",
            "help": "nothing on stdout (no summary); on stderr only warnings and errors, no progress bars",
        },
    ),
}
#: Their groups in --help (the schema's groups come between the first and the last).
_COMMAND_LINE_GROUPS = {
    "configuration file": ("config", "write-config"),
    GROUP_IO: ("demo",),
    "messages": ("verbose", "quiet"),
}


def build_run_parser(prog: str = "run_pipeline.py") -> argparse.ArgumentParser:
    """The argument parser of the pipeline command, made from the option schema.

    Every schema option's default is :data:`argparse.SUPPRESS`: the parsed namespace holds
    exactly the options given on the command line, which :func:`merge_run_args` lays over the
    ``--config`` file and the defaults.
    """
    parser = OneLineParser(
        prog=prog,
        description=(
            "Model the temperature dependence of a CMOS camera's bias: scan raw FITS bias "
            "frames, combine them into masters per temperature, fit bias = a + b*T per pixel, "
            "write synthetic frames and evaluate the model. Products are float32 in 16-bit ADU."
        ),
        epilog=RUN_EXAMPLE.format(cmd=_typed(prog)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    titles = ["configuration file", *GROUPS, "messages"]
    groups = {title: parser.add_argument_group(title) for title in titles}
    for name, opt in options().items():
        add_schema_option(groups[opt.group], name)
    for title, keys in _COMMAND_LINE_GROUPS.items():
        for key in keys:
            flags, kwargs = COMMAND_LINE_ONLY[key]
            groups[title].add_argument(*flags, **kwargs)  # type: ignore[arg-type]
    groups["messages"].add_argument("--version", action="version", version=f"bias_pipeline {__version__}")
    return parser


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The :class:`PipelineConfig` for merged command-line arguments (:func:`parse_run_args`)."""
    return PipelineConfig(**{name: getattr(args, name) for name in options()}, show_progress=not args.quiet)


# The demo's sensor has a CMOS camera's structure: row noise 0.3 x the 2 DN read noise, and one
# pixel in a thousand a random-telegraph pixel whose levels are 3 x the read noise apart.
DEMO_ROW_NOISE_DN = 0.6
DEMO_TELEGRAPH_FRACTION = 0.001
DEMO_TELEGRAPH_AMPLITUDE_DN = 6.0
DEMO_TELEGRAPH_RATE = 0.3


def _run_demo(config: PipelineConfig, quiet: bool = False) -> int:
    """``--demo``: simulate a data set in ``OUT_DIR/demo_data``, run on it, compare with its truth
    (the summary and the comparison on stdout unless ``quiet``)."""
    from .main_pipeline import run_bias_pipeline
    from .simulate import SimulationSpec, simulate_dataset

    assert config.output_dir is not None
    out_dir = config.output_dir
    demo_dir = out_dir / DEMO_DIR
    spec = SimulationSpec(
        shape=(256, 320),
        temperatures=(-10.0, 0.0, 10.0, 20.0, 30.0),
        frames_per_temperature=16,
        seed=2026,
        row_noise_dn=DEMO_ROW_NOISE_DN,
        telegraph_fraction=DEMO_TELEGRAPH_FRACTION,
        telegraph_amplitude_dn=DEMO_TELEGRAPH_AMPLITUDE_DN,
        telegraph_rate=DEMO_TELEGRAPH_RATE,
    )
    logger.info(
        "demo: simulating %d frames of %dx%d in %s",
        len(spec.temperatures) * spec.frames_per_temperature,
        *spec.shape,
        demo_dir,
    )
    truth = simulate_dataset(demo_dir, spec, faults=True)
    assert truth.raw_dir is not None and truth.truth_dir is not None
    mask = config.hot_pixel_mask or truth.truth_dir / "hot_pixel_mask.fits"
    result = run_bias_pipeline(
        truth.raw_dir, out_dir, mask, generate_set=True, eval_save_fits=config.save_eval_fits, config=config
    )
    if quiet:
        return 0
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
        f"  masters     {out / MASTERS_DIR} ({len(result.masters)} files)",
        f"  model       {out / MODEL_DIR} ({A_MAP_NAME}, {B_MAP_NAME}; {int(result.model.mask.sum())} masked pixels)",
    ]
    if result.synthetic_paths:
        lines.append(f"  synthetic   {out / SYNTHETIC_DIR} ({len(result.synthetic_paths)} files)")
    if result.summary:
        worst = max(result.summary, key=lambda r: cast(float, r["mae_mean"]))
        lines.append(
            f"  evaluation  {out / EVALUATION_DIR} (worst mean MAE {cast(float, worst['mae_mean']):.2f} ADU "
            f"at {worst['label']} deg C)"
        )
    print("\n".join(lines))


def merge_run_args(args: argparse.Namespace) -> dict[str, str]:
    """Lay the given flags over the ``--config`` file's values over the defaults, in ``args``.

    Parameters
    ----------
    args
        :func:`build_run_parser`'s parse of the command line (holding only the options given);
        every option of the schema is set in it on return.

    Returns
    -------
    dict
        ``{field name: key as written in the file}`` of the values the file supplied.

    Raises
    ------
    ConfigError
        For a bad ``--config`` file (naming it and the key) and a missing ``--output-dir``.
    """
    given = {name: getattr(args, name) for name in options() if hasattr(args, name)}
    file_values: dict[str, object] = {}
    keys: dict[str, str] = {}
    if args.config is not None:
        flags = {key: flags for key, (flags, _) in COMMAND_LINE_ONLY.items()}
        flags |= {"help": ("-h", "--help"), "version": ("--version",)}
        file_values, keys = load_config_file(args.config, command_line_only=flags)
        if args.demo and "basepath" in file_values and "basepath" not in given:
            logger.info("--demo makes its own data: basepath of --config %s is not used", args.config)
            del file_values["basepath"], keys["basepath"]
    merged = {**option_defaults(), **file_values, **given}
    for name, value in merged.items():
        setattr(args, name, value)
    if args.output_dir is None and not args.write_config:
        raise ConfigError(
            "--output-dir OUT_DIR is required: give it on the command line or as output-dir in a --config file"
        )
    return {name: key for name, key in keys.items() if name not in given}


def parse_run_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> tuple[argparse.Namespace, dict[str, str]]:
    """The run command's arguments: the command line merged with its ``--config`` file.

    Flags on the command line win over the file, the file wins over the defaults (see
    :mod:`bias_pipeline.config_file`). The command line is parsed once.

    Parameters
    ----------
    parser
        :func:`build_run_parser`'s parser.
    argv
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    args : argparse.Namespace
        Every option by its field name, and the command-line-only ones;
        :func:`config_from_args` makes the :class:`PipelineConfig`.
    from_file : dict
        ``{field name: key as written in the file}`` of the values the file supplied.

    Raises
    ------
    ConfigError
        For a bad ``--config`` file (naming it and the key) and a missing ``--output-dir``.
    """
    args = parser.parse_args(argv)
    return args, merge_run_args(args)


def run_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``run_pipeline.py`` and ``bias-pipeline``."""
    parser = build_run_parser(prog or Path(sys.argv[0]).name)
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    # tqdm's monitor thread only retunes refresh rates; without it the process stays
    # single-threaded between steps, so the plots can be drawn in forked processes.
    tqdm.monitor_interval = 0
    from_file: dict[str, str] = {}

    def body() -> int:
        nonlocal from_file
        from_file = merge_run_args(args)
        try:
            return run()
        except BiasPipelineError as exc:
            blame_file(exc, from_file, args.config)
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
            sys.stdout.write(format_config(config, header=header))
            return 0
        if args.demo:
            if config.basepath is not None:
                raise ConfigError("--demo makes its own data; leave out --basepath")
            return _run_demo(config, quiet=args.quiet)
        if config.basepath is None:
            raise ConfigError("--basepath RAW_DIR is required (or --demo to try simulated data)")
        result = run_bias_pipeline(
            config.basepath,
            config.output_dir,  # type: ignore[arg-type]  # checked by merge_run_args
            config.hot_pixel_mask,
            generate_set=config.generate_set,
            eval_save_fits=config.save_eval_fits,
            config=config,
            command_line=[prog or Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        )
        if not args.quiet:  # -q: nothing on stdout; the products and pipeline.log say it all
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

    return guarded(parser.prog, body, interrupted)


def build_generate_parser(prog: str = "generate_bias.py") -> argparse.ArgumentParser:
    """The argument parser of the one-frame generator."""
    parser = OneLineParser(
        prog=prog,
        description="Write one synthetic bias frame, the model at a temperature, float32 in 16-bit ADU.",
        epilog=GENERATE_EXAMPLE.format(cmd=_typed(prog)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models = parser.add_argument_group("the model (give --model, or --a-map with --b-map)")
    models.add_argument(
        "--model",
        type=Path,
        metavar="MODEL",
        help=f"{MODEL_FILE_NAME}, its {MODEL_DIR}/ folder or a run's output folder: the whole model, any degree",
    )
    models.add_argument("--a-map", type=Path, metavar="A.fits", help=f"intercept map ({MODEL_DIR}/{A_MAP_NAME})")
    models.add_argument(
        "--b-map", type=Path, metavar="B.fits", help=f"slope map (default: {B_MAP_NAME} beside --a-map)"
    )
    parser.add_argument(
        "--temperature", type=finite_float, required=True, metavar="T", help="sensor temperature in deg C"
    )
    parser.add_argument(
        "--output",
        type=str,  # not Path: it would drop the trailing "/" that marks a folder still to be made
        required=True,
        metavar="PATH",
        help=f"a folder (gets {labelled_name(SYNTHETIC, 'T.T')}) or a file name; missing folders are created; an input "
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
        help=f"{MODEL_FILE_NAME} (or a FITS read-noise image) for --noise; default: the model's own, or "
        f"{MODEL_FILE_NAME} beside --a-map",
    )
    add_message_options(
        parser, quiet="nothing on stdout (not the 'wrote ...' lines); on stderr only warnings and errors"
    )
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
        from .model import BiasModel, load_read_noise
        from .steps.step4_generate_synthetic_bias import write_synthetic

        if args.model is not None and (args.a_map is not None or args.b_map is not None):
            raise ConfigError("--model is the whole model: leave out --a-map and --b-map")
        if args.model is None and args.a_map is None:
            raise ConfigError(
                f"give the model: --model {MODEL_DIR}/{MODEL_FILE_NAME} (or --a-map A.fits --b-map B.fits)"
            )
        if args.model is not None:
            _check_is_model(args.model)
            model = BiasModel.load(args.model)
            inputs = {"--model": args.model}
        else:
            model = BiasModel.load(args.a_map, args.b_map)
            inputs = {"--a-map": args.a_map, "--b-map": args.b_map or args.a_map.with_name(B_MAP_NAME)}
        if args.noise:
            if args.noise_map is not None or model.read_noise is None:
                beside = args.model if args.model is not None and args.model.is_file() else args.a_map
                noise_map = args.noise_map or (beside.with_name(MODEL_FILE_NAME) if beside is not None else None)
                if noise_map is None:
                    raise ConfigError(f"--noise needs a read-noise map: give --noise-map {MODEL_DIR}/{MODEL_FILE_NAME}")
                model = dataclasses.replace(model, read_noise=load_read_noise(noise_map, model.shape))
                inputs["--noise-map"] = noise_map
        elif args.seed is not None or args.noise_map is not None:
            raise ConfigError("--seed and --noise-map only apply with --noise")
        output = _synthetic_output(args.output, args.temperature, inputs)
        path, frame = write_synthetic(model, args.temperature, output, noise=args.noise, noise_seed=args.seed)
        if args.quiet:
            return 0
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

    return guarded(parser.prog, body, lambda exc: "no file was written (a frame is written whole or not at all)")


def _check_is_model(path: Path) -> None:
    """Refuse a ``--model`` file that is no model of this package (a raw frame, a master) before
    it is read as an a-map looking for its b-map."""
    from .errors import InputDataError
    from .model import read_model_header

    if not path.is_file():
        return  # a folder, or missing: BiasModel.load says which
    try:
        kind = read_model_header(path)[0].get("PRODTYPE")
    except Exception:
        kind = None
    if kind not in ("BIAS_MODEL", "BIAS_A"):
        what = f"a {kind} product" if kind else "not a product of this package (no PRODTYPE)"
        raise InputDataError(
            f"--model {path} is {what}; give {MODEL_FILE_NAME}, its {MODEL_DIR}/ folder or a run's output folder"
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

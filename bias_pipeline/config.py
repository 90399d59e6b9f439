"""Every option of the pipeline, its default, help, kind and validation: one schema, one dataclass.

Adding an option is one field here (see :func:`option`) plus its row in the README's options table.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .cluster import check_scheduler
from .combine import COMBINE_METHODS
from .dates import DEFAULT_DATE_KEYS, format_date, parse_date
from .epochs import DEFAULT_DATE_GAP_DAYS
from .errors import ConfigError
from .frames import normal_frame_type
from .row_noise import ROW_CORRECTION_MODES
from .units import DEFAULT_SCALE_FACTOR

#: Header keywords looked up, in this order, for the sensor temperature [deg C].
DEFAULT_TEMPERATURE_KEYS: tuple[str, ...] = (
    "TEMPERATURE",
    "TEMP",
    "TEMPERAT",
    "CCD-TEMP",
    "CCDTEMP",
    "DET-TEMP",
    "DETTEMP",
)
#: Header keywords looked up, in this order, for the exposure time [s].
DEFAULT_EXPOSURE_KEYS: tuple[str, ...] = ("EXPOSURE", "EXPTIME", "EXPOSURE_TIME", "ITIME")
#: Header keywords looked up, in this order, for the frame type (a frame without one is used).
DEFAULT_FRAME_TYPE_KEYS: tuple[str, ...] = ("IMAGETYP", "OBSTYPE", "FRAME")
#: Frame types that mean a bias frame (compared without case, blanks, dashes or underscores;
#: ``Bias Frame`` is what MaxIm DL and SBIG cameras write).
DEFAULT_BIAS_TYPES: tuple[str, ...] = ("BIAS", "ZERO", "BIAS FRAME", "ZERO FRAME", "OFFSET")
#: Header keywords looked up, in this order, for the thermal set point [deg C].
DEFAULT_SET_POINT_KEYS: tuple[str, ...] = ("SET-TEMP", "SETTEMP", "TEMPSET", "CCD-SET")
#: Keyword lists that may be switched off by this value.
NO_KEYS = "none"
TEMPERATURE_UNITS: tuple[str, ...] = ("C", "K")
KELVIN_OFFSET = 273.15
#: Largest scale factor: 4095 x this must stay within what float32 products hold exactly.
MAX_SCALE_FACTOR = 65536.0
#: Smallest memory limit [MiB]: the combine needs a row of every frame, and more is no burden.
MIN_MEMORY_LIMIT_MB = 1.0
#: Most worker threads: more than the CPUs of any machine this runs on gains nothing.
MAX_THREADS = 256

INPUT_BITS_CHOICES: tuple[str, ...] = ("auto", "12", "16")

# Kinds of value an option takes: how argparse reads it, what a --config file must give, how
# --write-config and run_config.json write it.
NUMBER = "number"
INTEGER = "integer"
KEYWORDS = "keywords"
PATH = "path"
SWITCH = "switch"
CHOICE = "choice"
#: A date: ISO text (``2026-03-01``, ``2026-03-01T12:00:00``) or an MJD number, held as a UTC
#: datetime (:func:`bias_pipeline.dates.parse_date`); in a TOML file also a TOML date or datetime.
DATE = "date"
#: Free text (a scheduler address): a string, checked by the option's own ``check``.
TEXT = "text"
KINDS = (NUMBER, INTEGER, KEYWORDS, PATH, SWITCH, CHOICE, DATE, TEXT)

#: Group titles, in the order of ``--help`` and ``--write-config``.
GROUP_IO = "input and output"
GROUP_FRAMES = "frame selection"
GROUP_COMBINE = "grouping, combining and evaluation"
GROUP_DATES = "dates and validity"
GROUPS = (GROUP_IO, GROUP_FRAMES, GROUP_COMBINE, GROUP_DATES)

#: Earlier names of options -> their name now. They keep working as keyword arguments of
#: :class:`PipelineConfig` (with a DeprecationWarning), as attributes, and as keys of an
#: older ``run_config.json`` read with ``--config``.
DEPRECATED_NAMES: dict[str, str] = {"memory_limit_mb": "memory_limit", "evaluate": "evaluation"}
#: Values an older ``run_config.json`` recorded that are not options (how the terminal looked).
RECORDED_NOT_OPTIONS: frozenset[str] = frozenset({"show_progress"})


def parse_keywords(text: str) -> tuple[str, ...]:
    """Header keywords from ``"K1,K2"``, upper case; at least one.

    Raises
    ------
    ValueError
        When no keyword is given.
    """
    keys = tuple(k.strip().upper() for k in str(text).split(",") if k.strip())
    if not keys:
        raise ValueError("give at least one keyword, e.g. TEMPERATURE,TEMP")
    return keys


def parse_optional_keywords(text: str) -> tuple[str, ...]:
    """Header keywords from ``"K1,K2"``, or ``none`` (or nothing) to switch the look-up off."""
    keys = tuple(k.strip().upper() for k in str(text).split(",") if k.strip())
    return () if keys in ((), (NO_KEYS.upper(),)) else keys


def parse_frame_types(text: str) -> tuple[str, ...]:
    """Frame types from ``"T1,T2"``, compared without case, blanks, dashes or underscores.

    Raises
    ------
    ValueError
        When no type is given.
    """
    types = tuple(normal_frame_type(t) for t in str(text).split(",") if t.strip())
    if not types:
        raise ValueError("give at least one frame type, e.g. BIAS,ZERO")
    return types


@dataclass(frozen=True)
class Option:
    """How one field of :class:`PipelineConfig` is an option of the run command.

    Attributes
    ----------
    flag
        The long command-line flag (``--max-exposure``); the field's name is the flag without
        the dashes, ``-`` as ``_``, and so is its key in a ``--config`` file and in
        ``run_config.json``.
    help
        What the option does; ``--help`` adds ``(default X)`` made from the field's default.
    kind
        One of :data:`KINDS`.
    group
        Title of its group in ``--help`` and ``--write-config``.
    metavar
        The value's placeholder in ``--help`` (a tuple for several values).
    choices
        The values accepted, if a closed set.
    nargs
        Number of values (``None``: one).
    parse
        For ``keywords``: text -> value (raises ``ValueError`` with what to give).
    check
        ``check(value, flag)`` raises :class:`~bias_pipeline.errors.ConfigError` for a bad
        value; called by :meth:`PipelineConfig.validate`.
    """

    flag: str
    help: str
    kind: str
    group: str
    metavar: str | tuple[str, ...] | None = None
    choices: tuple[object, ...] | None = None
    nargs: int | None = None
    parse: Callable[[str], object] | None = None
    check: Callable[[object, str], None] | None = None

    @property
    def key(self) -> str:
        """The option's key in a ``--config`` file: the flag without its dashes."""
        return self.flag[2:]

    def shown_default(self, default: object) -> str | None:
        """``default`` as ``--help`` and the README show it (``None``: no default to show)."""
        if default is None:
            return None
        if self.kind == SWITCH:
            return "on" if default else "off"
        if isinstance(default, tuple):
            return ("," if self.kind == KEYWORDS else " ").join(_shown_value(v) for v in default)
        return _shown_value(default)


def _shown_value(value: object) -> str:
    if isinstance(value, _dt.datetime):
        return format_date(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def option(default: object, flag: str, help: str, kind: str, group: str, **extra: object) -> Any:
    """A dataclass field of :class:`PipelineConfig` that is an option (see :class:`Option`)."""
    return field(default=default, metadata={"option": Option(flag, help, kind, group, **extra)})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ checks
def _of_kind(value: object, opt: Option) -> None:
    """Refuse a value of the wrong type (a caller's ``memory_limit="512"`` or
    ``evaluation="false"``, which Python would take as true) before the option's own check."""
    if opt.kind == SWITCH and not isinstance(value, bool):
        raise ConfigError(f"{opt.flag} is a switch: give True or False, got {value!r}")
    if opt.kind == INTEGER and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise ConfigError(f"{opt.flag} must be a whole number, got {value!r}")
    if opt.kind == NUMBER:
        for item in value if opt.nargs and isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, bool) or not isinstance(item, numbers.Real):
                raise ConfigError(f"{opt.flag} must be a number, got {value!r}")
    if opt.kind == DATE and value is not None and not isinstance(value, _dt.datetime):
        raise ConfigError(f"{opt.flag} must be a date, got {value!r}")


def _positive(value: object, option: str, *, allow_zero: bool = False) -> None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{option} must be a number, got {value!r}") from exc
    if math.isnan(number) or math.isinf(number) or number < 0 or (number == 0 and not allow_zero):
        kind = "zero or more" if allow_zero else "greater than zero"
        raise ConfigError(f"{option} must be a finite number {kind}, got {value!r}")


def _zero_or_more(value: object, flag: str) -> None:
    _positive(value, flag, allow_zero=True)


def _scale_factor(value: object, flag: str) -> None:
    _positive(value, flag)
    if float(value) > MAX_SCALE_FACTOR:  # type: ignore[arg-type]
        raise ConfigError(f"{flag} must lie in (0, {MAX_SCALE_FACTOR:g}] (12-bit to 16-bit is 16), got {value!r}")


def _memory_limit(value: object, flag: str) -> None:
    _positive(value, flag)
    if float(value) < MIN_MEMORY_LIMIT_MB:  # type: ignore[arg-type]
        raise ConfigError(
            f"{flag} must be at least {MIN_MEMORY_LIMIT_MB:g} MiB (the combine needs a row of every frame), "
            f"got {value!r}"
        )


def _threads(value: object, flag: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_THREADS:
        raise ConfigError(f"{flag} must be a whole number from 0 (as many as CPUs) to {MAX_THREADS}, got {value!r}")


def _at_least_one(value: object, flag: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{flag} must be a whole number >= 1, got {value!r}")


def _fraction(value: object, flag: str) -> None:
    if not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(f"{flag} must lie in (0, 1], got {value!r}")


def _zero_fraction(value: object, flag: str) -> None:
    if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{flag} must lie between 0 and 1, got {value!r}")


def _probability(value: object, flag: str) -> None:
    if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ConfigError(f"{flag} must lie in (0, 1), got {value!r}")


def _limits(value: object, flag: str) -> None:
    if not isinstance(value, tuple) or len(value) != 2 or not (value[0] < value[1]):
        raise ConfigError(f"{flag} needs two numbers LOW HIGH with LOW < HIGH, got {value!r}")


def _one_of(value: object, flag: str, choices: tuple[object, ...]) -> None:
    if value not in choices:
        names = ", ".join(str(c) for c in choices)
        if len(choices) == 2:
            names = " or ".join(str(c) for c in choices)
        raise ConfigError(f"{flag} must be {'one of ' if len(choices) > 2 else ''}{names}, got {value!r}")


# Conversions applied on construction, so that a caller may give "K1,K2", a list or a str path.
def _keys(value: object, option: str, *, optional: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    try:
        keys = tuple(str(k).strip().upper() for k in value)  # type: ignore[union-attr]
    except TypeError as exc:
        raise ConfigError(f"{option} must be a comma-separated list of keywords") from exc
    keys = tuple(k for k in keys if k)
    if optional and keys in ((), (NO_KEYS.upper(),)):
        return ()
    if not keys or NO_KEYS.upper() in keys:
        raise ConfigError(
            f"{option} needs at least one header keyword" + (f" (or {NO_KEYS} to switch it off)" if optional else "")
        )
    return keys


def _bias_types(value: object, option: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    try:
        types = tuple(normal_frame_type(str(v)) for v in value)  # type: ignore[union-attr]
    except TypeError as exc:
        raise ConfigError(f"{option} must be a comma-separated list of frame types") from exc
    types = tuple(t for t in types if t)
    if not types:
        raise ConfigError(f"{option} needs at least one frame type (e.g. BIAS,ZERO)")
    return types


def _path(value: object, flag: str) -> Path | None:
    if value is None:
        return None
    try:
        return Path(value)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"{flag} must be a path, got {value!r}") from exc


def _required_keys(value: object, flag: str) -> tuple[str, ...]:
    return _keys(value, flag)


def _optional_keys(value: object, flag: str) -> tuple[str, ...]:
    return _keys(value, flag, optional=True)


def _date(value: object, flag: str) -> _dt.datetime | None:
    """A date option's value as a UTC datetime: ISO text, an MJD number, a datetime or a date."""
    if value is None:
        return None
    if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):  # a TOML date
        value = _dt.datetime(value.year, value.month, value.day, tzinfo=_dt.timezone.utc)
    try:
        return parse_date(value)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}; give a date such as 2026-03-01 or 2026-03-01T12:00:00 (UTC)") from None


def _upper(value: object, flag: str) -> str:
    return str(value).upper()


def _text(value: object, flag: str) -> str:
    return str(value)


def _pair(value: object, flag: str) -> tuple[float, ...]:
    try:
        return tuple(value)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"{flag} needs two numbers LOW HIGH with LOW < HIGH, got {value!r}") from exc


# Conversions made on construction, by field: a caller may give "K1,K2", a list, or a str path.
_CONVERT: dict[str, Callable[[object, str], object]] = {
    "basepath": _path,
    "output_dir": _path,
    "hot_pixel_mask": _path,
    "temperature_keys": _required_keys,
    "exposure_keys": _required_keys,
    "frame_type_keys": _optional_keys,
    "set_point_keys": _optional_keys,
    "date_keys": _optional_keys,
    "bias_types": _bias_types,
    "temperature_unit": _upper,
    "input_bits": _text,
    "temperature_limits": _pair,
    "valid_from": _date,
    "valid_to": _date,
}


@dataclass(kw_only=True)
class PipelineConfig:
    """All options of a pipeline run.

    One object flows from the command line (or the caller) through every step. Construct it
    with keywords; :meth:`validate` is called on construction and raises
    :class:`~bias_pipeline.errors.ConfigError` naming the offending option.

    Parameters
    ----------
    basepath
        Folder of raw FITS frames (``run_bias_pipeline``'s first argument wins over it).
    output_dir
        Folder for the products (``run_bias_pipeline``'s second argument wins over it).
    hot_pixel_mask
        FITS mask, non-zero = hot pixel left out of the fit.
    generate_set
        Write a synthetic frame for every master temperature.
    save_eval_fits
        Also write synthetic, MAE and MAPE FITS in ``evaluation/``.
    temperature_keys, exposure_keys
        Header keywords looked up in order for the temperature [deg C] and exposure [s].
    temperature_unit
        ``"C"`` (the headers hold deg C) or ``"K"`` (kelvin, converted to deg C on reading).
    frame_type_keys
        Keywords of the frame type, in order; a frame whose type is not one of ``bias_types``
        is rejected. Empty (``"none"`` on the command line) switches the check off.
    bias_types
        Frame types that mean a bias frame.
    set_point_keys
        Keywords of the thermal set point; when every frame has one, frames are grouped by set
        point (the group temperature stays the mean of its frames' readings). Empty
        (``"none"``) groups by the readings alone.
    date_keys
        Keywords of the observation date, in order (ISO text or an MJD number); a frame without
        a date is used, undated. Empty (``"none"``) reads no dates.
    max_exposure
        Longest exposure [s] still accepted as a bias frame.
    temp_bin_width
        Width [deg C] of the temperature bins frames are grouped in.
    min_frames_per_group
        Groups with fewer accepted frames are not combined; their frames are rejected.
    combine_method
        ``"sigma-clip"`` (default: the smallest error against the simulator's truth at equal
        frames, see the README), ``"median"`` or ``"mean"``.
    clip_sigma, clip_iters
        Threshold (robust standard deviations) and maximum passes of ``sigma-clip``.
    row_correction
        ``"auto"`` (default): remove each frame's row offsets (row noise, measured against its
        group's preliminary master) before the final combine when the group's row noise is
        significant (:mod:`bias_pipeline.row_noise`); ``"on"``: always; ``"off"``: never (the
        row noise is still measured and recorded in the manifest).
    outlier_sigma, outlier_fraction
        A frame with more than ``outlier_fraction`` of its pixels further than
        ``outlier_sigma`` noise standard deviations from its group's master is rejected and
        the master remade without it.
    max_frame_offset
        A frame whose mean level differs from the rest of its group by more than this many
        read-noise sigmas (and significantly) is rejected and the master remade without it.
    input_bits
        ``"16"``: stored values are already 16-bit ADU (12-bit values x ``scale_factor``);
        ``"12"``: stored values are raw 12-bit and are multiplied by ``scale_factor``;
        ``"auto"``: decided once per data set
        (see :func:`bias_pipeline.steps.utils_scaling.decide_input_bits`).
    scale_factor
        Factor between 12-bit and 16-bit ADU.
    max_zero_fraction
        A frame with a larger fraction of exactly-zero pixels is a readout dropout.
    temperature_limits
        Plausible sensor temperatures [deg C]; a frame outside is rejected.
    memory_limit
        Memory [MiB] the combine may use for its pixel buffers (all worker threads together);
        sets the row-block height.
    threads
        Worker threads of the combine; 0 (default) uses the CPUs available, at most 8. The
        products are the same whatever the number.
    degree
        1 for ``a + b T``; 2 adds ``c T^2``.
    fit_on
        ``"masters"``: fit the masters weighted by inverse variance; ``"frames"``: fit every
        used frame at its own temperature in one streaming pass (no binning error).
    nonlinear_pvalue
        A pixel whose fit chi-square is this improbable is flagged NONLINEAR.
    temperature_tolerance
        A frame whose header temperature differs from the one its bias shows by more than
        this [deg C] is flagged in the manifest.
    evaluation
        Run step 5 (evaluation and plots).
    date_gap
        Days between two used frames' dates that start a new date cluster (epoch); a fit
        across epochs whose temperatures follow their dates is warned about
        (:mod:`bias_pipeline.epochs`).
    valid_from, valid_to
        The dates (UTC) the user declares the model valid for, written as ``VALID-FROM`` and
        ``VALID-TO`` into the model; ISO text, an MJD number or a datetime. ``valid_to`` must be
        after ``valid_from``.
    show_progress
        Draw tqdm progress bars (only when stderr is a terminal).

    Examples
    --------
    >>> config = PipelineConfig(combine_method="median", temp_bin_width=0.5, show_progress=False)
    >>> config.combine_method, config.temp_bin_width, config.clip_sigma
    ('median', 0.5, 3.0)
    >>> PipelineConfig(temp_bin_width=0)
    Traceback (most recent call last):
        ...
    bias_pipeline.errors.ConfigError: --temp-bin-width must be a finite number greater than zero, got 0
    """

    # ---- input and output
    basepath: Path | None = option(
        None, "--basepath", "folder of raw FITS bias frames, searched recursively", PATH, GROUP_IO, metavar="RAW_DIR"
    )
    output_dir: Path | None = option(
        None,
        "--output-dir",
        "folder for the products (created; re-runs replace them); required, here or in --config",
        PATH,
        GROUP_IO,
        metavar="OUT_DIR",
    )
    hot_pixel_mask: Path | None = option(
        None,
        "--hot-pixel-mask",
        "FITS mask, non-zero = hot pixel, left out of the fit (NaN in the a/b maps)",
        PATH,
        GROUP_IO,
        metavar="MASK.fits",
    )
    generate_set: bool = option(
        False,
        "--generate-set",
        "write a synthetic frame for every master temperature in bias_masks_by_temp/",
        SWITCH,
        GROUP_IO,
    )
    save_eval_fits: bool = option(
        False, "--save-eval-fits", "also write synthetic, MAE and MAPE FITS in evaluation/", SWITCH, GROUP_IO
    )
    # ---- frame selection
    temperature_keys: tuple[str, ...] = option(
        DEFAULT_TEMPERATURE_KEYS,
        "--temperature-keys",
        "header keywords for the temperature in deg C, first found wins",
        KEYWORDS,
        GROUP_FRAMES,
        metavar="KEY[,KEY...]",
        parse=parse_keywords,
    )
    exposure_keys: tuple[str, ...] = option(
        DEFAULT_EXPOSURE_KEYS,
        "--exposure-keys",
        "header keywords for the exposure in s",
        KEYWORDS,
        GROUP_FRAMES,
        metavar="KEY[,KEY...]",
        parse=parse_keywords,
    )
    temperature_unit: str = option(
        "C",
        "--temperature-unit",
        "unit of the header temperatures: C or K, converted to deg C on reading",
        CHOICE,
        GROUP_FRAMES,
        choices=TEMPERATURE_UNITS,
    )
    frame_type_keys: tuple[str, ...] = option(
        DEFAULT_FRAME_TYPE_KEYS,
        "--frame-type-keys",
        "header keywords for the frame type, first found wins; a frame whose type is not one of --bias-types is "
        f"rejected, one without a type is used; {NO_KEYS}: no check",
        KEYWORDS,
        GROUP_FRAMES,
        metavar="KEY[,KEY...]",
        parse=parse_optional_keywords,
    )
    bias_types: tuple[str, ...] = option(
        DEFAULT_BIAS_TYPES,
        "--bias-types",
        "frame types that mean a bias frame, compared without case, blanks or underscores",
        KEYWORDS,
        GROUP_FRAMES,
        metavar="TYPE[,TYPE...]",
        parse=parse_frame_types,
    )
    set_point_keys: tuple[str, ...] = option(
        DEFAULT_SET_POINT_KEYS,
        "--set-point-keys",
        "header keywords for the thermal set point, deg C; when every frame has one, frames are grouped by it; "
        f"{NO_KEYS}: group by the readings",
        KEYWORDS,
        GROUP_FRAMES,
        metavar="KEY[,KEY...]",
        parse=parse_optional_keywords,
    )
    date_keys: tuple[str, ...] = option(
        DEFAULT_DATE_KEYS,
        "--date-keys",
        "header keywords for the observation date (ISO UTC or an MJD number), first found wins; a frame without "
        f"one is used, undated; {NO_KEYS}: no dates",
        KEYWORDS,
        GROUP_FRAMES,
        metavar="KEY[,KEY...]",
        parse=parse_optional_keywords,
    )
    max_exposure: float = option(
        0.1,
        "--max-exposure",
        "longest exposure kept as a bias frame, seconds",
        NUMBER,
        GROUP_FRAMES,
        metavar="S",
        check=_zero_or_more,
    )
    max_zero_fraction: float = option(
        0.10,
        "--max-zero-fraction",
        "reject frames with more than this fraction of zero pixels, a readout dropout",
        NUMBER,
        GROUP_FRAMES,
        metavar="F",
        check=_zero_fraction,
    )
    temperature_limits: tuple[float, float] = option(
        (-60.0, 80.0),
        "--temperature-limits",
        "reject frames whose temperature is outside LOW..HIGH deg C",
        NUMBER,
        GROUP_FRAMES,
        metavar=("LOW", "HIGH"),
        nargs=2,
        check=_limits,
    )
    input_bits: str = option(
        "16",
        "--input-bits",
        "16: values are 12-bit x16 already; 12: raw 12-bit, multiplied by --scale-factor; auto: decide from "
        "the data (12 when most frames have values < 4096 that are not multiples of 16)",
        CHOICE,
        GROUP_FRAMES,
        choices=INPUT_BITS_CHOICES,
    )
    scale_factor: float = option(
        DEFAULT_SCALE_FACTOR,
        "--scale-factor",
        f"12-bit to 16-bit factor, at most {MAX_SCALE_FACTOR:g}",
        NUMBER,
        GROUP_FRAMES,
        metavar="F",
        check=_scale_factor,
    )
    # ---- grouping, combining and evaluation
    temp_bin_width: float = option(
        0.1,
        "--temp-bin-width",
        "width of the temperature bins, deg C",
        NUMBER,
        GROUP_COMBINE,
        metavar="C",
        check=_positive,
    )
    min_frames_per_group: int = option(
        3,
        "--min-frames-per-group",
        "groups with fewer frames are not combined",
        INTEGER,
        GROUP_COMBINE,
        metavar="N",
        check=_at_least_one,
    )
    combine_method: str = option(
        "sigma-clip",
        "--combine-method",
        "how a group becomes a master: sigma-clipped mean (the smallest error on simulated data with cosmic "
        "rays), median or mean",
        CHOICE,
        GROUP_COMBINE,
        choices=COMBINE_METHODS,
    )
    clip_sigma: float = option(
        3.0,
        "--clip-sigma",
        "sigma-clip: drop values more than K robust standard deviations from the median",
        NUMBER,
        GROUP_COMBINE,
        metavar="K",
        check=_positive,
    )
    clip_iters: int = option(
        5, "--clip-iters", "sigma-clip: at most N passes", INTEGER, GROUP_COMBINE, metavar="N", check=_at_least_one
    )
    row_correction: str = option(
        "auto",
        "--row-correction",
        "remove each frame's row offsets (row noise) before combining: auto (when the group's row noise is "
        "significant against read noise), on or off",
        CHOICE,
        GROUP_COMBINE,
        choices=ROW_CORRECTION_MODES,
    )
    outlier_sigma: float = option(
        6.0,
        "--outlier-sigma",
        "a frame pixel further than K noise sigmas from its master is an outlier",
        NUMBER,
        GROUP_COMBINE,
        metavar="K",
        check=_positive,
    )
    outlier_fraction: float = option(
        0.05,
        "--outlier-fraction",
        "reject a frame with more than this fraction of outlier pixels and remake its master",
        NUMBER,
        GROUP_COMBINE,
        metavar="F",
        check=_fraction,
    )
    max_frame_offset: float = option(
        0.5,
        "--max-frame-offset",
        "reject a frame whose mean level differs from the rest of its group by more than this many read-noise "
        "sigmas, and significantly, and remake its master (see the README)",
        NUMBER,
        GROUP_COMBINE,
        metavar="SIGMA",
        check=_positive,
    )
    memory_limit: float = option(
        512.0,
        "--memory-limit",
        f"memory for the combine's pixel buffers (all threads together), MiB, at least {MIN_MEMORY_LIMIT_MB:g}",
        NUMBER,
        GROUP_COMBINE,
        metavar="MIB",
        check=_memory_limit,
    )
    threads: int = option(
        0,
        "--threads",
        f"worker threads for scanning, combining and fitting, and processes for drawing the evaluation plots; "
        f"0: as many as CPUs, "
        f"at most 8 (up to {MAX_THREADS}); results do not depend on it",
        INTEGER,
        GROUP_COMBINE,
        metavar="N",
        check=_threads,
    )
    dask_scheduler: str | None = option(
        None,
        "--dask-scheduler",
        "run the combine's row blocks on the Dask scheduler at ADDRESS (tcp://host:8786; the workers must see "
        "the same file system), or local:N for a local cluster of N worker processes; needs "
        "pip install 'bias_pipeline[dask]'; the products are the same",
        TEXT,
        GROUP_COMBINE,
        metavar="ADDRESS",
        check=check_scheduler,
    )
    degree: int = option(
        1,
        "--degree",
        "1: bias = a + b*T; 2: adds c*T^2, and the log says in how many pixels it is warranted",
        INTEGER,
        GROUP_COMBINE,
        choices=(1, 2),
    )
    fit_on: str = option(
        "masters",
        "--fit-on",
        "fit the masters or every frame at its own temperature in one streaming pass",
        CHOICE,
        GROUP_COMBINE,
        choices=("masters", "frames"),
    )
    nonlinear_pvalue: float = option(
        1e-4,
        "--nonlinear-pvalue",
        "flag a pixel NONLINEAR when its fit chi-square is this improbable",
        NUMBER,
        GROUP_COMBINE,
        metavar="P",
        check=_probability,
    )
    temperature_tolerance: float = option(
        0.5,
        "--temperature-tolerance",
        "flag frames whose header temperature differs from the one their bias shows by more than C deg C",
        NUMBER,
        GROUP_COMBINE,
        metavar="C",
        check=_positive,
    )
    evaluation: bool = option(
        True,
        "--evaluation",
        "run step 5, the evaluation and plots; --no-evaluation skips it",
        SWITCH,
        GROUP_COMBINE,
    )
    # ---- dates and validity
    date_gap: float = option(
        DEFAULT_DATE_GAP_DAYS,
        "--date-gap",
        "frames whose dates leave a gap longer than this start a new epoch (date cluster), days; a fit across "
        "epochs whose temperatures follow the dates is warned about",
        NUMBER,
        GROUP_DATES,
        metavar="DAYS",
        check=_positive,
    )
    valid_from: _dt.datetime | None = option(
        None,
        "--valid-from",
        "first date the model is declared valid for (UTC), written as VALID-FROM into the model",
        DATE,
        GROUP_DATES,
        metavar="DATE",
    )
    valid_to: _dt.datetime | None = option(
        None,
        "--valid-to",
        "last date the model is declared valid for (UTC), after --valid-from, written as VALID-TO into the model",
        DATE,
        GROUP_DATES,
        metavar="DATE",
    )
    # Not an option of its own: the command line sets it from -q (and from whether stderr is a terminal).
    show_progress: bool = True

    def __post_init__(self) -> None:
        # A caller may give "K1,K2" or a list for keywords, a str for a path, 12 for "12".
        for f in fields(self):
            if f.name in _CONVERT:
                setattr(self, f.name, _CONVERT[f.name](getattr(self, f.name), f.metadata["option"].flag))
        self.validate()

    # The names before the option schema, kept for callers (deprecated).
    @property
    def memory_limit_mb(self) -> float:
        """Deprecated name of :attr:`memory_limit` [MiB]."""
        return self.memory_limit

    @memory_limit_mb.setter
    def memory_limit_mb(self, value: float) -> None:
        self.memory_limit = value

    @property
    def evaluate(self) -> bool:
        """Deprecated name of :attr:`evaluation`."""
        return self.evaluation

    @evaluate.setter
    def evaluate(self, value: bool) -> None:
        self.evaluation = value

    def validate(self) -> None:
        """Check every option by its schema entry.

        Raises
        ------
        ConfigError
            Naming the option and the values it accepts.
        """
        for name, opt in options().items():
            value = getattr(self, name)
            _of_kind(value, opt)
            if opt.choices is not None:
                _one_of(value, opt.flag, opt.choices)
            if opt.check is not None:
                opt.check(value, opt.flag)
        if self.valid_from is not None and self.valid_to is not None and self.valid_to <= self.valid_from:
            raise ConfigError(
                f"--valid-to {format_date(self.valid_to)} must be after --valid-from {format_date(self.valid_from)}; "
                "give a later --valid-to or an earlier --valid-from"
            )

    def as_dict(self) -> dict[str, object]:
        """Every field as plain JSON-friendly values (tuples as lists, paths as strings); the
        keys are :class:`PipelineConfig`'s keyword arguments."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def options_record(self) -> dict[str, object]:
        """The options (every schema field, by name, in schema order) as JSON-friendly values:
        the ``options`` of ``run_config.json``, which ``--config`` reads back."""
        return {name: _plain(getattr(self, name)) for name in options()}


_dataclass_init = PipelineConfig.__init__


@functools.wraps(_dataclass_init)
def _init_with_deprecated_names(self: PipelineConfig, **values: Any) -> None:
    for old, new in DEPRECATED_NAMES.items():
        if old in values:
            warnings.warn(f"PipelineConfig({old}=...) is deprecated; use {new}=...", DeprecationWarning, stacklevel=2)
            # The old name wins over the new one: dataclasses.replace(config, evaluate=False)
            # passes every current field too, and the caller typed the old name.
            values[new] = values.pop(old)
    _dataclass_init(self, **values)


# The dataclass's own __init__ (its signature shown by help()), taking the earlier names too.
PipelineConfig.__init__ = _init_with_deprecated_names  # type: ignore[method-assign]


def _plain(value: object) -> object:
    if isinstance(value, _dt.datetime):
        return format_date(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return value


def options() -> dict[str, Option]:
    """The option schema: ``{field name: Option}`` of :class:`PipelineConfig`, in ``--help`` order
    within each group."""
    return {f.name: f.metadata["option"] for f in fields(PipelineConfig) if "option" in f.metadata}


def option_defaults() -> dict[str, object]:
    """``{field name: default}`` of every option."""
    return {f.name: f.default for f in fields(PipelineConfig) if "option" in f.metadata}


def help_text(name: str) -> str:
    """The ``--help`` text of option ``name``: its help and ``(default X)`` made from its default."""
    opt = options()[name]
    shown = opt.shown_default(option_defaults()[name])
    return opt.help if shown is None else f"{opt.help} (default {shown})"


def resolve_path(path: str | Path) -> Path:
    """Return ``path`` expanded (``~``) and made absolute, without requiring it to exist."""
    return Path(path).expanduser().resolve()

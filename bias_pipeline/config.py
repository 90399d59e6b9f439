"""Every option of the pipeline, its default and its validation, in one dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from .combine import COMBINE_METHODS
from .errors import ConfigError
from .frames import normal_frame_type

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


@dataclass
class PipelineConfig:
    """All options of a pipeline run.

    One object flows from the command line (or the caller) through every step. Construct it
    with keywords; :meth:`validate` is called on construction and raises
    :class:`~bias_pipeline.errors.ConfigError` naming the offending option.

    Parameters
    ----------
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
    memory_limit_mb
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
    evaluate
        Run step 5 (evaluation and plots).
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

    temperature_keys: tuple[str, ...] = DEFAULT_TEMPERATURE_KEYS
    exposure_keys: tuple[str, ...] = DEFAULT_EXPOSURE_KEYS
    temperature_unit: str = "C"
    frame_type_keys: tuple[str, ...] = DEFAULT_FRAME_TYPE_KEYS
    bias_types: tuple[str, ...] = DEFAULT_BIAS_TYPES
    set_point_keys: tuple[str, ...] = DEFAULT_SET_POINT_KEYS
    max_exposure: float = 0.1
    temp_bin_width: float = 0.1
    min_frames_per_group: int = 3
    combine_method: str = "sigma-clip"
    clip_sigma: float = 3.0
    clip_iters: int = 5
    outlier_sigma: float = 6.0
    outlier_fraction: float = 0.05
    max_frame_offset: float = 0.5
    input_bits: str = "16"
    scale_factor: float = 16.0
    max_zero_fraction: float = 0.10
    temperature_limits: tuple[float, float] = (-60.0, 80.0)
    memory_limit_mb: float = 512.0
    threads: int = 0
    degree: int = 1
    fit_on: str = "masters"
    nonlinear_pvalue: float = 1e-4
    temperature_tolerance: float = 0.5
    evaluate: bool = True
    show_progress: bool = True

    def __post_init__(self) -> None:
        self.temperature_keys = _keys(self.temperature_keys, "--temperature-keys")
        self.exposure_keys = _keys(self.exposure_keys, "--exposure-keys")
        self.frame_type_keys = _keys(self.frame_type_keys, "--frame-type-keys", optional=True)
        self.set_point_keys = _keys(self.set_point_keys, "--set-point-keys", optional=True)
        self.bias_types = _bias_types(self.bias_types)
        self.temperature_unit = str(self.temperature_unit).upper()
        self.input_bits = str(self.input_bits)
        self.temperature_limits = tuple(self.temperature_limits)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Check every option.

        Raises
        ------
        ConfigError
            Naming the option and the values it accepts.
        """
        _positive(self.max_exposure, "--max-exposure", allow_zero=True)
        _positive(self.temp_bin_width, "--temp-bin-width")
        _positive(self.scale_factor, "--scale-factor")
        if float(self.scale_factor) > MAX_SCALE_FACTOR:
            raise ConfigError(
                f"--scale-factor must lie in (0, {MAX_SCALE_FACTOR:g}] (12-bit to 16-bit is 16), "
                f"got {self.scale_factor!r}"
            )
        _positive(self.memory_limit_mb, "--memory-limit")
        if float(self.memory_limit_mb) < MIN_MEMORY_LIMIT_MB:
            raise ConfigError(
                f"--memory-limit must be at least {MIN_MEMORY_LIMIT_MB:g} MiB (the combine needs a row of every "
                f"frame), got {self.memory_limit_mb!r}"
            )
        _positive(self.max_frame_offset, "--max-frame-offset")
        _positive(self.clip_sigma, "--clip-sigma")
        _positive(self.temperature_tolerance, "--temperature-tolerance")
        _positive(self.outlier_sigma, "--outlier-sigma")
        if not isinstance(self.threads, int) or not 0 <= self.threads <= MAX_THREADS:
            raise ConfigError(
                f"--threads must be a whole number from 0 (as many as CPUs) to {MAX_THREADS}, got {self.threads!r}"
            )
        if self.temperature_unit not in TEMPERATURE_UNITS:
            raise ConfigError(f"--temperature-unit must be C or K, got {self.temperature_unit!r}")
        if not isinstance(self.clip_iters, int) or self.clip_iters < 1:
            raise ConfigError(f"--clip-iters must be a whole number >= 1, got {self.clip_iters!r}")
        if not 0.0 < self.outlier_fraction <= 1.0:
            raise ConfigError(f"--outlier-fraction must lie in (0, 1], got {self.outlier_fraction!r}")
        if not isinstance(self.min_frames_per_group, int) or self.min_frames_per_group < 1:
            raise ConfigError(f"--min-frames-per-group must be a whole number >= 1, got {self.min_frames_per_group!r}")
        if self.fit_on not in ("masters", "frames"):
            raise ConfigError(f"--fit-on must be masters or frames, got {self.fit_on!r}")
        if self.degree not in (1, 2):
            raise ConfigError(f"--degree must be 1 or 2, got {self.degree!r}")
        if not 0.0 < self.nonlinear_pvalue < 1.0:
            raise ConfigError(f"--nonlinear-pvalue must lie in (0, 1), got {self.nonlinear_pvalue!r}")
        if self.combine_method not in COMBINE_METHODS:
            raise ConfigError(
                f"--combine-method must be one of {', '.join(COMBINE_METHODS)}, got {self.combine_method!r}"
            )
        if self.input_bits not in INPUT_BITS_CHOICES:
            raise ConfigError(f"--input-bits must be one of {', '.join(INPUT_BITS_CHOICES)}, got {self.input_bits!r}")
        if not 0.0 <= self.max_zero_fraction <= 1.0 or math.isnan(self.max_zero_fraction):
            raise ConfigError(f"--max-zero-fraction must lie between 0 and 1, got {self.max_zero_fraction!r}")
        if len(self.temperature_limits) != 2 or not (self.temperature_limits[0] < self.temperature_limits[1]):
            raise ConfigError(
                f"--temperature-limits needs two numbers LOW HIGH with LOW < HIGH, got {self.temperature_limits!r}"
            )

    def as_dict(self) -> dict[str, object]:
        """Return the options as plain JSON-friendly values (for headers and logs)."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


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


def _bias_types(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    try:
        types = tuple(normal_frame_type(str(v)) for v in value)  # type: ignore[union-attr]
    except TypeError as exc:
        raise ConfigError("--bias-types must be a comma-separated list of frame types") from exc
    types = tuple(t for t in types if t)
    if not types:
        raise ConfigError("--bias-types needs at least one frame type (e.g. BIAS,ZERO)")
    return types


def _positive(value: float, option: str, *, allow_zero: bool = False) -> None:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{option} must be a number, got {value!r}") from exc
    if math.isnan(number) or math.isinf(number) or number < 0 or (number == 0 and not allow_zero):
        kind = "zero or more" if allow_zero else "greater than zero"
        raise ConfigError(f"{option} must be a finite number {kind}, got {value!r}")


def resolve_path(path: str | Path) -> Path:
    """Return ``path`` expanded (``~``) and made absolute, without requiring it to exist."""
    return Path(path).expanduser().resolve()

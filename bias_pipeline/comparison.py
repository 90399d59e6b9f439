"""Two models of one sensor compared: ``python -m bias_pipeline compare OLD NEW --output-dir OUT``.

What changed between an older and a newer model is split in two, as LCO BANZAI's comparison of
a new master with the previous one does, for a model in temperature:

- the **global offset**: the robust median of ``NEW(T) - OLD(T)`` over the pixels unflagged in
  both models, at the ends and the middle of their common temperature range (or at one
  ``--temperature``), with its uncertainty ``1.2533 x robust std / sqrt(N)`` (the standard error
  of a median) and its trend with temperature;
- **pixel changes** beyond it: per pixel, ``(NEW - OLD - offset) / sqrt(sigma_old^2 +
  sigma_new^2)`` (each model's standard error at that temperature); a pixel changes when that
  pull reaches the threshold at any of the temperatures compared.

A pixel's false-alarm probability is the two-sided normal tail of ``--sigma`` (6: 2.0e-9),
whatever the number ``K`` of temperatures tested: each temperature is tested at the threshold of
``p / K`` (Bonferroni; the pulls at several temperatures of one line are correlated, so the rate
is between ``p / K`` and ``p``). The pulls are divided by their own robust width over the
compared pixels when that is above 1, so a model whose standard errors are a little low (a
sigma-clipped combine of three frames loses some efficiency that the fit does not know of) does
not raise false alarms; a width below 1 is left as it is (the test is then conservative).

The DQ flags of the two models are compared bit by bit: set in NEW and not in OLD is new, set in
OLD and not in NEW is cleared. Flagged pixels are left out of the offset and of the pixel test
(their uncertainties are not trusted); their changes are the flags' changes.

:func:`compare_models` computes a :class:`Comparison` from two :class:`~bias_pipeline.model.BiasModel`
objects (no files); :func:`write_comparison` writes ``comparison.json``, ``changed_pixels.fits``
and ``comparison.html``; :func:`main` is the command.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from scipy.special import ndtr, ndtri

from ._version import __version__
from .dates import format_date
from .errors import ConfigError, InputDataError, OutputError
from .model import BiasModel
from .plots import downsample, figure_png
from .products import add_card, product_header, write_fits_atomic, write_text_atomic
from .quality import DQ_BITS, HOT_MASK, MAD_TO_SIGMA
from .registry import CHANGED_PIXELS_NAME, COMPARISON_JSON, COMPARISON_REPORT

__all__ = [
    "CHANGE_KINDS",
    "Comparison",
    "ModelSummary",
    "OffsetAt",
    "build_parser",
    "compare_models",
    "comparison_facts",
    "main",
    "write_comparison",
]

logger = logging.getLogger(__name__)

PROG = "python -m bias_pipeline compare"
#: A pixel changes at this many sigma by default (LCO BANZAI's signal-to-noise of 6).
DEFAULT_SIGMA = 6.0
#: The models differ when more pixels than this changed (LCO BANZAI's 5 %).
DEFAULT_MAX_CHANGED_FRACTION = 0.05
#: A global offset counts only when it is this many of its standard errors from zero, so an
#: offset beyond the tolerance by chance (a model of very few pixels) is not a difference.
OFFSET_SIGNIFICANCE = 5.0
#: The standard error of a median is this times the standard deviation over sqrt(N) (sqrt(pi/2)).
MEDIAN_ERROR_FACTOR = math.sqrt(math.pi / 2.0)


@dataclass(frozen=True)
class ChangeKind:
    """One value of ``changed_pixels.fits``: a bit, its name and meaning (as a DQ_DEF row)."""

    value: int
    name: str
    description: str


CHANGED = ChangeKind(1, "CHANGED", "NEW - OLD - offset beyond the threshold in sigma at a temperature compared")
NEW_FLAG = ChangeKind(2, "NEW_FLAG", "a DQ bit set in NEW and not in OLD")
CLEARED_FLAG = ChangeKind(4, "CLEARED_FLAG", "a DQ bit set in OLD and not in NEW")
CHANGE_KINDS: tuple[ChangeKind, ...] = (CHANGED, NEW_FLAG, CLEARED_FLAG)
#: What each value 0..7 of ``changed_pixels.fits`` means, in the report's map.
CHANGE_MAP_LABELS = ("none", "changed", "new flag", "changed+new", "cleared", "changed+cleared", "new+cleared", "all")


@dataclass(frozen=True)
class OffsetAt:
    """The global offset ``NEW - OLD`` at one temperature.

    Attributes
    ----------
    temperature
        [deg C].
    offset_adu
        Median of ``NEW - OLD`` over the compared pixels that did not change [ADU].
    uncertainty_adu
        Its standard error, ``1.2533 x robust std / sqrt(N)`` [ADU].
    pull_scale
        The robust width of the pulls the pixel test divided them by (1 when they were no wider
        than the models' standard errors say).
    pixels
        Pixels the median was taken over.
    """

    temperature: float
    offset_adu: float
    uncertainty_adu: float
    pull_scale: float
    pixels: int


@dataclass(frozen=True)
class ModelSummary:
    """What the comparison reports of one model: its fitted temperatures, dates and noise."""

    temperature_range: tuple[float, float] | None
    date_range: tuple[_dt.datetime, _dt.datetime] | None
    typical_read_noise: float
    degree: int

    @classmethod
    def of(cls, model: BiasModel) -> ModelSummary:
        """The summary of ``model``."""
        return cls(model.temperature_range, model.date_range, model.typical_read_noise, model.degree)

    def facts(self) -> dict[str, object]:
        """JSON-ready values (dates as ISO UTC, :func:`bias_pipeline.dates.format_date`)."""
        return {
            "temperature_range": list(self.temperature_range) if self.temperature_range else None,
            "date_range": [format_date(d) for d in self.date_range] if self.date_range else None,
            "typical_read_noise_adu": _finite_or_none(self.typical_read_noise),
            "degree": self.degree,
        }


@dataclass
class Comparison:
    """Two models compared (see the module's description).

    Attributes
    ----------
    offsets
        The offset at each temperature compared, by increasing temperature.
    reference
        The offset reported as *the* offset: at the middle of the range (or the one temperature).
    sigma
        The threshold a pixel's false-alarm probability is promised at (two-sided normal tail).
    per_temperature_sigma
        The threshold each temperature is tested at (``sigma`` shared over the temperatures).
    tolerance_adu
        The largest global offset that is no difference.
    max_changed_fraction
        The largest fraction of changed pixels that is no difference.
    compared
        Pixels of the pixel test: finite in both models with finite uncertainties, unflagged.
    pull
        Per pixel, the signed pull of largest magnitude over the temperatures compared (after the
        width correction), NaN where not compared.
    changed
        Pixels whose pull reached ``per_temperature_sigma`` at a temperature compared.
    old_dq, new_dq
        The two models' DQ bits compared (``HOT_MASK`` alone when a model carries no DQ map).
    flags_compared
        Whether both models carry DQ maps (else only the hot-pixel masks were compared).
    slope_difference_adu_per_c
        Median of ``b_NEW - b_OLD`` over the compared pixels [ADU / deg C].
    old, new
        What the comparison reports of each model.
    """

    offsets: tuple[OffsetAt, ...]
    reference: OffsetAt
    sigma: float
    per_temperature_sigma: float
    tolerance_adu: float
    max_changed_fraction: float
    compared: np.ndarray
    pull: np.ndarray
    changed: np.ndarray
    old_dq: np.ndarray
    new_dq: np.ndarray
    flags_compared: bool
    slope_difference_adu_per_c: float
    old: ModelSummary
    new: ModelSummary
    temperature_given: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def temperatures(self) -> tuple[float, ...]:
        """The temperatures compared [deg C]."""
        return tuple(o.temperature for o in self.offsets)

    @property
    def offset_adu(self) -> float:
        """The reference offset ``NEW - OLD`` [ADU]."""
        return self.reference.offset_adu

    @property
    def offset_uncertainty_adu(self) -> float:
        """Its standard error [ADU]."""
        return self.reference.uncertainty_adu

    @property
    def offset_trend_adu_per_c(self) -> float | None:
        """``(offset at the high end - offset at the low end) / (range)`` [ADU / deg C]; ``None``
        for one temperature."""
        low, high = self.offsets[0], self.offsets[-1]
        if high.temperature <= low.temperature:
            return None
        return (high.offset_adu - low.offset_adu) / (high.temperature - low.temperature)

    @property
    def offset_trend_uncertainty(self) -> float | None:
        """The trend's standard error, the ends' errors taken as independent [ADU / deg C]."""
        low, high = self.offsets[0], self.offsets[-1]
        if high.temperature <= low.temperature:
            return None
        return math.hypot(low.uncertainty_adu, high.uncertainty_adu) / (high.temperature - low.temperature)

    @property
    def false_alarm_per_pixel(self) -> float:
        """A pixel's promised false-alarm probability: ``2 Phi(-sigma)``."""
        return float(2.0 * ndtr(-self.sigma))

    @property
    def n_compared(self) -> int:
        """Pixels of the pixel test."""
        return int(np.count_nonzero(self.compared))

    @property
    def changed_up(self) -> np.ndarray:
        """Changed pixels that went up (NEW above OLD plus the offset)."""
        with np.errstate(invalid="ignore"):
            return self.changed & (self.pull > 0)

    @property
    def changed_down(self) -> np.ndarray:
        """Changed pixels that went down."""
        with np.errstate(invalid="ignore"):
            return self.changed & (self.pull < 0)

    @property
    def n_changed(self) -> int:
        """Changed pixels."""
        return int(np.count_nonzero(self.changed))

    @property
    def fraction_changed(self) -> float:
        """Changed pixels over compared pixels (0 when none was compared)."""
        return self.n_changed / self.n_compared if self.n_compared else 0.0

    def new_flags(self) -> dict[str, int]:
        """Pixels per DQ bit set in NEW and not in OLD."""
        return {b.name: int(np.count_nonzero((self.new_dq & b.value) & ~(self.old_dq & b.value))) for b in DQ_BITS}

    def cleared_flags(self) -> dict[str, int]:
        """Pixels per DQ bit set in OLD and not in NEW."""
        return {b.name: int(np.count_nonzero((self.old_dq & b.value) & ~(self.new_dq & b.value))) for b in DQ_BITS}

    @property
    def newly_flagged(self) -> np.ndarray:
        """Pixels with any bit set in NEW and not in OLD."""
        return (self.new_dq & ~self.old_dq) != 0

    @property
    def flag_cleared(self) -> np.ndarray:
        """Pixels with any bit set in OLD and not in NEW."""
        return (self.old_dq & ~self.new_dq) != 0

    @property
    def offset_beyond_tolerance(self) -> list[OffsetAt]:
        """The offsets (at the temperatures compared) larger than the tolerance and significant."""
        return [
            o
            for o in self.offsets
            if abs(o.offset_adu) > self.tolerance_adu and abs(o.offset_adu) >= OFFSET_SIGNIFICANCE * o.uncertainty_adu
        ]

    @property
    def reasons(self) -> list[str]:
        """Why the models differ (empty: they agree)."""
        found = []
        beyond = self.offset_beyond_tolerance
        if beyond:
            # The reported offset when it is beyond, else the largest of the others.
            worst = self.reference if self.reference in beyond else max(beyond, key=lambda o: abs(o.offset_adu))
            found.append(
                f"global offset {worst.offset_adu:+.3g} +- {worst.uncertainty_adu:.2g} ADU at "
                f"{worst.temperature:.1f} deg C beyond the tolerance {self.tolerance_adu:.3g} ADU"
            )
        if self.fraction_changed > self.max_changed_fraction:
            found.append(
                f"{100 * self.fraction_changed:.3g} % of the pixels changed, more than "
                f"{100 * self.max_changed_fraction:.3g} %"
            )
        return found

    @property
    def differ(self) -> bool:
        """Whether the models differ beyond the gate."""
        return bool(self.reasons)

    @property
    def verdict(self) -> str:
        """``"AGREE"`` or ``"DIFFER"``."""
        return "DIFFER" if self.differ else "AGREE"

    def change_map(self) -> np.ndarray:
        """uint8 image: the sum of the :data:`CHANGE_KINDS` values that apply to each pixel."""
        image = np.zeros(self.changed.shape, dtype=np.uint8)
        image[self.changed] |= CHANGED.value
        image[self.newly_flagged] |= NEW_FLAG.value
        image[self.flag_cleared] |= CLEARED_FLAG.value
        return image


# ---------------------------------------------------------------------------------- computation
def compare_models(
    old: BiasModel,
    new: BiasModel,
    *,
    temperature: float | None = None,
    sigma: float = DEFAULT_SIGMA,
    tolerance_adu: float | None = None,
    max_changed_fraction: float = DEFAULT_MAX_CHANGED_FRACTION,
) -> Comparison:
    """Compare two models of one sensor: global offset, changed pixels, DQ flags.

    Parameters
    ----------
    old, new
        The older and the newer model.
    temperature
        Compare at this temperature [deg C] only; by default at the low end, the middle and the
        high end of the models' common temperature range.
    sigma
        A pixel changes at this many sigma (its false-alarm probability is ``2 Phi(-sigma)``,
        shared over the temperatures compared).
    tolerance_adu
        The largest global offset that is no difference; by default ``old.offset_tolerance()``
        (0.1 x its median read noise).
    max_changed_fraction
        The largest fraction of changed pixels that is no difference.

    Returns
    -------
    Comparison

    Raises
    ------
    InputDataError
        When the models differ in shape, have no temperature range in common (and no
        ``temperature`` was given), carry no uncertainties, or have no pixel in common.
    ConfigError
        When no tolerance was given and OLD carries no noise map to derive it from, or an
        argument is out of range.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> def model(offset):
    ...     a = 3200.0 + offset + rng.normal(0.0, 1.0, (20, 30))
    ...     cov = np.zeros((2, 2, 20, 30)); cov[0, 0] = 1.0; cov[1, 1] = 1e-4
    ...     return BiasModel.from_maps(a, np.full((20, 30), 3.0), temperature_range=(0.0, 20.0),
    ...                                covariance=cov, read_noise=np.full((20, 30), 30.0))
    >>> result = compare_models(model(0.0), model(10.0))
    >>> result.temperatures, round(result.offset_adu), result.verdict
    ((0.0, 10.0, 20.0), 10, 'DIFFER')
    """
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ConfigError(f"--sigma must be a positive number, got {sigma!r}")
    if not 0.0 <= max_changed_fraction <= 1.0:
        raise ConfigError(f"--max-changed-fraction must lie in 0..1, got {max_changed_fraction!r}")
    if old.shape != new.shape:
        raise InputDataError(
            f"OLD is {old.shape[0]}x{old.shape[1]} pixels but NEW is {new.shape[0]}x{new.shape[1]}: "
            "give two models of the same sensor"
        )
    if tolerance_adu is None:
        tolerance_adu = old.offset_tolerance()
        if not math.isfinite(tolerance_adu):
            raise ConfigError("OLD carries no read-noise map to derive the offset tolerance from; give --tolerance ADU")
    if not (tolerance_adu >= 0 and math.isfinite(tolerance_adu)):
        raise ConfigError(f"--tolerance must be 0 or more ADU, got {tolerance_adu!r}")
    temperatures = compared_temperatures(old, new, temperature)
    per_temperature = float(-ndtri(ndtr(-sigma) / len(temperatures)))

    unflagged = ~(old.flagged | new.flagged)
    offsets: list[OffsetAt] = []
    compared = np.zeros(old.shape, dtype=bool)
    pull = np.full(old.shape, np.nan, dtype=np.float32)
    for t in temperatures:
        at, compared_here, pull_here = _offset_and_pulls(old, new, t, unflagged, per_temperature)
        offsets.append(at)
        compared |= compared_here
        with np.errstate(invalid="ignore"):
            larger = compared_here & ~(np.abs(pull) >= np.abs(pull_here))
        pull[larger] = pull_here[larger]
    with np.errstate(invalid="ignore"):
        changed = compared & (np.abs(pull) >= per_temperature)
    old_dq, new_dq, flags_compared = _dq_maps(old, new)
    slopes = (new.b_map - old.b_map)[compared]
    notes = []
    if not flags_compared:
        notes.append("a model carries no DQ map: only the hot-pixel masks were compared")
    return Comparison(
        offsets=tuple(offsets),
        reference=offsets[len(offsets) // 2],
        sigma=float(sigma),
        per_temperature_sigma=per_temperature,
        tolerance_adu=float(tolerance_adu),
        max_changed_fraction=float(max_changed_fraction),
        compared=compared,
        pull=pull,
        changed=changed,
        old_dq=old_dq,
        new_dq=new_dq,
        flags_compared=flags_compared,
        slope_difference_adu_per_c=float(np.median(slopes)) if slopes.size else math.nan,
        old=ModelSummary.of(old),
        new=ModelSummary.of(new),
        temperature_given=temperature is not None,
        notes=notes,
    )


def compared_temperatures(old: BiasModel, new: BiasModel, temperature: float | None = None) -> tuple[float, ...]:
    """The temperatures two models are compared at: ``(temperature,)`` when given, else the
    low end, the middle and the high end of their common fitted range (one when it is a point).

    Parameters
    ----------
    old, new
        The two models; one that records no fitted range leaves the other's.
    temperature
        The one temperature asked for [deg C], or ``None``.

    Returns
    -------
    tuple of float
        By increasing temperature [deg C].

    Raises
    ------
    InputDataError
        When no temperature is given and the ranges do not overlap or are unknown.
    ConfigError
        When ``temperature`` is not a finite number.
    """
    if temperature is not None:
        if not math.isfinite(temperature):
            raise ConfigError(f"--temperature must be a finite number, got {temperature!r}")
        return (float(temperature),)
    ranges = [r for r in (old.temperature_range, new.temperature_range) if r is not None]
    if not ranges:
        raise InputDataError("neither model records its fitted temperature range; give --temperature T")
    low = max(r[0] for r in ranges)
    high = min(r[1] for r in ranges)
    if low > high:
        raise InputDataError(
            f"the models have no temperature in common (OLD {_range_text(old.temperature_range)}, "
            f"NEW {_range_text(new.temperature_range)} deg C); give --temperature T to compare them at T"
        )
    if high - low < 1e-6:
        return (low,)
    return (low, (low + high) / 2.0, high)


def _offset_and_pulls(
    old: BiasModel, new: BiasModel, temperature: float, unflagged: np.ndarray, threshold: float
) -> tuple[OffsetAt, np.ndarray, np.ndarray]:
    """The offset at one temperature, the pixels compared there and their pulls (divided by
    their robust width when it is above 1)."""
    old_value, old_sigma = old.predict(temperature, return_sigma=True)
    new_value, new_sigma = new.predict(temperature, return_sigma=True)
    difference = new_value.astype(np.float64) - old_value
    combined = np.hypot(old_sigma.astype(np.float64), new_sigma)
    with np.errstate(invalid="ignore"):
        compared = unflagged & np.isfinite(difference) & np.isfinite(combined) & (combined > 0)
    if not compared.any():
        if not (np.isfinite(old_sigma).any() and np.isfinite(new_sigma).any()):
            raise InputDataError(
                "a model carries no uncertainties (a-map and b-map alone): give its output folder or "
                "bias_model.fits, which holds them"
            )
        raise InputDataError("the two models have no unflagged pixel in common: nothing to compare")
    values = difference[compared]
    offset = float(np.median(values))
    pulls = np.full(difference.shape, np.nan)
    scale = 1.0
    # Twice: the second offset leaves out the pixels that changed, so a damaged region does not
    # pull the median of the rest; the width is the pulls' own, the changes no part of it.
    for _ in range(2):
        pulls[compared] = (values - offset) / combined[compared]
        scale = max(1.0, _robust_std(pulls[compared]))
        steady = np.abs(pulls[compared]) < threshold * scale
        kept = values[steady] if steady.any() else values
        offset = float(np.median(kept))
    pulls[compared] = (values - offset) / combined[compared]
    scale = max(1.0, _robust_std(pulls[compared]))
    pulls[compared] /= scale
    steady = np.abs(pulls[compared]) < threshold
    kept = values[steady] if steady.any() else values
    uncertainty = MEDIAN_ERROR_FACTOR * _robust_std(kept) / math.sqrt(kept.size)
    logger.debug(
        "at %g deg C: offset %+.4g +- %.2g ADU over %d pixels, pull width %.3f",
        temperature,
        offset,
        uncertainty,
        kept.size,
        scale,
    )
    return OffsetAt(float(temperature), offset, float(uncertainty), float(scale), int(kept.size)), compared, pulls


def _robust_std(values: np.ndarray) -> float:
    """The MAD scaled to a normal's sigma (as :func:`astropy.stats.mad_std`)."""
    if values.size == 0:
        return math.nan
    centre = np.median(values)
    return float(np.median(np.abs(values - centre)) * MAD_TO_SIGMA)


def _dq_maps(old: BiasModel, new: BiasModel) -> tuple[np.ndarray, np.ndarray, bool]:
    """Both DQ maps as uint32; only ``HOT_MASK`` when either model has none (so a model of maps
    alone does not show every flag of the other as new)."""
    if old.dq is not None and new.dq is not None:
        return old.dq.astype(np.uint32), new.dq.astype(np.uint32), True
    hot = np.uint32(HOT_MASK.value)
    return (
        np.where(old.mask, hot, np.uint32(0)).astype(np.uint32),
        np.where(new.mask, hot, np.uint32(0)).astype(np.uint32),
        False,
    )


def _range_text(temperature_range: tuple[float, float] | None) -> str:
    return "unknown" if temperature_range is None else f"{temperature_range[0]:.2f}..{temperature_range[1]:.2f}"


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


# ---------------------------------------------------------------------------------- products
def comparison_facts(result: Comparison, old_path: str | Path, new_path: str | Path) -> dict[str, object]:
    """Everything ``comparison.json`` holds, as JSON-ready values.

    Parameters
    ----------
    result
        The comparison.
    old_path, new_path
        Where the two models were read from.

    Returns
    -------
    dict
    """
    trend = result.offset_trend_adu_per_c
    trend_error = result.offset_trend_uncertainty
    return {
        "verdict": result.verdict,
        "differ": result.differ,
        "reasons": result.reasons,
        "offset_adu": result.offset_adu,
        "offset_uncertainty_adu": result.offset_uncertainty_adu,
        "offset_temperature": result.reference.temperature,
        "offset_trend": {
            "adu_per_deg_c": _finite_or_none(trend),
            "uncertainty_adu_per_deg_c": _finite_or_none(trend_error),
            "at_low_end": _offset_facts(result.offsets[0]),
            "at_high_end": _offset_facts(result.offsets[-1]),
            "slope_difference_median_adu_per_deg_c": _finite_or_none(result.slope_difference_adu_per_c),
        },
        "offsets": [_offset_facts(o) for o in result.offsets],
        "temperatures_compared": list(result.temperatures),
        "temperature_given": result.temperature_given,
        "fraction_changed": result.fraction_changed,
        "counts": {
            "compared": result.n_compared,
            "changed": result.n_changed,
            "changed_up": int(np.count_nonzero(result.changed_up)),
            "changed_down": int(np.count_nonzero(result.changed_down)),
            "newly_flagged": int(np.count_nonzero(result.newly_flagged)),
            "flag_cleared": int(np.count_nonzero(result.flag_cleared)),
            "new_flags": result.new_flags(),
            "cleared_flags": result.cleared_flags(),
        },
        "flags_compared": "every DQ bit" if result.flags_compared else "HOT_MASK only (a model has no DQ map)",
        "gate": {
            "tolerance_adu": result.tolerance_adu,
            "offset_significance_sigma": OFFSET_SIGNIFICANCE,
            "sigma": result.sigma,
            "per_temperature_sigma": result.per_temperature_sigma,
            "false_alarm_per_pixel": result.false_alarm_per_pixel,
            "max_changed_fraction": result.max_changed_fraction,
        },
        "old": {"path": str(old_path), **result.old.facts()},
        "new": {"path": str(new_path), **result.new.facts()},
        "notes": list(result.notes),
        "version": __version__,
    }


def _offset_facts(at: OffsetAt) -> dict[str, object]:
    return {
        "temperature": at.temperature,
        "offset_adu": at.offset_adu,
        "uncertainty_adu": at.uncertainty_adu,
        "pull_scale": at.pull_scale,
        "pixels": at.pixels,
    }


def write_comparison(
    result: Comparison, output_dir: str | Path, old_path: str | Path, new_path: str | Path
) -> dict[str, Path]:
    """Write ``comparison.json``, ``changed_pixels.fits`` and ``comparison.html`` (atomically).

    Parameters
    ----------
    result
        The comparison.
    output_dir
        The folder (created when missing).
    old_path, new_path
        Where the models were read from (recorded in every product).

    Returns
    -------
    dict
        ``"json"``, ``"fits"`` and ``"html"`` -> the files written.

    Raises
    ------
    OutputError
        When the folder cannot be made or written.
    """
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--output-dir {out} cannot be created: {exc.strerror or exc}; choose another") from None
    if not out.is_dir():
        raise OutputError(f"--output-dir {out} is not a folder; choose another")
    facts = comparison_facts(result, old_path, new_path)
    written = {
        "json": write_text_atomic(out / COMPARISON_JSON, json.dumps(facts, indent=2) + "\n"),
        "fits": write_fits_atomic(out / CHANGED_PIXELS_NAME, _changed_pixels_hdul(result, old_path, new_path)),
        "html": write_text_atomic(out / COMPARISON_REPORT, comparison_page(result, facts)),
    }
    logger.debug("wrote %s, %s and %s in %s", COMPARISON_JSON, CHANGED_PIXELS_NAME, COMPARISON_REPORT, out)
    return written


def _changed_pixels_hdul(result: Comparison, old_path: str | Path, new_path: str | Path) -> fits.HDUList:
    cards: dict[str, object] = {
        "VERDICT": (result.verdict, "AGREE or DIFFER beyond the gate"),
        "OFFSET": (result.offset_adu, "[adu] global offset NEW - OLD"),
        "OFFSERR": (result.offset_uncertainty_adu, "[adu] standard error of OFFSET"),
        "OFFSTEMP": (result.reference.temperature, "[deg C] temperature of OFFSET"),
        "TOLERANC": (result.tolerance_adu, "[adu] largest offset that is no difference"),
        "SIGMA": (result.sigma, "threshold of a pixel's false-alarm rate"),
        "SIGMAT": (result.per_temperature_sigma, "threshold at each temperature compared"),
        "NTEMPS": (len(result.offsets), "temperatures compared"),
    }
    for index, at in enumerate(result.offsets, start=1):
        cards[f"TCOMP{index}"] = (at.temperature, "[deg C] a temperature compared")
        cards[f"OFFSET{index}"] = (at.offset_adu, f"[adu] offset at TCOMP{index}")
    cards["NCOMPARE"] = (result.n_compared, "pixels in the pixel test")
    cards["NCHANGED"] = (result.n_changed, "pixels changed beyond the offset")
    cards["FRACCHG"] = (result.fraction_changed, "NCHANGED / NCOMPARE")
    cards["OLDMODEL"] = (str(old_path), "the older model")
    cards["NEWMODEL"] = (str(new_path), "the newer model")
    for prefix, summary in (("OLD", result.old), ("NEW", result.new)):
        if summary.temperature_range is not None:
            cards[f"{prefix}TMIN"] = (float(summary.temperature_range[0]), f"[deg C] {prefix} lowest fitted T")
            cards[f"{prefix}TMAX"] = (float(summary.temperature_range[1]), f"[deg C] {prefix} highest fitted T")
        if summary.date_range is not None:
            cards[f"{prefix}DBEG"] = (format_date(summary.date_range[0]), f"[UTC] {prefix} first observation")
            cards[f"{prefix}DEND"] = (format_date(summary.date_range[1]), f"[UTC] {prefix} last observation")
    header = product_header("CHANGED_PIXELS", "pixels changed between two models, bits in CHANGE_DEF", bunit="")
    for key, (value, comment) in cards.items():  # type: ignore[misc]
        add_card(header, key, value, comment)
    primary = fits.PrimaryHDU(result.change_map(), header=header)
    pull = fits.ImageHDU(result.pull.astype(np.float32), name="PULL")
    pull.header["COMMENT"] = "signed (NEW - OLD - offset) / combined sigma of largest size over the temperatures"
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="VALUE", format="J", array=[k.value for k in CHANGE_KINDS]),
            fits.Column(name="NAME", format="20A", array=[k.name for k in CHANGE_KINDS]),
            fits.Column(name="DESCRIPTION", format="80A", array=[k.description for k in CHANGE_KINDS]),
        ],
        name="CHANGE_DEF",
    )
    return fits.HDUList([primary, pull, table])


# ---------------------------------------------------------------------------------- report page
def comparison_page(result: Comparison, facts: dict[str, Any]) -> str:
    """The HTML report: the verdict, the numbers, the flags and two maps (PNGs embedded).

    Parameters
    ----------
    result
        The comparison.
    facts
        Its :func:`comparison_facts`.

    Returns
    -------
    str
    """
    esc = _esc
    verdict_css = "differ" if result.differ else "agree"
    why = "; ".join(result.reasons) if result.reasons else "offset within the tolerance and few pixels changed"
    temps = ", ".join(f"{t:.1f}" for t in result.temperatures)
    trend = result.offset_trend_adu_per_c
    trend_text = (
        "n/a (one temperature)"
        if trend is None
        else f"{trend:+.3g} +- {result.offset_trend_uncertainty:.2g} ADU per deg C"
        f" (median b difference {result.slope_difference_adu_per_c:+.3g})"
    )
    counts = facts["counts"]
    numbers = [
        ("offset NEW - OLD", f"{result.offset_adu:+.4g} +- {result.offset_uncertainty_adu:.2g} ADU"),
        ("at", f"{result.reference.temperature:.2f} deg C"),
        ("trend with temperature", trend_text),
        ("offset tolerance", f"{result.tolerance_adu:.3g} ADU (and {OFFSET_SIGNIFICANCE:g} standard errors)"),
        ("temperatures compared", f"{temps} deg C"),
        (
            "pixel threshold",
            f"{result.sigma:g} sigma (false alarm {result.false_alarm_per_pixel:.2g} per pixel); "
            f"{result.per_temperature_sigma:.3g} sigma at each of {len(result.offsets)} temperatures",
        ),
        ("pixels compared", f"{result.n_compared}"),
        (
            "pixels changed",
            f"{result.n_changed} ({100 * result.fraction_changed:.3g} %; {counts['changed_up']} up, "
            f"{counts['changed_down']} down); limit {100 * result.max_changed_fraction:.3g} %",
        ),
    ]
    offset_rows = "".join(
        f"<tr><td>{o.temperature:.2f}</td><td>{o.offset_adu:+.4g}</td><td>{o.uncertainty_adu:.2g}</td>"
        f"<td>{o.pull_scale:.3f}</td><td>{o.pixels}</td></tr>"
        for o in result.offsets
    )
    new_flags, cleared = result.new_flags(), result.cleared_flags()
    flag_rows = "".join(
        f"<tr><td>{b.bit}</td><td>{esc(b.name)}</td><td>{new_flags[b.name]}</td><td>{cleared[b.name]}</td>"
        f"<td>{esc(b.description)}</td></tr>"
        for b in DQ_BITS
    )
    models = "".join(
        f"<tr><td>{label}</td><td>{esc(facts[key]['path'])}</td>"
        f"<td>{esc(_range_text(summary.temperature_range))}</td>"
        f"<td>{esc(' .. '.join(facts[key]['date_range']) if facts[key]['date_range'] else 'unknown')}</td>"
        f"<td>{esc(_number(summary.typical_read_noise))}</td></tr>"
        for label, key, summary in (("OLD", "old", result.old), ("NEW", "new", result.new))
    )
    figures = "".join(
        _figure_html(png, caption)
        for png, caption in (
            (
                _pull_png(result),
                f"(NEW - OLD - offset) / sigma: at each pixel the largest over {temps} deg C; "
                f"grey: not compared (flagged in a model)",
            ),
            (_change_png(result), "changed pixels: beyond the offset, newly flagged, flag cleared"),
        )
    )
    notes = "".join(f"<p class='note'>{esc(n)}</p>" for n in result.notes)
    body = f"""
<p class="verdict {verdict_css}">{esc(result.verdict)}: {esc(why)}</p>
<h2>The numbers</h2>
<dl>{"".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in numbers)}</dl>
<table><thead><tr><th>T (deg C)</th><th>offset (ADU)</th><th>error (ADU)</th><th>pull width</th>
<th>pixels</th></tr></thead><tbody>{offset_rows}</tbody></table>
<p class="note">The offset is the median of NEW - OLD over the unflagged pixels that did not change;
its error is 1.2533 x their robust standard deviation / sqrt(N). A pixel's pull is divided by the
pulls' robust width when that exceeds 1, so the false-alarm rate stays what the threshold promises.</p>
{notes}
<h2>Models</h2>
<table><thead><tr><th></th><th>path</th><th>fitted T (deg C)</th><th>dates (UTC)</th>
<th>read noise (ADU)</th></tr></thead><tbody>{models}</tbody></table>
<h2>DQ flags</h2>
<p>{esc(facts["flags_compared"])}: {counts["newly_flagged"]} pixels newly flagged,
{counts["flag_cleared"]} cleared.</p>
<table><thead><tr><th>bit</th><th>name</th><th>new</th><th>cleared</th><th>meaning</th></tr></thead>
<tbody>{flag_rows}</tbody></table>
<h2>Maps</h2>
{figures}
<p class="note">bias_pipeline {esc(__version__)}</p>
"""
    title = "Comparison of two bias models"
    return _PAGE.format(title=esc(title), style=_STYLE, body=body)


def _pull_png(result: Comparison) -> bytes:
    from matplotlib.figure import Figure  # here: matplotlib costs a quarter of a second to import

    shown, factor = downsample(result.pull.astype(np.float32))
    limit = max(result.per_temperature_sigma, 1.0)
    figure = Figure(figsize=(7.0, 5.6), dpi=100)
    axes = figure.add_subplot()
    rows, cols = result.pull.shape
    cmap = _colormap("coolwarm")
    artist = axes.imshow(
        shown,
        origin="lower",
        cmap=cmap,
        vmin=-limit,
        vmax=limit,
        extent=(-0.5, cols - 0.5, -0.5, rows - 0.5),
        interpolation="nearest",
        aspect="equal",
    )
    figure.colorbar(artist, ax=axes).set_label("sigma (colours end at the threshold)")
    title = "NEW - OLD - offset, in sigma"
    if factor > 1:
        title += f"\n(mean of {factor}x{factor} pixel blocks)"
    _finish_axes(figure, axes, title)
    return figure_png(figure)


def _change_png(result: Comparison) -> bytes:
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    image = result.change_map()
    # The largest value of each block, so one changed pixel stays visible in a large frame.
    factor = max(1, math.ceil(max(image.shape) / 512))
    if factor > 1:
        rows, cols = image.shape[0] // factor * factor, image.shape[1] // factor * factor
        image = image[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor).max(axis=(1, 3))
    colours = ["#ffffff", "#d62728", "#1f77b4", "#9467bd", "#2ca02c", "#ff7f0e", "#17becf", "#000000"]
    figure = Figure(figsize=(7.0, 5.6), dpi=100)
    axes = figure.add_subplot()
    rows, cols = result.changed.shape
    artist = axes.imshow(
        image,
        origin="lower",
        cmap=ListedColormap(colours),
        norm=BoundaryNorm(np.arange(-0.5, 8.5), 8),
        extent=(-0.5, cols - 0.5, -0.5, rows - 0.5),
        interpolation="nearest",
        aspect="equal",
    )
    bar = figure.colorbar(artist, ax=axes, ticks=range(8))
    bar.ax.set_yticklabels(CHANGE_MAP_LABELS)
    title = f"changed pixels: {result.n_changed} beyond the offset"
    if factor > 1:
        title += f"\n(largest value of {factor}x{factor} pixel blocks)"
    _finish_axes(figure, axes, title)
    return figure_png(figure)


def _colormap(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="#bbbbbb")


def _finish_axes(figure: Any, axes: Any, title: str) -> None:
    axes.set_xlabel("column (pixel)")
    axes.set_ylabel("row (pixel)")
    axes.set_title(title, fontsize=10, y=1.0)
    # Fixed margins, as plots.py: tight_layout renders every text once more to measure it.
    figure.subplots_adjust(left=0.1, right=0.85, bottom=0.1, top=0.9)


def _figure_html(png: bytes, caption: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{_esc(caption)}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _esc(text: object) -> str:
    return html.escape(str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace"), quote=True)


def _number(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3g}"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 70em; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tbody tr:nth-child(even) { background: #fafafa; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; } dt { font-weight: 600; }
dd { margin: 0; overflow-wrap: anywhere; }
.verdict { font-size: 1.3em; font-weight: 600; padding: 0.5em 1em; border-radius: 6px; }
.agree { background: #e6f4e6; } .differ { background: #fbe3e3; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } .note { color: #555; font-size: 0.9em; }
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


# ---------------------------------------------------------------------------------- command
EXAMPLE = """\
examples:
  python -m bias_pipeline compare last_quarter/ this_week/ --output-dir cmp/
  python -m bias_pipeline compare old/bias_model/bias_model.fits new/ --output-dir cmp/ --temperature 12
  python -m bias_pipeline compare old/ new/ --output-dir cmp/ -q && echo "the models agree"
"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser of ``compare``."""
    from .command import OneLineParser, add_message_options, finite_float

    parser = OneLineParser(
        prog=prog,
        description=(
            "Compare two bias models of one sensor: the global offset NEW - OLD (and its trend with "
            "temperature), the pixels that changed beyond it, and the DQ flags set or cleared. Writes "
            f"{COMPARISON_JSON}, {CHANGED_PIXELS_NAME} and {COMPARISON_REPORT} in --output-dir. "
            "Exit 0: the models agree; 1: they differ beyond the gate; 2-4: usage, input, output errors."
        ),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("old", type=Path, metavar="OLD", help="the older model: an output folder or bias_model.fits")
    parser.add_argument("new", type=Path, metavar="NEW", help="the newer model of the same sensor")
    parser.add_argument("--output-dir", type=Path, required=True, metavar="OUT", help="folder for the products")
    parser.add_argument(
        "--temperature",
        type=finite_float,
        metavar="T",
        help="compare at T deg C only (default: the ends and middle of the common fitted range)",
    )
    parser.add_argument(
        "--sigma",
        type=finite_float,
        default=DEFAULT_SIGMA,
        metavar="S",
        help="a pixel changes at S sigma beyond the offset; false alarm 2*Phi(-S) per pixel (default %(default)g)",
    )
    parser.add_argument(
        "--tolerance",
        type=finite_float,
        metavar="ADU",
        help="largest global offset that is no difference (default: 0.1 x OLD's median read noise)",
    )
    parser.add_argument(
        "--max-changed-fraction",
        type=finite_float,
        default=DEFAULT_MAX_CHANGED_FRACTION,
        metavar="F",
        help="the models differ when more than F of the pixels changed (default %(default)g, as LCO BANZAI)",
    )
    add_message_options(
        parser, quiet="nothing on stdout (the exit code is the verdict); on stderr only warnings and errors"
    )
    return parser


def summary_lines(result: Comparison, report: Path | None = None) -> list[str]:
    """The few lines ``compare`` prints: offset, changed pixels, flags, verdict."""
    temps = ", ".join(f"{t:.1f}" for t in result.temperatures)
    trend = result.offset_trend_adu_per_c
    lines = [
        f"offset NEW - OLD: {result.offset_adu:+.4g} +- {result.offset_uncertainty_adu:.2g} ADU at "
        f"{result.reference.temperature:.1f} deg C (tolerance {result.tolerance_adu:.3g} ADU)"
        + ("" if trend is None else f"; trend {trend:+.3g} ADU per deg C"),
        f"changed pixels: {result.n_changed} of {result.n_compared} ({100 * result.fraction_changed:.3g} %; "
        f"{int(np.count_nonzero(result.changed_up))} up, {int(np.count_nonzero(result.changed_down))} down) "
        f"at {result.sigma:g} sigma over {temps} deg C; limit {100 * result.max_changed_fraction:.3g} %",
    ]
    new_flags = {k: v for k, v in result.new_flags().items() if v}
    cleared = {k: v for k, v in result.cleared_flags().items() if v}
    lines.append(
        "flags: new "
        + (", ".join(f"{k} {v}" for k, v in new_flags.items()) or "none")
        + "; cleared "
        + (", ".join(f"{k} {v}" for k, v in cleared.items()) or "none")
    )
    verdict = f"verdict: {result.verdict}"
    if result.reasons:
        verdict += f" ({'; '.join(result.reasons)})"
    if report is not None:
        verdict += f"; report {report}"
    lines.append(verdict)
    return lines


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Command line: ``python -m bias_pipeline compare OLD NEW --output-dir OUT [options]``.

    Parameters
    ----------
    argv
        The arguments (default ``sys.argv[1:]``).
    prog
        The command's name in its usage and error messages.

    Returns
    -------
    int
        0 when the models agree, 1 when they differ, 2 for a usage error, 3 for unusable input,
        4 when the products cannot be written (one line on stderr, never a traceback).
    """
    from .command import guarded, setup_logging

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.sigma <= 0:
        parser.error(f"--sigma must be positive, got {args.sigma:g}")
    if args.tolerance is not None and args.tolerance < 0:
        parser.error(f"--tolerance must be 0 or more ADU, got {args.tolerance:g}")
    if not 0.0 <= args.max_changed_fraction <= 1.0:
        parser.error(f"--max-changed-fraction must lie in 0..1, got {args.max_changed_fraction:g}")
    setup_logging(args.verbose, quiet=args.quiet)

    def body() -> int:
        old = _load(args.old, "OLD")
        new = _load(args.new, "NEW")
        result = compare_models(
            old,
            new,
            temperature=args.temperature,
            sigma=args.sigma,
            tolerance_adu=args.tolerance,
            max_changed_fraction=args.max_changed_fraction,
        )
        written = write_comparison(result, args.output_dir, args.old, args.new)
        if not args.quiet:
            sys.stdout.write("\n".join(summary_lines(result, written["html"])) + "\n")
        return 1 if result.differ else 0

    def interrupted(exc: KeyboardInterrupt) -> str:
        return f"no verdict; the files in {args.output_dir} are whole (each written at once), run it again"

    return guarded(parser.prog, body, interrupted)


def _load(path: Path, what: str) -> BiasModel:
    if not path.exists():
        raise InputDataError(f"{what} {path} does not exist; give a pipeline output folder or a bias_model.fits")
    try:
        return BiasModel.load(path)
    except InputDataError as exc:
        raise InputDataError(f"{what}: {exc}") from None

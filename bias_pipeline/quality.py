"""Bad-pixel flags: a bit mask with a table naming each bit (as JWST reference files' DQ_DEF).

Flags are decided from the fit and the noise maps; the user's hot-pixel mask is bit 0. A
flagged pixel keeps its fitted values (except bit 0, which is not fitted: NaN), and is left out
of every summary statistic.

False alarms on pure noise (every pixel linear in T, Gaussian noise; ``tests/test_test_sizes.py``):

- NONLINEAR: ``p_value`` exactly (an F test, :func:`~bias_pipeline.fitting.f_threshold`, with the
  degrees of freedom of the noise the chi-square was divided by).
- NOISY / DEAD from the noise map: the map is a chi distribution of the pooled degrees of freedom
  ``d`` (35 for 5 groups of 8 frames), whose robust sigma is about ``sigma / sqrt(2 d)``; 6 of them
  above the median is a chi-square tail of ``d (1 + 6 / sqrt(2 d))^2``: below 1e-6 for ``d >= 10``
  (3 frames a group), 1e-8 at 35. Below the median the map cannot reach 6 robust sigmas for
  ``d < 18``, so DEAD never fires on noise then.
- NOISY from the clipped fraction: the default clip drops 0.3 % of Gaussian values with 8 frames
  a group (1.5 % with 3: the scale is floored at the row's typical noise, which a chi of 2
  degrees of freedom puts at 0.83 sigma), and more than 20 % of a pixel's values (4 of 15, 9 of
  40) is a binomial tail of 7e-5 for 5 groups of 3 frames and 1e-14 for 5 groups of 8.
- SATURATED: no test (a master at the ADC maximum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .fitting import f_threshold


@dataclass(frozen=True)
class DQBit:
    """One flag: its bit number, value, name and meaning."""

    bit: int
    name: str
    description: str

    @property
    def value(self) -> int:
        """``2 ** bit``."""
        return 1 << self.bit


HOT_MASK = DQBit(0, "HOT_MASK", "in the user's hot-pixel mask; left out of the fit (NaN)")
NONLINEAR = DQBit(1, "NONLINEAR", "fit chi-square beyond the p-value limit: not following the model in T")
NOISY = DQBit(2, "NOISY", "temporal noise far above typical, or many values clipped (bursts)")
DEAD = DQBit(3, "DEAD", "no or far too little temporal noise: a stuck or dead pixel")
SATURATED = DQBit(4, "SATURATED", "a master reaches the ADC maximum (4095 x scale factor)")
TELEGRAPH = DQBit(5, "TELEGRAPH", "two separated levels within groups: a telegraph pixel")
DQ_BITS: tuple[DQBit, ...] = (HOT_MASK, NONLINEAR, NOISY, DEAD, SATURATED, TELEGRAPH)

#: More of a pixel's frame values clipped than this marks it NOISY (bursts of noise).
MAX_CLIPPED_FRACTION = 0.2
#: The MAD times this is a normal distribution's sigma (1 / Phi^-1(3/4), as astropy's mad_std).
MAD_TO_SIGMA = 1.482602218505602


def robust_outliers(values: np.ndarray, valid: np.ndarray, n_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels above / below the median of ``values[valid]`` by more than ``n_sigma`` robust
    standard deviations (:func:`astropy.stats.mad_std`: the MAD scaled to a normal's sigma)."""
    selected = values[valid & np.isfinite(values)]  # a copy: reordered and overwritten below
    if selected.size == 0:
        empty = np.zeros(values.shape, dtype=bool)
        return empty, empty
    # mad_std's arithmetic (the median, then the median of the absolute deviations from it,
    # times 1 / Phi^-1(3/4)) done in place on the one copy: no further full-size temporaries.
    median = np.median(selected, overwrite_input=True)
    centre = float(median)
    np.subtract(selected, median, out=selected)
    np.abs(selected, out=selected)
    spread = float(np.median(selected, overwrite_input=True) * MAD_TO_SIGMA)
    with np.errstate(invalid="ignore"):
        return values > centre + n_sigma * spread, values < centre - n_sigma * spread


def flag_pixels(
    *,
    hot_mask: np.ndarray,
    chi2: np.ndarray | None,
    dof: int,
    noise: np.ndarray | None,
    clipped_fraction: np.ndarray | None,
    saturated: np.ndarray,
    p_value: float = 1e-4,
    noise_sigma: float = 6.0,
    max_clipped_fraction: float = MAX_CLIPPED_FRACTION,
    too_clipped: np.ndarray | None = None,
    noise_dof: float = math.inf,
    telegraph: np.ndarray | None = None,
) -> np.ndarray:
    """Combine the tests into a ``uint32`` DQ map (see :data:`DQ_BITS`).

    Parameters
    ----------
    hot_mask
        The user's mask (True = hot).
    chi2
        Per-pixel fit chi-square with ``dof`` degrees of freedom (``None`` or ``dof < 1``: no test).
    noise
        Per-pixel read-noise map (``None``: no noise tests).
    clipped_fraction
        Fraction of a pixel's frame values the combine clipped (``None``: no test).
    saturated
        True where a master reaches the ADC maximum.
    p_value
        A normal pixel is flagged NONLINEAR with this probability: ``chi2 / dof`` beyond the
        upper ``p_value`` quantile of F(``dof``, ``noise_dof``) (:func:`~bias_pipeline.fitting.f_threshold`).
    noise_sigma
        Noise outliers: beyond this many robust standard deviations of the noise map.
    max_clipped_fraction
        More clipped values than this mark a pixel NOISY (bursts of noise).
    too_clipped
        Instead of ``clipped_fraction``: True where the caller found it above
        ``max_clipped_fraction`` (a bool map, not a float64 one, for a large frame).
    noise_dof
        Degrees of freedom of the noise variance ``chi2`` was divided by (``inf``: known).
    telegraph
        True where the two-level test found a telegraph pixel
        (:func:`bias_pipeline.telegraph.telegraph_pixels`; ``None``: no test).

    Returns
    -------
    numpy.ndarray
        uint32 bit mask.

    Examples
    --------
    >>> hot = np.array([[True, False, False]])
    >>> dq = flag_pixels(hot_mask=hot, chi2=np.array([[1.0, 2.0, 500.0]]), dof=3, noise=None,
    ...                  clipped_fraction=None, saturated=np.zeros((1, 3), bool))
    >>> dq.tolist()
    [[1, 0, 2]]
    """
    dq = np.zeros(hot_mask.shape, dtype=np.uint32)
    dq[hot_mask] |= HOT_MASK.value
    valid = ~hot_mask
    if chi2 is not None and dof >= 1:
        with np.errstate(invalid="ignore"):
            dq[valid & (chi2 > dof * f_threshold(dof, noise_dof, p_value))] |= NONLINEAR.value
    if noise is not None:
        high, low = robust_outliers(noise, valid, noise_sigma)
        dq[valid & high] |= NOISY.value
        with np.errstate(invalid="ignore"):
            dq[valid & (low | (noise <= 0))] |= DEAD.value
    if clipped_fraction is not None:
        with np.errstate(invalid="ignore"):
            dq[valid & (clipped_fraction > max_clipped_fraction)] |= NOISY.value
    if too_clipped is not None:
        dq[valid & too_clipped] |= NOISY.value
    dq[valid & saturated] |= SATURATED.value
    if telegraph is not None:
        dq[valid & telegraph] |= TELEGRAPH.value
    return dq


def describe(dq: np.ndarray) -> dict[str, int]:
    """Number of pixels carrying each flag."""
    return {bit.name: int(np.count_nonzero(dq & bit.value)) for bit in DQ_BITS}

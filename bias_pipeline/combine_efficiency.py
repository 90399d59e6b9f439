"""What a combine does to a master's variance and to its noise map, measured once by simulation.

Step 3 weighs a master of ``n`` frames by ``n / e^2`` (``e`` the combine's efficiency: the
master's standard error over ``noise / sqrt(n)``) and pools the masters' ``NOISE`` maps into the
read noise. Both depend on the combine as implemented, not on a textbook limit: a sigma-clipped
mean of 3 values with a MAD-based scale loses 12 % in variance (``e^2`` = 1.12, not 1), a median
of 8 quantised values has ``e^2`` = 1.35..1.41 (not the large-``n`` 1.571), and a noise map of 3
frames per pixel is biased low by about 1 %. :func:`combine_factors` measures ``e^2`` and the noise
map's bias ``E[NOISE^2] / sigma^2`` on pure Gaussian noise through :func:`~bias_pipeline.combine.combine_sorted`
(the reference of the compiled combine, which gives the same values), with a fixed seed, once
per (method, frames, clip options, quantisation) in a process.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .combine import COMBINE_METHODS, combine_sorted, sort_frames

#: Pixels of the simulation: the efficiencies come out to ~0.3 % (a variance from 2^18 values).
SIMULATED_SHAPE = (512, 512)
#: The simulation's seed: the same factors in every run.
SEED = 20261202


@dataclass(frozen=True)
class CombineFactors:
    """A combine's effect on Gaussian noise of unit variance.

    Attributes
    ----------
    variance
        ``e^2``: ``n`` times the master's variance (1 for a plain mean).
    noise_bias
        ``E[NOISE^2]``: the mean square of the noise map (1 when unbiased).
    """

    variance: float
    noise_bias: float


def quantum_ratio(quantum: float, noise: float) -> float:
    """The quantisation step in units of the noise, rounded to the grid :func:`combine_factors`
    is cached on (0 when either is unknown or not positive).

    >>> quantum_ratio(16.0, 32.33), quantum_ratio(0.0, 30.0), quantum_ratio(16.0, float("nan"))
    (0.49, 0.0, 0.0)
    """
    if not (quantum > 0 and noise > 0 and math.isfinite(noise)):
        return 0.0
    return round(min(quantum / noise, 3.0), 2)


@functools.lru_cache(maxsize=256)
def combine_factors(
    method: str, n_frames: int, clip_sigma: float = 3.0, clip_iters: int = 5, quantum: float = 0.0
) -> CombineFactors:
    """The efficiency squared and the noise map's bias of a combine of ``n_frames`` values.

    Parameters
    ----------
    method
        One of :data:`~bias_pipeline.combine.COMBINE_METHODS`.
    n_frames
        Frames combined.
    clip_sigma, clip_iters
        The sigma-clip's options.
    quantum
        The values' quantisation step in units of their total noise (:func:`quantum_ratio`; 0:
        continuous values). Rounding matters for a median of an odd number of values, which is
        itself a quantised value.

    Returns
    -------
    CombineFactors
        Exact (1, 1) for a mean and for fewer than 3 frames (the combine's mean then); for one
        frame ``noise_bias`` is NaN (no noise map).

    Raises
    ------
    ValueError
        For an unknown method or fewer than one frame.

    Examples
    --------
    >>> combine_factors("mean", 8)
    CombineFactors(variance=1.0, noise_bias=1.0)
    >>> f = combine_factors("sigma-clip", 3)
    >>> 1.08 < f.variance < 1.16, 0.97 < f.noise_bias < 1.01
    (True, True)
    """
    if method not in COMBINE_METHODS:
        raise ValueError(f"unknown combine method {method!r}; use one of {', '.join(COMBINE_METHODS)}")
    if n_frames < 1:
        raise ValueError("a combine needs one frame or more")
    if n_frames == 1:
        return CombineFactors(1.0, math.nan)
    if method == "mean" or n_frames < 3:  # the plain mean and sample deviation (a median of two is the mean)
        return CombineFactors(1.0, 1.0)
    rng = np.random.default_rng(SEED)
    # Total noise 1: the Gaussian part and the rounding's q^2 / 12 together, as a NOISE map sees them.
    gaussian = math.sqrt(max(1.0 - quantum**2 / 12.0, 0.25))
    truth = rng.uniform(0.0, max(quantum, 1.0), SIMULATED_SHAPE)  # every rounding phase
    values = truth[None] + rng.normal(0.0, gaussian, (n_frames, *SIMULATED_SHAPE))
    if quantum > 0:
        values = np.rint(values / quantum) * quantum
    values = values.astype(np.float32)
    plain = values.astype(np.float64).mean(axis=0)
    sample_variance = values.astype(np.float64).var(axis=0, ddof=1)
    # sort_frames sorts (and overwrites) ``values``: the statistics above are taken first.
    combined = combine_sorted(
        sort_frames(values), method, clip_sigma=clip_sigma, clip_iters=clip_iters, quantum=quantum
    )
    # The plain mean as a control variate: its variance is known (1 / n, the total noise being
    # 1), so only the combine's departure from it is estimated.
    departure = combined.master.astype(np.float64) - plain
    error = plain - truth
    variance = 1.0 / n_frames + 2.0 * float(np.mean(error * departure)) + float(np.mean(departure**2))
    # Likewise the sample variance (mean 1) for the noise map.
    noise_bias = 1.0 + float(np.mean(combined.noise.astype(np.float64) ** 2 - sample_variance))
    return CombineFactors(n_frames * variance, noise_bias)

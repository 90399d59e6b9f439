"""Step 3's real path, :func:`fit_model`, against known truth: simulated masters with known
intercept, slope and read noise (pooled noise, shrinkage, inverse-variance weights, DQ flags)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from bias_pipeline import PipelineConfig
from bias_pipeline.combine_efficiency import combine_factors
from bias_pipeline.errors import InputDataError
from bias_pipeline.quality import HOT_MASK, NONLINEAR
from bias_pipeline.steps.step3_fit_bias_model import fit_model

SHAPE = (48, 64)
QUIET = PipelineConfig(show_progress=False)
TEMPS = (-10.0, 0.0, 10.0, 20.0, 30.0)


@dataclass(frozen=True)
class MemoryMaster:
    """A master held in memory, with what step 3 asks of one (the ``Master`` protocol)."""

    label: str
    temperature: float
    n_frames: int
    data: np.ndarray
    noise: np.ndarray | None = None
    method: str = "mean"

    def load(self) -> np.ndarray:
        return self.data.copy()

    def load_extension(self, name: str) -> np.ndarray | None:
        return self.noise.copy() if name == "NOISE" and self.noise is not None else None


@dataclass
class Truth:
    a: np.ndarray
    b: np.ndarray
    sigma: np.ndarray  # read noise of one frame


def simulate(frames: int = 8, seed: int = 0, curve: dict | None = None) -> tuple[list[MemoryMaster], Truth]:
    """Masters at :data:`TEMPS`, each the mean of ``frames`` frames of ``a + b T`` plus read noise
    ``sigma``; each ``NOISE`` map is the standard deviation of its ``frames`` frames, as step 2
    measures it. ``curve`` maps a pixel to a quadratic term added there (a nonlinear pixel)."""
    rng = np.random.default_rng(seed)
    truth = Truth(rng.normal(3200, 30, SHAPE), rng.normal(3, 0.5, SHAPE), rng.uniform(18, 26, SHAPE))
    masters = []
    for t in TEMPS:
        stack = truth.a + truth.b * t + truth.sigma * rng.standard_normal((frames, *SHAPE))
        for (row, column), c in (curve or {}).items():
            stack[:, row, column] += c * (t - 10.0) ** 2
        noise = stack.std(axis=0, ddof=1).astype(np.float32)
        masters.append(MemoryMaster(f"{t:.1f}", t, frames, stack.mean(axis=0).astype(np.float32), noise))
    return masters, truth


def test_recovers_intercept_and_slope_within_their_errors():
    masters, truth = simulate()
    model = fit_model(masters, None, QUIET)
    assert model.covariance is not None and model.read_noise is not None
    for index, (fitted, true) in enumerate(((model.a_map, truth.a), (model.b_map, truth.b))):
        pull = (fitted - true) / np.sqrt(model.covariance[index, index])
        # The stated errors are right: the pulls scatter as a unit normal (3072 pixels).
        assert abs(float(np.mean(pull))) < 0.1, index
        assert 0.85 < float(np.std(pull)) < 1.15, index
    # The pooled read noise: 5 groups x 7 degrees of freedom, unbiased.
    ratio = model.read_noise / truth.sigma
    assert abs(float(np.mean(ratio**2)) - 1.0) < 0.02
    assert model.group_temperatures == TEMPS and model.group_frames == (8,) * 5


def test_a_pixel_that_bends_is_flagged_nonlinear():
    masters, _ = simulate(curve={(5, 7): 1.0, (30, 40): 0.5})  # 400 and 200 ADU at the ends
    model = fit_model(masters, None, QUIET)
    assert model.dq is not None
    nonlinear = (model.dq & NONLINEAR.value) != 0
    assert nonlinear[5, 7] and nonlinear[30, 40]
    # At p = 1e-4 the straight pixels are hardly ever flagged.
    assert nonlinear.sum() <= 4


def test_a_masked_pixel_is_nan_and_flagged():
    masters, truth = simulate()
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2, 3] = True
    model = fit_model(masters, mask, QUIET)
    assert np.isnan(model.a_map[2, 3]) and np.isnan(model.b_map[2, 3])
    assert model.dq is not None and model.dq[2, 3] & HOT_MASK.value
    assert np.isfinite(model.a_map[~mask]).all() and np.isfinite(model.b_map[~mask]).all()
    assert model.mask[2, 3] and model.mask.sum() == 1


@pytest.mark.parametrize("method", ["mean", "median"])
def test_a_noisier_master_counts_less(method):
    """Weights are inverse variances: a master of one frame is nine times as noisy as one of nine
    (for a mean; a median of nine has the variance of a mean of 9 / e^2, e^2 its efficiency for
    nine values, and a "median" of one frame is that frame) and pulls the line as much less hard
    (the read noise is pooled, so it is the same for all)."""
    temps, values = (0.0, 10.0, 20.0), (100.0, 130.0, 140.0)
    weights = [n / combine_factors(method, n).variance for n in (9, 1, 9)]
    noise = np.full((2, 3), 5.0, dtype=np.float32)

    def masters(frames: tuple[int, ...]) -> list[MemoryMaster]:
        return [
            MemoryMaster(f"{t:.1f}", t, n, np.full((2, 3), v, dtype=np.float32), noise, method)
            for t, v, n in zip(temps, values, frames, strict=True)
        ]

    weighted = fit_model(masters((9, 1, 9)), None, QUIET)
    slope, intercept = np.polyfit(temps, values, 1, w=np.sqrt(weights))
    assert weighted.b_map[0, 0] == pytest.approx(slope, abs=1e-4)
    assert weighted.a_map[0, 0] == pytest.approx(intercept, abs=1e-3)
    equal = fit_model(masters((9, 9, 9)), None, QUIET)
    # The middle master sits 10 ADU above the line through the others: weighed less, it lifts
    # the intercept less.
    assert abs(weighted.a_map[0, 0] - 100.0) < abs(equal.a_map[0, 0] - 100.0)


def test_inputs_are_not_changed():
    masters, _ = simulate()
    before = [dataclasses.asdict(m) for m in masters]
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1, 1] = 1
    fit_model(masters, mask, QUIET)
    for old, master in zip(before, masters, strict=True):
        np.testing.assert_array_equal(old["data"], master.data)
        np.testing.assert_array_equal(old["noise"], master.noise)
    assert mask.sum() == 1 and mask.dtype == np.uint8


def test_needs_two_distinct_temperatures():
    masters, _ = simulate()
    same = [dataclasses.replace(m, temperature=5.0) for m in masters]
    with pytest.raises(InputDataError, match="needs masters at 2 or more distinct temperatures"):
        fit_model(same, None, QUIET)

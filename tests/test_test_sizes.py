"""Honest test sizes: on pure noise (every pixel exactly linear in T, Gaussian read noise), the
NONLINEAR test flags the fraction it promises, the reduced chi-square averages 1, the pulls of
a and b have unit spread, NOISY raises no more false alarms than its threshold implies, and a
master's row noise widens the errors by the expected factor. Tolerances are binomial (or the
issue's goals, whichever is tighter), from the number of pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.special import bdtrc, chdtrc, pdtrc

from bias_pipeline import PipelineConfig, run_bias_pipeline
from bias_pipeline.combine_efficiency import combine_factors
from bias_pipeline.fitting import f_threshold
from bias_pipeline.quality import MAD_TO_SIGMA, MAX_CLIPPED_FRACTION, NOISY, NONLINEAR
from bias_pipeline.simulate import SimulationSpec, simulate_dataset
from bias_pipeline.steps.step3_fit_bias_model import fit_model, noise_shrinkage

SHAPE = (200, 320)  # 64,000 pixels, as the measurement
PIXELS = SHAPE[0] * SHAPE[1]
PURE_NOISE = {"hot_fraction": 0, "noisy_fraction": 0, "dead_fraction": 0, "cosmic_rate": 0, "shape": SHAPE}


def _run(tmp_path_factory, frames: int, p_value: float, method: str = "sigma-clip"):
    root = tmp_path_factory.mktemp(f"noise{frames}")
    truth = simulate_dataset(root, SimulationSpec(frames_per_temperature=frames, seed=7, **PURE_NOISE))
    config = PipelineConfig(show_progress=False, evaluation=False, combine_method=method, nonlinear_pvalue=p_value)
    result = run_bias_pipeline(truth.raw_dir, root / "out", None, generate_set=False, config=config)
    used = sum(master.load_extension("NUSED").astype(np.int64) for master in result.masters)
    return truth, result.model, used


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Pure noise, 5 temperatures x 8 frames, fitted at p = 0.01 and 0.001; and 5 x 3 frames."""
    eight = [_run(tmp_path_factory, 8, p) for p in (0.01, 0.001)]
    return {"8@0.01": eight[0], "8@0.001": eight[1], "3": _run(tmp_path_factory, 3, 0.01)}


def _pulls(truth, model) -> tuple[np.ndarray, np.ndarray]:
    good = ~model.mask & (model.dq == 0)
    pull_a = (model.a_map - truth.a_map) / np.sqrt(model.covariance[0, 0])
    pull_b = (model.b_map - truth.b_map) / np.sqrt(model.covariance[1, 1])
    return pull_a[good], pull_b[good]


@pytest.mark.parametrize(("key", "p_value", "goal"), [("8@0.01", 0.01, 0.2), ("8@0.001", 0.001, 0.5)])
def test_nonlinear_flags_the_promised_fraction(runs, key, p_value, goal):
    _, model, _ = runs[key]
    fitted = ~model.mask
    rate = np.mean(model.dq[fitted] & NONLINEAR.value > 0)
    binomial = 4 * math.sqrt(p_value * (1 - p_value) / fitted.sum())
    assert abs(rate - p_value) <= binomial  # 4 binomial sigmas: 16 % of p at 0.01, 50 % at 0.001
    assert abs(rate - p_value) <= goal * p_value  # the goal


def test_mean_reduced_chi_square_is_one(runs):
    _, model, _ = runs["8@0.01"]
    reduced = model.chi2[~model.mask]
    dof = int(model.ngroups.max()) - (model.degree + 1)
    # A reduced chi-square of `dof` degrees of freedom scatters by sqrt(2 / dof) per pixel.
    tolerance = min(0.02, 4 * math.sqrt(2 / dof) / math.sqrt(reduced.size))
    assert abs(float(np.mean(reduced)) - 1.0) <= tolerance


@pytest.mark.parametrize("key", ["8@0.01", "3"])
def test_pulls_have_unit_spread(runs, key):
    truth, model, _ = runs[key]
    for pulls in _pulls(truth, model):
        # Goal 0.95..1.05; the sample sd of 64,000 pulls scatters by 1 / sqrt(2 N) ~ 0.003.
        assert 0.95 <= float(np.std(pulls)) <= 1.05
        assert abs(float(np.mean(pulls))) < 4 / math.sqrt(pulls.size)


def test_noisy_false_alarms_as_its_thresholds_imply(runs):
    """NOISY on pure noise, for each of its two rules: the noise map beyond its median + 6 robust
    sigmas (the map is a chi distribution of the pooled degrees of freedom, whose tail there gives
    the false-alarm rate), and more than 20 % of a pixel's values clipped (a binomial tail of the
    measured clip rate per value). The observed count must not be improbably high for the sum of
    the two (Poisson), and the promised rate is well below 0.1 %."""
    for key in ("8@0.01", "3"):
        _, model, used = runs[key]
        fitted = ~model.mask
        noise = model.read_noise[fitted].astype(np.float64)
        frames = int(sum(model.group_frames))
        dof = frames - len(model.group_frames)
        centre = np.median(noise)
        spread = np.median(np.abs(noise - centre)) * MAD_TO_SIGMA
        from_map = float(chdtrc(dof, dof * (centre + 6 * spread) ** 2 / np.mean(noise**2)))
        clip_rate = 1.0 - float(np.mean(used[fitted])) / frames
        from_clipping = float(bdtrc(int(MAX_CLIPPED_FRACTION * frames), frames, clip_rate))
        expected = fitted.sum() * (from_map + from_clipping)
        flagged = int(np.count_nonzero(model.dq[fitted] & NOISY.value))
        assert from_map + from_clipping < 1e-3
        assert flagged == 0 or float(pdtrc(flagged - 1, max(expected, 1e-12))) > 1e-4, (flagged, expected)


def test_f_test_keeps_its_size_on_a_sensor_with_spread():
    """The shrunk noise's effective degrees of freedom (dof / w) on a sensor whose pixels' noise
    really differs (10 % lognormal): the F test's rate stays within the goals, where the
    chi-square (noise taken as known) would flag too many."""
    rng = np.random.default_rng(5)
    n, dof = 400_000, 35
    variance = 1000.0 * np.exp(rng.normal(0.0, 0.1, n))
    estimate = variance * rng.chisquare(dof, n) / dof
    shrinkage = noise_shrinkage(np.sqrt(estimate), dof, np.ones(n, dtype=bool))
    assert shrinkage is not None and 0.05 < shrinkage.weight < 0.5
    shrunk = shrinkage.apply(np.sqrt(estimate)).astype(np.float64) ** 2
    reduced = variance * rng.chisquare(3, n) / 3 / shrunk
    for p_value, goal in ((0.01, 0.2), (0.001, 0.5)):
        rate = np.mean(reduced > f_threshold(3, shrinkage.effective_dof, p_value))
        assert abs(rate - p_value) <= goal * p_value
    assert np.mean(reduced > f_threshold(3, math.inf, 0.01)) > 1.05 * 0.01  # what the known-noise test would do


@dataclass
class _Master:
    """A master in memory (the :class:`~bias_pipeline.master_writer.Master` protocol)."""

    label: str
    temperature: float
    n_frames: int
    image: np.ndarray
    noise: np.ndarray
    method: str = "mean"
    row_noise: float = 0.0
    noise_median: float = math.nan

    def load(self) -> np.ndarray:
        return self.image

    def load_extension(self, name: str) -> np.ndarray | None:
        return self.noise if name == "NOISE" else None


def test_row_noise_widens_the_errors_by_the_expected_factor():
    rng = np.random.default_rng(3)
    shape, sigma, rho = (40, 50), 30.0, 20.0
    temps = (-10.0, 0.0, 10.0, 20.0, 30.0)

    def masters(row_noise: float) -> list[_Master]:
        return [
            _Master(
                f"{t:g}", t, 8, (1000 + 3 * t + rng.normal(0, sigma / math.sqrt(8), shape)).astype(np.float32),
                np.full(shape, sigma, dtype=np.float32), row_noise=row_noise, noise_median=sigma,
            )
            for t in temps
        ]  # fmt: skip

    config = PipelineConfig(show_progress=False)
    plain = fit_model(masters(0.0), config=config)
    rowed = fit_model(masters(rho), config=config)
    shrinkage = noise_shrinkage(np.full(shape, sigma), 5 * 7, np.ones(shape, dtype=bool))
    assert shrinkage is not None
    expected = math.sqrt((shrinkage.centre + rho**2) / shrinkage.centre)  # a mean: e = 1, R = rho^2
    for index in (0, 1):
        ratio = np.sqrt(rowed.covariance[index, index] / plain.covariance[index, index])
        assert np.allclose(ratio, expected, rtol=1e-5)
    assert np.array_equal(rowed.read_noise, plain.read_noise)  # the READNOISE map stays the pixels' own


def test_combine_efficiencies_match_the_known_limits():
    # A mean is exact; a median of 2 is the mean; a median of many approaches pi / 2.
    assert combine_factors("mean", 5) == combine_factors("median", 2) == combine_factors("sigma-clip", 2)
    assert abs(combine_factors("median", 31).variance - math.pi / 2) < 0.05
    three = combine_factors("sigma-clip", 3)
    assert three.variance > 1.05  # the sigma-clip's known loss at 3 frames a group

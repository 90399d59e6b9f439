"""The noise-floor verdict of step 5 against the simulator's truth: on pure noise the residuals
are their expected errors (ratio 1 within the statistical tolerance) and the verdict says so;
with a population of quadratic pixels fitted with a line the ratios rise by the factor the
truth predicts, and the verdict says the model is not at the floor."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import ndtr, stdtr

from bias_pipeline import PipelineConfig, run_bias_pipeline
from bias_pipeline.evaluation import (
    HALF_NORMAL_MEDIAN,
    ROBUST_RMS_RELATIVE_SD,
    evaluate_masters,
    expected_errors,
    floor_limit,
    noise_floor_verdict,
    robust_rms,
)
from bias_pipeline.frames import reason_kind
from bias_pipeline.report import reason_groups
from bias_pipeline.simulate import SimulationSpec, simulate_dataset

SHAPE = (64, 96)
PURE = SimulationSpec(
    shape=SHAPE, frames_per_temperature=8, hot_fraction=0, noisy_fraction=0, dead_fraction=0, cosmic_rate=0, seed=5
)
QUADRATIC = SimulationSpec(
    shape=SHAPE,
    frames_per_temperature=8,
    hot_fraction=0,
    noisy_fraction=0,
    dead_fraction=0,
    cosmic_rate=0,
    quadratic_fraction=0.3,
    seed=6,
)


def _run(spec: SimulationSpec, root: Path):
    truth = simulate_dataset(root / "sim", spec)
    result = run_bias_pipeline(truth.raw_dir, root / "out", None, config=PipelineConfig(show_progress=False))
    return truth, result


@pytest.fixture(scope="module")
def pure(tmp_path_factory: pytest.TempPathFactory):
    return _run(PURE, tmp_path_factory.mktemp("pure"))


@pytest.fixture(scope="module")
def quadratic(tmp_path_factory: pytest.TempPathFactory):
    return _run(QUADRATIC, tmp_path_factory.mktemp("quadratic"))


def test_robust_rms_of_gaussian_values_is_their_sigma_within_its_stated_tolerance() -> None:
    rng = np.random.default_rng(0)
    n, trials = 4000, 400
    values = np.array([robust_rms(rng.normal(0, 3.0, n)) / 3.0 for _ in range(trials)])
    sd = ROBUST_RMS_RELATIVE_SD / math.sqrt(n)
    assert abs(values.mean() - 1) < 4 * sd / math.sqrt(trials)
    assert values.std() == pytest.approx(sd, rel=4 / math.sqrt(2 * trials))


def test_on_pure_noise_the_ratios_are_one_and_the_verdict_says_at_the_floor(pure) -> None:
    _, result = pure
    for row in result.summary:
        tolerance = row["per_error_tolerance"]
        assert 0 < row["leverage"] < 1
        for key in ("residual_per_error", "heldout_residual_per_error"):
            # 4 sigma of the robust rms over N pixels, and the pooled noise's own scatter
            # (35 degrees of freedom: about 1 / 35 on a variance, half that on an rms).
            assert abs(row[key] - 1) < 4 * tolerance + 0.5 / 35, (row["label"], key, row[key])
        # The expected error of a master of 8 frames of 32 ADU read noise: 32 e / sqrt(8).
        assert 32 / math.sqrt(8) < row["expected_error_median"] < 1.1 * 32 / math.sqrt(8)
    verdict = noise_floor_verdict(result.summary)
    assert verdict.at_floor is True
    assert verdict.sentence.startswith("The model is at the noise floor")
    assert f"{verdict.heldout:.2f} x" in verdict.sentence


def test_a_fit_on_frames_of_median_masters_is_at_the_floor_too(pure, tmp_path: Path) -> None:
    """A fit on frames follows the frames' mean, not the median master: the in-sample residual's
    expected variance is err^2 (1 - h / e^2), not err^2 (1 - h) (which would read 1.2 x here)."""
    truth, _ = pure
    config = PipelineConfig(show_progress=False, fit_on="frames", combine_method="median")
    result = run_bias_pipeline(truth.raw_dir, tmp_path / "out", None, config=config)
    for row in result.summary:
        for key in ("residual_per_error", "heldout_residual_per_error"):
            assert abs(row[key] - 1) < 4 * row["per_error_tolerance"] + 0.5 / 35, (row["label"], key, row[key])
    assert noise_floor_verdict(result.summary).at_floor is True


def _predicted_ratio(mu: np.ndarray) -> float:
    """The robust rms of ``mu + N(0, 1)`` over pixels: m with mean P(|mu + e| < m) = 1/2."""
    low, high = 0.0, 10.0 + float(np.abs(mu).max())
    for _ in range(60):
        m = 0.5 * (low + high)
        inside = float(np.mean(ndtr(m - mu) - ndtr(-m - mu)))
        low, high = (m, high) if inside < 0.5 else (low, m)
    return 0.5 * (low + high) / HALF_NORMAL_MEDIAN


def test_quadratic_pixels_fitted_with_a_line_raise_the_ratio_by_the_predicted_factor(quadratic) -> None:
    truth, result = quadratic
    model = result.model
    assert model.c_map is None and truth.c_map is not None
    temps = np.array([float(r["temperature"]) for r in result.summary])
    expected = expected_errors(result.masters)
    weights = np.array([e.n_frames / e.variance_factor for e in expected])
    design = np.stack([np.ones_like(temps), temps], axis=1)
    hat = design @ np.linalg.solve(design.T @ (weights[:, None] * design), design.T * weights)
    leverage = np.diag(hat)
    np.testing.assert_allclose(leverage, [r["leverage"] for r in result.summary], rtol=1e-4)
    valid = ~model.flagged
    c = truth.c_map[valid].astype(np.float64)
    # The line through c T^2 leaves (I - H) T^2 c at each master: the residual's mean.
    bent = (np.eye(len(temps)) - hat) @ temps**2
    for k, row in enumerate(result.summary):
        error = expected[k].error_map(model.read_noise)[valid].astype(np.float64)
        mu = bent[k] * c / (error * math.sqrt(1 - leverage[k]))
        predicted = _predicted_ratio(mu)
        tolerance = row["per_error_tolerance"] * predicted
        assert row["residual_per_error"] == pytest.approx(predicted, abs=4 * tolerance + 0.5 / 35), row["label"]
    worst = max(result.summary, key=lambda r: r["heldout_residual_per_error"])
    assert worst["heldout_residual_per_error"] > floor_limit(worst["per_error_tolerance"])
    verdict = noise_floor_verdict(result.summary)
    assert verdict.at_floor is False
    assert verdict.sentence.startswith("The model is not at the noise floor")
    assert f"{worst['heldout_residual_per_error']:.2f} x" in verdict.sentence
    assert f"at {worst['label']} deg C" in verdict.sentence


def test_the_significance_map_is_a_standard_normal_on_pure_noise_and_not_with_bent_pixels(pure, quadratic) -> None:
    beyond = {}
    for name, (_, result) in (("pure", pure), ("quadratic", quadratic)):
        evaluation = next(evaluate_masters(result.model, result.masters))
        shown, factor = evaluation.shown["significance"]
        assert factor == 1 and shown.shape == SHAPE
        values = shown[np.isfinite(shown)]
        assert values.size == np.count_nonzero(~result.model.flagged)
        beyond[name] = float(np.mean(np.abs(values) > 3))
        if name == "pure":
            assert robust_rms(values) == pytest.approx(
                1, abs=4 * ROBUST_RMS_RELATIVE_SD / math.sqrt(values.size) + 0.5 / 35
            )
        assert (result.output_dir / "evaluation" / "significance_-10.0C.png").is_file()
    # Beyond 3 sigma by chance: the pooled noise has 5 x (8 - 1) = 35 degrees of freedom, so the
    # ratio is Student's t of 35 (0.49 %), not a normal (0.27 %).
    rate = 2 * float(stdtr(35, -3.0))
    sigma = math.sqrt(rate / (SHAPE[0] * SHAPE[1]))
    assert abs(beyond["pure"] - rate) < 4 * sigma
    assert beyond["quadratic"] > rate + 10 * sigma


def test_the_verdict_without_expected_errors_says_why() -> None:
    verdict = noise_floor_verdict([{"label": "5.0", "heldout_residual_per_error": math.nan}])
    assert verdict.at_floor is None and verdict.sentence.startswith("No noise-floor verdict")


def test_the_log_states_the_verdict(pure) -> None:
    _, result = pure
    log = (result.output_dir / "pipeline.log").read_text()
    assert "The model is at the noise floor: in-sample residuals" in log


def test_rejections_group_by_their_text_with_a_real_example() -> None:
    reasons = [
        "values up to 65520 do not fit the 12-bit data declared by --input-bits 12",
        "values up to 4095 do not fit the 12-bit data declared by --input-bits 12",
        "truncated: file has 5760 bytes, its header needs 8640",
    ]
    groups = reason_groups(reasons)
    assert groups[0] == (reason_kind(reasons[0]), 2, reasons[0]) and "65520" not in groups[0][0]
    assert groups[1] == ("truncated", 1, reasons[2])

"""Issue 15: telegraph pixels get their own DQ bit (TELEGRAPH), told apart from noisy pixels.

The statistics are tested on arrays drawn as the simulator draws frames (12-bit values of a
2 DN read noise, stored x16); the pipeline end to end on a simulated CMOS set against its truth.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import BiasModel, PipelineConfig, run_bias_pipeline
from bias_pipeline.master_writer import MasterFrame
from bias_pipeline.quality import DQ_BITS, HOT_MASK, NOISY, TELEGRAPH, describe, flag_pixels
from bias_pipeline.simulate import SimulationSpec, simulate_dataset
from bias_pipeline.steps.step3_fit_bias_model import fit_model
from bias_pipeline.telegraph import (
    BETWEEN_EXTENSION,
    FALSE_ALARM,
    NULL_SAMPLES,
    WITHIN_EXTENSION,
    decide,
    level_statistics,
    telegraph_pixels,
    within_level_limit,
)

SCALE = 16  # 12-bit values stored x16
READ_NOISE_DN = 2.0
RATE = 0.3  # the simulator's default switching probability per frame


def draw(
    sizes: tuple[int, ...],
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    amplitude_dn: float = 0.0,
    special: np.ndarray | None = None,
    noise_factor: float = 1.0,
    cosmic_sigma: tuple[float, float] | None = None,
) -> list[np.ndarray]:
    """Per group, the ``(n, rows, columns)`` sorted stored values of pixels of random levels with
    Gaussian read noise, rounded to 12-bit DN and stored x16 (as the simulator). ``special``
    pixels carry: a telegraph signal of ``amplitude_dn`` (a Markov chain through all frames,
    switching with :data:`RATE`), ``noise_factor`` times the read noise, or one cosmic-ray hit
    of ``cosmic_sigma`` (uniform range, read-noise sigmas) in one frame of one group."""
    level = rng.uniform(100.0, 300.0, shape)
    special = np.zeros(shape, dtype=bool) if special is None else special
    state = rng.random(shape) < 0.5
    hit_group = rng.integers(0, len(sizes), shape)
    groups = []
    for g, n in enumerate(sizes):
        values = np.empty((n, *shape))
        hit_frame = rng.integers(0, n, shape)
        for k in range(n):
            noise = rng.normal(0.0, READ_NOISE_DN, shape)
            noise[special] *= noise_factor
            dn = level + noise + np.where(special & state, amplitude_dn, 0.0)
            if cosmic_sigma is not None:
                hit = special & (hit_group == g) & (hit_frame == k)
                dn[hit] += rng.uniform(*cosmic_sigma, int(hit.sum())) * READ_NOISE_DN
            values[k] = np.rint(dn) * SCALE
            state ^= rng.random(shape) < RATE
        values.sort(axis=0)
        groups.append(values)
    return groups


def flagged(groups: list[np.ndarray]) -> np.ndarray:
    """The TELEGRAPH decision of sorted groups (:func:`level_statistics`, then :func:`decide`)."""
    maps = [level_statistics(values, values.shape[2]) for values in groups]
    assert all(m is not None for m in maps)
    return decide([m[0] for m in maps], [m[1] for m in maps], [v.shape[0] for v in groups])  # type: ignore[index]


def binomial_reach(n: int, p: float, sigmas: float = 4.0) -> float:
    return sigmas * math.sqrt(n * p * (1.0 - p))


def test_false_alarm_rate_on_quantised_noise():
    """Pure Gaussian noise, quantised as the data, groups of unequal sizes: TELEGRAPH at the rate
    promised, within 4 sigmas of the binomial count and of the Monte Carlo quantile's own error
    (its exceedances are binomial too: a relative error of 1 / sqrt(NULL_SAMPLES * rate))."""
    rng = np.random.default_rng(1)
    sizes = (10, 8, 12, 10, 9)
    shape = (250, 2000)
    found = int(flagged(draw(sizes, shape, rng)).sum())
    pixels = shape[0] * shape[1]
    expected = pixels * FALSE_ALARM
    spread = math.hypot(binomial_reach(pixels, FALSE_ALARM, 1.0), expected / math.sqrt(NULL_SAMPLES * FALSE_ALARM))
    assert abs(found - expected) <= 4 * spread, (found, expected, spread)


@pytest.fixture(scope="module")
def telegraph_population() -> tuple[np.ndarray, np.random.Generator]:
    """2 % of the pixels special, in a frame wide enough for the rows' typical noise."""
    rng = np.random.default_rng(2)
    return rng.random((100, 2000)) < 0.02, rng


def test_three_sigma_levels_are_flagged_and_normal_pixels_are_not(telegraph_population):
    """Issue goal, 5 groups x 10 frames: two levels 3 read-noise sigmas apart >= 80 % TELEGRAPH,
    normal pixels < 0.5 % (and within binomial reach of the promised rate)."""
    special, rng = telegraph_population
    decision = flagged(draw((10,) * 5, special.shape, rng, amplitude_dn=3 * READ_NOISE_DN, special=special))
    assert decision[special].mean() >= 0.80
    normal = int(decision[~special].sum())
    assert normal / (~special).sum() < 0.005
    assert normal <= (~special).sum() * FALSE_ALARM + binomial_reach(int((~special).sum()), FALSE_ALARM)


def test_two_sigma_levels_are_flagged_with_enough_frames(telegraph_population):
    """Two levels 2 sigmas apart are mostly told apart given the frames: >= 95 % TELEGRAPH with
    5 groups of 30 frames. (With 10 frames a group the values do not hold it: about half.)"""
    special, rng = telegraph_population
    decision = flagged(draw((30,) * 5, special.shape, rng, amplitude_dn=2 * READ_NOISE_DN, special=special))
    assert decision[special].mean() >= 0.95


def test_noisy_pixels_are_not_telegraph(telegraph_population):
    """Five times the read noise, Gaussian: the within-level scatter is far beyond the read noise."""
    special, rng = telegraph_population
    decision = flagged(draw((10,) * 5, special.shape, rng, noise_factor=5.0, special=special))
    count = int(special.sum())
    assert decision[special].sum() <= count * FALSE_ALARM + binomial_reach(count, FALSE_ALARM)


def test_single_cosmic_hits_are_not_telegraph(telegraph_population):
    """One hit of 5 to 500 sigmas in one frame of one group makes no level (levels of two values
    that survive dropping a group's extreme value; the hit's partner far from it)."""
    special, rng = telegraph_population
    decision = flagged(draw((10,) * 5, special.shape, rng, cosmic_sigma=(5.0, 500.0), special=special))
    count = int(special.sum())
    assert decision[special].sum() <= count * FALSE_ALARM + binomial_reach(count, FALSE_ALARM)


def test_compiled_and_numpy_statistics_agree(monkeypatch):
    rng = np.random.default_rng(4)
    values = np.sort(np.rint(rng.normal(200.0, 2.0, (10, 6, 70))) * SCALE, axis=0).astype(np.uint16)
    compiled = level_statistics(values, 70, pool=1)
    monkeypatch.setenv("BIAS_PIPELINE_KERNELS", "numpy")
    reference = level_statistics(values, 70, pool=1)
    assert compiled is not None and reference is not None
    np.testing.assert_allclose(compiled, reference, rtol=1e-5, atol=1e-5)
    assert level_statistics(values[:3], 70) is None  # too few frames for two levels of two


def test_within_level_limit_is_the_chi_square_quantile():
    """A telegraph pixel with the read noise passes the within-level test of one group: simulated
    sums of squares of 9 degrees of freedom exceed the limit at miss / (2 groups)."""
    rng = np.random.default_rng(5)
    limit = within_level_limit(10, 5)
    draws = np.square(rng.standard_normal((1_000_000, 9))).sum(axis=1)
    rate = (draws > limit).mean()
    assert abs(rate - 1e-4) <= binomial_reach(draws.size, 1e-4) / draws.size


def test_flag_pixels_sets_telegraph_outside_the_hot_mask():
    hot = np.array([[True, False, False]])
    telegraph = np.array([[True, True, False]])
    dq = flag_pixels(
        hot_mask=hot, chi2=None, dof=0, noise=None, clipped_fraction=None,
        saturated=np.zeros(hot.shape, bool), telegraph=telegraph,
    )  # fmt: skip
    assert dq.tolist() == [[HOT_MASK.value, TELEGRAPH.value, 0]]


class _OldMaster:
    """A master written before the two-level statistics: no LEVELB / LEVELW."""

    n_frames = 10

    def load_extension(self, name: str) -> np.ndarray | None:
        return None


def test_masters_without_statistics_give_no_decision():
    assert telegraph_pixels([_OldMaster(), _OldMaster()]) is None
    with pytest.raises(ValueError, match="one group"):
        decide([], [], [])


# ---- end to end ------------------------------------------------------------------------------

SPEC = SimulationSpec(
    shape=(96, 128),
    temperatures=(-10.0, 0.0, 10.0, 20.0, 30.0),
    frames_per_temperature=10,
    seed=15,
    telegraph_fraction=0.01,
    telegraph_amplitude_dn=3 * READ_NOISE_DN,
    row_noise_dn=0.6 * READ_NOISE_DN,  # corrected (auto): the statistics come from the corrected combine
)


@pytest.fixture(scope="module")
def cmos_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("telegraph")
    truth = simulate_dataset(root / "sim", SPEC)
    assert truth.truth_dir is not None
    result = run_bias_pipeline(
        truth.raw_dir,
        root / "out",
        truth.truth_dir / "hot_pixel_mask.fits",
        generate_set=False,
        config=PipelineConfig(show_progress=False, evaluation=False),
    )
    return truth, result


def test_pipeline_flags_telegraph_pixels(cmos_run):
    """Against the simulator's truth: >= 80 % of the telegraph pixels TELEGRAPH, < 0.5 % of the
    normal ones; noisy pixels not TELEGRAPH; the model file's DQ_DEF lists the bit."""
    truth, result = cmos_run
    assert all(m.row_noise > 0 for m in result.masters)  # the row correction ran
    dq = result.model.dq
    telegraph = truth.telegraph_mask
    assert telegraph is not None and telegraph.sum() >= 50
    assert (dq[telegraph] & TELEGRAPH.value > 0).mean() >= 0.80
    normal = ~truth.abnormal_mask
    normal_flagged = int((dq[normal] & TELEGRAPH.value > 0).sum())
    assert normal_flagged / normal.sum() < 0.005
    assert normal_flagged <= normal.sum() * FALSE_ALARM + binomial_reach(int(normal.sum()), FALSE_ALARM)
    noisy = truth.noisy_mask
    assert noisy is not None and noisy.any()
    assert not np.any(dq[noisy] & TELEGRAPH.value)
    assert np.all(dq[noisy] & NOISY.value)
    assert describe(dq)["TELEGRAPH"] == int(np.count_nonzero(dq & TELEGRAPH.value))
    model_file = next(result.output_dir.rglob("bias_model.fits"))
    with fits.open(model_file) as hdul:
        assert "TELEGRAPH" in list(hdul["DQ_DEF"].data["NAME"])
    assert np.array_equal(BiasModel.load(model_file).dq & TELEGRAPH.value, dq & TELEGRAPH.value)
    assert [bit.name for bit in DQ_BITS][-1] == "TELEGRAPH"


def test_masters_carry_the_statistics_and_fit_model_flags_from_them(cmos_run):
    """Each master holds LEVELB and LEVELW; ``fit_model`` called as a library on the masters
    read back sets the same TELEGRAPH flags as the run."""
    _, result = cmos_run
    for master in result.masters:
        with fits.open(master.path) as hdul:
            names = [h.name for h in hdul]
            assert BETWEEN_EXTENSION in names and WITHIN_EXTENSION in names
            assert hdul[BETWEEN_EXTENSION].data.shape == SPEC.shape
    masters = [MasterFrame(m.label, m.temperature, m.n_frames, m.path, method=m.method) for m in result.masters]
    again = fit_model(masters, config=PipelineConfig(show_progress=False))
    assert np.array_equal(again.dq & TELEGRAPH.value, result.model.dq & TELEGRAPH.value)

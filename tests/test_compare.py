"""``compare OLD NEW``: the global offset, the pixels that changed beyond it, the DQ flags.

Against the simulator's truth: two models fitted on the even and odd frames of one epoch agree
(their changed fraction is what the false-alarm rate promises, zero at 6 sigma), and a later
epoch of the same sensor (a global offset, a damaged region, new hot pixels) differs, with the
offset found within its error and the damaged pixels found as their signal-to-noise says.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from scipy.special import ndtr
from scipy.stats import binom, poisson

from bias_pipeline import PipelineConfig, run_bias_pipeline
from bias_pipeline.comparison import (
    CHANGE_KINDS,
    compare_models,
    compared_temperatures,
    main,
    write_comparison,
)
from bias_pipeline.dates import parse_date
from bias_pipeline.errors import ConfigError, InputDataError
from bias_pipeline.model import BiasModel
from bias_pipeline.quality import DQ_BITS, NOISY, NONLINEAR
from bias_pipeline.registry import CHANGED_PIXELS_NAME, COMPARISON_JSON, COMPARISON_REPORT
from bias_pipeline.simulate import SimulationSpec, SimulationTruth, simulate_dataset

from conftest import REPO

SHAPE = (48, 64)
TEMPERATURES = (-10.0, 0.0, 10.0, 20.0, 30.0)
SEED = 14
OFFSET_ADU = 10.0  # a third of the 32 ADU read noise: beyond the default tolerance of a tenth
DAMAGED_REGION = (5, 13, 20, 30)  # 80 pixels, 2.6 % of the frame: below the 5 % gate alone
DAMAGE_ADU = 110.0  # about 12 combined sigma at mid-range: see test_a_later_epoch_differs
NEW_HOT_FRACTION = 0.003
FAST = PipelineConfig(show_progress=False, evaluation=False, generate_set=False, threads=2)
ALPHA = 1e-3  # a statistical test of this module fails by chance this rarely


def fit(raw: Path, out: Path, truth: SimulationTruth) -> Path:
    """Run the pipeline on ``raw`` (with epoch 0's hot-pixel mask) and return the output folder."""
    assert truth.truth_dir is not None
    run_bias_pipeline(raw, out, truth.truth_dir / "hot_pixel_mask.fits", config=FAST)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One epoch of 6 frames per temperature fitted whole and as two halves (even and odd frames),
    and a later epoch of the same sensor fitted whole."""
    root = tmp_path_factory.mktemp("compare")
    spec = SimulationSpec(shape=SHAPE, temperatures=TEMPERATURES, frames_per_temperature=6, seed=SEED)
    first = simulate_dataset(root / "epoch0", spec)
    aged = SimulationSpec(
        shape=SHAPE,
        temperatures=TEMPERATURES,
        frames_per_temperature=6,
        seed=SEED,
        epoch=1,
        offset_adu=OFFSET_ADU,
        damaged_region=DAMAGED_REGION,
        damage_adu=DAMAGE_ADU,
        new_hot_fraction=NEW_HOT_FRACTION,
        start_date="2026-06-01",
    )
    later = simulate_dataset(root / "epoch1", aged)
    halves = {"even": root / "even", "odd": root / "odd"}
    for folder in halves.values():
        folder.mkdir()
    for path in first.frame_paths:
        index = int(path.stem.rsplit("_", 1)[1])
        shutil.copy(path, halves["odd" if index % 2 else "even"] / path.name)
    folders = {name: fit(raw, root / f"run_{name}", first) for name, raw in halves.items()}
    assert first.raw_dir is not None and later.raw_dir is not None
    folders["epoch0"] = fit(first.raw_dir, root / "run_epoch0", first)
    folders["epoch1"] = fit(later.raw_dir, root / "run_epoch1", first)
    models = {name: BiasModel.load(folder) for name, folder in folders.items()}
    return {"root": root, "folders": folders, "models": models, "first": first, "later": later}


# ---------------------------------------------------------------------------------- halves
def test_two_halves_of_one_epoch_agree_with_no_changed_pixel(runs) -> None:
    even, odd = runs["models"]["even"], runs["models"]["odd"]
    result = compare_models(even, odd)
    low, high = (
        max(even.temperature_range[0], odd.temperature_range[0]),
        min(even.temperature_range[1], odd.temperature_range[1]),
    )
    assert result.temperatures == (low, (low + high) / 2, high)
    assert result.verdict == "AGREE" and not result.reasons
    # The same sensor at the same temperatures: no offset beyond its error, no trend.
    for at in result.offsets:
        assert abs(at.offset_adu) < 4 * at.uncertainty_adu, at
    assert abs(result.offset_trend_adu_per_c) < 4 * result.offset_trend_uncertainty
    # 6 sigma promises 2e-9 false alarms per pixel: among ~3000 pixels, none.
    expected = result.n_compared * result.false_alarm_per_pixel
    assert result.n_changed <= poisson.ppf(1 - ALPHA, expected), (result.n_changed, expected)
    assert result.n_compared > 0.95 * even.a_map.size


@pytest.mark.parametrize("sigma", [2.5, 3.0])
def test_the_false_alarm_rate_is_what_the_threshold_promises(runs, sigma: float) -> None:
    """At a low threshold false alarms are frequent enough to count: with the threshold shared
    over K temperatures, the rate lies between p / K (one temperature's) and p (Bonferroni)."""
    result = compare_models(runs["models"]["even"], runs["models"]["odd"], sigma=sigma)
    promised = 2 * ndtr(-sigma)
    assert math.isclose(result.false_alarm_per_pixel, promised)
    k = len(result.temperatures)
    n = result.n_compared
    assert poisson.ppf(ALPHA / 2, n * promised / k) <= result.n_changed <= poisson.ppf(1 - ALPHA / 2, n * promised)
    # Up and down alike (binomial, half each).
    up = int(np.count_nonzero(result.changed_up))
    assert abs(up - result.n_changed / 2) <= 3.3 * math.sqrt(result.n_changed / 4) + 1


def test_pull_widths_of_the_pipelines_models_are_near_one(runs) -> None:
    """The width correction is a small one: the models' own standard errors are nearly right
    (a sigma-clipped master of 3 frames is a little noisier than the fit assumes)."""
    result = compare_models(runs["models"]["even"], runs["models"]["odd"])
    for at in result.offsets:
        assert 1.0 <= at.pull_scale < 1.25, at


# ---------------------------------------------------------------------------------- epochs
def test_a_later_epoch_differs_by_its_offset_damage_and_new_hot_pixels(runs) -> None:
    old, new = runs["models"]["epoch0"], runs["models"]["epoch1"]
    later: SimulationTruth = runs["later"]
    result = compare_models(old, new)
    assert result.verdict == "DIFFER"
    assert any("global offset" in reason for reason in result.reasons)
    # The offset, at every temperature compared, within 4 of its errors of the truth; no trend.
    for at in result.offsets:
        assert abs(at.offset_adu - later.offset_adu) < 4 * at.uncertainty_adu, at
    assert abs(result.offset_trend_adu_per_c) < 4 * result.offset_trend_uncertainty

    damaged = later.damaged_mask & result.compared
    truly_changed = later.damaged_mask | later.new_hot_mask
    # Found: at the middle temperature alone a damaged pixel passes the threshold with
    # probability Phi(S/N - threshold); the union over the temperatures can only add to that.
    middle = result.temperatures[1]
    _, old_sigma = old.predict(middle, return_sigma=True)
    _, new_sigma = new.predict(middle, return_sigma=True)
    scale = result.offsets[1].pull_scale
    snr = DAMAGE_ADU / (scale * np.hypot(old_sigma, new_sigma)[damaged])
    expected = float(np.mean(ndtr(snr - result.per_temperature_sigma)))
    n = int(damaged.sum())
    found = int(np.count_nonzero(result.changed & damaged))
    assert expected > 0.99  # the damage chosen: every damaged pixel well above the threshold
    assert found >= binom.ppf(ALPHA, n, expected), (found, n, expected)
    assert np.count_nonzero(result.changed_down & damaged) == 0  # the damage stepped the bias up
    # Almost no false ones: outside the truth's changes, what 6 sigma promises (none).
    false = int(np.count_nonzero(result.changed & ~truly_changed))
    outside = int(np.count_nonzero(result.compared & ~truly_changed))
    assert false <= poisson.ppf(1 - ALPHA, outside * result.false_alarm_per_pixel), false
    # The damage alone is 2.6 % of the pixels: below the 5 % gate, above a 1 % one.
    assert 0.01 < result.fraction_changed < 0.05
    # New hot pixels: a hot pixel's bias grows faster than a line, so NEW flags it NONLINEAR,
    # which OLD did not: each shows as a new NONLINEAR flag (and so is not in the pixel test).
    new_hot = later.new_hot_mask
    assert new_hot.any()
    newly_nonlinear = ((result.new_dq & ~result.old_dq) & NONLINEAR.value) != 0
    assert np.all(newly_nonlinear[new_hot])
    assert result.new_flags()[NONLINEAR.name] >= int(new_hot.sum())
    assert not result.compared[new_hot].any()


def test_the_changed_fraction_gate(runs) -> None:
    old, new = runs["models"]["epoch0"], runs["models"]["epoch1"]
    forgiving = compare_models(old, new, tolerance_adu=100.0)
    assert forgiving.verdict == "AGREE", forgiving.reasons
    strict = compare_models(old, new, tolerance_adu=100.0, max_changed_fraction=0.01)
    assert strict.verdict == "DIFFER" and strict.reasons and "changed" in strict.reasons[0]
    # The default tolerance is OLD's: a tenth of its median read noise.
    assert math.isclose(compare_models(old, new).tolerance_adu, 0.1 * old.typical_read_noise)


def test_at_one_temperature(runs) -> None:
    old, new = runs["models"]["epoch0"], runs["models"]["epoch1"]
    result = compare_models(old, new, temperature=12.5)
    assert result.temperatures == (12.5,) and result.offset_trend_adu_per_c is None
    assert abs(result.offset_adu - OFFSET_ADU) < 4 * result.offset_uncertainty_adu
    # One temperature: the threshold is the promised one itself.
    assert math.isclose(result.per_temperature_sigma, result.sigma)


# ---------------------------------------------------------------------------------- pure noise
def noise_model(rng: np.random.Generator, shape: tuple[int, int], offset: float = 0.0) -> BiasModel:
    """A model whose a and b scatter about one truth by exactly their stated errors."""
    sigma_a, sigma_b = 4.0, 0.2
    a = 3200.0 + offset + rng.normal(0.0, sigma_a, shape)
    b = 3.0 + rng.normal(0.0, sigma_b, shape)
    covariance = np.zeros((2, 2, *shape))
    covariance[0, 0], covariance[1, 1] = sigma_a**2, sigma_b**2
    return BiasModel.from_maps(
        a, b, temperature_range=(0.0, 20.0), covariance=covariance, read_noise=np.full(shape, 30.0)
    )


def test_exact_uncertainties_give_the_promised_rate_at_one_temperature() -> None:
    rng = np.random.default_rng(3)
    shape = (200, 200)
    old, new = noise_model(rng, shape), noise_model(rng, shape, offset=1.0)
    sigma = 3.0
    result = compare_models(old, new, sigma=sigma, temperature=10.0)
    expected = result.n_compared * 2 * ndtr(-sigma)
    assert poisson.ppf(ALPHA / 2, expected) <= result.n_changed <= poisson.ppf(1 - ALPHA / 2, expected)
    assert result.offsets[0].pull_scale < 1.02  # errors exact: no width correction beyond noise
    assert abs(result.offset_adu - 1.0) < 4 * result.offset_uncertainty_adu
    assert result.verdict == "AGREE"  # 1 ADU is below the tolerance of 3 ADU
    # Over the range (3 temperatures) the promise holds too: between p / 3 and p.
    over_range = compare_models(old, new, sigma=sigma)
    low, high = poisson.ppf(ALPHA / 2, expected / 3), poisson.ppf(1 - ALPHA / 2, expected)
    assert low <= over_range.n_changed <= high


def test_flags_new_and_cleared_by_bit_and_the_change_map() -> None:
    rng = np.random.default_rng(4)
    shape = (30, 40)
    old, new = noise_model(rng, shape), noise_model(rng, shape)
    old.dq = np.zeros(shape, np.uint32)
    new.dq = np.zeros(shape, np.uint32)
    old.dq[0, :3] = NOISY.value  # cleared in NEW
    new.dq[1, :5] = NONLINEAR.value  # new in NEW
    new.dq[2, 0] = old.dq[2, 0] = NOISY.value  # in both: neither
    new.a_map[10, 10] += 200.0  # a step of 50 sigma
    result = compare_models(old, new)
    assert result.new_flags() == {b.name: (5 if b is NONLINEAR else 0) for b in DQ_BITS}
    assert result.cleared_flags() == {b.name: (3 if b is NOISY else 0) for b in DQ_BITS}
    image = result.change_map()
    assert image.dtype == np.uint8
    assert image[10, 10] == 1 and result.changed_up[10, 10]
    assert (image[1, :5] == 2).all() and (image[0, :3] == 4).all() and image[2, 0] == 0
    assert not result.compared[1, :5].any()  # flagged pixels are not in the pixel test
    assert result.n_changed == 1


def test_models_that_cannot_be_compared_say_why() -> None:
    rng = np.random.default_rng(5)
    small, large = noise_model(rng, (10, 12)), noise_model(rng, (12, 10))
    with pytest.raises(InputDataError, match="10x12 pixels but NEW is 12x10"):
        compare_models(small, large)
    apart = noise_model(rng, (10, 12))
    apart.temperature_range = (30.0, 40.0)
    with pytest.raises(InputDataError, match="no temperature in common.*--temperature"):
        compared_temperatures(small, apart)
    assert compared_temperatures(small, apart, 25.0) == (25.0,)
    quiet = noise_model(rng, (10, 12))
    quiet.read_noise = None
    with pytest.raises(ConfigError, match="--tolerance"):
        compare_models(quiet, small)
    maps_only = BiasModel.from_maps(small.a_map, small.b_map, temperature_range=(0.0, 20.0))
    with pytest.raises(InputDataError, match="no uncertainties"):
        compare_models(small, maps_only)


# ---------------------------------------------------------------------------------- command
def test_compare_writes_its_products_and_exits_1_when_the_epochs_differ(runs, capsys) -> None:
    out = runs["root"] / "cmp_epochs"
    folders = runs["folders"]
    assert main([str(folders["epoch0"]), str(folders["epoch1"]), "--output-dir", str(out)]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and printed[0].startswith("offset NEW - OLD: +") and "DIFFER" in printed[-1]
    facts = json.loads((out / COMPARISON_JSON).read_text())
    later: SimulationTruth = runs["later"]
    assert facts["verdict"] == "DIFFER" and facts["differ"] is True
    assert abs(facts["offset_adu"] - later.offset_adu) < 4 * facts["offset_uncertainty_adu"]
    for key in ("fraction_changed", "offset_trend", "gate", "temperatures_compared", "counts", "old", "new"):
        assert key in facts
    counts = facts["counts"]
    assert counts["changed"] == counts["changed_up"] + counts["changed_down"]
    assert set(counts["new_flags"]) == set(counts["cleared_flags"]) == {b.name for b in DQ_BITS}
    assert facts["old"]["path"] == str(folders["epoch0"]) and facts["new"]["temperature_range"]
    assert facts["gate"]["sigma"] == 6.0 and facts["gate"]["max_changed_fraction"] == 0.05
    with fits.open(out / CHANGED_PIXELS_NAME) as hdul:
        image = hdul[0].data
        assert image.dtype == np.uint8 and image.shape == SHAPE
        assert np.count_nonzero(image & 1) == counts["changed"]
        assert hdul[0].header["VERDICT"] == "DIFFER" and hdul[0].header["NTEMPS"] == 3
        assert abs(hdul[0].header["OFFSET"] - facts["offset_adu"]) < 1e-6
        assert hdul[0].header["OLDMODEL"] == str(folders["epoch0"])
        table = hdul["CHANGE_DEF"].data
        assert list(table["VALUE"]) == [k.value for k in CHANGE_KINDS]
        assert hdul["PULL"].data.shape == SHAPE
    page = (out / COMPARISON_REPORT).read_text()
    assert "DIFFER" in page and page.count("data:image/png;base64,") == 2
    assert not any(p.name.endswith(".tmp") or p.name.startswith(".") for p in out.iterdir())


def test_compare_command_in_a_subprocess(runs, tmp_path: Path) -> None:
    """The real command: -q prints nothing, the halves agree (exit 0), bad input is one line."""
    folders = runs["folders"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "bias_pipeline", "compare", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    agreed = run(str(folders["even"]), str(folders["odd"]), "--output-dir", str(tmp_path / "halves"), "-q")
    assert agreed.returncode == 0, agreed.stderr
    assert agreed.stdout == "" and (tmp_path / "halves" / COMPARISON_JSON).is_file()
    missing = run(str(tmp_path / "nowhere"), str(folders["odd"]), "--output-dir", str(tmp_path / "x"))
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
    assert missing.stderr.count("\n") == 1 and "OLD" in missing.stderr and "nowhere" in missing.stderr
    helped = run("--help")
    assert helped.returncode == 0 and "examples:" in helped.stdout and "--max-changed-fraction" in helped.stdout


def test_compare_command_errors_are_one_line_with_their_exit_codes(runs, tmp_path: Path, capsys) -> None:
    folders = runs["folders"]
    rng = np.random.default_rng(6)
    other = tmp_path / "other.fits"
    model = noise_model(rng, (12, 10))
    model.covariance = np.asarray(model.covariance, dtype=np.float32)
    model.rms = model.chi2 = model.read_noise
    model.ngroups = np.full((12, 10), 5, np.int16)
    model.dq = np.zeros((12, 10), np.uint32)
    model.to_fits(other)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    halves = [str(folders["even"]), str(folders["odd"])]
    cases = [
        ([str(folders["even"]), str(other), "--output-dir", str(tmp_path / "o1")], 3, "same sensor"),
        ([*halves, "--output-dir", str(a_file)], 4, "--output-dir"),
        ([*halves, "--output-dir", str(tmp_path / "o2"), "--sigma", "-1"], 2, "--sigma"),
        ([*halves, "--output-dir", str(tmp_path / "o3"), "--max-changed-fraction", "2"], 2, "--max-changed-fraction"),
        (halves, 2, "--output-dir"),
    ]
    for argv, code, fragment in cases:
        try:
            returned = main(argv)
        except SystemExit as stop:  # the parser's usage errors exit as argparse does
            returned = stop.code
        captured = capsys.readouterr()
        assert returned == code, (argv, returned, captured.err)
        errors = [line for line in captured.err.splitlines() if "error" in line]
        assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in captured.err, captured.err
        assert captured.out == ""


def test_products_carry_both_models_dates_and_ranges(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    old, new = noise_model(rng, (16, 20)), noise_model(rng, (16, 20), offset=8.0)
    old.date_range = (parse_date("2026-03-01T00:00:00"), parse_date("2026-03-02T06:30:00"))
    new.date_range = (parse_date("2026-06-01"), parse_date("2026-06-01T01:00:00.5"))
    new.temperature_range = (5.0, 25.0)
    result = compare_models(old, new)
    assert result.temperatures == (5.0, 12.5, 20.0)  # the common range
    written = write_comparison(result, tmp_path / "made" / "here", "old.fits", "new.fits")
    facts = json.loads(written["json"].read_text())
    assert facts["old"]["date_range"] == ["2026-03-01T00:00:00", "2026-03-02T06:30:00"]
    assert facts["new"]["date_range"] == ["2026-06-01T00:00:00", "2026-06-01T01:00:00.500"]
    assert facts["old"]["temperature_range"] == [0.0, 20.0] and facts["new"]["temperature_range"] == [5.0, 25.0]
    assert facts["verdict"] == "DIFFER" and facts["flags_compared"].startswith("HOT_MASK only")
    header = fits.getheader(written["fits"])
    assert header["OLDDBEG"] == "2026-03-01T00:00:00" and header["NEWDEND"] == "2026-06-01T01:00:00.500"
    assert (header["TCOMP1"], header["TCOMP3"], header["NEWMODEL"]) == (5.0, 20.0, "new.fits")
    assert "2026-06-01T00:00:00" in written["html"].read_text()

"""A single frame's own row noise removed where it meets the model: ``subtract_bias(...,
row_correction=True)``, ``verify --row-correction`` and the temperature-from-bias estimate.

The frames are derived from the truth of a small simulated set (whose model the pipeline fits),
with row offsets of 0.6 x the read noise drawn here with fixed seeds; every tolerance follows
from the noise: a row median of ``C`` pixels scatters by ``sqrt(pi / 2) s / sqrt(C)``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData

from bias_pipeline import PipelineConfig, run_bias_pipeline, subtract_bias
from bias_pipeline.errors import InputDataError
from bias_pipeline.frames import inspect_frame
from bias_pipeline.model import BiasModel
from bias_pipeline.row_noise import MEDIAN_VARIANCE_FACTOR
from bias_pipeline.simulate import SimulationSpec, SimulationTruth, simulate_dataset
from bias_pipeline.temperature_check import FLAG_TEMPERATURE, MISMATCH_SIGMAS, check_frame_temperatures
from bias_pipeline.thermometry import estimate_temperature, sample_model
from bias_pipeline.verification import VerificationRules, verify_residual
from bias_pipeline.verification import main as verify_main

SHAPE = (96, 128)
ROW_NOISE_FRACTION = 0.6  # row noise / read noise, the case
DARK_LEVEL = 40.0  # [ADU] a dark frame's flat signal
SPEC = SimulationSpec(shape=SHAPE, frames_per_temperature=6, cosmic_rate=0.0, seed=21)
ROW_NOISE_DN = ROW_NOISE_FRACTION * SPEC.read_noise_dn


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulationTruth, BiasModel]:
    """A simulated set (no row noise), and the model the pipeline fits on it."""
    sim = simulate_dataset(tmp_path_factory.mktemp("sim"), SPEC)
    out = tmp_path_factory.mktemp("run")
    run_bias_pipeline(sim.raw_dir, out, generate_set=False, config=PipelineConfig(show_progress=False))
    return sim, BiasModel.load(out)


def _later_frames(
    folder: Path, epoch: int, temperatures: tuple[float, ...], row_noise_dn: float, frames: int = 1
) -> SimulationTruth:
    """New frames of the same sensor (a later epoch: the same pixels, new frame noise); the
    row offsets come from a stream of their own, so the same epoch without row noise has the
    same pixel noise."""
    spec = SimulationSpec(
        shape=SHAPE,
        temperatures=temperatures,
        frames_per_temperature=frames,
        cosmic_rate=0.0,
        seed=SPEC.seed,
        epoch=epoch,
        row_noise_dn=row_noise_dn,
    )
    return simulate_dataset(folder, spec)


@pytest.fixture(scope="module")
def dark_pair(tmp_path_factory: pytest.TempPathFactory):
    """One new frame at 12 deg C with row noise and the same frame without, as dark frames of
    level DARK_LEVEL; and its row offsets (the truth) [ADU]."""
    noisy = _later_frames(tmp_path_factory.mktemp("rows"), 1, (12.0,), ROW_NOISE_DN)
    clean = _later_frames(tmp_path_factory.mktemp("norows"), 1, (12.0,), 0.0)
    assert noisy.row_offsets is not None
    return (
        read_frame_at(clean.frame_paths[0]) + DARK_LEVEL,
        read_frame_at(noisy.frame_paths[0]) + DARK_LEVEL,
        noisy.row_offsets[0].astype(np.float64),
        noisy.frame_temperatures[0],
    )


def read_frame_at(path: Path) -> np.ndarray:
    with fits.open(path) as hdul:
        return np.asarray(hdul[0].data, dtype=np.float32)


def _good(model: BiasModel, *arrays: np.ndarray) -> np.ndarray:
    good = ~model.flagged
    for array in arrays:
        good &= np.isfinite(array)
    return good


def test_a_dark_frame_loses_its_row_noise_and_keeps_its_level(fitted, dark_pair):
    sim, model = fitted
    clean, noisy, offsets, temperature = dark_pair
    given = noisy.copy()
    reference = subtract_bias(clean, model, temperature)
    plain = subtract_bias(noisy, model, temperature)
    corrected = subtract_bias(noisy, model, temperature, row_correction=True)
    good = _good(model, reference, plain, corrected)
    noise_reference, noise_plain = float(np.std(reference[good])), float(np.std(corrected[good]))
    # the goal: no more than 1.05 x the same frame without row noise
    assert noise_plain <= 1.05 * noise_reference
    # and without the correction the row noise is there (sqrt(1 + 0.6^2) = 1.17 x)
    assert float(np.std(plain[good])) > 1.1 * noise_reference
    # the level kept: the frame's mean is the uncorrected frame's (the offsets removed have mean
    # zero over the rows), and the dark's level is found within the noise of a mean over the
    # pixels and over the rows' own offsets
    n = int(good.sum())
    assert abs(float(corrected.mean()) - float(plain.mean())) < 1e-3
    _, sigma = model.predict(temperature, return_sigma=True)
    level_error = math.sqrt(
        sim.read_noise_adu**2 / n + float(np.var(offsets)) / SHAPE[0] + float(np.nanmean(sigma[good] ** 2))
    )
    assert abs(float(corrected[good].mean()) - DARK_LEVEL) < 5 * level_error
    # the input was not modified
    assert np.array_equal(noisy, given)


def test_ccddata_in_and_out_says_what_was_removed(fitted, dark_pair):
    sim, model = fitted
    _, noisy, offsets, temperature = dark_pair
    ccd = CCDData(noisy.copy(), unit="adu", meta={"TEMPERATURE": temperature})
    result = subtract_bias(ccd, model, row_correction=True)
    assert isinstance(result, CCDData)
    as_array = subtract_bias(noisy, model, temperature, row_correction=True)
    both = np.isfinite(as_array) & np.isfinite(result.data)
    np.testing.assert_allclose(result.data[both], as_array[both], atol=1e-3)
    assert result.header["ROWCORR"] is True
    assert "row offsets removed" in str(result.header["HISTORY"])
    # ROWRMS^2 is the offsets' variance about their mean plus a row median's noise V
    columns = int((~model.flagged).sum(axis=1).mean())
    v = MEDIAN_VARIANCE_FACTOR * sim.read_noise_adu**2 / columns
    true = float(np.var(offsets))
    spread = math.sqrt((4 * true * v + 2 * v**2) / SHAPE[0])
    assert abs(result.header["ROWRMS"] ** 2 - (true + v)) < 5 * spread + 0.01 * (true + v)
    assert "ROWCORR" not in subtract_bias(ccd, model).header


def test_masked_pixels_of_the_frame_do_not_move_its_rows(fitted, dark_pair):
    _, model = fitted
    _, noisy, _, _ = dark_pair
    starred = noisy.copy()
    starred[10, : SHAPE[1] // 2 + 5] += 5000.0  # most of a row: the median would follow it
    mask = np.zeros(SHAPE, dtype=bool)
    mask[10, : SHAPE[1] // 2 + 5] = True
    clean = subtract_bias(CCDData(noisy, unit="adu", mask=mask), model, 15.0, row_correction=True)
    hit = subtract_bias(CCDData(starred, unit="adu", mask=mask), model, 15.0, row_correction=True)
    rest = ~mask & np.isfinite(clean.data)
    np.testing.assert_allclose(hit.data[rest], clean.data[rest], atol=1e-3)


def test_a_frame_too_narrow_for_row_medians_is_refused():
    model = BiasModel.from_maps(np.full((4, 8), 3000.0), np.full((4, 8), 2.0))
    frame = np.full((4, 8), 3100.0, dtype=np.float32)
    with pytest.raises(InputDataError, match="row_correction"):
        subtract_bias(frame, model, 20.0, row_correction=True)
    assert subtract_bias(frame, model, 20.0).shape == (4, 8)


# ------------------------------------------------------------------------------- verify
@pytest.fixture(scope="module")
def weekly(fitted, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, float]]:
    """A folder of new bias frames, four with row noise (epoch 1) and two without (epoch 2);
    the model file; each frame's row-noise truth (the rms of its offsets about their mean)."""
    _, model = fitted
    raw = tmp_path_factory.mktemp("weekly")
    truth = {}
    for epoch, temperatures, row_noise in ((1, (0.0, 15.0), ROW_NOISE_DN), (2, (10.0, 20.0), 0.0)):
        sim = _later_frames(raw / f"epoch{epoch}", epoch, temperatures, row_noise, frames=2 if row_noise else 1)
        assert sim.row_offsets is not None
        for path, offsets in zip(sim.frame_paths, sim.row_offsets, strict=True):
            truth[str(Path(path).relative_to(raw))] = float(np.std(offsets.astype(np.float64)))
        shutil.rmtree(raw / f"epoch{epoch}" / "truth")
    model_file = tmp_path_factory.mktemp("model") / "model.fits"
    model.save(model_file)
    return raw, model_file, truth


def _verify(weekly, out: Path, *options: str) -> tuple[int, dict[str, dict[str, str]]]:
    raw, model_file, _ = weekly
    code = verify_main([str(model_file), "--basepath", str(raw), "--output-dir", str(out), "-q", *options])
    with open(out / "verification.csv", newline="") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    return code, rows


def test_verify_does_not_fail_frames_for_row_noise_with_auto(weekly, tmp_path):
    _, _, truth = weekly
    code, rows = _verify(weekly, tmp_path / "auto")
    assert code == 0, {k: v["reason"] for k, v in rows.items()}
    html = (tmp_path / "auto" / "verification.html").read_text()
    assert "row_noise_adu" in html and "row correction" in html
    read_noise, columns = 16.0 * 2.0, SHAPE[1]
    v = MEDIAN_VARIANCE_FACTOR * (read_noise**2 + 16.0**2 / 12.0) / columns  # quantisation adds to the pixels
    for name, row in rows.items():
        assert row["status"] == "passed"
        amplitude = float(row["row_noise_adu"])
        if truth[name]:
            assert row["row_corrected"] == "yes"
            # the amplitude's square scatters by sqrt(2 / R) of (row variance + V)
            spread = math.sqrt(2.0 / SHAPE[0]) * (truth[name] ** 2 + v)
            assert abs(amplitude**2 - truth[name] ** 2) < 5 * spread
        else:
            assert row["row_corrected"] == "no"
            # noise alone: the amplitude's square is within 5 of its standard errors of 0
            assert amplitude**2 < 5 * math.sqrt(2.0 / SHAPE[0]) * v


def test_verify_with_the_correction_off_fails_them_for_noise_and_leaves_the_rest_alone(weekly, tmp_path):
    _, _, truth = weekly
    code_off, off = _verify(weekly, tmp_path / "off", "--row-correction", "off")
    _, auto = _verify(weekly, tmp_path / "auto")
    _, on = _verify(weekly, tmp_path / "on", "--row-correction", "on")
    assert code_off == 1
    for name in off:
        if truth[name]:
            assert off[name]["status"] == "failed" and "residual noise" in off[name]["reason"]
            assert on[name]["row_corrected"] == "yes" and on[name]["status"] == "passed"
        else:
            # no row noise: auto leaves the frame exactly as off does
            assert auto[name] == off[name]
        # the mean residual keeps the level whatever the option: the two differ by less than
        # the pixels' own standard error of a mean (the offsets removed have mean zero)
        pixel_error = float(off[name]["model_noise_adu"]) / math.sqrt(int(off[name]["pixels"]))
        assert abs(float(off[name]["mean_residual_adu"]) - float(auto[name]["mean_residual_adu"])) < pixel_error
        assert off[name]["row_noise_adu"] == auto[name]["row_noise_adu"]


def test_verify_refuses_an_unknown_row_correction(weekly, tmp_path, capsys):
    raw, model_file, _ = weekly
    with pytest.raises(SystemExit) as stopped:
        verify_main([str(model_file), "--basepath", str(raw), "--output-dir", str(tmp_path), "--row-correction", "x"])
    assert stopped.value.code == 2
    assert "--row-correction" in capsys.readouterr().err


# -------------------------------------------------------------------------- thermometry
THERMO_SHAPE = (64, 512)
THERMO_NOISE = 32.0
THERMO_FRAMES = 160


@pytest.fixture(scope="module")
def thermometer() -> BiasModel:
    """A model as the simulator's sensor: slope 3 ADU / deg C with a column pattern of 0.4 and a
    pixel scatter of 0.2 ADU / deg C."""
    rng = np.random.default_rng(31)
    rows, columns = THERMO_SHAPE
    a = 3200.0 + rng.normal(0.0, 48.0, (1, columns)) + rng.normal(0.0, 10.0, THERMO_SHAPE)
    b = 3.0 + rng.normal(0.0, 0.4, (1, columns)) + rng.normal(0.0, 0.2, THERMO_SHAPE)
    noise = np.full(THERMO_SHAPE, THERMO_NOISE, dtype=np.float32)
    return BiasModel(a.astype(np.float32), b.astype(np.float32), np.zeros(THERMO_SHAPE, bool), read_noise=noise)


def _thermo_frames(model: BiasModel, row_noise: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    bias = model.predict(20.0)
    return [
        (bias + rng.normal(0.0, THERMO_NOISE, THERMO_SHAPE) + rng.normal(0.0, row_noise, (THERMO_SHAPE[0], 1))).astype(
            np.float32
        )
        for _ in range(THERMO_FRAMES)
    ]


def _estimates(model: BiasModel, frames: list[np.ndarray], mode: str) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    sample = sample_model(model)
    found = [estimate_temperature(f, model, start=20.0, sample=sample, row_correction=mode) for f in frames]
    return (
        np.array([e.temperature - 20.0 for e in found]),
        np.array([e.error for e in found]),
        [e.row_corrected for e in found],
    )


def test_thermometry_with_row_noise_keeps_its_error_honest_and_scatters_less(thermometer):
    frames = _thermo_frames(thermometer, ROW_NOISE_FRACTION * THERMO_NOISE, seed=41)
    off, off_error, _ = _estimates(thermometer, frames, "off")
    auto, auto_error, corrected = _estimates(thermometer, frames, "auto")
    assert all(corrected)
    # the standard deviation of N pulls is 1 within 5 / sqrt(2 N)
    bound = 5.0 / math.sqrt(2 * THERMO_FRAMES)
    assert abs(np.std(auto / auto_error) - 1.0) < bound
    assert np.std(off / off_error) > 1.0 + bound  # without the correction the error counts read noise alone
    # the rows' common level weighted by its own noise: far less scatter than the plain estimate
    assert np.std(auto) < 0.5 * np.std(off)


def test_thermometry_without_row_noise_is_unchanged_by_auto(thermometer):
    frames = _thermo_frames(thermometer, 0.0, seed=42)
    off, off_error, _ = _estimates(thermometer, frames, "off")
    auto, auto_error, corrected = _estimates(thermometer, frames, "auto")
    assert not any(corrected)  # the auto rule did not switch on for any of the frames
    np.testing.assert_array_equal(auto, off)
    np.testing.assert_array_equal(auto_error, off_error)
    on, on_error, _ = _estimates(thermometer, frames, "on")
    # forced on, the estimate moves by noise only: the pulls keep their spread
    assert abs(np.std(on / on_error) - 1.0) < 5.0 / math.sqrt(2 * THERMO_FRAMES)


def test_temperature_check_keeps_its_false_alarm_rate_on_frames_with_row_noise(thermometer, tmp_path):
    frames = _thermo_frames(thermometer, ROW_NOISE_FRACTION * THERMO_NOISE, seed=43)[:40]
    raw = tmp_path / "raw"
    raw.mkdir()
    records = []
    for index, frame in enumerate(frames):
        path = raw / f"f{index:03d}.fits"
        fits.PrimaryHDU(frame, header=fits.Header({"HIERARCH TEMPERATURE": 20.0, "EXPOSURE": 0.0})).writeto(path)
        record = inspect_frame(path, ["TEMPERATURE"], ["EXPOSURE"])
        records.append(dataclasses.replace(record, passed_checks=True))
    checks = {
        mode: check_frame_temperatures(thermometer, records, show_progress=False, threads=1, row_correction=mode)
        for mode in ("auto", "off")
    }
    flagged = {mode: sum(c.flag == FLAG_TEMPERATURE for c in found.values()) for mode, found in checks.items()}
    # right headers: each flagged with probability P(|z| > 3) = 0.27 % when the error is honest,
    # so two or more of 40 has a probability of 0.5 %
    rate = math.erfc(MISMATCH_SIGMAS / math.sqrt(2))
    assert 1.0 - (1.0 - rate) ** 40 - 40 * rate * (1.0 - rate) ** 39 < 0.01
    assert flagged["auto"] <= 1, flagged
    # --row-correction off leaves the row noise in the products, not in the check: an error that
    # counted read noise alone flagged most of these frames (and then blamed the model)
    assert flagged["off"] <= 1, flagged
    plain = [
        estimate_temperature(f, thermometer, start=20.0, row_correction="off") for f in frames[:10]
    ]  # what an estimate without the rows gives: its pulls far wider than 1
    pulls = np.array([(e.temperature - 20.0) / e.error for e in plain])
    assert np.std(pulls) > 2.0


def test_the_mean_residuals_error_counts_the_level_row_noise_leaves():
    """Each frame's row offsets share a mean that moves its mean residual: the standard error
    verify gives must cover it (pulls of standard deviation 1), whether or not the offsets are
    removed (their removal keeps the level)."""
    rng = np.random.default_rng(51)
    shape, frames, noise = (64, 128), 200, 32.0
    model, read_noise = np.full(shape, 3200.0), np.full(shape, noise)
    usable, rules = np.ones(shape, dtype=bool), VerificationRules(tolerance=3.2)
    pulls = {"auto": [], "off": []}
    for _ in range(frames):
        frame = model + rng.normal(0.0, noise, shape) + rng.normal(0.0, ROW_NOISE_FRACTION * noise, (shape[0], 1))
        for mode, found in pulls.items():
            result = verify_residual(frame, model, np.zeros(shape), read_noise, usable, rules, row_correction=mode)
            found.append(result.mean_residual / result.mean_error)
    bound = 5.0 / math.sqrt(2 * frames)
    assert abs(np.std(pulls["auto"]) - 1.0) < bound
    assert abs(np.std(pulls["off"]) - 1.0) < bound


def test_the_runs_temperature_check_on_data_with_row_noise(tmp_path):
    """Through the pipeline (``--row-correction auto``, the default): on frames with row noise
    of 0.6 x the read noise and right headers, the estimates' errors are honest (pulls against
    the simulated temperatures of standard deviation 1) and no more frames are flagged than
    the 3-sigma rule promises (without the correction, 22 of these 40 were)."""
    spec = SimulationSpec(shape=SHAPE, frames_per_temperature=8, seed=3, row_noise_dn=ROW_NOISE_DN)
    sim = simulate_dataset(tmp_path / "sim", spec)
    config = PipelineConfig(show_progress=False)
    result = run_bias_pipeline(sim.raw_dir, tmp_path / "run", generate_set=False, config=config)
    true_temperature = {Path(p).name: t for p, t in zip(sim.frame_paths, sim.frame_temperatures, strict=True)}
    estimated = [r for r in result.records if r.temperature_est is not None]
    assert len(estimated) == len(sim.frame_paths)
    pulls = np.array([(r.temperature_est - true_temperature[r.path.name]) / r.temperature_est_err for r in estimated])
    assert abs(np.std(pulls) - 1.0) < 5.0 / math.sqrt(2 * pulls.size)
    assert sum(r.flag == FLAG_TEMPERATURE for r in estimated) <= 1  # P(2 or more of 40) = 0.5 %


# ---------------------------------------------------------------- mistakes a user can make
def test_row_correction_takes_a_bool_not_the_command_lines_words():
    # "off" is truthy: taken as it is, it would remove the rows it was meant to keep
    model = BiasModel.from_maps(np.full((4, 32), 3000.0), np.full((4, 32), 2.0))
    frame = np.full((4, 32), 3100.0, dtype=np.float32)
    for word in ("off", "on", "auto", 1):
        with pytest.raises(TypeError, match="row_correction=True or False"):
            subtract_bias(frame, model, 20.0, row_correction=word)  # type: ignore[arg-type]
    assert subtract_bias(frame, model, 20.0, row_correction=np.bool_(True)).shape == (4, 32)


def test_a_mask_that_leaves_rows_too_few_pixels_is_said_and_those_rows_kept(fitted, dark_pair, caplog):
    _, model = fitted
    _, noisy, _, temperature = dark_pair
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:20, : SHAPE[1] - 8] = True  # 8 pixels left in each of the first 20 rows
    with caplog.at_level("WARNING", logger="bias_pipeline.subtract"):
        result = subtract_bias(CCDData(noisy, unit="adu", mask=mask), model, temperature, row_correction=True)
    assert "20 of 96 rows have fewer than 16 usable pixels" in caplog.text
    plain = subtract_bias(noisy, model, temperature)
    # the rows too masked to measure are the plain subtraction's, to float32 rounding
    np.testing.assert_allclose(result.data[:20], plain[:20], atol=1e-3, equal_nan=True)
    assert result.header["ROWCORR"] is True
    everything = np.ones(SHAPE, dtype=bool)
    everything[:, :8] = False
    with caplog.at_level("WARNING", logger="bias_pipeline.subtract"):
        none = subtract_bias(CCDData(noisy, unit="adu", mask=everything), model, temperature, row_correction=True)
    assert none.header["ROWCORR"] is False  # nothing could be removed: the card says so


def test_verify_on_with_rows_too_narrow_says_so(tmp_path, capsys):
    sim = simulate_dataset(
        tmp_path / "sim", SimulationSpec(shape=(24, 12), temperatures=(0.0, 20.0), frames_per_temperature=3, seed=5)
    )
    run_bias_pipeline(sim.raw_dir, tmp_path / "run", generate_set=False, config=PipelineConfig(show_progress=False))
    capsys.readouterr()
    code = verify_main(
        [str(tmp_path / "run"), "--basepath", str(sim.raw_dir), "--output-dir", str(tmp_path / "v"),
         "--row-correction", "on"]
    )  # fmt: skip
    assert code in (0, 1)
    assert capsys.readouterr().err.count("--row-correction on: rows of 12 pixels are too few") == 1  # once, not a frame
    with (tmp_path / "v" / "verification.csv").open() as handle:
        assert {row["row_corrected"] for row in csv.DictReader(handle)} == {"no"}


def test_thermometry_on_without_a_read_noise_map_still_takes_the_rows_out(thermometer):
    # a bare model (no READNOISE) cannot measure the amplitude: "on" must not silently become "off"
    bare = BiasModel(np.asarray(thermometer.a_map), np.asarray(thermometer.b_map), np.zeros(THERMO_SHAPE, bool))
    frames = _thermo_frames(thermometer, 3.0 * THERMO_NOISE, seed=43)
    off, _, _ = _estimates(bare, frames, "off")
    on, _, corrected = _estimates(bare, frames, "on")
    assert all(corrected)
    # the plain estimate scatters by the mean of the rows' offsets over the mean slope; with the
    # rows' common levels down-weighted the within-row slope pattern decides: far less
    expected_off = 3.0 * THERMO_NOISE / math.sqrt(THERMO_SHAPE[0]) / 3.0
    assert np.std(off) > 0.5 * expected_off
    assert np.std(on) < 0.5 * np.std(off)


def test_a_frame_of_another_shape_is_named_with_what_to_do(fitted, dark_pair, tmp_path):
    _, model = fitted
    _, noisy, _, temperature = dark_pair
    path = tmp_path / "cropped.fits"
    fits.PrimaryHDU(noisy[:, :50], header=fits.Header({"HIERARCH TEMPERATURE": temperature})).writeto(path)
    with pytest.raises(
        InputDataError, match=r"cropped\.fits is 96x50 but the model is 96x128: subtract a model fitted"
    ):
        subtract_bias(path, model, row_correction=True)
    with pytest.raises(InputDataError, match="the CCDData frame is 10x128 but the model is 96x128"):
        subtract_bias(CCDData(noisy[:10], unit="adu", mask=np.zeros((10, 128), bool)), model, temperature)

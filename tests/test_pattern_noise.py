"""Pattern noise: the spectra's statistics on arrays (false-alarm rate, detection, amplitude)
and, end to end, a frame with a periodic pattern rejected in step 2 with its own reason."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import PipelineConfig, compiled, run_bias_pipeline
from bias_pipeline.block_combine import combine_records, patterned_frames
from bias_pipeline.pattern_noise import (
    ALONG_ROWS,
    DOWN_COLUMNS,
    PATTERN_FALSE_ALARM,
    PATTERN_MIN_AMPLITUDE,
    block_spectra,
    frame_pattern,
    is_patterned,
    row_power,
    spectrum_bins,
)
from bias_pipeline.simulate import SimulationSpec, simulate_dataset
from bias_pipeline.steps.step1_load_data import scan_frames

ROWS, COLUMNS, N_FRAMES = 48, 64, 5
READ_NOISE_DN = 2.0
SCALE = 16
SIGMA = READ_NOISE_DN * SCALE  # the read noise in ADU


def simulated_differences(
    groups: int, seed: int, pattern: np.ndarray | None = None, shape=(ROWS, COLUMNS), row_noise: float = 0.0
):
    """Frames minus their group's median master, as step 2 sees them: groups of five frames of a
    bias with column and pixel structure, Gaussian read noise of 2 DN (and row noise of
    ``row_noise`` read-noise sigmas), 12-bit values stored x16; ``pattern`` [ADU] added to the
    first frame of each group (before quantisation)."""
    rng = np.random.default_rng(seed)
    rows, columns = shape
    for _ in range(groups):
        bias = 200 + rng.normal(0, 3, columns)[None, :] + rng.normal(0, 1, (rows, columns))
        values = bias + rng.normal(0, READ_NOISE_DN, (N_FRAMES, rows, columns))
        values += rng.normal(0, row_noise * READ_NOISE_DN, (N_FRAMES, rows, 1))
        if pattern is not None:
            values[0] += pattern / SCALE
        frames = np.clip(np.round(values), 0, 4095) * SCALE
        master = np.median(frames, axis=0)
        yield (frames - master).astype(np.float32)


def binomial_sigma(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize(("shape", "row_noise"), [((ROWS, COLUMNS), 0.0), ((40, 75), 0.6)])
def test_false_alarm_rate_on_pure_noise_is_as_promised(shape, row_noise):
    # 5000 frames, quantised, against a median master of five: the rate of frames with a
    # significant bin at p is p (Bonferroni over the bins of both spectra), within binomial sigmas.
    # Row noise is white down the columns: it raises the row means' level, and makes no peak.
    rows, columns = shape
    levels = (0.1, 0.01, PATTERN_FALSE_ALARM)
    hits = dict.fromkeys(levels, 0)
    rejected = frames = 0
    for difference in simulated_differences(1000, seed=11 + columns, shape=shape, row_noise=row_noise):
        for frame in difference:
            power, means = block_spectra(frame)
            frames += 1
            for level in levels:
                hits[level] += frame_pattern(power, means, rows, columns, N_FRAMES, false_alarm=level) is not None
            rejected += is_patterned(frame_pattern(power, means, rows, columns, N_FRAMES), SIGMA)
    for level in levels[:2]:
        assert abs(hits[level] / frames - level) < 4 * binomial_sigma(level, frames), (level, hits[level])
    # At 0.001 a handful are expected: at most the promise plus four sigmas.
    assert hits[PATTERN_FALSE_ALARM] / frames < PATTERN_FALSE_ALARM + 4 * binomial_sigma(PATTERN_FALSE_ALARM, frames)
    # Rejected needs the amplitude too: never without row noise; with it, on a frame of 40 rows a
    # peak of the row means just at the significance limit is about 0.5 sigma, so there the
    # rejections are at most the promised rate.
    if row_noise == 0:
        assert rejected == 0
    else:
        assert rejected / frames < PATTERN_FALSE_ALARM + 4 * binomial_sigma(PATTERN_FALSE_ALARM, frames)


def test_bins_of_white_noise_follow_the_f_distribution():
    # One bin's ratio to the others (R rows summed) exceeds its p-value's quantile as often as promised.
    rng = np.random.default_rng(2)
    series, length, trials = 6, 40, 4000
    p_values = np.concatenate(
        [spectrum_bins(row_power(rng.normal(0, 1, (series, length))), series, length).p_value for _ in range(trials)]
    )
    for level in (0.2, 0.05, 0.01):
        rate = float(np.mean(p_values < level))
        assert abs(rate - level) < 4 * binomial_sigma(level, p_values.size), (level, rate)


def amplitude_sigma(amplitude: float, rows: int, columns: int) -> float:
    """Standard error of the amplitude estimate of a sinusoid (noise ``SIGMA`` per pixel of the
    difference): the cross term of signal and noise over the ``rows`` rows, and the noise power
    of the three bins summed; divided by the share ``1 - 1/n`` the master leaves."""
    share = 1 - 1 / N_FRAMES
    seen = amplitude * share
    excess = rows * (seen * columns / 2) ** 2
    variance = 2 * rows * (seen * columns / 2) ** 2 * columns * SIGMA**2 + 3 * rows * (columns * SIGMA**2) ** 2
    return seen / (2 * excess) * math.sqrt(variance) / share


Y, X = np.mgrid[0:ROWS, 0:COLUMNS]
PATTERNS = {
    "along rows": (np.cos(2 * np.pi * X / 8), ALONG_ROWS, 8.0),
    "tilted": (np.cos(2 * np.pi * (X / 8 + Y / 6)), ALONG_ROWS, 8.0),
    "down the columns": (np.sin(2 * np.pi * Y / 12), DOWN_COLUMNS, 12.0),
}


@pytest.mark.parametrize("name", list(PATTERNS))
def test_a_pattern_of_07_read_noise_is_found_with_its_period_and_amplitude(name):
    shape, direction, period = PATTERNS[name]
    amplitude = 0.7 * SIGMA
    tolerance = 5 * amplitude_sigma(amplitude, ROWS, COLUMNS)
    found = []
    for difference in simulated_differences(40, seed=5, pattern=amplitude * shape):
        peak = frame_pattern(*block_spectra(difference[0]), ROWS, COLUMNS, N_FRAMES)
        assert is_patterned(peak, SIGMA)
        assert peak is not None and peak.direction == direction and peak.period == period
        assert abs(peak.amplitude - amplitude) < tolerance, (peak.amplitude, amplitude, tolerance)
        found.append(peak.amplitude)
        # The other frames of the group see the pattern's 1/n share in the master: far below the limit.
        for other in difference[1:]:
            assert not is_patterned(frame_pattern(*block_spectra(other), ROWS, COLUMNS, N_FRAMES), SIGMA)
    assert abs(np.mean(found) - amplitude) < 4 * amplitude_sigma(amplitude, ROWS, COLUMNS) / math.sqrt(len(found))


@pytest.mark.parametrize("name", list(PATTERNS))
def test_a_faint_pattern_of_01_read_noise_rejects_nothing(name):
    shape = PATTERNS[name][0]
    for difference in simulated_differences(40, seed=6, pattern=0.1 * SIGMA * shape):
        for frame in difference:
            assert not is_patterned(frame_pattern(*block_spectra(frame), ROWS, COLUMNS, N_FRAMES), SIGMA)


def test_a_fixed_pattern_common_to_all_frames_is_in_the_master():
    # A strong pattern in every frame alike cancels against the master: nothing to reject.
    rng = np.random.default_rng(8)
    fixed = 3 * SIGMA * PATTERNS["tilted"][0]
    frames = np.round((200 * SCALE + fixed + rng.normal(0, SIGMA, (N_FRAMES, ROWS, COLUMNS))) / SCALE) * SCALE
    difference = (frames - np.median(frames, axis=0)).astype(np.float32)
    for frame in difference:
        assert not is_patterned(frame_pattern(*block_spectra(frame), ROWS, COLUMNS, N_FRAMES), SIGMA)


def test_spectra_add_over_row_blocks():
    rng = np.random.default_rng(4)
    frame = rng.normal(0, SIGMA, (ROWS, COLUMNS)).astype(np.float32)
    whole, means = block_spectra(frame)
    parts = [block_spectra(frame[start : start + 7]) for start in range(0, ROWS, 7)]
    assert np.allclose(sum(power for power, _ in parts), whole, rtol=1e-5)
    assert np.allclose(np.concatenate([m for _, m in parts]), means, atol=1e-4)
    assert np.allclose(means, frame.mean(axis=1), atol=1e-4)


# ---- end to end: a patterned frame in a simulated data set ------------------------------------

#: A CMOS sensor: row noise of 0.6 read-noise sigmas, 1 % telegraph pixels 3 sigmas apart, cosmic rays.
SPEC = SimulationSpec(
    shape=(ROWS, COLUMNS),
    temperatures=(-10.0, 0.0, 10.0),
    frames_per_temperature=5,
    seed=3,
    row_noise_dn=0.6 * READ_NOISE_DN,
    telegraph_fraction=0.01,
    telegraph_amplitude_dn=3 * READ_NOISE_DN,
)
#: Injected: (frame index, pattern [ADU], direction, period). Down the columns a pattern must
#: stand out of the row noise too, which on 48 rows needs more than the amplitude limit.
INJECTED = {
    1: (0.8 * SIGMA * PATTERNS["tilted"][0], ALONG_ROWS, 8.0),
    7: (1.5 * SIGMA * PATTERNS["down the columns"][0], DOWN_COLUMNS, 12.0),
}


def add_pattern(path: Path, pattern: np.ndarray) -> None:
    """Add ``pattern`` [ADU] to a raw frame, keeping its values 12-bit x16 uint16."""
    with fits.open(path) as hdul:
        data = hdul[0].data.astype(np.float64)
        header = hdul[0].header.copy()
    values = np.clip(np.round((data + pattern) / SCALE), 0, 4095) * SCALE
    fits.PrimaryHDU(values.astype(np.uint16), header=header).writeto(path, overwrite=True)


def manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "frames_manifest.csv", newline="") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def patterned_set(tmp_path_factory: pytest.TempPathFactory):
    truth = simulate_dataset(tmp_path_factory.mktemp("patterned"), SPEC)
    for index, (pattern, _, _) in INJECTED.items():
        add_pattern(truth.frame_paths[index], pattern)
    return truth


def run(raw: Path, out: Path) -> dict[str, dict[str, str]]:
    run_bias_pipeline(raw, out, config=PipelineConfig(show_progress=False, evaluation=False))
    return manifest(out)


def test_a_frame_with_pattern_noise_is_rejected_with_its_reason(patterned_set, tmp_path):
    rows = run(patterned_set.raw_dir, tmp_path / "out")
    paths = patterned_set.frame_paths
    patterned = {paths[index].name: (direction, period) for index, (_, direction, period) in INJECTED.items()}
    for name, row in rows.items():
        if name not in patterned:
            assert row["status"] == "used", (name, row["reason"])
            continue
        direction, period = patterned[name]
        assert row["status"] == "rejected"
        assert row["reason"].startswith("pattern noise: a periodic pattern of period"), row["reason"]
        unit = "pixels along rows" if direction == ALONG_ROWS else "rows down the columns"
        assert f"period {period:.1f} {unit}" in row["reason"], row["reason"]
        found = re.search(r"\(([\d.]+) x read noise\)", row["reason"])
        assert found and float(found.group(1)) > PATTERN_MIN_AMPLITUDE


def test_a_data_set_without_pattern_loses_no_frame_to_pattern_noise(tmp_path):
    truth = simulate_dataset(tmp_path / "clean", SPEC)
    rows = run(truth.raw_dir, tmp_path / "out")
    assert len(rows) == len(truth.frame_paths)
    assert not [name for name, row in rows.items() if "pattern noise" in row["reason"]]


def test_groups_too_small_to_judge_are_skipped(patterned_set):
    records, _ = scan_frames(patterned_set.raw_dir, PipelineConfig(show_progress=False))
    name = patterned_set.frame_paths[1].name
    group = sorted((r for r in records if r.path.name.startswith(name[:11])), key=lambda r: r.path.name)
    whole = combine_records(group)
    assert [record.path.name for record, _ in patterned_frames(group, whole)] == [name]
    pair = group[:2]
    assert patterned_frames(pair, combine_records(pair)) == []


def test_a_groups_spectra_do_not_depend_on_threads_blocks_or_engine(patterned_set, monkeypatch):
    records, _ = scan_frames(patterned_set.raw_dir, PipelineConfig(show_progress=False))
    group = sorted((r for r in records if r.path.name.startswith("bias_-10.0C")), key=lambda r: r.path.name)
    results = {}
    for engine in ("numpy", "numba"):
        monkeypatch.setenv(compiled.ENGINE_VARIABLE, engine)
        for threads in (1, 2):
            # a tiny memory limit: many blocks of a few rows each; the default: one block
            for limit in (0.05, 512.0):
                results[engine, threads, limit] = combine_records(group, memory_limit=limit, threads=threads)
    reference = results["numba", 1, 512.0]
    assert reference.row_spectrum is not None and reference.row_means is not None
    for key, result in results.items():
        assert result.row_spectrum is not None and result.row_means is not None
        if key[0] == "numba" and key[2] == 512.0:
            continue
        # Blocks are added in one order whatever the threads: the same sums for the same blocks.
        np.testing.assert_array_equal(result.row_spectrum, results[key[0], 1, key[2]].row_spectrum)
        np.testing.assert_allclose(result.row_spectrum, reference.row_spectrum, rtol=1e-5)
        np.testing.assert_allclose(result.row_means, reference.row_means, rtol=1e-5, atol=1e-3)


def test_a_direction_of_fewer_than_23_pixels_is_not_tested():
    # 8 frequencies of at least 4 cycles are needed (the README's rule).
    rng = np.random.default_rng(9)
    assert spectrum_bins(row_power(rng.normal(0, 1, (10, 22))), 10, 22).bins.size == 0
    assert spectrum_bins(row_power(rng.normal(0, 1, (10, 23))), 10, 23).bins.size == 8

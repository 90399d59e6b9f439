"""The simulator writes what the camera writes, and the truth beside it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline.simulate import SimulationSpec, simulate_dataset
from bias_pipeline.simulate import main as simulate_main


def test_frames_look_like_the_camera(sim):
    path = sim.frame_paths[0]
    with fits.open(path) as hdul:
        header = hdul[0].header
        data = hdul[0].data
        assert header["BITPIX"] == 16 and header["BZERO"] == 32768
    assert data.dtype == np.uint16 and data.shape == (48, 64)
    assert np.all(data % 16 == 0) and data.max() <= 4095 * 16
    assert "TEMPERATURE" in header and header.cards["TEMPERATURE"].image.startswith("HIERARCH")
    assert header["EXPOSURE"] == 0.0
    # The frame follows the truth within the read noise (2 DN = 32 ADU), away from hot pixels;
    # the spread is taken from the MAD so that a cosmic-ray hit does not count.
    residual = (data.astype(float) - sim.bias_adu(header["TEMPERATURE"]))[~sim.hot_mask]
    robust_std = 1.4826 * np.median(np.abs(residual - np.median(residual)))
    assert abs(np.median(residual)) < 5 and 28 < robust_std < 37


def test_truth_files(sim):
    a = fits.getdata(sim.truth_dir / "bias_a_true.fits")
    np.testing.assert_array_equal(a, sim.a_map)
    assert fits.getdata(sim.truth_dir / "hot_pixel_mask.fits").sum() == sim.hot_mask.sum() >= 3
    # Column pattern: column means differ far more than pixel noise averaged over 48 rows allows.
    assert np.std(sim.a_map.mean(axis=0)) > 3 * np.std(sim.a_map - sim.a_map.mean(axis=0)) / np.sqrt(48)


def test_hot_pixels_are_not_linear(tmp_path):
    spec = SimulationSpec(
        shape=(16, 20),
        temperatures=(0.0, 15.0, 30.0),
        frames_per_temperature=1,
        read_noise_dn=0.0,
        cosmic_rate=0.0,
    )
    truth = simulate_dataset(tmp_path, spec)
    frames = [fits.getdata(p).astype(float) for p in truth.frame_paths]
    hot = truth.hot_mask
    curvature = frames[0] + frames[2] - 2 * frames[1]
    assert np.all(curvature[hot] > 20) and np.all(np.abs(curvature[~hot]) < 40)


def test_same_seed_same_files(tmp_path):
    spec = SimulationSpec(frames_per_temperature=1)
    one = simulate_dataset(tmp_path / "a", spec)
    two = simulate_dataset(tmp_path / "b", spec)
    assert np.array_equal(fits.getdata(one.frame_paths[-1]), fits.getdata(two.frame_paths[-1]))


def test_command_line(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bias_pipeline.simulate",
            str(tmp_path / "s"),
            "--shape",
            "16",
            "24",
            "--temperatures",
            "0",
            "5",
            "--frames-per-temperature",
            "2",
            "--faults",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote 4 frames" in done.stdout
    names = sorted(p.name for p in (tmp_path / "s" / "raw").iterdir())
    assert "observing_notes.txt" in names and "dark_10s.fits" in names and len(names) == 8


# --- CMOS structure: row noise, column patterns, telegraph pixels -------------------------------

CMOS_SHAPE = (64, 128)
CMOS = SimulationSpec(
    shape=CMOS_SHAPE,
    temperatures=(0.0, 20.0),
    frames_per_temperature=20,
    seed=11,
    cosmic_rate=0.0,
    row_noise_dn=3.0,
    telegraph_fraction=0.05,
    telegraph_amplitude_dn=10.0,
    telegraph_rate=0.3,
)
# The spread of one frame pixel about its truth [ADU]: read noise and the 12-bit quantisation.
SIGMA_FRAME = float(np.hypot(CMOS.read_noise_dn * 16, 16 / np.sqrt(12)))


def _frames(truth) -> np.ndarray:
    return np.stack([fits.getdata(p).astype(np.float64) for p in truth.frame_paths])


def _residuals(truth) -> np.ndarray:
    """Each frame minus its noiseless expectation without row offsets or telegraph levels [ADU]."""
    frames = _frames(truth)
    return frames - np.stack([truth.bias_adu(t) for t in truth.frame_temperatures])


@pytest.fixture(scope="module")
def cmos(tmp_path_factory):
    """One CMOS data set, and the same spec with row noise and telegraph pixels off."""
    root = tmp_path_factory.mktemp("cmos")
    on = simulate_dataset(root / "on", CMOS)
    off = simulate_dataset(root / "off", replace(CMOS, row_noise_dn=0.0, telegraph_fraction=0.0))
    return on, off


def test_new_fields_at_their_defaults_write_the_same_bytes(tmp_path):
    spec = SimulationSpec(frames_per_temperature=1, seed=4, quadratic_fraction=0.01)
    explicit = replace(
        spec,
        row_noise_dn=0.0,
        telegraph_fraction=0.0,
        column_offset_dn=3.0,
        column_slope_adu=0.4,
        telegraph_amplitude_dn=9.0,  # no telegraph pixels: amplitude and rate do not matter
        telegraph_rate=0.7,
    )
    default = simulate_dataset(tmp_path / "d", spec, faults=True)
    other = simulate_dataset(tmp_path / "e", explicit, faults=True)
    names = sorted(p.relative_to(tmp_path / "d") for p in (tmp_path / "d").rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(tmp_path / "e") for p in (tmp_path / "e").rglob("*") if p.is_file())
    for name in names:
        assert (tmp_path / "d" / name).read_bytes() == (tmp_path / "e" / name).read_bytes(), name
    assert not (default.truth_dir / "row_offsets.fits").exists()
    assert not (default.truth_dir / "telegraph_pixels.fits").exists()
    np.testing.assert_array_equal(default.row_offsets, np.zeros((5, 48), np.float32))
    np.testing.assert_array_equal(default.frame_row_noise, np.zeros(5))
    assert not other.telegraph_mask.any() and not other.telegraph_amplitude.any()


def test_row_noise_and_telegraph_leave_the_other_draws_unchanged(cmos):
    on, off = cmos
    np.testing.assert_array_equal(on.a_map, off.a_map)
    np.testing.assert_array_equal(on.hot_mask, off.hot_mask)
    assert on.frame_temperatures == off.frame_temperatures
    # Same read-noise draws: frame with row noise minus its row offsets and telegraph levels is
    # the frame without, up to the 12-bit rounding of each (|difference| <= 1 DN). Other draws
    # would differ by about sqrt(2) x the read noise.
    high = np.zeros((len(on.frame_paths), *CMOS_SHAPE), bool)
    high.reshape(len(on.frame_paths), -1)[:, np.flatnonzero(on.telegraph_mask)] = on.telegraph_states
    shifted = _frames(on) - on.row_offsets[:, :, None] - np.where(high, on.telegraph_amplitude, 0.0)
    assert np.abs(shifted - _frames(off)).max() <= 16 + 1e-3


def test_row_offsets_have_the_stated_amplitude(cmos):
    on, _ = cmos
    sigma = CMOS.row_noise_dn * 16
    offsets = fits.getdata(on.truth_dir / "row_offsets.fits")
    np.testing.assert_array_equal(offsets, on.row_offsets)
    assert offsets.shape == (len(on.frame_paths), CMOS_SHAPE[0])
    # n N(0, sigma) draws: the sample variance over sigma^2 is chi-square_n / n, sd sqrt(2 / n).
    n = offsets.size
    assert abs(np.mean(offsets.astype(float) ** 2) / sigma**2 - 1) < 5 * np.sqrt(2 / n)
    np.testing.assert_allclose(on.frame_row_noise, np.sqrt(np.mean(offsets.astype(float) ** 2, axis=1)), rtol=1e-6)


def test_rows_are_shifted_by_the_truth_offsets(cmos):
    on, _ = cmos
    normal = ~on.abnormal_mask
    residual = _residuals(on)
    medians = np.array([[np.median(row[ok]) for row, ok in zip(frame, normal, strict=True)] for frame in residual])
    # The median of n values with spread sigma has sd sqrt(pi / 2) sigma / sqrt(n).
    sd_median = np.sqrt(np.pi / 2) * SIGMA_FRAME / np.sqrt(normal.sum(axis=1).min())
    error = medians - on.row_offsets
    assert np.abs(error).max() < 6 * sd_median
    assert np.sqrt(np.mean(error**2)) < 1.2 * sd_median
    assert np.std(on.row_offsets) > 5 * sd_median  # the offsets are far above what the test resolves


def test_telegraph_pixels_show_two_levels(cmos):
    on, off = cmos
    tele = on.telegraph_mask
    assert tele.sum() == round(CMOS.telegraph_fraction * tele.size)
    assert fits.getdata(on.truth_dir / "telegraph_pixels.fits").astype(bool).tolist() == tele.tolist()
    assert not (tele & (on.hot_mask | on.noisy_mask | on.dead_mask)).any()
    assert on.abnormal_mask[tele].all()
    amplitude = CMOS.telegraph_amplitude_dn * 16
    assert np.all(on.telegraph_amplitude[tele] == amplitude) and not on.telegraph_amplitude[~tele].any()
    residual = (_residuals(on) - on.row_offsets[:, :, None]).reshape(len(on.frame_paths), -1)
    values = residual[:, np.flatnonzero(tele)]
    states = on.telegraph_states
    # Separation of the two levels: mean high minus mean low, over every pixel and frame.
    n_high, n_low = states.sum(), (~states).sum()
    separation = values[states].mean() - values[~states].mean()
    assert abs(separation - amplitude) < 5 * SIGMA_FRAME * np.sqrt(1 / n_high + 1 / n_low)
    # Two levels and nothing more: about each level the spread is the read noise (chi-square).
    spread = np.concatenate([values[states] - values[states].mean(), values[~states] - values[~states].mean()])
    assert abs(np.mean(spread**2) / SIGMA_FRAME**2 - 1) < 5 * np.sqrt(2 / spread.size)
    # The data alone tell the levels apart: a cut at half the amplitude misclassifies a frame with
    # probability Phi(-amplitude / (2 sigma)).
    from scipy.special import ndtr

    p_wrong = ndtr(-amplitude / 2 / SIGMA_FRAME)
    wrong = np.mean((values > amplitude / 2) != states)
    assert wrong < p_wrong + 5 * np.sqrt(p_wrong / values.size)
    # The same pixels without telegraph levels: nothing moves with the states.
    plain = (_residuals(off) - off.row_offsets[:, :, None]).reshape(len(off.frame_paths), -1)[:, np.flatnonzero(tele)]
    assert abs(plain[states].mean() - plain[~states].mean()) < 5 * SIGMA_FRAME * np.sqrt(1 / n_high + 1 / n_low)


def test_telegraph_switching_rate(cmos):
    on, _ = cmos
    states = on.telegraph_states
    n_frames, n_pixels = states.shape
    assert n_frames == len(on.frame_paths)
    switches = states[1:] != states[:-1]
    rate = CMOS.telegraph_rate
    assert abs(switches.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / switches.size)
    assert abs(states[0].mean() - 0.5) < 5 * np.sqrt(0.25 / n_pixels)  # the first state: 50/50
    # Markov: a switch does not depend on the one before (P(switch | switched) = rate too).
    after_switch = switches[1:][switches[:-1]]
    assert abs(after_switch.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / after_switch.size)


def test_telegraph_pixels_belong_to_the_sensor_across_epochs(tmp_path, cmos):
    on, _ = cmos
    later = simulate_dataset(
        tmp_path / "later",
        replace(CMOS, frames_per_temperature=3, epoch=1, offset_adu=10.0, new_hot_fraction=0.05),
    )
    np.testing.assert_array_equal(later.telegraph_mask, on.telegraph_mask)
    assert not (later.new_hot_mask & later.telegraph_mask).any()
    assert not np.array_equal(later.row_offsets, on.row_offsets[: len(later.frame_paths)])
    assert not np.array_equal(later.telegraph_states, on.telegraph_states[: len(later.frame_paths)])


def test_column_patterns_in_the_truth(tmp_path, cmos):
    on, _ = cmos
    rows = CMOS_SHAPE[0]
    offsets = fits.getdata(on.truth_dir / "column_offsets.fits")
    slopes = fits.getdata(on.truth_dir / "column_slopes.fits")
    np.testing.assert_array_equal(offsets, on.column_offsets)
    np.testing.assert_array_equal(slopes, on.column_slopes)
    # What is left of a column's mean after its offset: the per-pixel (1.5 DN) and row (0.5 DN)
    # patterns averaged over the rows, the latter common to every column.
    left = on.a_map.mean(axis=0) - offsets
    assert np.std(left) < 2 * 1.5 * 16 / np.sqrt(rows)
    assert np.std(on.b_map.mean(axis=0) - slopes) < 2 * 0.2 / np.sqrt(rows)
    # The amplitudes are the spec's (chi-square tolerance over the columns).
    cols = CMOS_SHAPE[1]
    assert abs(np.var(offsets) / (CMOS.column_offset_dn * 16) ** 2 - 1) < 5 * np.sqrt(2 / cols)
    flat = simulate_dataset(
        tmp_path / "flat", replace(CMOS, frames_per_temperature=1, column_offset_dn=0.0, column_slope_adu=0.0)
    )
    assert not flat.column_offsets.any() and not flat.column_slopes.any()
    np.testing.assert_array_equal(flat.hot_mask, on.hot_mask)  # the same draws, scaled


def test_out_of_range_fields_are_refused(tmp_path):
    for field_name, value in (("row_noise_dn", -1.0), ("telegraph_fraction", 1.5), ("telegraph_rate", -0.1)):
        with pytest.raises(ValueError, match=field_name):
            simulate_dataset(tmp_path / field_name, replace(CMOS, **{field_name: value}))


def test_command_line_cmos_flags(tmp_path):
    out = tmp_path / "c"
    flags = ["--row-noise", "1.5", "--telegraph-fraction", "0.01", "--telegraph-amplitude", "8"]
    flags += ["--telegraph-rate", "0.2", "--column-offset", "0", "--column-slope", "0.1"]
    done = subprocess.run(
        [sys.executable, "-m", "bias_pipeline", "simulate", str(out), "--frames-per-temperature", "1", *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote 5 frames" in done.stdout
    offsets = fits.getdata(out / "truth" / "row_offsets.fits")
    assert offsets.shape == (5, 48) and offsets.std() > 0
    telegraph = fits.open(out / "truth" / "telegraph_pixels.fits")[0]
    assert telegraph.data.sum() == round(0.01 * 48 * 64) and telegraph.header["TELAMP"] == 8 * 16
    assert telegraph.header["TELRATE"] == 0.2
    assert not fits.getdata(out / "truth" / "column_offsets.fits").any()
    # 0.1 ADU/deg C over 64 columns: the spread within a chi-square tolerance.
    slopes = fits.getdata(out / "truth" / "column_slopes.fits")
    assert abs(np.var(slopes) / 0.1**2 - 1) < 5 * np.sqrt(2 / slopes.size)


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--row-noise", "-1", "--row-noise must be 0 or more"),
        ("--column-offset", "-0.5", "--column-offset must be 0 or more"),
        ("--column-slope", "-1e-3", "--column-slope must be 0 or more"),
        ("--telegraph-amplitude", "-2", "--telegraph-amplitude must be 0 or more"),
        ("--telegraph-fraction", "1.5", "--telegraph-fraction must lie in 0..1"),
        ("--telegraph-rate", "-0.1", "--telegraph-rate must lie in 0..1"),
        ("--telegraph-rate", "nan", "not a finite number"),
    ],
)
def test_command_line_cmos_errors(tmp_path, capsys, flag, value, says):
    with pytest.raises(SystemExit) as exited:
        simulate_main([str(tmp_path / "x"), flag, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()

"""The simulator writes what the camera writes, and the truth beside it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from astropy.io import fits

from bias_pipeline.simulate import SimulationSpec, simulate_dataset


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

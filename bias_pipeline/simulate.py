"""A raw data set that looks like PhotSat's camera, with the truth it was made from.

Each pixel's bias in 12-bit DN is ``a12 + b12 * T`` with column and row patterns in both the
intercept and the slope; a frame adds Gaussian read noise, a few cosmic-ray hits, quantises
to 12 bits and stores the value times 16 in a uint16 FITS file with ``HIERARCH TEMPERATURE``
and ``EXPOSURE`` cards. A few hot pixels grow exponentially with temperature and so do not
follow the linear law. The true maps are saved beside the frames in 16-bit ADU:

    OUT/raw/bias_-10.0C_000.fits ...        the frames
    OUT/truth/bias_a_true.fits              a: bias at 0 deg C [ADU]
    OUT/truth/bias_b_true.fits              b: slope [ADU / deg C]
    OUT/truth/hot_pixel_mask.fits           1 = hot pixel (usable as --hot-pixel-mask)

Run ``python -m bias_pipeline.simulate OUT --help`` for the options.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

logger = logging.getLogger(__name__)

SCALE = 16  # 12-bit value -> 16-bit container
DN_MAX = 4095


@dataclass
class SimulationSpec:
    """What to simulate.

    Attributes
    ----------
    shape
        ``(rows, columns)`` of a frame.
    temperatures
        Temperature set points [deg C].
    frames_per_temperature
        Frames at each set point.
    jitter
        Standard deviation [deg C] of a frame's temperature about its set point.
    read_noise_dn
        Read noise per frame [12-bit DN] (x16 in ADU).
    bias_level_dn
        Mean bias at 0 deg C [12-bit DN].
    slope_adu
        Mean slope [16-bit ADU per deg C].
    hot_fraction
        Fraction of pixels that are hot (at least 3).
    cosmic_rate
        Cosmic-ray hits per pixel per frame.
    exposure
        Exposure time written in the headers [s].
    seed
        Random seed; the same seed gives the same files.
    """

    shape: tuple[int, int] = (48, 64)
    temperatures: tuple[float, ...] = (-10.0, 0.0, 10.0, 20.0, 30.0)
    frames_per_temperature: int = 5
    jitter: float = 0.02
    read_noise_dn: float = 2.0
    bias_level_dn: float = 200.0
    slope_adu: float = 3.0
    hot_fraction: float = 0.001
    cosmic_rate: float = 1e-4
    exposure: float = 0.0
    seed: int = 0


@dataclass
class SimulationTruth:
    """The truth behind a simulated data set (all maps in 16-bit ADU)."""

    a_map: np.ndarray
    b_map: np.ndarray
    hot_mask: np.ndarray
    read_noise_adu: float
    frame_temperatures: list[float] = field(default_factory=list)
    frame_paths: list[Path] = field(default_factory=list)
    raw_dir: Path | None = None
    truth_dir: Path | None = None

    def bias_adu(self, temperature: float) -> np.ndarray:
        """Noise-free linear bias [ADU] at ``temperature`` (hot pixels excepted)."""
        return self.a_map + self.b_map * np.float32(temperature)


def make_truth(
    spec: SimulationSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw the true maps: a and b [ADU], the hot mask and the hot pixels' amplitude [ADU]."""
    rows, cols = spec.shape
    a12 = (
        spec.bias_level_dn
        + rng.normal(0.0, 3.0, cols)[None, :]  # column offsets of the readout amplifiers
        + rng.normal(0.0, 0.5, rows)[:, None]  # row pattern
        + rng.normal(0.0, 1.5, spec.shape)  # fixed pattern per pixel
    )
    b = spec.slope_adu + rng.normal(0.0, 0.4, cols)[None, :] + rng.normal(0.0, 0.2, spec.shape)
    n_hot = max(3, round(spec.hot_fraction * rows * cols))
    hot = np.zeros(spec.shape, dtype=bool)
    hot.flat[rng.choice(rows * cols, n_hot, replace=False)] = True
    amplitude = np.where(hot, rng.uniform(50.0, 400.0, spec.shape), 0.0)
    return (a12 * SCALE).astype(np.float32), b.astype(np.float32), hot, amplitude.astype(np.float32)


def make_frame(
    a_map: np.ndarray,
    b_map: np.ndarray,
    hot_amplitude: np.ndarray,
    temperature: float,
    spec: SimulationSpec,
    rng: np.random.Generator,
) -> np.ndarray:
    """One raw frame as stored: 12-bit DN x 16 in uint16."""
    adu = a_map + b_map * temperature
    # Hot pixels: a dark-current-like term doubling every 6 deg C, not linear in T.
    adu = adu + hot_amplitude * np.float32(2.0 ** (temperature / 6.0))
    dn = adu / SCALE + rng.normal(0.0, spec.read_noise_dn, a_map.shape)
    n_hits = rng.poisson(spec.cosmic_rate * a_map.size)
    if n_hits:
        hits = rng.choice(a_map.size, n_hits, replace=False)
        dn.flat[hits] += rng.uniform(200.0, 3000.0, n_hits)
    return (np.clip(np.rint(dn), 0, DN_MAX).astype(np.uint16) * SCALE).astype(np.uint16)


def frame_header(temperature: float, exposure: float, set_point: float, index: int) -> fits.Header:
    """Header of a raw frame, as the camera writes it."""
    header = fits.Header()
    header["INSTRUME"] = ("PHOTSAT-CMOS", "simulated by bias_pipeline.simulate")
    header["IMAGETYP"] = ("BIAS", "frame type")
    header["HIERARCH TEMPERATURE"] = (round(float(temperature), 3), "[deg C] sensor temperature")
    header["EXPOSURE"] = (float(exposure), "[s] exposure time")
    header["TEMPSET"] = (float(set_point), "[deg C] thermal set point")
    header["FRAMENUM"] = (index, "frame number at this set point")
    return header


def _write(path: Path, data: np.ndarray, header: fits.Header | None = None) -> None:
    fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True)


def simulate_dataset(
    out_dir: str | Path,
    spec: SimulationSpec | None = None,
    *,
    faults: bool = False,
) -> SimulationTruth:
    """Write a raw data set under ``out_dir/raw`` and its truth under ``out_dir/truth``.

    Parameters
    ----------
    out_dir
        Folder to create.
    spec
        What to simulate (defaults: 48 x 64 frames, 5 set points, 5 frames each).
    faults
        Also write files the pipeline must reject or ignore: a long-exposure dark, a readout
        dropout (half the pixels zero), a file cut short by a transfer and a text note.

    Returns
    -------
    SimulationTruth

    Examples
    --------
    >>> import tempfile
    >>> truth = simulate_dataset(tempfile.mkdtemp(), SimulationSpec(frames_per_temperature=3))
    >>> len(truth.frame_paths), truth.a_map.shape
    (15, (48, 64))
    """
    spec = spec or SimulationSpec()
    rng = np.random.default_rng(spec.seed)
    out = Path(out_dir)
    raw_dir, truth_dir = out / "raw", out / "truth"
    raw_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    a_map, b_map, hot, amplitude = make_truth(spec, rng)
    truth = SimulationTruth(
        a_map, b_map, hot, spec.read_noise_dn * SCALE, raw_dir=raw_dir, truth_dir=truth_dir
    )
    for set_point in spec.temperatures:
        for index in range(spec.frames_per_temperature):
            temperature = set_point + rng.normal(0.0, spec.jitter)
            data = make_frame(a_map, b_map, amplitude, temperature, spec, rng)
            path = raw_dir / f"bias_{set_point:+.1f}C_{index:03d}.fits"
            _write(path, data, frame_header(temperature, spec.exposure, set_point, index))
            truth.frame_paths.append(path)
            truth.frame_temperatures.append(round(float(temperature), 3))
    if faults:
        _write_faults(raw_dir, a_map, b_map, amplitude, spec, rng)
    header = fits.Header()
    header["BUNIT"] = "adu"
    _write(truth_dir / "bias_a_true.fits", a_map, header)
    _write(truth_dir / "bias_b_true.fits", b_map, header)
    _write(truth_dir / "hot_pixel_mask.fits", hot.astype(np.uint8))
    logger.info("simulated %d frames in %s", len(truth.frame_paths), raw_dir)
    return truth


def _write_faults(
    raw_dir: Path,
    a_map: np.ndarray,
    b_map: np.ndarray,
    amplitude: np.ndarray,
    spec: SimulationSpec,
    rng: np.random.Generator,
) -> None:
    set_point = spec.temperatures[0]
    frame = make_frame(a_map, b_map, amplitude, set_point, spec, rng)
    _write(raw_dir / "dark_10s.fits", frame, frame_header(set_point, 10.0, set_point, 0))
    dropout = frame.copy()
    dropout[: frame.shape[0] // 2] = 0
    _write(raw_dir / "bias_dropout.fits", dropout, frame_header(set_point, spec.exposure, set_point, 99))
    _write(raw_dir / "bias_cut_short.fits", frame, frame_header(set_point, spec.exposure, set_point, 98))
    whole = (raw_dir / "bias_cut_short.fits").read_bytes()
    (raw_dir / "bias_cut_short.fits").write_bytes(whole[: len(whole) - 2880])
    (raw_dir / "observing_notes.txt").write_text("thermal-vacuum run, bias series\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bias_pipeline.simulate OUT [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m bias_pipeline.simulate",
        description="Write a simulated raw PhotSat bias data set (OUT/raw) and its truth (OUT/truth).",
    )
    parser.add_argument("out", type=Path, help="folder to write")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=2,
        default=(48, 64),
        metavar=("ROWS", "COLS"),
        help="frame size (default 48 64)",
    )
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[-10.0, 0.0, 10.0, 20.0, 30.0],
        help="set points in deg C",
    )
    parser.add_argument(
        "--frames-per-temperature", type=int, default=5, help="frames at each set point (default 5)"
    )
    parser.add_argument("--read-noise", type=float, default=2.0, help="read noise in 12-bit DN (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--faults", action="store_true", help="add files the pipeline must reject or ignore")
    args = parser.parse_args(argv)
    if min(args.shape) < 1 or args.frames_per_temperature < 1:
        parser.error("--shape and --frames-per-temperature must be positive")
    spec = SimulationSpec(
        shape=tuple(args.shape),
        temperatures=tuple(args.temperatures),
        frames_per_temperature=args.frames_per_temperature,
        read_noise_dn=args.read_noise,
        seed=args.seed,
    )
    truth = simulate_dataset(args.out, spec, faults=args.faults)
    sys.stdout.write(
        f"wrote {len(truth.frame_paths)} frames to {truth.raw_dir} and the truth to {truth.truth_dir}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

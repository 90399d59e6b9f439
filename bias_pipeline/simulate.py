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
    OUT/truth/noisy_pixels.fits, dead_pixels.fits    1 = noisy (5x read noise) / stuck pixel
    OUT/truth/bias_c_true.fits              c [ADU / deg C^2], with a quadratic population

Run ``python -m bias_pipeline.simulate OUT --help`` for the options.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from .errors import OutputError
from .units import TWELVE_BIT_MAX

logger = logging.getLogger(__name__)

SCALE = 16  # 12-bit value -> 16-bit container
DN_MAX = TWELVE_BIT_MAX  # older name


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
    noisy_fraction
        Fraction of pixels with 5x the read noise (at least 2 when non-zero).
    dead_fraction
        Fraction of pixels stuck at one value whatever the temperature (at least 2 when
        non-zero).
    quadratic_fraction
        Fraction of pixels with a quadratic term ``c T^2`` (|c| 0.05..0.2 ADU/deg C^2).
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
    noisy_fraction: float = 0.0005
    dead_fraction: float = 0.0003
    quadratic_fraction: float = 0.0
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
    noisy_mask: np.ndarray | None = None
    dead_mask: np.ndarray | None = None
    c_map: np.ndarray | None = None
    frame_temperatures: list[float] = field(default_factory=list)
    frame_paths: list[Path] = field(default_factory=list)
    raw_dir: Path | None = None
    truth_dir: Path | None = None

    def bias_adu(self, temperature: float) -> np.ndarray:
        """Noise-free bias [ADU] at ``temperature`` (hot and dead pixels excepted)."""
        bias = self.a_map + self.b_map * np.float32(temperature)
        if self.c_map is not None:
            bias = bias + self.c_map * np.float32(temperature) ** 2
        return bias

    @property
    def abnormal_mask(self) -> np.ndarray:
        """Pixels that do not behave as ``a + b T`` with the nominal noise: hot, noisy, dead."""
        mask = self.hot_mask.copy()
        for extra in (self.noisy_mask, self.dead_mask):
            if extra is not None:
                mask |= extra
        return mask


@dataclass
class PixelPopulation:
    """The per-pixel truth a frame is drawn from (maps in 16-bit ADU)."""

    a_map: np.ndarray
    b_map: np.ndarray
    c_map: np.ndarray
    hot_mask: np.ndarray
    hot_amplitude: np.ndarray
    noise_factor: np.ndarray
    dead_mask: np.ndarray
    dead_value: np.ndarray


def _choose(rng: np.random.Generator, size: int, fraction: float, minimum: int, taken: np.ndarray) -> np.ndarray:
    count = 0 if fraction <= 0 else max(minimum, round(fraction * size))
    free = np.flatnonzero(~taken.ravel())
    chosen = np.zeros(taken.shape, dtype=bool)
    chosen.flat[rng.choice(free, min(count, free.size), replace=False)] = True
    return chosen


def make_truth(spec: SimulationSpec, rng: np.random.Generator) -> PixelPopulation:
    """Draw the per-pixel truth: intercept and slope with column and row patterns, hot,
    noisy, dead and (optionally) quadratic pixels, each population distinct."""
    rows, cols = spec.shape
    a12 = (
        spec.bias_level_dn
        + rng.normal(0.0, 3.0, cols)[None, :]  # column offsets of the readout amplifiers
        + rng.normal(0.0, 0.5, rows)[:, None]  # row pattern
        + rng.normal(0.0, 1.5, spec.shape)  # fixed pattern per pixel
    )
    b = spec.slope_adu + rng.normal(0.0, 0.4, cols)[None, :] + rng.normal(0.0, 0.2, spec.shape)
    taken = np.zeros(spec.shape, dtype=bool)
    hot = _choose(rng, rows * cols, spec.hot_fraction, 3, taken)
    taken |= hot
    noisy = _choose(rng, rows * cols, spec.noisy_fraction, 2, taken)
    taken |= noisy
    dead = _choose(rng, rows * cols, spec.dead_fraction, 2, taken)
    taken |= dead
    quadratic = _choose(rng, rows * cols, spec.quadratic_fraction, 2, taken)
    c_map = np.where(quadratic, rng.uniform(0.05, 0.2, spec.shape) * rng.choice([-1, 1], spec.shape), 0.0)
    return PixelPopulation(
        a_map=(a12 * SCALE).astype(np.float32),
        b_map=b.astype(np.float32),
        c_map=c_map.astype(np.float32),
        hot_mask=hot,
        hot_amplitude=np.where(hot, rng.uniform(50.0, 400.0, spec.shape), 0.0).astype(np.float32),
        noise_factor=np.where(noisy, 5.0, 1.0).astype(np.float32),
        dead_mask=dead,
        dead_value=np.round(rng.uniform(150, 250, spec.shape)).astype(np.float32),
    )


def make_frame(
    population: PixelPopulation, temperature: float, spec: SimulationSpec, rng: np.random.Generator
) -> np.ndarray:
    """One raw frame as stored: 12-bit DN x 16 in uint16."""
    t = np.float32(temperature)
    adu = population.a_map + population.b_map * t + population.c_map * t * t
    # Hot pixels: a dark-current-like term doubling every 6 deg C, not linear in T.
    adu = adu + population.hot_amplitude * np.float32(2.0 ** (temperature / 6.0))
    noise = rng.normal(0.0, spec.read_noise_dn, population.a_map.shape) * population.noise_factor
    dn = adu / SCALE + noise
    dn = np.where(population.dead_mask, population.dead_value, dn)
    n_hits = rng.poisson(spec.cosmic_rate * dn.size)
    if n_hits:
        hits = rng.choice(dn.size, n_hits, replace=False)
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
    population = make_truth(spec, rng)
    truth = SimulationTruth(
        population.a_map,
        population.b_map,
        population.hot_mask,
        spec.read_noise_dn * SCALE,
        noisy_mask=population.noise_factor > 1,
        dead_mask=population.dead_mask,
        c_map=population.c_map if spec.quadratic_fraction > 0 else None,
        raw_dir=raw_dir,
        truth_dir=truth_dir,
    )
    for set_point in spec.temperatures:
        for index in range(spec.frames_per_temperature):
            temperature = set_point + rng.normal(0.0, spec.jitter)
            data = make_frame(population, temperature, spec, rng)
            path = raw_dir / f"bias_{set_point:+.1f}C_{index:03d}.fits"
            _write(path, data, frame_header(temperature, spec.exposure, set_point, index))
            truth.frame_paths.append(path)
            truth.frame_temperatures.append(round(float(temperature), 3))
    if faults:
        _write_faults(raw_dir, population, spec, rng)
    header = fits.Header()
    header["BUNIT"] = "adu"
    _write(truth_dir / "bias_a_true.fits", population.a_map, header)
    _write(truth_dir / "bias_b_true.fits", population.b_map, header)
    _write(truth_dir / "hot_pixel_mask.fits", population.hot_mask.astype(np.uint8))
    _write(truth_dir / "noisy_pixels.fits", truth.noisy_mask.astype(np.uint8))  # type: ignore[union-attr]
    _write(truth_dir / "dead_pixels.fits", population.dead_mask.astype(np.uint8))
    if truth.c_map is not None:
        _write(truth_dir / "bias_c_true.fits", truth.c_map, header)
    logger.info("simulated %d frames in %s", len(truth.frame_paths), raw_dir)
    return truth


def _write_faults(raw_dir: Path, population: PixelPopulation, spec: SimulationSpec, rng: np.random.Generator) -> None:
    set_point = spec.temperatures[0]
    frame = make_frame(population, set_point, spec, rng)
    _write(raw_dir / "dark_10s.fits", frame, frame_header(set_point, 10.0, set_point, 0))
    dropout = frame.copy()
    dropout[: frame.shape[0] // 2] = 0
    _write(raw_dir / "bias_dropout.fits", dropout, frame_header(set_point, spec.exposure, set_point, 99))
    _write(raw_dir / "bias_cut_short.fits", frame, frame_header(set_point, spec.exposure, set_point, 98))
    whole = (raw_dir / "bias_cut_short.fits").read_bytes()
    (raw_dir / "bias_cut_short.fits").write_bytes(whole[: len(whole) - 2880])
    (raw_dir / "observing_notes.txt").write_text("thermal-vacuum run, bias series\n")


def main(argv: Sequence[str] | None = None, prog: str = "python -m bias_pipeline.simulate") -> int:
    """Command line: ``python -m bias_pipeline.simulate OUT [options]``.

    Parameters
    ----------
    argv
        The arguments (default ``sys.argv[1:]``).
    prog
        The command's name in its usage and error messages (``python -m bias_pipeline simulate``
        when called as that subcommand).

    Returns
    -------
    int
        The exit code.
    """
    from .command import OneLineParser, guarded  # here: the simulator is imported by tests without a command

    parser = OneLineParser(
        prog=prog,
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
    parser.add_argument("--frames-per-temperature", type=int, default=5, help="frames at each set point (default 5)")
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

    def body() -> int:
        try:
            truth = simulate_dataset(args.out, spec, faults=args.faults)
        except OSError as exc:
            raise OutputError(
                f"cannot write {exc.filename or args.out}: {exc.strerror or exc}; choose another OUT"
            ) from None
        sys.stdout.write(
            f"wrote {len(truth.frame_paths)} frames to {truth.raw_dir} and the truth to {truth.truth_dir}\n"
        )
        return 0

    return guarded(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())

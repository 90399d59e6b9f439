"""A raw data set that looks like PhotSat's camera, with the truth it was made from.

Each pixel's bias in 12-bit DN is ``a12 + b12 * T`` with column and row patterns in both the
intercept and the slope; a frame adds Gaussian read noise, a few cosmic-ray hits, quantises
to 12 bits and stores the value times 16 in a uint16 FITS file with ``HIERARCH TEMPERATURE``
and ``EXPOSURE`` cards. A few hot pixels grow exponentially with temperature and so do not
follow the linear law. Optionally, as a CMOS sensor does: row noise (each row of each frame
shifted by a common random offset, from the column-parallel readout) and random-telegraph
pixels (two levels, switching at random from frame to frame). The true maps are saved beside
the frames in 16-bit ADU:

    OUT/raw/bias_-10.0C_000.fits ...        the frames
    OUT/truth/bias_a_true.fits              a: bias at 0 deg C [ADU]
    OUT/truth/bias_b_true.fits              b: slope [ADU / deg C]
    OUT/truth/hot_pixel_mask.fits           1 = hot pixel (usable as --hot-pixel-mask)
    OUT/truth/noisy_pixels.fits, dead_pixels.fits    1 = noisy (5x read noise) / stuck pixel
    OUT/truth/bias_c_true.fits              c [ADU / deg C^2], with a quadratic population
    OUT/truth/damaged_pixels.fits, new_hot_pixels.fits   1 = changed since epoch 0 (a later epoch)
    OUT/truth/column_offsets.fits, column_slopes.fits    the column patterns of a [ADU] and b [ADU / deg C]
    OUT/truth/row_offsets.fits              with row noise: frames x rows [ADU], in the frames' order
    OUT/truth/telegraph_pixels.fits         with telegraph pixels: 1 = telegraph pixel

Every frame carries ``DATE-OBS``: the set points are visited in order from ``start_date``, one
frame every ``frame_interval`` seconds. A later epoch of the same sensor (``epoch`` > 0, with
the same ``seed``) has the same pixels aged: a global offset, a damaged region whose bias
stepped, and new hot pixels; the truth maps of that epoch include the ageing. Telegraph pixels
belong to the sensor (the same in every epoch); their states and the row noise are drawn anew.

Run ``python -m bias_pipeline.simulate OUT --help`` for the options.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from tqdm import tqdm

from .dates import format_date, parse_date
from .errors import OutputError
from .interrupts import deferred_interrupts
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
        Random seed; the same seed gives the same files (and, across epochs, the same sensor).
    start_date
        ``DATE-OBS`` of the first frame (ISO, UTC).
    frame_interval
        Time between two frames [s] (the set points are visited one after the other).
    epoch
        0 for the sensor as made; a later epoch (1, 2, ...) ages the same pixels as the fields
        below say and draws new frame noise.
    offset_adu
        Global bias offset of this epoch [16-bit ADU], added to every pixel.
    damaged_region
        ``(row0, row1, col0, col1)`` of a region whose bias stepped by ``damage_adu``
        (rows ``row0 <= r < row1``, columns likewise); ``None`` for none.
    damage_adu
        The step of the damaged region's bias [ADU].
    new_hot_fraction
        Fraction of the pixels (normal ones until then) that turned hot in this epoch.
    row_noise_dn
        Row noise [12-bit DN]: in each frame each row is shifted by a common offset drawn from
        ``N(0, row_noise_dn)`` before quantisation (0: none).
    column_offset_dn
        Standard deviation [12-bit DN] of the column offsets of the intercept (the readout
        amplifiers' fixed pattern).
    column_slope_adu
        Standard deviation [16-bit ADU per deg C] of the column pattern of the slope.
    telegraph_fraction
        Fraction of pixels that are random-telegraph pixels (at least 2 when non-zero), distinct
        from hot, noisy, dead and quadratic pixels; a property of the sensor, the same in every epoch.
    telegraph_amplitude_dn
        Separation of a telegraph pixel's two levels [12-bit DN]; the high level adds it to the bias.
    telegraph_rate
        Probability per frame that a telegraph pixel switches level (a Markov chain through the
        frames in their order; the first frame's state is high or low with equal odds).
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
    start_date: str = "2026-03-01T00:00:00"
    frame_interval: float = 60.0
    epoch: int = 0
    offset_adu: float = 0.0
    damaged_region: tuple[int, int, int, int] | None = None
    damage_adu: float = 0.0
    new_hot_fraction: float = 0.0
    row_noise_dn: float = 0.0
    column_offset_dn: float = 3.0
    column_slope_adu: float = 0.4
    telegraph_fraction: float = 0.0
    telegraph_amplitude_dn: float = 6.0
    telegraph_rate: float = 0.3

    @property
    def aged(self) -> bool:
        """Whether the sensor of this spec differs from epoch 0's."""
        return bool(self.offset_adu or (self.damaged_region and self.damage_adu) or self.new_hot_fraction)


@dataclass
class SimulationTruth:
    """The truth behind a simulated data set (all maps in 16-bit ADU).

    ``a_map`` of a telegraph pixel is its low level; its high level adds ``telegraph_amplitude``.
    ``row_offsets`` holds each frame's row offsets (frames in the order of ``frame_paths``,
    zeros without row noise), ``frame_row_noise`` their rms over the rows of each frame, and
    ``telegraph_states`` the level of each telegraph pixel in each frame (frames x telegraph
    pixels, ``True`` = high; the pixels in the order of ``numpy.flatnonzero(telegraph_mask)``).
    ``column_offsets`` and ``column_slopes`` are the column patterns of a and b.
    """

    a_map: np.ndarray
    b_map: np.ndarray
    hot_mask: np.ndarray
    read_noise_adu: float
    noisy_mask: np.ndarray | None = None
    dead_mask: np.ndarray | None = None
    c_map: np.ndarray | None = None
    frame_temperatures: list[float] = field(default_factory=list)
    frame_paths: list[Path] = field(default_factory=list)
    frame_dates: list[_dt.datetime] = field(default_factory=list)
    offset_adu: float = 0.0
    damaged_mask: np.ndarray | None = None
    new_hot_mask: np.ndarray | None = None
    raw_dir: Path | None = None
    truth_dir: Path | None = None
    row_offsets: np.ndarray | None = None
    frame_row_noise: np.ndarray | None = None
    telegraph_mask: np.ndarray | None = None
    telegraph_amplitude: np.ndarray | None = None
    telegraph_states: np.ndarray | None = None
    column_offsets: np.ndarray | None = None
    column_slopes: np.ndarray | None = None

    def bias_adu(self, temperature: float) -> np.ndarray:
        """Noise-free bias [ADU] at ``temperature`` (hot and dead pixels excepted)."""
        bias = self.a_map + self.b_map * np.float32(temperature)
        if self.c_map is not None:
            bias = bias + self.c_map * np.float32(temperature) ** 2
        return bias

    @property
    def abnormal_mask(self) -> np.ndarray:
        """Pixels that do not behave as ``a + b T`` with the nominal noise: hot, noisy, dead,
        newly hot and telegraph pixels."""
        mask = self.hot_mask.copy()
        for extra in (self.noisy_mask, self.dead_mask, self.new_hot_mask, self.telegraph_mask):
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
    column_offsets: np.ndarray | None = None
    column_slopes: np.ndarray | None = None
    telegraph_mask: np.ndarray | None = None
    telegraph_amplitude: np.ndarray | None = None


def _stream(spec: SimulationSpec, what: str) -> list[int]:
    """The seed of the generator of one kind of draw.

    The sensor and epoch 0's frames come from ``seed``, a later epoch's frames from
    ``[seed, epoch]`` and its ageing from ``[seed, epoch, 1]`` (as before row noise and telegraph
    pixels existed, so those files stay as they were). The draws added since have generators of
    their own, so that switching them on leaves every other draw unchanged; none ends in 0
    (``[s, e, 0]`` seeds the same stream as ``[s, e]``), and telegraph pixels, a property of the
    sensor, do not depend on the epoch.
    """
    keys = {
        "row offsets": [spec.seed, spec.epoch, 2],
        "telegraph pixels": [spec.seed, 0, 3],
        "telegraph states": [spec.seed, spec.epoch, 4],
    }
    return keys[what]


def _choose(rng: np.random.Generator, size: int, fraction: float, minimum: int, taken: np.ndarray) -> np.ndarray:
    count = 0 if fraction <= 0 else max(minimum, round(fraction * size))
    free = np.flatnonzero(~taken.ravel())
    chosen = np.zeros(taken.shape, dtype=bool)
    chosen.flat[rng.choice(free, min(count, free.size), replace=False)] = True
    return chosen


def make_truth(spec: SimulationSpec, rng: np.random.Generator) -> PixelPopulation:
    """Draw the per-pixel truth: intercept and slope with column and row patterns, hot,
    noisy, dead, (optionally) quadratic and telegraph pixels, each population distinct.

    Parameters
    ----------
    spec
        What to simulate.
    rng
        The generator of the sensor's pixels (telegraph pixels are drawn from a generator of
        their own, seeded by ``spec.seed``, so that they leave this stream as it was).

    Returns
    -------
    PixelPopulation
    """
    rows, cols = spec.shape
    column_offsets = rng.normal(0.0, spec.column_offset_dn, cols)  # the readout amplifiers' offsets
    a12 = (
        spec.bias_level_dn
        + column_offsets[None, :]
        + rng.normal(0.0, 0.5, rows)[:, None]  # row pattern
        + rng.normal(0.0, 1.5, spec.shape)  # fixed pattern per pixel
    )
    column_slopes = rng.normal(0.0, spec.column_slope_adu, cols)
    b = spec.slope_adu + column_slopes[None, :] + rng.normal(0.0, 0.2, spec.shape)
    taken = np.zeros(spec.shape, dtype=bool)
    hot = _choose(rng, rows * cols, spec.hot_fraction, 3, taken)
    taken |= hot
    noisy = _choose(rng, rows * cols, spec.noisy_fraction, 2, taken)
    taken |= noisy
    dead = _choose(rng, rows * cols, spec.dead_fraction, 2, taken)
    taken |= dead
    quadratic = _choose(rng, rows * cols, spec.quadratic_fraction, 2, taken)
    c_map = np.where(quadratic, rng.uniform(0.05, 0.2, spec.shape) * rng.choice([-1, 1], spec.shape), 0.0)
    taken |= quadratic
    telegraph = _choose(
        np.random.default_rng(_stream(spec, "telegraph pixels")), rows * cols, spec.telegraph_fraction, 2, taken
    )
    return PixelPopulation(
        a_map=(a12 * SCALE).astype(np.float32),
        b_map=b.astype(np.float32),
        c_map=c_map.astype(np.float32),
        hot_mask=hot,
        hot_amplitude=np.where(hot, rng.uniform(50.0, 400.0, spec.shape), 0.0).astype(np.float32),
        noise_factor=np.where(noisy, 5.0, 1.0).astype(np.float32),
        dead_mask=dead,
        dead_value=np.round(rng.uniform(150, 250, spec.shape)).astype(np.float32),
        column_offsets=(column_offsets * SCALE).astype(np.float32),
        column_slopes=column_slopes.astype(np.float32),
        telegraph_mask=telegraph,
        telegraph_amplitude=np.where(telegraph, spec.telegraph_amplitude_dn * SCALE, 0.0).astype(np.float32),
    )


def age_population(population: PixelPopulation, spec: SimulationSpec) -> tuple[np.ndarray, np.ndarray]:
    """Age the sensor in place as ``spec`` says (offset, damaged region, new hot pixels), with
    random draws of their own (so the same seed and epoch give the same ageing).

    Returns
    -------
    damaged, new_hot : numpy.ndarray
        Boolean maps of the pixels of the damaged region and of the pixels newly hot.
    """
    rng = np.random.default_rng([spec.seed, spec.epoch, 1])
    population.a_map += np.float32(spec.offset_adu)
    damaged = np.zeros(spec.shape, dtype=bool)
    if spec.damaged_region is not None and spec.damage_adu:
        row0, row1, col0, col1 = spec.damaged_region
        damaged[row0:row1, col0:col1] = True
        population.a_map[damaged] += np.float32(spec.damage_adu)
    taken = population.hot_mask | population.dead_mask | (population.noise_factor > 1) | damaged
    if population.telegraph_mask is not None:
        taken = taken | population.telegraph_mask
    new_hot = _choose(rng, damaged.size, spec.new_hot_fraction, 1, taken)
    population.hot_amplitude[new_hot] = rng.uniform(50.0, 400.0, int(new_hot.sum())).astype(np.float32)
    return damaged, new_hot


def make_frame(
    population: PixelPopulation,
    temperature: float,
    spec: SimulationSpec,
    rng: np.random.Generator,
    *,
    row_offsets_dn: np.ndarray | None = None,
    telegraph_high: np.ndarray | None = None,
) -> np.ndarray:
    """One raw frame as stored: 12-bit DN x 16 in uint16.

    Parameters
    ----------
    population
        The pixels.
    temperature
        The frame's temperature [deg C].
    spec
        What to simulate (read noise, cosmic-ray rate).
    rng
        The generator of the frame's read noise and cosmic rays.
    row_offsets_dn
        This frame's offset of each row [12-bit DN], added before quantisation (``None``: none).
    telegraph_high
        Boolean map of the pixels whose telegraph level is high in this frame (``None``: none).

    Returns
    -------
    numpy.ndarray
        The frame, uint16.
    """
    t = np.float32(temperature)
    adu = population.a_map + population.b_map * t + population.c_map * t * t
    # Hot pixels: a dark-current-like term doubling every 6 deg C, not linear in T.
    adu = adu + population.hot_amplitude * np.float32(2.0 ** (temperature / 6.0))
    if telegraph_high is not None and population.telegraph_amplitude is not None:
        adu = adu + np.where(telegraph_high, population.telegraph_amplitude, np.float32(0.0))
    noise = rng.normal(0.0, spec.read_noise_dn, population.a_map.shape) * population.noise_factor
    dn = adu / SCALE + noise
    dn = np.where(population.dead_mask, population.dead_value, dn)
    if row_offsets_dn is not None:
        # After the stuck pixels: the offset comes from the row's readout, which a stuck pixel shares.
        dn = dn + row_offsets_dn[:, None]
    n_hits = rng.poisson(spec.cosmic_rate * dn.size)
    if n_hits:
        hits = rng.choice(dn.size, n_hits, replace=False)
        dn.flat[hits] += rng.uniform(200.0, 3000.0, n_hits)
    return (np.clip(np.rint(dn), 0, DN_MAX).astype(np.uint16) * SCALE).astype(np.uint16)


def _frame_structure(
    population: PixelPopulation, spec: SimulationSpec
) -> Iterator[tuple[np.ndarray | None, np.ndarray | None, np.ndarray]]:
    """Each frame's row offsets [DN] and telegraph-high map in turn, and the telegraph pixels'
    states (``None`` for what the spec leaves off), from generators of their own."""
    rows = spec.shape[0]
    row_rng = np.random.default_rng(_stream(spec, "row offsets")) if spec.row_noise_dn > 0 else None
    telegraph = population.telegraph_mask if population.telegraph_mask is not None else np.zeros(spec.shape, bool)
    pixels = np.flatnonzero(telegraph)
    state_rng = np.random.default_rng(_stream(spec, "telegraph states"))
    states = state_rng.random(pixels.size) < 0.5
    while True:
        row_offsets = row_rng.normal(0.0, spec.row_noise_dn, rows) if row_rng is not None else None
        high = None
        if pixels.size:
            high = np.zeros(spec.shape, dtype=bool)
            high.flat[pixels] = states
        yield row_offsets, high, states.copy()
        states ^= state_rng.random(pixels.size) < spec.telegraph_rate


def _check_spec(spec: SimulationSpec) -> None:
    """Raise ValueError naming the first field of ``spec`` out of its range."""
    for name in ("row_noise_dn", "column_offset_dn", "column_slope_adu", "telegraph_amplitude_dn"):
        if not getattr(spec, name) >= 0:  # NaN fails too
            raise ValueError(f"{name} must be 0 or more, not {getattr(spec, name)}")
    for name in ("telegraph_fraction", "telegraph_rate"):
        if not 0.0 <= getattr(spec, name) <= 1.0:
            raise ValueError(f"{name} must lie in 0..1, not {getattr(spec, name)}")


def frame_header(
    temperature: float, exposure: float, set_point: float, index: int, date: _dt.datetime | None = None
) -> fits.Header:
    """Header of a raw frame, as the camera writes it."""
    header = fits.Header()
    header["INSTRUME"] = ("PHOTSAT-CMOS", "simulated by bias_pipeline.simulate")
    header["IMAGETYP"] = ("BIAS", "frame type")
    if date is not None:
        header["DATE-OBS"] = (format_date(date), "[UTC] start of the exposure")
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
    show_progress: bool = False,
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
    show_progress
        A progress bar of the frames on stderr, when it is a terminal.

    Returns
    -------
    SimulationTruth

    Raises
    ------
    ValueError
        A field of ``spec`` out of its range (a negative amplitude, a fraction or rate outside
        0..1) or a ``start_date`` that is not a date.

    Examples
    --------
    >>> import tempfile
    >>> truth = simulate_dataset(tempfile.mkdtemp(), SimulationSpec(frames_per_temperature=3))
    >>> len(truth.frame_paths), truth.a_map.shape
    (15, (48, 64))
    """
    spec = spec or SimulationSpec()
    _check_spec(spec)
    rng = np.random.default_rng(spec.seed)
    out = Path(out_dir)
    raw_dir, truth_dir = out / "raw", out / "truth"
    raw_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    population = make_truth(spec, rng)
    damaged = new_hot = None
    if spec.epoch or spec.aged:
        damaged, new_hot = age_population(population, spec)
        rng = np.random.default_rng([spec.seed, spec.epoch])  # this epoch's own frame noise
    try:
        start = parse_date(spec.start_date)
    except ValueError as exc:
        raise ValueError(f"start_date: {exc}") from None
    structure = _frame_structure(population, spec)
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
        offset_adu=spec.offset_adu,
        damaged_mask=damaged,
        new_hot_mask=new_hot,
        telegraph_mask=population.telegraph_mask,
        telegraph_amplitude=population.telegraph_amplitude,
        column_offsets=population.column_offsets,
        column_slopes=population.column_slopes,
    )
    row_offsets, states = [], []
    progress = tqdm(
        total=len(spec.temperatures) * spec.frames_per_temperature,
        desc="simulating",
        unit="frame",
        disable=None if show_progress else True,
        leave=False,
    )
    for set_number, set_point in enumerate(spec.temperatures):
        for index in range(spec.frames_per_temperature):
            temperature = set_point + rng.normal(0.0, spec.jitter)
            frame_rows, high, frame_states = next(structure)
            data = make_frame(population, temperature, spec, rng, row_offsets_dn=frame_rows, telegraph_high=high)
            row_offsets.append(np.zeros(spec.shape[0]) if frame_rows is None else frame_rows)
            states.append(frame_states)
            path = raw_dir / f"bias_{set_point:+.1f}C_{index:03d}.fits"
            sequence = set_number * spec.frames_per_temperature + index
            taken = start + _dt.timedelta(seconds=spec.frame_interval * sequence)
            _write(path, data, frame_header(temperature, spec.exposure, set_point, index, taken))
            truth.frame_paths.append(path)
            truth.frame_temperatures.append(round(float(temperature), 3))
            truth.frame_dates.append(taken)
            progress.update()
    progress.close()
    truth.row_offsets = (np.array(row_offsets).reshape(-1, spec.shape[0]) * SCALE).astype(np.float32)
    truth.frame_row_noise = np.sqrt(np.mean(truth.row_offsets.astype(np.float64) ** 2, axis=1))
    truth.telegraph_states = np.array(states, dtype=bool).reshape(len(states), -1)
    if faults:
        _write_faults(raw_dir, population, spec, rng, structure)
    header = fits.Header()
    header["BUNIT"] = "adu"
    _write(truth_dir / "bias_a_true.fits", population.a_map, header)
    _write(truth_dir / "bias_b_true.fits", population.b_map, header)
    _write(truth_dir / "hot_pixel_mask.fits", population.hot_mask.astype(np.uint8))
    _write(truth_dir / "noisy_pixels.fits", truth.noisy_mask.astype(np.uint8))  # type: ignore[union-attr]
    _write(truth_dir / "dead_pixels.fits", population.dead_mask.astype(np.uint8))
    if truth.c_map is not None:
        _write(truth_dir / "bias_c_true.fits", truth.c_map, header)
    if damaged is not None and new_hot is not None:
        _write(truth_dir / "damaged_pixels.fits", damaged.astype(np.uint8))
        _write(truth_dir / "new_hot_pixels.fits", new_hot.astype(np.uint8))
    _write(truth_dir / "column_offsets.fits", population.column_offsets, header)
    slope_header = fits.Header()
    slope_header["BUNIT"] = "adu / deg C"
    _write(truth_dir / "column_slopes.fits", population.column_slopes, slope_header)
    if spec.row_noise_dn > 0:
        row_header = header.copy()
        row_header["COMMENT"] = "row offsets: one row per frame (in the frames' order), one column per sensor row"
        _write(truth_dir / "row_offsets.fits", truth.row_offsets, row_header)
    if truth.telegraph_mask is not None and truth.telegraph_mask.any():
        telegraph_header = fits.Header()
        telegraph_header["TELAMP"] = (spec.telegraph_amplitude_dn * SCALE, "[adu] separation of the two levels")
        telegraph_header["TELRATE"] = (spec.telegraph_rate, "probability per frame of switching level")
        _write(truth_dir / "telegraph_pixels.fits", truth.telegraph_mask.astype(np.uint8), telegraph_header)
    logger.debug("simulated %d frames in %s", len(truth.frame_paths), raw_dir)  # the caller says where they end up
    return truth


def _write_faults(
    raw_dir: Path,
    population: PixelPopulation,
    spec: SimulationSpec,
    rng: np.random.Generator,
    structure: Iterator[tuple[np.ndarray | None, np.ndarray | None, np.ndarray]],
) -> None:
    set_point = spec.temperatures[0]
    frame_rows, high, _ = next(structure)  # the fault frames carry the sensor's structure too
    frame = make_frame(population, set_point, spec, rng, row_offsets_dn=frame_rows, telegraph_high=high)
    _write(raw_dir / "dark_10s.fits", frame, frame_header(set_point, 10.0, set_point, 0))
    dropout = frame.copy()
    dropout[: frame.shape[0] // 2] = 0
    _write(raw_dir / "bias_dropout.fits", dropout, frame_header(set_point, spec.exposure, set_point, 99))
    _write(raw_dir / "bias_cut_short.fits", frame, frame_header(set_point, spec.exposure, set_point, 98))
    whole = (raw_dir / "bias_cut_short.fits").read_bytes()
    (raw_dir / "bias_cut_short.fits").write_bytes(whole[: len(whole) - 2880])
    (raw_dir / "observing_notes.txt").write_text("thermal-vacuum run, bias series\n")


SIMULATE_EXAMPLE = """\
examples:
  {prog} sim/ --faults
  {prog} sim_big/ --shape 256 320 --frames-per-temperature 16 --row-noise 0.6
  {prog} sim_later/ --epoch 1 --offset 3 --new-hot-fraction 0.001

  The first writes 25 frames of 48 x 64 (and four faulty files) in sim/raw and the truth in
  sim/truth; then: python -m bias_pipeline run --basepath sim/raw --output-dir results/
"""

#: The hidden folder beside OUT that a data set is written into before it is renamed OUT.
STAGING_PREFIX = ".partial-"


def staging_folder(out: Path) -> Path:
    """The hidden sibling of ``out`` that :func:`write_dataset` fills.

    Parameters
    ----------
    out
        The data set's folder.

    Returns
    -------
    pathlib.Path
        ``.OUT.partial-PID`` beside it (this process's id: two simulations never share one).
    """
    return out.parent / f".{out.name}{STAGING_PREFIX}{os.getpid()}"


def write_dataset(
    out_dir: str | Path,
    spec: SimulationSpec | None = None,
    *,
    faults: bool = False,
    show_progress: bool = False,
) -> SimulationTruth:
    """:func:`simulate_dataset` all or nothing: into a hidden folder beside ``out_dir``, renamed
    ``out_dir`` once complete, so that a stopped or failed run leaves no partial data set.

    Parameters
    ----------
    out_dir
        A new folder, or an empty one (replaced by the complete data set).
    spec, faults, show_progress
        As :func:`simulate_dataset`.

    Returns
    -------
    SimulationTruth
        Its paths are those under ``out_dir``.

    Raises
    ------
    OutputError
        When ``out_dir`` is a file or a folder that is not empty, a file stands where a parent
        folder should be, or the folder cannot be written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"OUT {out} is a file, not a folder; give a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise OutputError(f"OUT {out} exists and is not empty; give a new folder or remove it")
    for parent in reversed(out.parents):
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"cannot write {out}: {parent} is a file, not a folder; choose another OUT")
    staging = staging_folder(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # a pid reused after a kill -9: that run's leftovers
        truth = simulate_dataset(staging, spec, faults=faults, show_progress=show_progress)
        with deferred_interrupts():
            os.replace(staging, out)  # onto a missing or empty folder: one rename
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write {exc.filename or out}: {exc.strerror or exc}; choose another OUT") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    moved = [out / path.relative_to(staging) for path in truth.frame_paths]
    return replace(truth, raw_dir=out / "raw", truth_dir=out / "truth", frame_paths=moved)


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
    import argparse  # here: the simulator is imported by tests and the demo without a command

    from .command import OneLineParser, add_message_options, finite_float, guarded, setup_logging

    parser = OneLineParser(
        prog=prog,
        description=(
            "Write a simulated raw PhotSat bias data set (OUT/raw) and its truth (OUT/truth).\n"
            "OUT appears complete or not at all: it is written into a hidden folder beside it\n"
            "(.OUT.partial-PID) and renamed OUT at the end."
        ),
        epilog=SIMULATE_EXAMPLE.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="folder to write: new, or an empty one")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=2,
        default=(48, 64),
        metavar=("ROWS", "COLUMNS"),
        help="frame size (default 48 64)",
    )
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[-10.0, 0.0, 10.0, 20.0, 30.0],
        metavar="T",
        help="set points in deg C (default -10 0 10 20 30)",
    )
    parser.add_argument(
        "--frames-per-temperature", type=int, default=5, metavar="N", help="frames at each set point (default 5)"
    )
    parser.add_argument(
        "--read-noise", type=float, default=2.0, metavar="DN", help="read noise in 12-bit DN (default 2)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    parser.add_argument("--faults", action="store_true", help="add files the pipeline must reject or ignore")
    parser.add_argument(
        "--start-date",
        default=SimulationSpec.start_date,
        metavar="DATE",
        help="DATE-OBS of the first frame, ISO UTC (default %(default)s)",
    )
    parser.add_argument(
        "--epoch",
        type=int,
        default=0,
        metavar="N",
        help="0 = the sensor as made; N > 0 = a later epoch of the same --seed",
    )
    parser.add_argument(
        "--offset", type=float, default=0.0, metavar="ADU", help="global bias offset of this epoch in ADU (default 0)"
    )
    parser.add_argument(
        "--damage",
        type=float,
        nargs=5,
        metavar=("ROW0", "ROW1", "COL0", "COL1", "ADU"),
        help="a region rows ROW0..ROW1-1, columns COL0..COL1-1 whose bias stepped by ADU",
    )
    parser.add_argument(
        "--new-hot-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of pixels turned hot in this epoch (default 0)",
    )
    cmos = parser.add_argument_group("CMOS structure")
    cmos.add_argument(
        "--row-noise",
        type=finite_float,
        default=SimulationSpec.row_noise_dn,
        metavar="DN",
        help="row noise: each row of each frame shifted by a common N(0, DN) offset, 12-bit DN (default 0)",
    )
    cmos.add_argument(
        "--column-offset",
        type=finite_float,
        default=SimulationSpec.column_offset_dn,
        metavar="DN",
        help="spread of the column offsets of the bias, 12-bit DN (default %(default)s)",
    )
    cmos.add_argument(
        "--column-slope",
        type=finite_float,
        default=SimulationSpec.column_slope_adu,
        metavar="ADU",
        help="spread of the column pattern of the slope, ADU per deg C (default %(default)s)",
    )
    cmos.add_argument(
        "--telegraph-fraction",
        type=finite_float,
        default=SimulationSpec.telegraph_fraction,
        metavar="F",
        help="fraction of pixels that are random-telegraph pixels, two levels (default 0)",
    )
    cmos.add_argument(
        "--telegraph-amplitude",
        type=finite_float,
        default=SimulationSpec.telegraph_amplitude_dn,
        metavar="DN",
        help="separation of a telegraph pixel's two levels, 12-bit DN (default %(default)s)",
    )
    cmos.add_argument(
        "--telegraph-rate",
        type=finite_float,
        default=SimulationSpec.telegraph_rate,
        metavar="R",
        help="probability per frame that a telegraph pixel switches level (default %(default)s)",
    )
    add_message_options(
        parser,
        quiet="nothing on stdout (not the 'wrote ...' line); on stderr only warnings and errors; no progress bar",
    )
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    for flag, value in (
        ("--row-noise", args.row_noise),
        ("--column-offset", args.column_offset),
        ("--column-slope", args.column_slope),
        ("--telegraph-amplitude", args.telegraph_amplitude),
    ):
        if value < 0:
            parser.error(f"{flag} must be 0 or more, not {value:g}")
    for flag, value in (("--telegraph-fraction", args.telegraph_fraction), ("--telegraph-rate", args.telegraph_rate)):
        if not 0.0 <= value <= 1.0:
            parser.error(f"{flag} must lie in 0..1, not {value:g}")
    if min(args.shape) < 1 or args.frames_per_temperature < 1:
        parser.error("--shape and --frames-per-temperature must be positive")
    try:
        parse_date(args.start_date)
    except ValueError as exc:
        parser.error(f"--start-date: {exc}")
    if args.epoch < 0 or not 0.0 <= args.new_hot_fraction < 1.0:
        parser.error("--epoch must be 0 or more and --new-hot-fraction in 0..1")
    region = None
    if args.damage is not None:
        row0, row1, col0, col1 = (int(v) for v in args.damage[:4])
        if not (0 <= row0 < row1 <= args.shape[0] and 0 <= col0 < col1 <= args.shape[1]):
            parser.error(f"--damage: rows {row0}..{row1} and columns {col0}..{col1} must lie inside --shape")
        region = (row0, row1, col0, col1)
    spec = SimulationSpec(
        shape=tuple(args.shape),
        temperatures=tuple(args.temperatures),
        frames_per_temperature=args.frames_per_temperature,
        read_noise_dn=args.read_noise,
        seed=args.seed,
        start_date=args.start_date,
        epoch=args.epoch,
        offset_adu=args.offset,
        damaged_region=region,
        damage_adu=args.damage[4] if args.damage is not None else 0.0,
        new_hot_fraction=args.new_hot_fraction,
        row_noise_dn=args.row_noise,
        column_offset_dn=args.column_offset,
        column_slope_adu=args.column_slope,
        telegraph_fraction=args.telegraph_fraction,
        telegraph_amplitude_dn=args.telegraph_amplitude,
        telegraph_rate=args.telegraph_rate,
    )

    def body() -> int:
        truth = write_dataset(args.out, spec, faults=args.faults, show_progress=not args.quiet)
        if not args.quiet:
            sys.stdout.write(
                f"wrote {len(truth.frame_paths)} frames to {truth.raw_dir} and the truth to {truth.truth_dir}\n"
            )
        return 0

    def interrupted(exc: KeyboardInterrupt) -> str:
        return f"no data set was written ({args.out} is left as it was)"

    return guarded(parser.prog, body, interrupted)


if __name__ == "__main__":
    sys.exit(main())

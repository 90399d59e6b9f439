"""Pattern noise: a frame with a periodic pattern far beyond the noise (interference on the
readout), found as a peak in its power spectrum against its group's master.

A frame minus its group's master is white noise: the bias structure (hot pixels, column
offsets, fixed patterns common to all frames) is in the master and cancels; row offsets and the
frame's level go to the zero frequency. A periodic pattern in one frame is not white: it puts
its power into one frequency. Two spectra of the difference cover a 2-D pattern: the power along
rows (a transform over the columns of each row, summed over rows: any pattern with a horizontal
frequency, tilted or not) and the spectrum of the frame's row means down the columns (a pattern
constant along each row). Row means, not the robust row offsets of :mod:`bias_pipeline.row_noise`:
the median of 12-bit values stored x16 is mostly exactly 0 against a median master, a series
whose spectrum is no noise's; a mean is linear (a cosmic ray in one row adds a spike to one row,
whose power spreads over every frequency alike, so it makes no peak).

The rule (:func:`frame_pattern`, :func:`is_patterned`): a frame is patterned when one frequency
bin's power exceeds the mean noise power of the bins beside it both (a) by more than white
Gaussian noise reaches with probability :data:`PATTERN_FALSE_ALARM` per frame (Bonferroni over
every bin tested in both spectra; the bin against the mean of the others is F-distributed,
exactly, so the rate holds however few bins the level is estimated from), and (b) by enough that
the sinusoid it implies has an amplitude of at least :data:`PATTERN_MIN_AMPLITUDE` times the read
noise. Bins with fewer than :data:`MIN_CYCLES` cycles across the frame are not tested (a gradient
or a glow is no periodic pattern; BANZAI too discards the largest scales).

Why 0.5 read-noise sigmas: a pattern of amplitude ``a`` adds ``a^2 / 2`` to its frame's variance,
6 % of the noise at ``a = 0.5 sigma``, and enters a master of ``n`` frames as ``a / n``, below the
master's own noise ``sigma / sqrt(n)`` for any group; fainter patterns (and faint fixed patterns
common to all frames, which belong in the master and cancel in the difference) reject nothing.
Noise alone comes near the amplitude limit only on small frames (up to 0.3 sigma at 48 x 64;
with row noise of 0.6 sigma, which the row means carry, a peak of 40 rows' means at the
false-alarm limit is about 0.5 sigma: there frames are rejected at the false-alarm rate): at
2048 x 2048 a bin just at the false-alarm limit implies 0.015 sigma along rows and 0.004 sigma
down the columns (0.1 sigma with row noise of 0.6 sigma: it is white, so it raises the level, not
a peak).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Probability per frame that white Gaussian noise alone passes the test's significance (a).
PATTERN_FALSE_ALARM = 1e-3
#: Amplitude, in read-noise sigmas, a significant pattern must reach to reject its frame (b).
PATTERN_MIN_AMPLITUDE = 0.5
#: Fewest cycles across the frame for a frequency to be tested (lower ones are large-scale structure).
MIN_CYCLES = 4
#: Fewest bins the noise level of a spectrum is estimated from; a shorter spectrum is not tested.
MIN_LEVEL_BINS = 8
#: Names of the two directions.
ALONG_ROWS = "along rows"
DOWN_COLUMNS = "down the columns"


def row_power(difference: np.ndarray) -> np.ndarray:
    """Power spectrum along rows of ``difference``, summed over its rows.

    One real transform over the columns of each row; ``|.|^2`` summed over rows, so a frame's
    spectrum is the sum of its row blocks' spectra, whatever the blocks.

    Parameters
    ----------
    difference
        ``(rows, columns)`` float array (frame minus master), without NaN.

    Returns
    -------
    numpy.ndarray
        ``(columns // 2 + 1,)`` float64 powers, in the input's units squared.

    Examples
    --------
    >>> block = np.array([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    >>> row_power(block).tolist()
    [0.0, 0.0, 16.0]
    >>> bool(np.allclose(row_power(block), row_power(block[:1]) + row_power(block[1:])))
    True
    """
    return block_spectra(difference)[0]


def block_spectra(difference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A row block's share of a frame's two spectra: its power along rows (:func:`row_power`) and
    its row means (from the same transform, whose zero frequency is each row's sum).

    Parameters
    ----------
    difference
        ``(rows, columns)`` float array (frame minus master), without NaN.

    Returns
    -------
    power, row_means
        ``(columns // 2 + 1,)`` float64 powers summed over the rows; ``(rows,)`` float64 means.

    Examples
    --------
    >>> power, means = block_spectra(np.array([[1.0, 3.0, 1.0, 3.0], [2.0, 2.0, 2.0, 2.0]]))
    >>> power.tolist(), means.tolist()
    ([128.0, 0.0, 16.0], [2.0, 2.0])
    """
    # scipy's transform keeps float32 and is several times faster than numpy's here.
    from scipy.fft import rfft

    spectrum = rfft(difference, axis=-1)
    power = np.sum(spectrum.real**2 + spectrum.imag**2, axis=-2, dtype=np.float64)
    return power, spectrum[..., 0].real.astype(np.float64) / difference.shape[-1]


def series_power(series: np.ndarray) -> np.ndarray:
    """Power spectrum of each series along the last axis (a frame's row means down its rows).

    Parameters
    ----------
    series
        ``(..., length)`` float array.

    Returns
    -------
    numpy.ndarray
        ``(..., length // 2 + 1)`` float64 powers.

    Examples
    --------
    >>> series_power(np.array([1.0, 0.0, -1.0, 0.0])).round(6).tolist()
    [0.0, 4.0, 0.0]
    """
    spectrum = np.fft.rfft(np.asarray(series, dtype=np.float64), axis=-1)
    return spectrum.real**2 + spectrum.imag**2


@dataclass(frozen=True)
class SpectrumBins:
    """Each tested bin of a power spectrum against the noise power beside it (:func:`spectrum_bins`).

    Attributes
    ----------
    bins
        The bins tested (cycles across the series).
    ratio
        Each bin's power over the mean power of the other tested bins (its two neighbours, where
        a pattern between two bins leaks, left out).
    p_value
        The chance that white Gaussian noise gives a ratio this high in that bin (one bin).
    amplitude
        The amplitude of the sinusoid that the excess power of the bin and its neighbours over
        that mean implies, in the units of the series (0 for no excess).
    """

    bins: np.ndarray
    ratio: np.ndarray
    p_value: np.ndarray
    amplitude: np.ndarray


def spectrum_bins(power: np.ndarray, series: int, length: int) -> SpectrumBins:
    """Test every bin of ``power`` against the noise level of the others.

    Under white Gaussian noise an inner bin summed over ``series`` series is ``Gamma(series)``
    times the noise power per bin, the last bin of an even ``length`` (real-valued)
    ``Gamma(series / 2)`` times twice it; so a bin over the mean of ``m`` other inner bins is
    F-distributed with ``(2 series, 2 series m)`` degrees of freedom (``(series, ...)`` for the
    last bin of an even length), exactly, whatever ``m``. A sinusoid of amplitude ``A`` adds
    ``series (A length / 2)^2`` to an inner bin (``series (A length)^2`` at the last of an
    even length, in phase); off a bin's frequency it spreads over two or three neighbours, whose
    excess is summed (the amplitude then within 8 % of the truth).

    Parameters
    ----------
    power
        ``(length // 2 + 1,)`` powers (:func:`row_power`, :func:`series_power`); bin 0 is not
        tested.
    series
        Independent series summed in ``power`` (rows of a frame; 1 for its row means).
    length
        Samples in each series (columns; rows).

    Returns
    -------
    SpectrumBins
        Empty when fewer than :data:`MIN_LEVEL_BINS` inner bins have :data:`MIN_CYCLES` or more
        cycles.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> rows = rng.normal(0.0, 1.0, (200, 256)) + 0.5 * np.cos(2 * np.pi * np.arange(256) / 8)
    >>> found = spectrum_bins(row_power(rows), 200, 256)
    >>> peak = int(np.argmax(found.ratio))
    >>> int(found.bins[peak]), 256 / int(found.bins[peak]), round(float(found.amplitude[peak]), 2)
    (32, 8.0, 0.5)
    """
    from scipy.special import fdtrc

    power = np.asarray(power, dtype=np.float64)
    last = power.size - 1
    nyquist = length % 2 == 0 and last == length // 2
    bins = np.arange(MIN_CYCLES, last + 1)
    inner = bins[bins != last] if nyquist else bins
    if inner.size < MIN_LEVEL_BINS:
        empty = np.empty(0)
        return SpectrumBins(bins[:0], empty, empty, empty)
    is_inner = np.zeros(power.size, dtype=bool)
    is_inner[inner] = True
    # Each bin's noise level: the mean of the inner bins but itself and its two neighbours.
    near = bins[None, :] + np.array([-1, 0, 1])[:, None]
    exists = near <= last
    index = np.minimum(near, last)
    counted = exists & is_inner[index]
    others = inner.size - counted.sum(axis=0)
    level = (power[inner].sum() - np.where(counted, power[index], 0.0).sum(axis=0)) / others
    with np.errstate(divide="ignore", invalid="ignore"):
        # No noise at all beside a bin (a series of equal values) makes a bin without power no peak.
        ratio = np.where(level > 0, power[bins] / level, np.where(power[bins] > 0, np.inf, 0.0))
    real_bin = nyquist & (bins == last)
    dof = np.where(real_bin, series, 2 * series).astype(np.float64)
    p_value = fdtrc(dof, 2.0 * series * others, ratio)
    excess = np.where(exists & (near >= MIN_CYCLES), power[index] - level, 0.0).sum(axis=0)
    amplitude = np.where(real_bin, 1.0, 2.0) * np.sqrt(np.maximum(excess, 0.0) / series) / length
    return SpectrumBins(bins, ratio, np.asarray(p_value, dtype=np.float64), amplitude)


@dataclass(frozen=True)
class PatternPeak:
    """The pattern found in a frame (:func:`frame_pattern`).

    Attributes
    ----------
    direction
        :data:`ALONG_ROWS` (a pattern with a frequency along rows, tilted or not) or
        :data:`DOWN_COLUMNS` (the same along each row: seen in the row means).
    period
        Its period [pixels along a row; rows down the columns].
    amplitude
        Its amplitude in the frame [units of the spectra's square root: ADU].
    ratio
        Its bin's power over the noise power beside it.
    chance
        The chance that noise alone gives a peak this high in any bin tested in the frame
        (Bonferroni: the bin's p-value times the bins tested, at most 1).
    """

    direction: str
    period: float
    amplitude: float
    ratio: float
    chance: float


def frame_pattern(
    row_spectrum: np.ndarray,
    row_means: np.ndarray | None,
    rows: int,
    columns: int,
    n_frames: int | None = None,
    *,
    false_alarm: float = PATTERN_FALSE_ALARM,
) -> PatternPeak | None:
    """The largest periodic pattern of one frame significant at ``false_alarm`` (test (a) of the
    module's rule), or ``None``.

    Parameters
    ----------
    row_spectrum
        ``(columns // 2 + 1,)`` the frame's power along rows against the master, summed over its
        ``rows`` rows (:func:`row_power`) [ADU^2].
    row_means
        ``(rows,)`` the frame's mean difference from the master in each row [ADU]; ``None``: not
        tested.
    rows, columns
        The frame's shape.
    n_frames
        Frames in the master (the frame among them): a master of ``n`` frames holds ``1 / n`` of
        the frame's pattern, so the amplitude seen against it is divided by ``1 - 1 / n``.
        ``None`` for a reference without the frame.
    false_alarm
        Chance per frame that white Gaussian noise passes.

    Returns
    -------
    PatternPeak or None
        Of the bins that pass, the one with the largest amplitude.

    Examples
    --------
    >>> rng = np.random.default_rng(3)
    >>> frame = rng.normal(0.0, 30.0, (64, 128)) + 20.0 * np.sin(2 * np.pi * np.arange(64) / 16)[:, None]
    >>> peak = frame_pattern(*block_spectra(frame), 64, 128)
    >>> peak.direction, peak.period, bool(15 < peak.amplitude < 25)
    ('down the columns', 16.0, True)
    >>> frame_pattern(row_power(frame - frame.mean(axis=1, keepdims=True)), None, 64, 128) is None
    True
    """
    tests = [(ALONG_ROWS, columns, spectrum_bins(row_spectrum, rows, columns))]
    if row_means is not None:
        centred = np.asarray(row_means, dtype=np.float64)
        tests.append((DOWN_COLUMNS, rows, spectrum_bins(series_power(centred - centred.mean()), 1, rows)))
    tested = sum(found.bins.size for _, _, found in tests)
    if tested == 0:
        return None
    share = 1.0 if n_frames is None or n_frames < 2 else 1.0 - 1.0 / n_frames
    best: PatternPeak | None = None
    for direction, length, found in tests:
        passing = np.flatnonzero(found.p_value * tested < false_alarm)
        if passing.size == 0:
            continue
        top = passing[np.argmax(found.amplitude[passing])]
        amplitude = float(found.amplitude[top]) / share
        if best is None or amplitude > best.amplitude:
            chance = min(1.0, float(found.p_value[top]) * tested)
            best = PatternPeak(direction, length / float(found.bins[top]), amplitude, float(found.ratio[top]), chance)
    return best


def is_patterned(peak: PatternPeak | None, read_noise: float, min_amplitude: float = PATTERN_MIN_AMPLITUDE) -> bool:
    """Whether a frame's pattern (:func:`frame_pattern`) rejects it: test (b) of the module's rule.

    Parameters
    ----------
    peak
        The frame's significant pattern, or ``None``.
    read_noise
        The read noise of one frame [ADU]; a pattern is not judged against an unknown one (NaN).
    min_amplitude
        The amplitude needed, in read-noise sigmas.

    Returns
    -------
    bool

    Examples
    --------
    >>> peak = PatternPeak(ALONG_ROWS, 8.0, 21.0, 40.0, 1e-9)
    >>> is_patterned(peak, 32.0), is_patterned(peak, 50.0), is_patterned(None, 32.0)
    (True, False, False)
    """
    return peak is not None and math.isfinite(read_noise) and peak.amplitude >= min_amplitude * read_noise


def pattern_reason(peak: PatternPeak, read_noise: float, min_amplitude: float = PATTERN_MIN_AMPLITUDE) -> str:
    """The manifest's reason for a patterned frame.

    Parameters
    ----------
    peak
        The frame's pattern.
    read_noise
        The read noise of one frame [ADU].
    min_amplitude
        The amplitude limit in read-noise sigmas.

    Returns
    -------
    str

    Examples
    --------
    >>> print(pattern_reason(PatternPeak(ALONG_ROWS, 8.0, 21.0, 40.0, 1e-9), 32.0))
    pattern noise: a periodic pattern of period 8.0 pixels along rows, amplitude 21 ADU (0.66 x read noise), \
far beyond the noise (its power 40 times the noise's, by chance 1e-09; limits 0.5 x read noise and \
chance 0.001 per frame); interference on the readout?
    """
    unit = "pixels along rows" if peak.direction == ALONG_ROWS else "rows down the columns (the same along each row)"
    chance = f"{peak.chance:.1g}" if peak.chance >= 1e-12 else "below 1e-12"
    return (
        f"pattern noise: a periodic pattern of period {peak.period:.1f} {unit}, amplitude {peak.amplitude:.2g} ADU "
        f"({peak.amplitude / read_noise:.2f} x read noise), far beyond the noise (its power {peak.ratio:.0f} times "
        f"the noise's, by chance {chance}; limits {min_amplitude:g} x read noise and chance {PATTERN_FALSE_ALARM:g} "
        "per frame); interference on the readout?"
    )

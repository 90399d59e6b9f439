"""Random-telegraph pixels: values that jump between two levels, told apart from merely noisy ones.

The test, per pixel:

- **Per group** (step 2, on the values the final combine used, after any row correction): the
  pixel's values sorted, the best split into a low and a high level, each of at least
  :data:`MIN_LEVEL_VALUES` values, is the one with the largest between-level sum of squares.
  ``B`` is the smallest of that of all the values, of all but the highest and of all but the
  lowest (so that one cosmic-ray hit, or one glitch, makes no level); ``W``, the within-level
  sum of squares of the best split of all the values. Both are divided by the variance of one
  value, ``sigma^2``: the median over the pixel's row (or pool of rows) of the pixels' sums of
  squares about their means, over the median of a chi-square with ``n - 1`` degrees of
  freedom (exact for Gaussian noise; a minority of odd pixels cannot move it). The quantisation
  noise of the values is in that variance, so it needs no term of its own. The two maps are
  the master's ``LEVELB`` and ``LEVELW`` extensions.
- **Pooled over the groups** (step 3): TELEGRAPH where both
  (1) the summed ``B / sigma^2`` lies beyond its pure-noise quantile at the false-alarm rate
  :data:`FALSE_ALARM` (1e-3), calibrated by Monte Carlo for the groups' actual sizes
  (:func:`between_level_limit`: Gaussian values, fixed seed, cached), and
  (2) the within-level scatter is what the read noise gives: in every group ``W / sigma^2``
  below the chi-square quantile with ``n - 1`` degrees of freedom at ``WITHIN_MISS / (2 G)``,
  and summed over the G groups below that with ``sum(n - 1)`` at ``WITHIN_MISS / 2``
  (:data:`WITHIN_MISS` 1e-3). ``W`` of the best split is at most the sum of squares of the
  pixel's true levels about their means, a chi-square with ``n - 2`` (two levels) or ``n - 1``
  (one level) degrees of freedom: a telegraph pixel with the read noise passes with
  probability at least ``1 - WITHIN_MISS``. A merely noisy pixel (5 x the read noise:
  ``W / sigma^2`` about 60 in a group of 10, limit 33.7; about 300 summed over 5 groups, limit
  83) fails it and stays NOISY only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .compiled import engine, kernel

#: A pure-noise pixel is flagged TELEGRAPH with at most this probability (the between-level test's size).
FALSE_ALARM = 1e-3
#: A telegraph pixel with the read noise fails the within-level test with at most this probability.
WITHIN_MISS = 1e-3
#: Values a level needs at least: a single cosmic-ray hit is no level.
MIN_LEVEL_VALUES = 2
#: Frames a group needs for a split into two levels of two values.
MIN_FRAMES = 2 * MIN_LEVEL_VALUES
#: Pure-noise pixels the Monte Carlo null is drawn from (its 1e-3 quantile then rests on 1000 of them).
NULL_SAMPLES = 1_000_000
NULL_SEED = 20_150_015
#: Master extensions holding a group's ``B / sigma^2`` and ``W / sigma^2``.
BETWEEN_EXTENSION = "LEVELB"
WITHIN_EXTENSION = "LEVELW"
CHUNK_PIXELS = 2048  # pixels whose running sums stay in cache while the splits are scanned


@kernel
def _best_split(ordered, first, count, lo, hi, shift, total, prefix, best):  # pragma: no cover - compiled
    """Per pixel ``first + p`` (``p < count``) of sorted ``ordered``: the largest between-level sum
    of squares of the values ``lo:hi`` over the splits leaving :data:`MIN_LEVEL_VALUES` or more
    on each side (float64 sums of the values minus ``shift``), into ``best``."""
    n = hi - lo
    for p in range(count):
        total[p] = 0.0
        prefix[p] = 0.0
        best[p] = 0.0
    for k in range(lo, hi):
        row = ordered[k, first : first + count]
        for p in range(count):
            total[p] += np.float64(row[p]) - shift[p]
    for m in range(1, n - MIN_LEVEL_VALUES + 1):  # m values in the low level
        row = ordered[lo + m - 1, first : first + count]
        for p in range(count):
            prefix[p] += np.float64(row[p]) - shift[p]
        if m < MIN_LEVEL_VALUES:
            continue
        low = 1.0 / m  # reciprocals once a split, not divisions for every pixel
        high = 1.0 / (n - m)
        whole = 1.0 / n
        for p in range(count):
            rest = total[p] - prefix[p]
            b = prefix[p] * prefix[p] * low + rest * rest * high - total[p] * total[p] * whole
            best[p] = max(best[p], b)


@kernel
def _split_sums(ordered, between, within, spread):  # pragma: no cover - compiled
    """Per pixel of ``ordered`` (``(n, pixels)``, sorted along the frames): the between-level sum
    of squares of the best split, the smallest of those of all the values, of all but the
    highest and of all but the lowest (one cosmic-ray hit makes no level); and the total sum of
    squares about the mean (``spread``) minus the best split's of all values (float64 sums of the
    values shifted by the median value, so that a level near 60000 loses no precision)."""
    n, pixels = ordered.shape
    total = np.empty(CHUNK_PIXELS, dtype=np.float64)
    prefix = np.empty(CHUNK_PIXELS, dtype=np.float64)
    squares = np.empty(CHUNK_PIXELS, dtype=np.float64)
    full = np.empty(CHUNK_PIXELS, dtype=np.float64)
    trimmed = np.empty(CHUNK_PIXELS, dtype=np.float64)
    shift = np.empty(CHUNK_PIXELS, dtype=np.float64)
    for first in range(0, pixels, CHUNK_PIXELS):
        count = min(pixels, first + CHUNK_PIXELS) - first
        middle = ordered[n // 2, first : first + count]
        for p in range(count):
            shift[p] = np.float64(middle[p])
            squares[p] = 0.0
        for k in range(n):
            row = ordered[k, first : first + count]
            for p in range(count):
                d = np.float64(row[p]) - shift[p]
                squares[p] += d * d
        _best_split(ordered, first, count, 0, n, shift, total, prefix, full)
        for p in range(count):
            centred = squares[p] - total[p] * total[p] / n
            spread[first + p] = centred
            between[first + p] = full[p]
            within[first + p] = max(0.0, centred - full[p])
        if n - 1 >= 2 * MIN_LEVEL_VALUES:
            for lo, hi in ((0, n - 1), (1, n)):
                _best_split(ordered, first, count, lo, hi, shift, total, prefix, trimmed)
                for p in range(count):
                    between[first + p] = min(between[first + p], trimmed[p])


def _best_split_numpy(values: np.ndarray) -> np.ndarray:
    """The numpy reference of :func:`_best_split` on sorted, shifted float64 ``values``."""
    n = values.shape[0]
    total = values.sum(axis=0)
    prefix = np.cumsum(values, axis=0)
    best = np.zeros(values.shape[1:])
    for m in range(MIN_LEVEL_VALUES, n - MIN_LEVEL_VALUES + 1):
        rest = total - prefix[m - 1]
        np.maximum(best, prefix[m - 1] ** 2 / m + rest * rest / (n - m) - total * total / n, out=best)
    return best


def _split_sums_numpy(ordered: np.ndarray, between: np.ndarray, within: np.ndarray, spread: np.ndarray) -> None:
    """The numpy reference of :func:`_split_sums`."""
    n = ordered.shape[0]
    values = ordered.astype(np.float64) - ordered[n // 2].astype(np.float64)
    total = values.sum(axis=0)
    full = _best_split_numpy(values)
    spread[...] = np.square(values).sum(axis=0) - total * total / n
    within[...] = np.maximum(0.0, spread - full)
    if n - 1 >= 2 * MIN_LEVEL_VALUES:
        full = np.minimum(full, np.minimum(_best_split_numpy(values[:-1]), _best_split_numpy(values[1:])))
    between[...] = full


def chi2_median(dof: int) -> float:
    """The median of a chi-square with ``dof`` degrees of freedom.

    >>> round(chi2_median(9), 3)
    8.343
    """
    from scipy.special import chdtri

    return float(chdtri(dof, 0.5))


def level_statistics(
    ordered: np.ndarray, columns: int, pool: int = 1, scratch: dict[str, np.ndarray] | None = None
) -> np.ndarray | None:
    """A group's two-level statistics of every pixel of a row block.

    Parameters
    ----------
    ordered
        ``(n_frames, rows * columns)`` (or ``(n_frames, rows, columns)``) the block's values,
        sorted along the frames (any real type, one unit: stored values or ADU).
    columns
        Pixels of a row.
    pool
        Rows sharing one noise variance (:func:`~bias_pipeline.combine.pool_rows`); the block
        holds whole pools.
    scratch
        Buffers kept between calls of one thread (the per-pixel float64 sums), allocated here
        when missing or too small.

    Returns
    -------
    numpy.ndarray or None
        ``(2, rows, columns)`` float32: ``B / sigma^2`` and ``W / sigma^2`` of the best split
        (module docstring); ``None`` for fewer than :data:`MIN_FRAMES` frames. NaN in a pool of
        rows whose pixels have no scatter at all.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> values = np.sort(rng.normal(0.0, 1.0, (10, 4, 500)), axis=0)
    >>> values[:, 0, 0] = [-3, -3, -3, -3, -3, 3, 3, 3, 3, 3]  # two levels 6 sigma apart
    >>> maps = level_statistics(values, 500)
    >>> bool(maps[0, 0, 0] > 50 and maps[1, 0, 0] < 1)
    True
    """
    n = ordered.shape[0]
    if n < MIN_FRAMES:
        return None
    flat = np.ascontiguousarray(ordered.reshape(n, -1))
    pixels = flat.shape[1]
    rows = pixels // columns
    held = {} if scratch is None else scratch
    between, within, spread = (_held(held, name, pixels) for name in ("level_between", "level_within", "level_spread"))
    maps = np.empty((2, rows, columns), dtype=np.float32)
    if engine() == "numba":
        _split_sums(flat, between, within, spread)
        _normalise(between, within, spread, columns, pool, chi2_median(n - 1), maps.reshape(2, -1))
        return maps
    _split_sums_numpy(flat, between, within, spread)
    # The sum of squares about the mean of each pixel, per pool of rows: its median over the
    # chi-square's median is the variance of one value (Gaussian noise), whatever few odd
    # pixels the rows hold.
    pools = [spread[start * columns : (start + pool) * columns] for start in range(0, rows, pool)]
    variance = np.array([np.median(part) for part in pools]) / chi2_median(n - 1)
    per_row = np.repeat(variance, pool)[:rows, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(between.reshape(rows, columns), np.where(per_row > 0, per_row, np.nan), out=maps[0])
        np.divide(within.reshape(rows, columns), np.where(per_row > 0, per_row, np.nan), out=maps[1])
    return maps


@kernel
def _normalise(between, within, spread, columns, pool, median_chi2, out):  # pragma: no cover - compiled
    """``between`` and ``within`` over the variance of one value of their pool of rows (the median
    of ``spread`` over the pool, over ``median_chi2``; NaN where it is 0), as float32 into
    ``out`` (``(2, pixels)``): the numpy path of :func:`level_statistics`."""
    pixels = spread.shape[0]
    step = pool * columns
    for first in range(0, pixels, step):
        stop = min(pixels, first + step)
        variance = np.median(spread[first:stop]) / median_chi2
        scale = 1.0 / variance if variance > 0 else np.nan
        for p in range(first, stop):
            out[0, p] = np.float32(between[p] * scale)
            out[1, p] = np.float32(within[p] * scale)


def _held(scratch: dict[str, np.ndarray], name: str, size: int) -> np.ndarray:
    array = scratch.get(name)
    if array is None or array.dtype != np.float64 or array.size < size:
        array = scratch[name] = np.empty(size, dtype=np.float64)
    return array[:size]


@functools.lru_cache(maxsize=32)
def between_level_limit(sizes: tuple[int, ...], false_alarm: float = FALSE_ALARM) -> float:
    """The summed ``B / sigma^2`` of groups of ``sizes`` frames that pure Gaussian noise exceeds
    with probability ``false_alarm``: the quantile of :data:`NULL_SAMPLES` simulated pixels
    (seed :data:`NULL_SEED`, so every run draws the same; cached per sizes).

    Parameters
    ----------
    sizes
        Frames of each group with a statistic (each at least :data:`MIN_FRAMES`), sorted.
    false_alarm
        The test's size.

    Returns
    -------
    float
    """
    rng = np.random.default_rng(NULL_SEED)
    total = np.zeros(NULL_SAMPLES)
    for n in sizes:
        between, within, spread = np.empty(NULL_SAMPLES), np.empty(NULL_SAMPLES), np.empty(NULL_SAMPLES)
        drawn = rng.standard_normal((NULL_SAMPLES, n), dtype=np.float32)
        drawn.sort(axis=1)  # each pixel's values side by side: a fast sort
        values = np.ascontiguousarray(drawn.T)
        if engine() == "numba":
            _split_sums(values, between, within, spread)
        else:
            _split_sums_numpy(values, between, within, spread)
        total += between
    return float(np.quantile(total, 1.0 - false_alarm))


def within_level_limit(n: int, groups: int, miss: float = WITHIN_MISS) -> float:
    """The largest ``W / sigma^2`` of one group of ``n`` frames that a telegraph pixel with the
    read noise reaches with probability below ``miss / (2 groups)``: the chi-square quantile with
    ``n - 1`` degrees of freedom (``W`` of the best split is at most the sum of squares about
    the true levels' means). The groups' sum has its own limit, at ``miss / 2``.

    >>> round(within_level_limit(10, 5), 1)
    33.7
    """
    from scipy.special import chdtri

    return float(chdtri(n - 1, miss / (2 * max(1, groups))))


class LevelSource(Protocol):
    """What :func:`telegraph_pixels` reads of a master (:class:`~bias_pipeline.master_writer.MasterFrame` is one)."""

    @property
    def n_frames(self) -> int: ...

    def load_extension(self, name: str) -> np.ndarray | None: ...


def decide(
    between: Sequence[np.ndarray],
    within: Sequence[np.ndarray],
    sizes: Sequence[int],
    *,
    false_alarm: float = FALSE_ALARM,
    miss: float = WITHIN_MISS,
) -> np.ndarray:
    """The TELEGRAPH decision from each group's ``B / sigma^2`` and ``W / sigma^2`` maps.

    Parameters
    ----------
    between, within
        One map per group (:func:`level_statistics`).
    sizes
        The groups' frame counts.
    false_alarm, miss
        The between-level test's size and the within-level test's miss rate.

    Returns
    -------
    numpy.ndarray
        bool: True for a telegraph pixel (a NaN statistic anywhere: False).

    Raises
    ------
    ValueError
        Without any group.
    """
    pooled = _Pooled(len(sizes), miss)
    for b, w, n in zip(between, within, sizes, strict=True):
        pooled.add(b, w, int(n))
    decision = pooled.decision(false_alarm, miss)
    if decision is None:
        raise ValueError("decide needs the statistics of one group or more")
    return decision


def telegraph_pixels(masters: Sequence[LevelSource]) -> np.ndarray | None:
    """The TELEGRAPH map of a set of masters: :func:`decide` over those with ``LEVELB`` and
    ``LEVELW`` extensions (groups of :data:`MIN_FRAMES` frames or more), read one master at a time.

    Parameters
    ----------
    masters
        Step 2's masters.

    Returns
    -------
    numpy.ndarray or None
        bool map; ``None`` when no master carries the statistics.
    """
    usable = [m for m in masters if int(m.n_frames) >= MIN_FRAMES]
    # Groups are counted before they are read, so that each is judged as it comes; a master
    # without the statistics (written before them) still counts, which only tightens the limits.
    pooled = _Pooled(len(usable), WITHIN_MISS)
    for master in usable:
        between = master.load_extension(BETWEEN_EXTENSION)
        within = master.load_extension(WITHIN_EXTENSION) if between is not None else None
        if between is not None and within is not None:
            pooled.add(between, within, int(master.n_frames))
    return pooled.decision(FALSE_ALARM, WITHIN_MISS)


class _Pooled:
    """Running sums over ``groups`` groups, one master's maps at a time: the summed ``B / sigma^2``
    and ``W / sigma^2``, and where every group so far kept ``W / sigma^2`` within its limit."""

    def __init__(self, groups: int, miss: float) -> None:
        self.groups = max(1, groups)
        self.miss = miss
        self.total: np.ndarray | None = None
        self.within: np.ndarray | None = None
        self.clean: np.ndarray | None = None
        self.sizes: list[int] = []

    def add(self, between: np.ndarray, within: np.ndarray, n: int) -> None:
        if self.total is None or self.within is None or self.clean is None:
            self.total = np.zeros(between.shape, dtype=np.float32)
            self.within = np.zeros(between.shape, dtype=np.float32)
            self.clean = np.ones(between.shape, dtype=bool)
        self.total += between
        self.within += within
        with np.errstate(invalid="ignore"):  # NaN (a row without scatter) is never clean
            self.clean &= within <= np.float32(within_level_limit(n, self.groups, self.miss))
        self.sizes.append(n)

    def decision(self, false_alarm: float, miss: float) -> np.ndarray | None:
        if self.total is None or self.within is None or self.clean is None:
            return None
        from scipy.special import chdtri

        limit = between_level_limit(tuple(sorted(self.sizes)), false_alarm)
        # Half the miss rate to the groups one by one (a cosmic-ray hit in one group), half to
        # their sum (a noisy pixel whose every group happens to scatter little).
        pooled_limit = np.float32(chdtri(sum(n - 1 for n in self.sizes), miss / 2))
        with np.errstate(invalid="ignore"):
            return self.clean & (self.within <= pooled_limit) & (self.total > limit)

"""The compiled combine against the numpy reference: medians and kept counts bit for bit,
means and noise to float32 rounding, frame statistics to float64 summation order.

The reference is :func:`bias_pipeline.combine.combine_sorted` on frames sorted by
:func:`~bias_pipeline.combine.sort_frames`, with the block combiner's frame statistics: the
code the pipeline ran before the kernels, and still runs with ``BIAS_PIPELINE_KERNELS=numpy``.
"""

from __future__ import annotations

import numpy as np
import pytest

from bias_pipeline import block_combine, compiled
from bias_pipeline.block_combine import combine_records
from bias_pipeline.combine import combine_block, combine_sorted, pool_rows, sort_frames, typical_noise
from bias_pipeline.combine_kernels import combine_block_compiled
from bias_pipeline.simulate import SimulationSpec, simulate_dataset
from bias_pipeline.steps.step1_load_data import scan_frames

pytestmark = pytest.mark.skipif(compiled.engine() != "numba", reason="numba kernels not in use")

#: float32 rounding, for the means and noise (sums in float64 grouped differently from numpy's
#: pairwise summation can land on the neighbouring float32).
FLOAT32_ROUNDING = 2.5e-7


def stored(values: np.ndarray) -> np.ndarray:
    """uint16 values as a FITS file stores them (int16 + BZERO 32768, big-endian), read as uint16."""
    return (values ^ np.uint16(0x8000)).byteswap()


def reference(stack: np.ndarray, method: str, *, quantum: float, clip_sigma: float = 3.0, clip_iters: int = 5):
    pool = pool_rows(stack.shape[2])
    combined = combine_sorted(
        sort_frames(stack.copy()), method, clip_sigma=clip_sigma, clip_iters=clip_iters, pool=pool, quantum=quantum
    )
    judged = stack.shape[0] >= 3
    statistics = block_combine._frame_statistics(stack, combined, 6.0, pool, quantum) if judged else None
    return combined, statistics


def compiled_combine(raw: np.ndarray, method: str, *, swapped: bool, quantum: float, factor: float = 1.0, **clip):
    return combine_block_compiled(
        raw,
        swapped=swapped,
        method=method,
        clip_sigma=clip.get("clip_sigma", 3.0),
        clip_iters=clip.get("clip_iters", 5),
        pool=pool_rows(raw.shape[2]),
        quantum=quantum,
        outlier_sigma=6.0,
        judged=raw.shape[0] >= 3,
        factor=factor,
    )


def assert_same(kernel_out, combined, statistics) -> None:
    master, noise, error, n_used, (outliers, sums, squares, inside) = kernel_out
    np.testing.assert_array_equal(n_used, combined.n_used)
    np.testing.assert_allclose(master, combined.master, rtol=FLOAT32_ROUNDING, atol=0)
    np.testing.assert_allclose(noise, combined.noise, rtol=FLOAT32_ROUNDING, atol=0, equal_nan=True)
    np.testing.assert_allclose(error, combined.error, rtol=2 * FLOAT32_ROUNDING, atol=0, equal_nan=True)
    if statistics is not None:
        np.testing.assert_array_equal(outliers, statistics[0])
        np.testing.assert_array_equal(inside, statistics[3])
        np.testing.assert_allclose(sums, statistics[1], rtol=1e-9, atol=1e-6 * np.sqrt(master.size))
        # the numpy path's sum of squares is a float32 dot product: float32 rounding of a long sum
        np.testing.assert_allclose(squares, statistics[2], rtol=1e-5)


def quantised_stack(rng: np.random.Generator, n: int, shape: tuple[int, int], noise: float = 2.0) -> np.ndarray:
    """12-bit values stored x16 with a read noise of ``noise`` 12-bit steps: many ties."""
    level = rng.normal(200.0, 20.0, shape)
    return (np.clip(np.round(level + rng.normal(0.0, noise, (n, *shape))), 0, 4095) * 16).astype(np.uint16)


@pytest.mark.parametrize("method", ["sigma-clip", "median", "mean"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 15, 16, 31, 64, 65, 100])
def test_kernel_matches_reference_on_quantised_frames(method: str, n: int) -> None:
    rng = np.random.default_rng(n)
    stack = quantised_stack(rng, n, (6, 37))
    stack[n // 2, 1, :10] = 65520  # a saturated streak in one frame
    stack[:, 2, 3] = 65520  # a pixel saturated in every frame
    stack[0, 4, :] = 0  # a dropout row
    combined, statistics = reference(stack, method, quantum=16.0)
    assert_same(compiled_combine(stored(stack), method, swapped=True, quantum=16.0), combined, statistics)
    # medians and counts bit for bit
    master = compiled_combine(stored(stack), method, swapped=True, quantum=16.0)[0]
    if method == "median":
        np.testing.assert_array_equal(master, combined.master)


@pytest.mark.parametrize("method", ["sigma-clip", "median"])
def test_kernel_matches_reference_with_ties_everywhere(method: str) -> None:
    """Values on a coarse grid: most pixels' values coincide, MADs are 0, floors decide."""
    rng = np.random.default_rng(7)
    stack = (rng.integers(0, 3, (9, 5, 64)) * 256 + 4096).astype(np.uint16)
    stack[4, 0, 0] = 60000  # one cosmic ray
    combined, statistics = reference(stack, method, quantum=16.0)
    assert_same(compiled_combine(stored(stack), method, swapped=True, quantum=16.0), combined, statistics)


@pytest.mark.parametrize("method", ["sigma-clip", "median", "mean"])
@pytest.mark.parametrize("n", [3, 6, 11])
def test_kernel_matches_reference_on_float_input(method: str, n: int) -> None:
    rng = np.random.default_rng(100 + n)
    stack = rng.normal(1000.0, 5.0, (n, 4, 50)).astype(np.float32)
    stack[1, 0, :5] += 400.0
    combined, statistics = reference(stack, method, quantum=0.0)
    assert_same(compiled_combine(stack, method, swapped=False, quantum=0.0), combined, statistics)


@pytest.mark.parametrize("width", [1, 3, 64])
def test_kernel_pools_rows_of_narrow_frames(width: int) -> None:
    """A frame narrower than 64 columns shares one noise floor over several rows."""
    rng = np.random.default_rng(width)
    stack = quantised_stack(rng, 7, (70, width))
    combined, statistics = reference(stack, "sigma-clip", quantum=16.0)
    assert_same(compiled_combine(stored(stack), "sigma-clip", swapped=True, quantum=16.0), combined, statistics)


def test_kernel_agrees_with_the_straightforward_reference() -> None:
    """And with combine_block, the clearest statement of the algorithm."""
    rng = np.random.default_rng(11)
    stack = quantised_stack(rng, 9, (5, 48))
    stack[3, :, :4] += 2000
    slow = combine_block(stack, "sigma-clip", quantum=16.0, pool=pool_rows(48))
    master, noise, _, n_used, _ = compiled_combine(stored(stack), "sigma-clip", swapped=True, quantum=16.0)
    np.testing.assert_array_equal(n_used, slow.n_used)
    np.testing.assert_allclose(master, slow.master, rtol=FLOAT32_ROUNDING)
    np.testing.assert_allclose(noise, slow.noise, rtol=FLOAT32_ROUNDING)


def test_kernel_applies_the_units_factor_last() -> None:
    rng = np.random.default_rng(5)
    stack = (quantised_stack(rng, 5, (3, 40)) // 16).astype(np.uint16)  # raw 12-bit values
    combined, statistics = reference(stack, "sigma-clip", quantum=1.0)
    master, noise, error, n_used, stats = compiled_combine(
        stored(stack), "sigma-clip", swapped=True, quantum=1.0, factor=16.0
    )
    np.testing.assert_allclose(master, combined.master * 16, rtol=FLOAT32_ROUNDING)
    np.testing.assert_allclose(noise, combined.noise * 16, rtol=FLOAT32_ROUNDING)
    np.testing.assert_array_equal(stats[0], statistics[0])  # statistics stay in stored units


def test_pool_medians_match_typical_noise() -> None:
    """The rows' typical values by radix selection, exactly as numpy's sort-based median."""
    from bias_pipeline.combine_kernels import _pool_medians

    rng = np.random.default_rng(3)
    for values, pool in [
        (np.round(rng.normal(1.5, 0.4, (9, 64)) * 4).astype(np.float32) * 5.93, 1),
        (rng.normal(0, 1, (7, 33)).astype(np.float32), 1),
        (rng.normal(0, 1, (10, 3)).astype(np.float32), 22),
        (np.array([[1.0, np.nan, -0.0, 0.0], [np.nan] * 4, [-5.0, 3.0, np.inf, 2.0]], dtype=np.float32), 1),
    ]:
        out = np.empty(values.shape[0], dtype=np.float32)
        scratch = np.empty(values.size, dtype=np.uint32)
        _pool_medians(values.reshape(-1).copy(), values.shape[1], pool, scratch, out)
        np.testing.assert_array_equal(out, typical_noise(values, pool).ravel())


@pytest.mark.parametrize("threads", [1, 3])
def test_combine_records_same_with_either_engine(tmp_path, monkeypatch, threads: int) -> None:
    """Whole groups from files, several blocks on several threads: the same master either way."""
    spec = SimulationSpec(shape=(48, 64), temperatures=(10.0,), frames_per_temperature=6, seed=2)
    simulate_dataset(tmp_path, spec)
    records, _ = scan_frames(tmp_path / "raw")
    used = [r for r in records if r.passed_checks]
    results = {}
    for engine in ("numpy", "numba"):
        monkeypatch.setenv(compiled.ENGINE_VARIABLE, engine)
        # a tiny memory limit: many blocks of a few rows each
        results[engine] = combine_records(used, "sigma-clip", memory_limit=0.05, threads=threads)
    numpy_result, numba_result = results["numpy"], results["numba"]
    np.testing.assert_array_equal(numba_result.combined.n_used, numpy_result.combined.n_used)
    np.testing.assert_allclose(numba_result.combined.master, numpy_result.combined.master, rtol=FLOAT32_ROUNDING)
    np.testing.assert_allclose(numba_result.combined.noise, numpy_result.combined.noise, rtol=FLOAT32_ROUNDING)
    np.testing.assert_array_equal(numba_result.outlier_fraction, numpy_result.outlier_fraction)
    np.testing.assert_allclose(numba_result.offset, numpy_result.offset, rtol=1e-6, atol=1e-9)


def test_blocks_really_run_on_several_threads(tmp_path, monkeypatch) -> None:
    """The block task runs on more than one thread when asked to."""
    import threading

    spec = SimulationSpec(shape=(48, 64), temperatures=(10.0,), frames_per_temperature=4, seed=3)
    simulate_dataset(tmp_path, spec)
    records, _ = scan_frames(tmp_path / "raw")
    used = [r for r in records if r.passed_checks]
    names: set[str] = set()
    calls = []
    original = block_combine.combine_rows
    barrier = threading.Barrier(2, timeout=20)

    def spy(plan, start, stop):
        names.add(threading.current_thread().name)
        calls.append(start)
        if len(calls) <= 2:
            barrier.wait()  # the first two blocks meet: only two threads at once get past this
        return original(plan, start, stop)

    monkeypatch.setattr(block_combine, "combine_rows", spy)
    combine_records(used, "median", memory_limit=0.05, threads=2)
    assert len(names) == 2

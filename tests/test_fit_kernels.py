"""Step 3's row-block path (compiled kernels, :mod:`bias_pipeline.fit_kernels`) against its numpy
reference (today's whole-frame code, ``BIAS_PIPELINE_KERNELS=numpy``), and the master files it
reads by rows.

Tolerance: the kernels do the reference's arithmetic in the same order and types (float64 sums
rounded to float32, float32 residuals), so maps are compared to 2 float32 ulps relative
(``rtol=2.4e-7``), a bound that any change of the arithmetic would break at some pixel of these
data sets; flags and counts must be identical.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import PipelineConfig
from bias_pipeline.combine import Combined
from bias_pipeline.compiled import ENGINE_VARIABLE, engine
from bias_pipeline.frames import STATUS_USED, FrameRecord, apply_decisions
from bias_pipeline.grouping import FrameGroup, make_groups
from bias_pipeline.master_writer import MasterFrame, counts_array, write_master
from bias_pipeline.model import BiasModel, ScaledCovariance
from bias_pipeline.products import write_fits_atomic
from bias_pipeline.quality import HOT_MASK, NOISY, NONLINEAR, SATURATED
from bias_pipeline.steps import step3_fit_bias_model as step3
from bias_pipeline.steps.step1_load_data import scan_frames
from bias_pipeline.steps.step2_generate_master_bias_by_temp import build_masters

from conftest import write_frame

QUIET = PipelineConfig(show_progress=False)
RTOL = 2.4e-7  # two float32 ulps
TEMPS = (-10.0, 0.0, 10.0, 20.0, 30.0)
MAPS = ("a_map", "b_map", "c_map", "rms", "chi2", "read_noise")

numba = pytest.importorskip("numba")  # the kernels need it; the reference path is tested everywhere else


@dataclass(frozen=True)
class MemoryMaster:
    """A master in memory (the ``Master`` protocol without row reads)."""

    label: str
    temperature: float
    n_frames: int
    data: np.ndarray
    noise: np.ndarray | None = None
    used: np.ndarray | None = None
    method: str = "mean"

    def load(self) -> np.ndarray:
        return self.data.copy()

    def load_extension(self, name: str) -> np.ndarray | None:
        found = {"NOISE": self.noise, "NUSED": self.used}.get(name)
        return None if found is None else found.copy()


def simulate(shape=(48, 64), frames=8, seed=0, method="mean", saturate=False):
    """Masters of ``a + b T (+ a bend at two pixels)`` with read noise, as step 2 makes them."""
    rng = np.random.default_rng(seed)
    a = rng.normal(51200, 400, shape)
    b = rng.normal(48, 8, shape)
    sigma = rng.uniform(18, 26, shape)
    masters = []
    for t in TEMPS:
        stack = a + b * t + sigma * rng.standard_normal((frames, *shape))
        stack[:, 0, 0] += 0.5 * (t - 10.0) ** 2  # a bent pixel: NONLINEAR
        if saturate and t == TEMPS[-1]:
            stack[:, -1, -1] = 65535.0
        used = rng.integers(frames - 3, frames + 1, shape).astype(np.int16) if method == "sigma-clip" else None
        masters.append(
            MemoryMaster(
                f"{t:.1f}",
                t,
                frames,
                stack.mean(axis=0).astype(np.float32),
                stack.std(axis=0, ddof=1).astype(np.float32),
                used,
                method,
            )
        )
    return masters


def both_paths(monkeypatch, call):
    """``call()`` on the numpy reference and on the kernels."""
    monkeypatch.setenv(ENGINE_VARIABLE, "numpy")
    reference = call()
    monkeypatch.setenv(ENGINE_VARIABLE, "numba")
    assert engine() == "numba"
    return reference, call()


def assert_same_model(reference: BiasModel, kernel: BiasModel) -> None:
    for name in MAPS:
        want, got = getattr(reference, name), getattr(kernel, name)
        if want is None:
            assert got is None, name
            continue
        assert got.dtype == np.float32 and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=0, equal_nan=True, err_msg=name)
    np.testing.assert_allclose(
        np.asarray(kernel.covariance), np.asarray(reference.covariance), rtol=RTOL, atol=0, equal_nan=True
    )
    np.testing.assert_array_equal(kernel.dq, reference.dq)
    np.testing.assert_array_equal(kernel.mask, reference.mask)
    np.testing.assert_array_equal(kernel.ngroups, reference.ngroups)
    assert kernel.tref == reference.tref and kernel.group_leverage == reference.group_leverage


@pytest.mark.parametrize("degree", [1, 2])
@pytest.mark.parametrize("block_bytes", [1, 10**9])  # one row per block, one block
@pytest.mark.parametrize("threads", [1, 2])
def test_masters_fit_matches_the_reference(monkeypatch, degree, block_bytes, threads):
    masters = simulate(saturate=True)
    mask = np.zeros((48, 64), dtype=bool)
    mask[3, 4] = mask[40, 60] = True
    monkeypatch.setattr(step3, "BLOCK_BYTES", block_bytes)
    config = dataclasses.replace(QUIET, degree=degree, threads=threads)
    reference, kernel = both_paths(monkeypatch, lambda: step3.fit_model(masters, mask, config))
    assert_same_model(reference, kernel)
    # The data set exercises what is compared: flags of each kind, NaN at masked pixels.
    assert kernel.dq[3, 4] & HOT_MASK.value and np.isnan(kernel.a_map[3, 4])
    assert kernel.dq[-1, -1] & SATURATED.value
    # The bent pixel is NONLINEAR for a line; degree 2 fits its bend (and a pure-noise pixel is
    # flagged only with the test's own small probability, so none is counted on).
    assert np.count_nonzero(kernel.dq) >= (4 if degree == 1 else 3)
    assert degree == 2 or kernel.dq[0, 0] & NONLINEAR.value


@pytest.mark.parametrize("shape", [(7, 5), (1, 3), (33, 64)])
def test_odd_shapes_and_sigma_clip_counts(monkeypatch, shape):
    masters = simulate(shape=shape, method="sigma-clip", seed=3)
    monkeypatch.setattr(step3, "BLOCK_BYTES", 3000)  # a few rows per block, the last one short
    reference, kernel = both_paths(monkeypatch, lambda: step3.fit_model(masters, None, QUIET))
    assert_same_model(reference, kernel)
    if shape[0] * shape[1] > 100:
        assert np.count_nonzero(kernel.dq & NOISY.value) > 0  # many clipped values: NOISY


def test_masters_without_noise_maps(monkeypatch):
    masters = [dataclasses.replace(m, noise=None) for m in simulate()]
    reference, kernel = both_paths(monkeypatch, lambda: step3.fit_model(masters, None, QUIET))
    assert kernel.read_noise is None
    assert_same_model(reference, kernel)


def write_masters(folder: Path, masters) -> list[MasterFrame]:
    """The masters written by step 2's writer: files read back by rows."""
    written = []
    for m in masters:
        records = [dataclasses.replace(_record(folder, i), temperature=m.temperature) for i in range(m.n_frames)]
        used = m.used if m.used is not None else np.full(m.data.shape, m.n_frames, np.int32)
        combined = Combined(m.data, m.noise, m.noise / np.sqrt(used), used)
        config = dataclasses.replace(QUIET, combine_method="sigma-clip" if m.method == "sigma-clip" else m.method)
        written.append(write_master(FrameGroup(m.label, records), combined, folder, config, 16))
    return written


def _record(folder: Path, index: int) -> FrameRecord:
    return FrameRecord(folder / f"f{index}.fits")


def test_master_files_fit_matches_the_reference(monkeypatch, tmp_path):
    masters = write_masters(tmp_path, simulate(method="sigma-clip", seed=5, saturate=True))
    monkeypatch.setattr(step3, "BLOCK_BYTES", 40_000)
    config = dataclasses.replace(QUIET, degree=2, threads=2)
    reference, kernel = both_paths(monkeypatch, lambda: step3.fit_model(masters, None, config))
    assert_same_model(reference, kernel)


def test_master_rows_read_what_load_reads(tmp_path):
    (master,) = write_masters(tmp_path, simulate(shape=(9, 11), method="sigma-clip")[:1])
    with master.open_rows() as rows:
        assert rows.names() == ["PRIMARY", "ERR", "NOISE", "NUSED"]
        for name, whole in (("PRIMARY", master.load()), *((n, master.load_extension(n)) for n in ("ERR", "NOISE"))):
            for start, stop in ((0, 9), (2, 3), (4, 9)):
                got = rows.read(name, start, stop)
                assert got.dtype == np.float32
                np.testing.assert_array_equal(got, whole[start:stop])
        counts = rows.read("NUSED", 1, 5)
        assert counts.dtype == np.int16
        np.testing.assert_array_equal(counts, master.load_extension("NUSED")[1:5])
        assert rows.read("MISSING", 0, 1) is None


def test_counts_are_small_integers(tmp_path):
    assert counts_array(np.array([[3]], np.int32), 255).dtype == np.int16
    assert counts_array(np.array([[40000]], np.int64), 40000).dtype == np.int32
    m = simulate(shape=(4, 5), frames=300)[0]
    (written,) = write_masters(tmp_path, [m])
    used = written.load_extension("NUSED")
    assert used.dtype == np.int16 and int(used.max()) == 300
    with fits.open(written.path) as hdul:
        assert hdul["NUSED"].header["BITPIX"] == 16 and "BZERO" not in hdul["NUSED"].header


def test_written_images_are_the_bytes_astropy_writes(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(0, 1, (37, 29)).astype(np.float32)

    def hdul() -> fits.HDUList:
        header = fits.Header({"DATE": "2026-01-01", "TEMP": 1.5})
        return fits.HDUList(
            [
                fits.PrimaryHDU(data, header=header),
                fits.ImageHDU(data.astype(">f4"), name="ERR"),
                fits.ImageHDU(np.arange(37 * 29, dtype=np.int16).reshape(37, 29), name="NUSED"),
                fits.ImageHDU((data > 0).astype(np.uint8), name="FLAGS"),
                fits.ImageHDU(data.astype(np.float64)[::2], name="WIDE"),
                fits.BinTableHDU.from_columns([fits.Column(name="T", format="D", array=[1.0, 2.5])], name="GROUPS"),
                fits.ImageHDU(np.arange(6, dtype=np.uint16).reshape(2, 3), name="SCALED"),  # BZERO 32768
            ]
        )

    stream = io.BytesIO()
    hdul().writeto(stream, output_verify="silentfix")
    path = write_fits_atomic(tmp_path / "x.fits", hdul())
    assert path.read_bytes() == stream.getvalue()


def test_scaled_covariance_reads_as_the_whole_array():
    rng = np.random.default_rng(1)
    unit = np.array([[2.0, -0.5, 0.1], [-0.5, 1.0, 0.2], [0.1, 0.2, 0.3]])
    variance = rng.uniform(1, 9, (6, 7)).astype(np.float32)
    variance[2, 3] = np.nan
    lazy = ScaledCovariance(unit, variance)
    whole = unit.astype(np.float32)[:, :, None, None] * variance[None, None]
    picks = rng.random((6, 7)) > 0.5
    rows, columns = np.array([0, 5, 2]), np.array([1, 6, 3])
    assert lazy.shape == whole.shape
    for key in ((1, 1), (0, 2), (slice(None), slice(None), picks), (slice(None), slice(None), rows, columns), (2,)):
        np.testing.assert_array_equal(lazy[key], whole[key])
    np.testing.assert_array_equal(lazy.astype(np.float64), whole.astype(np.float64))
    np.testing.assert_array_equal(lazy[:, :, slice(1, 4)], whole[:, :, 1:4])


@pytest.fixture(scope="module", params=["uint16", "float32"])
def frames_set(request, tmp_path_factory):
    """Raw frames at three temperatures (stored as plain uint16, or as float32 needing no
    BZERO), one with a cosmic ray and one saturated pixel, and their masters."""
    folder = tmp_path_factory.mktemp(f"frames_{request.param}")
    raw = folder / "raw"
    raw.mkdir()
    rng = np.random.default_rng(7)
    level = rng.normal(3200, 20, (48, 64))
    for t in (0.0, 10.0, 20.0, 30.0):
        for i in range(4):
            values = np.clip(np.round(level + 3.0 * t + rng.normal(0, 2.0, (48, 64))), 0, 4095) * 16
            if t == 10.0 and i == 1:
                values[5, 6] = 60000  # a cosmic ray, replaced by the master's value
            if t == 30.0:
                values[47, 63] = 4095 * 16  # saturated
            data = values.astype(np.uint16) if request.param == "uint16" else values.astype(np.float32)
            write_frame(raw / f"f_{t:+.0f}_{i}.fits", data, temperature=t + 0.01 * i)
    records, bits = scan_frames(raw, QUIET)
    made = build_masters(make_groups(records, QUIET), folder / "masters", QUIET, input_bits=bits)
    used = [r for r in apply_decisions(records, made.decisions) if r.status == STATUS_USED]
    return used, made.masters, bits


@pytest.mark.parametrize("degree", [1, 2])
@pytest.mark.parametrize("block_bytes", [1, 10**9])
def test_frames_fit_matches_the_reference(monkeypatch, frames_set, degree, block_bytes):
    used, masters, bits = frames_set
    mask = np.zeros((48, 64), dtype=bool)
    mask[10, 10] = True
    monkeypatch.setattr(step3, "BLOCK_BYTES", block_bytes)
    config = dataclasses.replace(QUIET, degree=degree, threads=2)
    reference, kernel = both_paths(
        monkeypatch, lambda: step3.fit_model_on_frames(used, masters, mask, config, input_bits=bits)
    )
    assert_same_model(reference, kernel)
    assert kernel.dq[47, 63] & SATURATED.value
    assert abs(float(kernel.rms[5, 6]) - float(np.nanmedian(kernel.rms))) < 10 * float(np.nanstd(kernel.rms))

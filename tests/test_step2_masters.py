"""Step 2: grouping by temperature and block-by-block combining."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import PipelineConfig
from bias_pipeline.block_combine import WORKING_SET_MB
from bias_pipeline.combine import combine_block
from bias_pipeline.frames import FrameRecord
from bias_pipeline.steps.step1_load_data import scan_frames
from bias_pipeline.steps.step2_generate_master_bias_by_temp import (
    block_rows,
    build_masters,
    combine_frames,
    combine_records,
    combine_stack,
    generate_master_bias_by_temp,
    group_by_temperature,
    make_groups,
    temperature_clusters,
)

from conftest import bias_pixels, write_frame

QUIET = PipelineConfig(show_progress=False)


def records_at(*temps: float) -> list[FrameRecord]:
    return [FrameRecord(path=f"f{i}.fits", temperature=t, shape=(4, 4)) for i, t in enumerate(temps)]  # type: ignore[arg-type]


def test_groups_split_at_gaps_not_at_bin_edges():
    # A set point at 0.0 with jitter straddles 0.05, where a fixed bin edge would cut it.
    temps = [-0.04, 0.01, 0.06, 0.03, 5.02, 4.97]
    assert temperature_clusters(temps, 0.1).tolist() == [0, 0, 0, 0, 1, 1]
    # A slow drift without gaps is cut into pieces no wider than the width.
    drift = np.arange(0, 1.0, 0.02)
    labels = temperature_clusters(drift, 0.1)
    for k in range(labels.max() + 1):
        assert np.ptp(drift[labels == k]) <= 0.1 + 1e-9
    assert labels.max() >= 8


def test_group_by_temperature_legacy_form():
    groups = group_by_temperature([{"temperature": 4.97}, {"temperature": 5.02}, {"temperature": -1.0}])
    assert list(groups) == [-1.0, 5.0]
    assert len(groups[5.0]) == 2
    assert list(group_by_temperature([{"temperature": 4.6}, {"temperature": 5.4}], round_decimals=0)) == [5.0]


def test_make_groups_uses_mean_temperature_and_rejects_small_groups():
    records = records_at(-5.02, -4.98, -5.03, 10.0, 10.01)
    before = [dataclasses.asdict(r) for r in records]
    grouping = make_groups(records, QUIET)
    groups = grouping.groups
    assert [g.label for g in groups] == ["-5.0"]
    assert groups[0].temperature == pytest.approx(np.mean([-5.02, -4.98, -5.03]))
    assert groups[0].records == records[:3]
    assert set(grouping.decisions) == {r.path for r in records[3:]}
    assert all(
        d.status == "rejected" and "--min-frames-per-group 3" in d.reason and d.group == ""
        for d in grouping.decisions.values()
    )
    assert [dataclasses.asdict(r) for r in records] == before  # the step decides, the records stay


def test_wide_groups_are_named_by_their_mean():
    config = PipelineConfig(temp_bin_width=1.0, min_frames_per_group=1, show_progress=False)
    groups = make_groups(records_at(5.0, 5.44, 5.46, 6.48), config).groups  # a drift cut after 1 deg C
    assert [g.label for g in groups] == ["5.3", "6.5"]
    groups = make_groups(records_at(5.44, 5.46, 7.0, 7.06), config).groups
    assert [g.label for g in groups] == ["5.5", "7.0"]


@pytest.mark.parametrize("n_frames", [1, 2, 3, 4, 7, 16])
@pytest.mark.parametrize("method", ["median", "mean", "sigma-clip"])
def test_block_combine_equals_whole_stack(tmp_path, n_frames, method):
    """The fast block-wise combine gives what the straightforward one gives on the whole
    stack (medians bit for bit, even and odd n), and its result does not change with the
    block height (one-row blocks) or the number of threads."""
    rng = np.random.default_rng(n_frames)
    stack = (rng.normal(2000, 3, (n_frames, 48, 64)).round() * 16).astype(np.uint16)
    stack[0, 5, 7] = 60000  # a cosmic ray
    stack[:, 9, :3] = rng.integers(100, 4000, (n_frames, 3)) * 16  # wildly noisy pixels
    for i, frame in enumerate(stack):
        write_frame(tmp_path / f"f{i}.fits", frame, temperature=1.0)
    records, _ = scan_frames(tmp_path, PipelineConfig(show_progress=False))
    whole = combine_block(stack.astype(np.float32), method)
    if method == "median":
        np.testing.assert_array_equal(whole.master, np.median(stack, axis=0))
    elif method == "mean":
        np.testing.assert_allclose(whole.master, stack.mean(axis=0), rtol=1e-7)
    first = None
    for limit, threads in ((512.0, 1), (0.001, 1), (0.001, 2), (0.05, 3)):
        result = combine_records(records, method, memory_limit=limit, threads=threads).combined
        assert result.master.dtype == np.float32 and result.master.shape == (48, 64)
        if method == "median":
            np.testing.assert_array_equal(result.master, whole.master)
        np.testing.assert_array_equal(result.n_used, whole.n_used)
        for name in ("master", "noise", "error"):
            np.testing.assert_allclose(getattr(result, name), getattr(whole, name), rtol=2e-6, err_msg=name)
        first = first or result
        for name in ("master", "noise", "error", "n_used"):  # bit for bit across blockings
            np.testing.assert_array_equal(getattr(result, name), getattr(first, name))


def test_sorting_network_sorts_like_numpy():
    from bias_pipeline.combine import sort_frames, sorting_network

    rng = np.random.default_rng(3)
    for n in range(1, 40):
        stack = rng.integers(0, 50, (n, 3, 5)).astype(np.uint16)  # many ties
        ordered = np.stack(sort_frames(stack.copy()))
        np.testing.assert_array_equal(ordered, np.sort(stack, axis=0))
    assert len(sorting_network(15)) < 15 * 15 // 2  # fewer comparisons than a naive sort
    big = rng.normal(size=(80, 2, 3)).astype(np.float32)  # above the network's limit: np.sort
    np.testing.assert_array_equal(np.stack(sort_frames(big.copy())), np.sort(big, axis=0))


def test_block_rows_follow_the_memory_limit():
    for frames in (3, 15, 120, 1000):
        for threads in (1, 2, 4):
            rows = block_rows(frames, 2048, 2048, 512, threads)
            assert threads * rows * 2048 * (frames * 8 + 96) <= 512 * 2**20
            assert rows in (1, 128) or rows * 2048 * frames * 8 <= WORKING_SET_MB * 2**20  # flat in the frames
    assert block_rows(10_000, 2048, 2048, 512, 2) == 1  # thousands of frames: thin blocks
    assert block_rows(3, 64, 48, 512) == 48


def test_twelve_bit_input_is_scaled(tmp_path):
    frames = [np.full((48, 64), v, dtype=np.uint16) for v in (100, 101, 103)]
    for i, frame in enumerate(frames):
        write_frame(tmp_path / f"f{i}.fits", frame, temperature=1.0)
    records, _ = scan_frames(tmp_path, QUIET)
    result = combine_records(records, "median", input_bits=12, scale_factor=16).combined
    assert result.master[0, 0] == 101 * 16


def test_combine_frames_accepts_arrays_and_records():
    arrays = [np.full((2, 3), v, dtype=np.float32) for v in (1.0, 5.0, 2.0)]
    assert combine_frames(arrays).tolist() == [[2.0] * 3] * 2
    assert combine_stack(np.stack(arrays), "mean")[0, 0] == pytest.approx(8 / 3)


def test_master_files_and_headers(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i, t in enumerate([4.98, 5.0, 5.03]):
        write_frame(raw / f"f{i}.fits", bias_pixels(seed=i), temperature=t)
    records, bits = scan_frames(raw, QUIET)
    before = [dataclasses.asdict(r) for r in records]
    made = build_masters(make_groups(records, QUIET), tmp_path / "m", QUIET, input_bits=bits)
    (master,) = made.masters
    assert master.path.name == "master_bias_5.0C.fits"
    header = fits.getheader(master.path)
    assert header["NCOMBINE"] == 3 and header["COMBMETH"] == "sigma-clip" and header["BUNIT"] == "adu"
    with fits.open(master.path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "ERR", "NOISE", "NUSED"]
        # bias_pixels() draws 2 DN (32 ADU) of noise; three frames estimate it roughly.
        assert 20 < np.median(hdul["NOISE"].data) < 45
        used = hdul["NUSED"].data
        assert used.max() == 3 and used.min() >= 2
        np.testing.assert_allclose(hdul["ERR"].data, hdul["NOISE"].data / np.sqrt(used), rtol=1e-5)
    assert header["TEMPERATURE"] == pytest.approx(np.mean([4.98, 5.0, 5.03]))
    assert header["SCALEFAC"] == 16 and "BPVERS" in header and "DATE" in header
    assert fits.getdata(master.path).dtype == np.dtype(">f4")
    assert set(made.decisions) == {r.path for r in records}
    assert all(d.status == "used" and d.group == "5.0" and d.reason == "" for d in made.decisions.values())
    assert [dataclasses.asdict(r) for r in records] == before  # step 2 returned decisions, changed no record


def test_generate_master_bias_by_temp_returns_dict(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        write_frame(raw / f"a{i}.fits", bias_pixels(seed=i), temperature=0.0)
        write_frame(raw / f"b{i}.fits", bias_pixels(level=210, seed=i), temperature=10.0)
    records, _ = scan_frames(raw, QUIET)
    masters = generate_master_bias_by_temp(records, tmp_path / "m", method="mean", config=QUIET)
    assert sorted(masters) == [0.0, 10.0]
    assert masters[10.0].shape == (48, 64)
    assert abs(float(masters[10.0].mean()) - 210 * 16) < 2
    assert fits.getheader(tmp_path / "m" / "master_bias_10.0C.fits")["COMBMETH"] == "mean"


def test_frame_unreadable_at_combine_is_rejected_and_group_remade(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(4):
        write_frame(raw / f"f{i}.fits", bias_pixels(seed=i), temperature=0.0)
    records, _ = scan_frames(raw, QUIET)
    grouping = make_groups(records, QUIET)
    (raw / "f1.fits").write_bytes((raw / "f1.fits").read_bytes()[:3000])  # cut after the scan
    made = build_masters(grouping, tmp_path / "m", QUIET)
    (master,) = made.masters
    assert master.n_frames == 3
    bad = made.decisions[raw / "f1.fits"]
    assert bad.status == "rejected" and "unreadable while combining" in bad.reason
    assert [r.path.name for r in grouping.groups[0].records] == [f"f{i}.fits" for i in range(4)]  # group as given
    assert all(r.status == "accepted" for r in records)


@pytest.mark.parametrize("shape", [(5, 2048), (7, 2047), (3, 1), (4, 2)])
def test_typical_noise_is_the_row_median(shape):
    from bias_pipeline.combine import typical_noise

    rng = np.random.default_rng(0)
    values = rng.normal(30, 3, shape).astype(np.float32)
    np.testing.assert_array_equal(typical_noise(values), np.median(values, axis=-1, keepdims=True))
    values[0, 0] = np.nan  # NaN is left out; a row of NaN only gives NaN
    expected = np.nanmedian(values[0, 1:]) if shape[1] > 1 else np.nan
    np.testing.assert_array_equal(typical_noise(values)[0, 0], expected)


def test_large_group_uses_sort_and_thin_blocks(tmp_path):
    """Above the sorting network's limit the combine sorts with numpy; with a tiny memory
    limit a large group is combined one row at a time, same result."""
    rng = np.random.default_rng(5)
    n_frames = 90
    stack = (rng.normal(1500, 3, (n_frames, 6, 64)).round() * 16).astype(np.uint16)
    stack[4, 2, 3] = 65000  # a cosmic ray
    for i, frame in enumerate(stack):
        write_frame(tmp_path / f"f{i:03d}.fits", frame, temperature=2.0)
    records, _ = scan_frames(tmp_path, PipelineConfig(show_progress=False))
    whole = combine_block(stack.astype(np.float32), "sigma-clip")
    assert block_rows(n_frames, 64, 6, 0.001, 2) == 1
    thin = combine_records(records, "sigma-clip", memory_limit=0.001, threads=2).combined
    np.testing.assert_array_equal(thin.n_used, whole.n_used)
    np.testing.assert_allclose(thin.master, whole.master, rtol=2e-6)
    np.testing.assert_allclose(thin.noise, whole.noise, rtol=2e-6)
    assert thin.n_used[2, 3] <= n_frames - 1 and abs(thin.master[2, 3] - 1500 * 16) < 20  # the ray is out

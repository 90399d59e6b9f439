"""Determinism and resource limits: products do not depend on how files are listed or on the
number of threads, and a group larger than the open-file limit is combined."""

from __future__ import annotations

import logging
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import PipelineConfig, run_bias_pipeline
from bias_pipeline.steps.step1_load_data import scan_frames
from bias_pipeline.steps.step2_generate_master_bias_by_temp import build_masters, combine_records, make_groups

from conftest import REPO, bias_pixels, write_frame

SHAPE = (300, 64)  # 300 rows: several row blocks (at most 128 rows each), so threads share the work


def _write_set(raw: Path, order: list[tuple[float, int]]) -> None:
    raw.mkdir(parents=True)
    for temperature, index in order:
        data = bias_pixels(SHAPE, level=200 + int(temperature), seed=index + int(10 * (temperature + 10)))
        write_frame(raw / f"frame_{temperature:+.1f}_{index}.fits", data, temperature=temperature)


def _fits_data(folder: Path) -> dict[str, list[np.ndarray]]:
    out = {}
    for path in sorted(folder.rglob("*.fits")):
        with fits.open(path) as hdul:
            out[str(path.relative_to(folder))] = [np.array(h.data) for h in hdul if h.data is not None]
    return out


def _block_lines(out: Path) -> list[str]:
    """The combine's own account of how it cut the work (``pipeline.log`` holds debug records)."""
    return re.findall(r"combining \d+ frames of \d+x\d+ in (\d+) blocks of up to \d+ rows on (\d+) threads",
                      (out / "pipeline.log").read_text())  # fmt: skip


def test_products_do_not_depend_on_listing_order_or_threads(tmp_path):
    frames = [(t, i) for t in (-5.0, 5.0, 15.0) for i in range(5)]
    _write_set(tmp_path / "a" / "raw", frames)
    _write_set(tmp_path / "b" / "raw", frames[::-1])  # created, and so listed, in reverse
    results = {}
    for name, threads in (("a", 1), ("b", 3)):
        config = PipelineConfig(show_progress=False, threads=threads, evaluation=False)
        run_bias_pipeline(tmp_path / name / "raw", tmp_path / name / "out", config=config)
        results[name] = _fits_data(tmp_path / name / "out")
        cuts = _block_lines(tmp_path / name / "out")
        assert len(cuts) == 3 and all(int(blocks) == 3 and int(workers) == threads for blocks, workers in cuts), cuts
    assert results["a"].keys() == results["b"].keys() and len(results["a"]) >= 6
    for product, arrays in results["a"].items():
        for mine, theirs in zip(arrays, results["b"][product], strict=True):
            if mine.dtype.names:  # tables: compare field by field
                for field in mine.dtype.names:
                    np.testing.assert_array_equal(mine[field], theirs[field], err_msg=f"{product} {field}")
            else:
                np.testing.assert_array_equal(mine, theirs, err_msg=product)  # bit for bit


@pytest.mark.parametrize("method", ["sigma-clip", "median", "mean"])
def test_a_group_combines_the_same_in_any_frame_order_and_block_cut(tmp_path, method):
    """The scan sorts files by name, so the pipeline alone never shows another order: here the
    combine gets the same frames shuffled, cut into other blocks, on other thread counts."""
    frames = [(5.0, i) for i in range(7)]
    _write_set(tmp_path / "raw", frames)
    records, _ = scan_frames(tmp_path / "raw", PipelineConfig(show_progress=False))
    reference = combine_records(records, method, threads=1)
    rng = np.random.default_rng(2)
    for threads, limit in ((2, 512.0), (3, 1.0)):
        shuffled = [records[k] for k in rng.permutation(len(records))]
        other = combine_records(shuffled, method, threads=threads, memory_limit=limit)
        for name in ("master", "noise", "error", "n_used"):
            np.testing.assert_array_equal(getattr(other.combined, name), getattr(reference.combined, name), name)
        order = [shuffled.index(r) for r in records]
        np.testing.assert_array_equal(other.outlier_fraction[order], reference.outlier_fraction)
        np.testing.assert_array_equal(other.offset[order], reference.offset)


def test_group_larger_than_the_open_file_limit(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    limit = 48
    per_group = 60  # more frames in one group than files the process may hold open
    for temperature in (0.0, 10.0):
        for index in range(per_group):
            data = bias_pixels((8, 12), level=200 + int(temperature), seed=index)
            write_frame(raw / f"f_{temperature:+.0f}_{index:02d}.fits", data, temperature=temperature)

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "run_pipeline.py"),
            "--basepath",
            str(raw),
            "--output-dir",
            str(out),
            "--no-evaluation",
            "-q",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=lower_limit,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    manifest = (out / "frames_manifest.csv").read_text()
    assert manifest.count(",used,") == 2 * per_group
    with fits.open(out / "bias_grouped_by_temp" / "master_bias_0.0C.fits") as hdul:
        assert hdul[0].header["NCOMBINE"] == per_group


def test_step2_makes_the_same_masters_and_decisions_from_frames_in_any_order(tmp_path, caplog):
    """The scan sorts files by name, so the pipeline alone never shows step 2 another order:
    here step 2 itself (grouping, combining, judging, writing) gets the frames shuffled, cut
    into other blocks on other thread counts, and makes the same masters bit for bit and the
    same decision about every frame."""
    _write_set(tmp_path / "raw", [(t, i) for t in (-5.0, 5.0) for i in range(5)])
    records, bits = scan_frames(tmp_path / "raw", PipelineConfig(show_progress=False))
    rng = np.random.default_rng(4)
    made = {}
    for name, threads, limit in (("sorted", 1, 512.0), ("shuffled", 3, 1.0)):
        config = PipelineConfig(show_progress=False, threads=threads, memory_limit=limit)
        order = records if name == "sorted" else [records[k] for k in rng.permutation(len(records))]
        assert name == "sorted" or [r.path for r in order] != [r.path for r in records]
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="bias_pipeline"):
            made[name] = build_masters(make_groups(order, config), tmp_path / name, config, input_bits=bits)
        cuts = re.findall(r"in (\d+) blocks of up to \d+ rows on (\d+) threads", caplog.text)
        assert len(cuts) == 2, caplog.text
        if name == "shuffled":  # really several blocks, shared by several threads
            assert all(int(blocks) >= 3 and int(workers) == 3 for blocks, workers in cuts), cuts
    reference, other = made["sorted"], made["shuffled"]
    assert other.decisions == reference.decisions and len(reference.decisions) == len(records)
    assert [m.label for m in other.masters] == [m.label for m in reference.masters] == ["-5.0", "5.0"]
    for mine, theirs in zip(other.masters, reference.masters, strict=True):
        with fits.open(mine.path) as a, fits.open(theirs.path) as b:
            for hdu_a, hdu_b in zip(a, b, strict=True):
                np.testing.assert_array_equal(hdu_a.data, hdu_b.data, err_msg=f"{mine.path.name} {hdu_a.name}")

"""The fault catalogue of the README: each fault is built, the real command is run, and the
outcome (the frame's status and reason, or the run's message and exit code) is checked.

Frame-level faults share one messy folder and one run of ``run_pipeline.py``; faults that stop
a run get a run each. None may produce a traceback.
"""

from __future__ import annotations

import csv
import gzip
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from conftest import REPO, bias_pixels, one_line_error, run_cli, snapshot, two_temperature_set, write_frame


def build_messy_folder(raw: Path) -> None:
    """Three good frames at 0 and at 10 deg C, and one file per frame-level fault."""
    two_temperature_set(raw)
    good = (raw / "good_+0.0_0.fits").read_bytes()
    (raw / "zero_byte.fits").write_bytes(b"")
    (raw / "truncated.fits").write_bytes(good[: len(good) // 2])
    (raw / "not_fits.fits").write_text("observing log, not a FITS file\n" * 100)
    plain = write_frame(raw.parent / "plain.fits", bias_pixels(level=200, seed=11), temperature=0.0)
    with gzip.open(raw / "gzip.fits.gz", "wb") as handle:
        handle.write(plain.read_bytes())
    header = fits.Header()
    header["HIERARCH TEMPERATURE"] = 10.0
    header["EXPOSURE"] = 0.0
    tiles = fits.CompImageHDU(bias_pixels(level=210, seed=12))
    fits.HDUList([fits.PrimaryHDU(header=header), tiles]).writeto(raw / "tile_compressed.fits.fz")
    header["HIERARCH TEMPERATURE"] = 0.0
    extension = fits.ImageHDU(bias_pixels(level=200, seed=13))
    fits.HDUList([fits.PrimaryHDU(header=header), extension]).writeto(raw / "image_in_extension.fits")
    fits.PrimaryHDU(np.zeros((3, 48, 64), dtype=np.uint16)).writeto(raw / "cube.fits")
    nan = bias_pixels(level=200, seed=14).astype(np.float32)
    nan[3, 4], nan[5, 6] = np.nan, np.inf
    write_frame(raw / "nan_inf.fits", nan, temperature=0.0)
    write_frame(raw / "saturated.fits", np.full((48, 64), 65535, dtype=np.uint16), temperature=0.0)
    half = bias_pixels(level=200, seed=15)
    half[:24] = 0
    write_frame(raw / "half_zero.fits", half, temperature=0.0)
    write_frame(raw / "temperature_string.fits", bias_pixels(level=210, seed=16), temperature="10.0")
    write_frame(raw / "temperature_na.fits", temperature="N/A")
    write_frame(raw / "temperature_implausible.fits", temperature=150.0)
    write_frame(raw / "exposure_negative.fits", temperature=0.0, exposure=-1.0)
    write_frame(raw / "other_shape.fits", bias_pixels((32, 32)), temperature=0.0)
    write_frame(raw / "raw_12bit_among_16bit.fits", bias_pixels(level=200, seed=17) // 16, temperature=0.0)
    os.symlink(raw / "good_+0.0_1.fits", raw / "same_frame_again.fits")
    os.symlink(raw, raw / "loop")


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, dict]]:
    base = tmp_path_factory.mktemp("faults")
    build_messy_folder(base / "raw")
    done = run_cli("run_pipeline.py", "--basepath", str(base / "raw"), "--output-dir", str(base / "out"), "-q")
    with open(base / "out" / "frames_manifest.csv") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    return done, rows


FRAME_FAULTS = [
    ("zero_byte.fits", "rejected", "empty file (0 bytes)"),
    ("truncated.fits", "rejected", "truncated: file has 5760 bytes"),
    ("not_fits.fits", "rejected", "cannot read as FITS"),
    ("gzip.fits.gz", "used", ""),
    ("tile_compressed.fits.fz", "used", ""),
    ("cube.fits", "rejected", "image in HDU 0 has 3 dimensions (3, 48, 64); expected a 2-D frame"),
    ("image_in_extension.fits", "used", ""),
    ("nan_inf.fits", "rejected", "2 pixels are NaN or infinite"),
    ("saturated.fits", "rejected", "100.0 % of pixels are saturated"),
    ("half_zero.fits", "rejected", "50.0 % of pixels are zero (readout dropout"),
    ("temperature_string.fits", "used", ""),
    ("temperature_na.fits", "rejected", "temperature keyword TEMPERATURE holds 'N/A', not a number"),
    ("temperature_implausible.fits", "rejected", "outside the plausible range -60..80 (--temperature-limits)"),
    ("exposure_negative.fits", "rejected", "negative exposure -1 s"),
    ("other_shape.fits", "rejected", "shape 32x32 differs from the data set's 48x64"),
    ("raw_12bit_among_16bit.fits", "rejected", "disagrees with its group's master: 100.0 % of pixels"),
    ("same_frame_again.fits", "ignored", "reached again through a link"),
]


def test_messy_folder_run_completes(messy_run):
    done, rows = messy_run
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert sum(row["status"] == "used" for row in rows.values()) == 6 + 4  # good ones and 4 readable faults
    assert not any(path.startswith("loop") for path in rows), "a link loop was followed"


@pytest.mark.parametrize(("name", "status", "reason"), FRAME_FAULTS, ids=[f[0] for f in FRAME_FAULTS])
def test_frame_fault(messy_run, name, status, reason):
    _, rows = messy_run
    row = rows[name]
    assert row["status"] == status, row
    assert reason in row["reason"], row["reason"]
    assert (row["reason"] == "") == (status == "used")


def test_disk_fills_up_while_writing(tmp_path):
    """A file-size limit makes writes fail as a full disk does (EFBIG instead of ENOSPC)."""
    two_temperature_set(tmp_path / "raw")
    out = tmp_path / "out"

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    done = subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), "--basepath", str(tmp_path / "raw"), "--output-dir", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=small_disk,
        timeout=300,
    )
    one_line_error(done, 4, "cannot write", "master_bias_0.0C.fits", "free some space or choose another --output-dir")
    assert not [p for p in out.rglob("*") if p.is_file() and p.name.endswith(".fits")], "a partial product"
    assert not list(out.rglob(".*.tmp"))


def test_output_inside_the_raw_folder(tmp_path):
    raw = tmp_path / "raw"
    two_temperature_set(raw)
    first = run_cli("run_pipeline.py", "--basepath", str(raw), "--output-dir", str(raw / "out"), "-q")
    assert first.returncode == 0, first.stderr
    again = run_cli("run_pipeline.py", "--basepath", str(raw), "--output-dir", str(raw / "out"), "-q")
    assert again.returncode == 0, again.stderr
    manifest = (raw / "out" / "frames_manifest.csv").read_text()
    assert "out/" not in manifest and manifest.count(",used,") == 6  # its own products are not inputs


def test_output_folder_is_the_raw_folder(tmp_path):
    two_temperature_set(tmp_path / "raw")
    done = run_cli("run_pipeline.py", "--basepath", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "raw"))
    one_line_error(done, 3, "is the raw folder itself")


def test_only_our_own_leftovers_are_removed(tmp_path):
    two_temperature_set(tmp_path / "raw")
    out = tmp_path / "out"
    (out / "bias_grouped_by_temp").mkdir(parents=True)
    mine = out / ".thesis.draft.tmp"  # a user's hidden file that happens to end in .tmp
    mine.write_text("keep me")
    leftover = out / "bias_grouped_by_temp" / ".master_bias_0.0C.fits.x1y2z3.bias_pipeline.tmp"
    leftover.write_text("half a file from a killed run")
    done = run_cli("run_pipeline.py", "--basepath", str(tmp_path / "raw"), "--output-dir", str(out), "-q")
    assert done.returncode == 0, done.stderr
    assert mine.read_text() == "keep me" and not leftover.exists()


def test_a_run_that_stops_after_combining_keeps_the_earlier_run(tmp_path):
    raw = tmp_path / "raw"
    two_temperature_set(raw)
    out = tmp_path / "out"
    assert run_cli("run_pipeline.py", "--basepath", str(raw), "--output-dir", str(out), "-q").returncode == 0
    before = snapshot(out)
    # Now the 10 deg C group loses a frame in step 2 (an outlier) and falls below 3 frames.
    (raw / "good_+10.0_2.fits").rename(tmp_path / "kept.fits")
    write_frame(raw / "outlier.fits", bias_pixels(level=210, seed=5) // 16, temperature=10.0)
    done = run_cli("run_pipeline.py", "--basepath", str(raw), "--output-dir", str(out), "-q")
    one_line_error(done, 3, "fewer than two temperature groups could be combined", "stopped_run/frames_manifest.csv")
    after = snapshot(out)
    stopped = {name: after.pop(name) for name in list(after) if name.startswith("stopped_run/")}
    assert after == before, "the earlier run's products changed"
    assert set(stopped) == {"stopped_run/frames_manifest.csv", "stopped_run/pipeline.log"}
    assert b'outlier.fits,rejected,"disagrees with its group' in stopped["stopped_run/frames_manifest.csv"]
    assert b"run stopped: InputDataError" in stopped["stopped_run/pipeline.log"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "staging or lock left behind"
    # The next finished run replaces the products and drops the stopped run's files.
    (raw / "outlier.fits").unlink()
    (tmp_path / "kept.fits").rename(raw / "good_+10.0_2.fits")
    assert run_cli("run_pipeline.py", "--basepath", str(raw), "--output-dir", str(out), "-q").returncode == 0
    assert not (out / "stopped_run").exists()


def test_a_final_name_taken_by_a_folder(tmp_path):
    two_temperature_set(tmp_path / "raw")
    out = tmp_path / "out"
    (out / "bias_grouped_by_temp" / "master_bias_10.0C.fits").mkdir(parents=True)
    done = run_cli("run_pipeline.py", "--basepath", str(tmp_path / "raw"), "--output-dir", str(out), "-q")
    one_line_error(done, 4, "cannot write", "master_bias_10.0C.fits", "remove what is in the way")
    assert not [p for p in out.rglob("*.fits") if p.is_file()]


def test_twelve_bit_saturated_frame(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for temperature in (0.0, 10.0):
        for index in range(3):
            data = bias_pixels(level=200 + int(temperature), seed=index + int(temperature)) // 16
            write_frame(raw / f"raw12_{temperature:+.0f}_{index}.fits", data, temperature=temperature)
    write_frame(raw / "saturated12.fits", np.full((48, 64), 4095, dtype=np.uint16), temperature=0.0)
    done = run_cli("run_pipeline.py", "--basepath", str(raw), "--output-dir", str(tmp_path / "out"),
                   "--input-bits", "12", "-q", "--no-evaluation")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {row["path"]: row for row in csv.DictReader(open(tmp_path / "out" / "frames_manifest.csv"))}
    assert rows["saturated12.fits"]["reason"].startswith("100.0 % of pixels are saturated (4095")


def test_saturation_honours_the_scale_factor(tmp_path):
    """With --scale-factor 4 the ADC's maximum is stored as 4095 x 4 = 16380: a frame full of it
    is saturated (the check used to know only 4095 x 16)."""
    from bias_pipeline import PipelineConfig
    from bias_pipeline.steps.step1_load_data import scan_frames

    raw = tmp_path / "raw"
    raw.mkdir()
    write_frame(raw / "good.fits", (bias_pixels() // 16) * 4, temperature=0.0)
    write_frame(raw / "saturated.fits", np.full((48, 64), 4095 * 4, dtype=np.uint16), temperature=0.0)
    records, _ = scan_frames(raw, PipelineConfig(scale_factor=4.0, show_progress=False))
    reasons = {r.path.name: r.reason for r in records}
    assert reasons["good.fits"] == ""
    assert reasons["saturated.fits"].startswith("100.0 % of pixels are saturated"), reasons

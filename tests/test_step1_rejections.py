"""Step 1: every rejection reason, the file kinds that must be read, and the manifest."""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import PipelineConfig, run_bias_pipeline
from bias_pipeline.frames import read_rows
from bias_pipeline.steps.step1_load_data import scan_frames

from conftest import REPO, bias_pixels, two_temperature_set, write_frame

QUIET = PipelineConfig(show_progress=False)


def scan(raw, config=QUIET):
    records, _ = scan_frames(raw, config)
    return {r.path.name: r for r in records}


def test_unreadable_files(tmp_path):
    (tmp_path / "empty.fits").write_bytes(b"")
    (tmp_path / "text.fits").write_text("SIMPLE? no, this is a note that someone named .fits\n" * 80)
    write_frame(tmp_path / "good.fits")
    whole = (tmp_path / "good.fits").read_bytes()
    (tmp_path / "cut_block.fits").write_bytes(whole[:-2880])
    (tmp_path / "cut_half.fits").write_bytes(whole[: len(whole) // 2])
    found = scan(tmp_path)
    assert found["empty.fits"].reason == "empty file (0 bytes)"
    assert found["text.fits"].reason.startswith("cannot read as FITS")
    assert found["cut_block.fits"].reason.startswith("truncated")
    assert found["cut_half.fits"].reason.startswith("truncated")
    assert found["good.fits"].status == "accepted"
    assert all(r.status == "rejected" for name, r in found.items() if name != "good.fits")


def test_no_two_dimensional_image(tmp_path):
    fits.PrimaryHDU(np.zeros((3, 48, 64), dtype=np.uint16)).writeto(tmp_path / "cube.fits")
    header = fits.Header()
    header["TEMP"] = 5.0
    header["EXPTIME"] = 0.0
    fits.PrimaryHDU(header=header).writeto(tmp_path / "header_only.fits")
    found = scan(tmp_path)
    assert found["cube.fits"].reason == "image in HDU 0 has 3 dimensions (3, 48, 64); expected a 2-D frame"
    assert found["header_only.fits"].reason == "no image data in any HDU"


@pytest.mark.parametrize(
    ("value", "status", "reason"),
    [
        ("12.5", "accepted", ""),
        ("N/A", "rejected", "temperature keyword TEMPERATURE holds 'N/A', not a number"),
        (True, "rejected", "temperature keyword TEMPERATURE holds True, not a number"),
        (None, "rejected", "no temperature keyword in the header (looked for TEMPERATURE, TEMP,"),
        (95.0, "rejected", "temperature 95 deg C (TEMPERATURE) is outside the plausible range -60..80"),
    ],
)
def test_temperature_values(tmp_path, value, status, reason):
    write_frame(tmp_path / "f.fits", temperature=value)
    record = scan(tmp_path)["f.fits"]
    assert record.status == status and record.reason.startswith(reason)
    if status == "accepted":
        assert record.temperature == 12.5


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "no exposure keyword in the header (looked for EXPOSURE, EXPTIME"),
        ("long", "exposure keyword EXPOSURE holds 'long', not a number"),
        (5.0, "exposure 5 s is longer than a bias frame (--max-exposure 0.1 s)"),
        (-0.01, "negative exposure -0.01 s (EXPOSURE)"),
    ],
)
def test_exposure_values(tmp_path, value, reason):
    write_frame(tmp_path / "f.fits", exposure=value)
    record = scan(tmp_path)["f.fits"]
    assert record.status == "rejected" and record.reason.startswith(reason)


def test_keyword_aliases_are_recorded(tmp_path):
    write_frame(tmp_path / "old.fits", temperature=3.0, temperature_key="TEMP", exposure_key="EXPTIME")
    write_frame(tmp_path / "other.fits", temperature=4.0, temperature_key="CCD-TEMP")
    found = scan(tmp_path)
    assert (found["old.fits"].temperature_key, found["old.fits"].exposure_key) == ("TEMP", "EXPTIME")
    assert found["other.fits"].temperature_key == "CCD-TEMP" and found["other.fits"].temperature == 4.0
    only_temp = PipelineConfig(temperature_keys=("TEMP",), show_progress=False)
    assert scan(tmp_path, only_temp)["other.fits"].reason.startswith("no temperature keyword")


def test_shape_other_than_the_data_sets(tmp_path):
    for i in range(3):
        write_frame(tmp_path / f"f{i}.fits", seed=i)
    write_frame(tmp_path / "turned.fits", bias_pixels(shape=(64, 48)))
    found = scan(tmp_path)
    assert found["turned.fits"].reason == "shape 64x48 differs from the data set's 48x64 (3 frames)"
    assert found["f0.fits"].status == "accepted"


def test_bad_pixels(tmp_path):
    nan_frame = bias_pixels().astype(np.float32)
    nan_frame[3, 4] = np.nan
    nan_frame[5, 6] = np.inf
    write_frame(tmp_path / "nan.fits", nan_frame)
    half = bias_pixels()
    half[:24] = 0
    write_frame(tmp_path / "half_zero.fits", half)
    few = bias_pixels()
    few[:2] = 0  # 4 % zeros: below the 10 % limit
    write_frame(tmp_path / "few_zero.fits", few)
    found = scan(tmp_path)
    assert found["nan.fits"].reason == "2 pixels are NaN or infinite"
    assert found["half_zero.fits"].reason.startswith("50.0 % of pixels are zero (readout dropout; limit 10 %")
    assert found["few_zero.fits"].status == "accepted"


def test_compressed_and_extension_frames_are_read(tmp_path):
    data = bias_pixels(seed=9)
    header = fits.Header()
    header["HIERARCH TEMPERATURE"] = 7.0
    header["EXPOSURE"] = 0.0
    fits.HDUList([fits.PrimaryHDU(data, header)]).writeto(tmp_path / "plain.fits")
    with gzip.open(tmp_path / "zipped.fits.gz", "wb") as handle:
        handle.write((tmp_path / "plain.fits").read_bytes())
    fits.HDUList([fits.PrimaryHDU(header=header), fits.CompImageHDU(data)]).writeto(tmp_path / "tiles.fits.fz")
    fits.HDUList([fits.PrimaryHDU(header=header), fits.ImageHDU(data)]).writeto(tmp_path / "ext.fits")
    found = scan(tmp_path)
    for name in ("plain.fits", "zipped.fits.gz", "tiles.fits.fz", "ext.fits"):
        record = found[name]
        assert record.status == "accepted", (name, record.reason)
        assert record.temperature == 7.0  # found in the primary header when the image is in HDU 1
        np.testing.assert_array_equal(read_rows(record, 5, 9), data[5:9].astype(np.float32))
    assert found["plain.fits"].data_offset == 2880 and found["zipped.fits.gz"].data_offset is None


def test_twelve_bit_values_beyond_range_rejected(tmp_path):
    for i in range(2):
        write_frame(tmp_path / f"raw12_{i}.fits", (bias_pixels(seed=i) // 16 + 1).astype(np.uint16))
    write_frame(tmp_path / "stored16.fits", bias_pixels(level=300))  # 300 x 16 = 4800 > 4095
    found = scan(tmp_path, PipelineConfig(input_bits="12", show_progress=False))
    assert found["stored16.fits"].reason.startswith("values up to")
    assert "--input-bits 12" in found["stored16.fits"].reason
    assert found["raw12_0.fits"].status == "accepted"


def test_twelve_bit_data_read_as_sixteen_warns(tmp_path, caplog):
    for i in range(2):
        write_frame(tmp_path / f"raw12_{i}.fits", (bias_pixels(seed=i) // 16 + 1).astype(np.uint16))
    _, bits = scan_frames(tmp_path, QUIET)
    assert bits == 16 and "--input-bits 12" in caplog.text
    _, bits = scan_frames(tmp_path, PipelineConfig(input_bits="auto", show_progress=False))
    assert bits == 12


def test_links_counted_once_and_loops_survived(tmp_path):
    raw = tmp_path / "raw"
    two_temperature_set(raw)
    os.symlink(raw / "good_+0.0_0.fits", raw / "alias.fits")
    os.symlink(raw, raw / "loop")  # a folder link back to the top
    found = scan(raw)
    assert found["alias.fits"].status == "ignored" and "reached again through a link" in found["alias.fits"].reason
    assert sum(r.status == "accepted" for r in found.values()) == 6


def test_unreadable_permission(tmp_path):
    """A file without read permission. Root reads anything, so as root the scan runs in a child
    without the capabilities that bypass file permissions (setpriv), as a user's would."""
    write_frame(tmp_path / "locked.fits").chmod(0)
    if os.geteuid() != 0:
        assert scan(tmp_path)["locked.fits"].reason == "cannot read: permission denied"
        return
    if not shutil.which("setpriv"):
        pytest.skip("root without setpriv: permissions cannot be made to count")
    code = (
        "import sys; from bias_pipeline import PipelineConfig; from bias_pipeline.steps.step1_load_data import "
        "scan_frames; records, _ = scan_frames(sys.argv[1], PipelineConfig(show_progress=False)); "
        "print({r.path.name: r.reason for r in records}['locked.fits'])"
    )
    done = subprocess.run(
        ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", sys.executable, "-c", code,
         str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cannot read: permission denied"


def test_manifest_of_a_messy_folder(tmp_path):
    raw = tmp_path / "raw"
    two_temperature_set(raw)
    (raw / "notes.txt").write_text("log\n")
    (raw / "broken.fits").write_bytes(b"")
    write_frame(raw / "dark.fits", exposure=30.0)
    write_frame(raw / "lonely.fits", temperature=25.0)
    run_bias_pipeline(raw, tmp_path / "out", config=PipelineConfig(show_progress=False, evaluation=False))
    with open(tmp_path / "out" / "frames_manifest.csv") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 10
    assert rows["notes.txt"]["status"] == "ignored"
    assert rows["broken.fits"]["reason"] == "empty file (0 bytes)"
    assert rows["dark.fits"]["status"] == "rejected" and rows["dark.fits"]["exposure"] == "30"
    assert "--min-frames-per-group 3" in rows["lonely.fits"]["reason"]
    assert rows["good_+0.0_0.fits"]["group"] == "0.0" and rows["good_+0.0_0.fits"]["temperature_key"] == "TEMPERATURE"
    for row in rows.values():
        assert (row["reason"] == "") == (row["status"] == "used"), row


def test_outputs_inside_the_raw_folder_are_never_read(tmp_path):
    raw = tmp_path / "raw"
    two_temperature_set(raw)
    config = PipelineConfig(show_progress=False, evaluation=False)
    first = run_bias_pipeline(raw, raw / "results", config=config)
    second = run_bias_pipeline(raw, raw / "results", config=config)
    assert len(second.records) == len(first.records) == 6
    assert all(not str(r.path).startswith(str(raw / "results")) for r in second.records)


def test_rerun_replaces_products(tmp_path):
    config = PipelineConfig(show_progress=False, evaluation=False)
    two_temperature_set(tmp_path / "a", temperatures=(0.0, 10.0))
    two_temperature_set(tmp_path / "b", temperatures=(5.0, 15.0))
    run_bias_pipeline(tmp_path / "a", tmp_path / "out", config=config)
    run_bias_pipeline(tmp_path / "b", tmp_path / "out", config=config)
    masters = sorted(p.name for p in (tmp_path / "out" / "bias_grouped_by_temp").iterdir())
    assert masters == ["master_bias_15.0C.fits", "master_bias_5.0C.fits"]

"""The two commands, run for real in a subprocess: help, errors as one line, outputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline.cli import COMMAND_LINE_ONLY
from bias_pipeline.config import options

from conftest import run_cli, two_temperature_set, write_frame

# Made from the option schema (and the command-line-only options), not listed again here.
OPTIONS = [opt.flag for opt in options().values()] + [flags[0] for flags, _ in COMMAND_LINE_ONLY.values()]


def assert_one_line_error(done, code, *fragments):
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_help_lists_every_option_and_ends_with_an_example():
    done = run_cli("run_pipeline.py", "--help")
    assert done.returncode == 0
    for option in OPTIONS:
        assert re.search(rf"(^|\s){re.escape(option)}[\s,]", done.stdout), option
    examples = done.stdout.rstrip().split("\n\n")[-2:]  # the examples end the help: commands, then what they do
    assert examples[0].startswith("examples:\n  python run_pipeline.py --demo --output-dir demo_out/")
    assert examples[1].strip().startswith("The first tries the pipeline on simulated data")
    generate = run_cli("generate_bias.py", "--help")
    assert generate.returncode == 0 and "examples:\n  python generate_bias.py --model" in generate.stdout
    assert "--noise" in generate.stdout


@pytest.fixture
def small_run(tmp_path):
    two_temperature_set(tmp_path / "raw")
    done = run_cli(
        "run_pipeline.py", "--basepath", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "out"),
        "-q", "--generate-set", "--save-eval-fits",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return tmp_path


def test_flags_write_their_products(small_run, tmp_path):
    out = small_run / "out"
    for label in ("0.0", "10.0"):
        assert (out / "bias_masks_by_temp" / f"synthetic_bias_{label}C.fits").is_file()
        for stem in ("synthetic_bias", "mae", "mape"):
            assert (out / "evaluation" / f"{stem}_{label}C.fits").is_file()
    plain = run_cli("run_pipeline.py", "--basepath", str(small_run / "raw"), "--output-dir", str(tmp_path / "o2"), "-q")
    assert plain.returncode == 0
    assert not list((tmp_path / "o2" / "bias_masks_by_temp").iterdir())
    assert not list((tmp_path / "o2" / "evaluation").glob("*.fits"))


@pytest.mark.parametrize(
    ("setup", "code", "fragments"),
    [
        ("missing", 3, ["--basepath", "does not exist"]),
        ("file", 3, ["--basepath", "is not a folder"]),
        ("empty", 3, ["--basepath", "holds no files"]),
        ("unusable", 3, ["no usable bias frames", "stopped_run/frames_manifest.csv", "exposure 9 s is longer"]),
        ("one_temperature", 3, ["all usable frames are at one temperature (5.0 deg C, 3 frames)"]),
    ],
)
def test_input_errors(tmp_path, setup, code, fragments):
    raw = tmp_path / "raw"
    if setup == "file":
        raw.write_text("x")
    elif setup != "missing":
        raw.mkdir()
    if setup == "unusable":
        for i in range(3):
            write_frame(raw / f"dark{i}.fits", exposure=9.0)
    if setup == "one_temperature":
        for i in range(3):
            write_frame(raw / f"f{i}.fits", seed=i)
    done = run_cli("run_pipeline.py", "--basepath", str(raw), "--output-dir", str(tmp_path / "out"))
    assert_one_line_error(done, code, *fragments)
    if setup in ("unusable", "one_temperature"):
        assert (tmp_path / "out" / "stopped_run" / "frames_manifest.csv").is_file()
        assert not (tmp_path / "out" / "frames_manifest.csv").exists()  # the folder shows no finished run


@pytest.mark.parametrize("mask", ["absent", "transposed", "cube"])
def test_mask_errors(tmp_path, mask):
    two_temperature_set(tmp_path / "raw")
    path = tmp_path / "mask.fits"
    if mask == "transposed":
        fits.writeto(path, np.zeros((64, 48), dtype=np.uint8))
    elif mask == "cube":
        fits.writeto(path, np.zeros((2, 48, 64), dtype=np.uint8))
    done = run_cli(
        "run_pipeline.py", "--basepath", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "out"),
        "--hot-pixel-mask", str(path),
    )  # fmt: skip
    expected = {"absent": "does not exist", "transposed": "64x48 but the frames are 48x64", "cube": "holds no 2-D"}
    assert_one_line_error(done, 3, "--hot-pixel-mask", expected[mask])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--max-exposure", "abc"], "--max-exposure"),
        (["--combine-method", "foo"], "--combine-method"),
        (["--temp-bin-width", "0"], "--temp-bin-width"),
        (["--min-frames-per-group", "0"], "--min-frames-per-group"),
        (["-v", "-q"], "-v and -q"),
        (["--demo"], "--demo makes its own data"),
    ],
)
def test_option_errors(tmp_path, args, fragment):
    two_temperature_set(tmp_path / "raw")
    done = run_cli("run_pipeline.py", "--basepath", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "o"), *args)
    assert_one_line_error(done, 2, fragment)


def test_output_dir_not_writable(tmp_path):
    two_temperature_set(tmp_path / "raw")
    (tmp_path / "taken").write_text("a file, not a folder")
    done = run_cli("run_pipeline.py", "--basepath", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "taken"))
    assert_one_line_error(done, 4, "--output-dir")


def test_generate_bias(small_run):
    model = small_run / "out" / "bias_model"
    maps = ["--a-map", str(model / "bias_a_map.fits"), "--b-map", str(model / "bias_b_map.fits")]
    into_folder = run_cli("generate_bias.py", *maps, "--temperature", "12.0", "--output", str(small_run / "out"))
    assert into_folder.returncode == 0, into_folder.stderr
    written = small_run / "out" / "synthetic_bias_12.0C.fits"
    data = fits.getdata(written)
    mean, std = map(float, re.search(r"mean ([\d.]+) ADU, std ([\d.]+) ADU", into_folder.stdout).groups())
    assert mean == pytest.approx(float(data.mean()), abs=1e-3) and std == pytest.approx(float(data.std()), abs=1e-3)
    assert "extrapolat" in into_folder.stderr  # 12 deg C lies outside the fitted 0..10
    new_file = small_run / "new" / "deeper" / "frame.fits"
    inside = run_cli("generate_bias.py", *maps, "--temperature", "5", "--output", str(new_file))
    assert inside.returncode == 0 and new_file.is_file() and "extrapolat" not in inside.stderr
    new_folder = small_run / "not_yet"  # a trailing "/" says: a folder, to be made
    made = run_cli("generate_bias.py", *maps, "--temperature", "5", "--output", f"{new_folder}/")
    assert made.returncode == 0 and (new_folder / "synthetic_bias_5.0C.fits").is_file(), made.stderr
    missing = run_cli(
        "generate_bias.py", "--a-map", str(small_run / "nope.fits"), "--b-map", maps[3],
        "--temperature", "5", "--output", str(small_run),
    )  # fmt: skip
    assert_one_line_error(missing, 3, "a-map", "nope.fits", "does not exist")
    fits.writeto(small_run / "small_b.fits", np.zeros((10, 10), dtype=np.float32))
    mismatched = run_cli(
        "generate_bias.py", "--a-map", maps[1], "--b-map", str(small_run / "small_b.fits"),
        "--temperature", "5", "--output", str(small_run),
    )  # fmt: skip
    assert_one_line_error(mismatched, 3, "48x64", "10x10", "give maps from one model")

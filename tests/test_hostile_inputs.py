"""Faults found by trying to break the product as a new user and a hostile-but-realistic
environment would: files that hang a reader, headers that contradict themselves, data sets
that give a model silently wrong, options at their limits, and the generator's own traps.
Each runs the real command (or the API, where the fault is the API's) and checks what the
user sees: a frame's status and reason in the manifest, or one line and an exit code.
The run-level faults (interrupted reruns, two runs into one folder, killed plot workers) are in
``test_interruption.py``."""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import BiasModel
from bias_pipeline.simulate import SimulationSpec, simulate_dataset

from conftest import REPO, bias_pixels, one_line_error, run_cli, two_temperature_set, write_frame


def manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "frames_manifest.csv", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


def run(raw: Path, out: Path, *options: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """run_pipeline.py with a timeout that a hang would exceed by far."""
    return subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), "--basepath", str(raw), "--output-dir", str(out), *options],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=timeout,
    )


def header_frame(path: Path, data: np.ndarray, cards: list[tuple[str, object]]) -> Path:
    """A frame whose header holds exactly ``cards``, in order, duplicates included."""
    header = fits.Header()
    for key, value in cards:
        header.append((f"HIERARCH {key}" if len(key) > 8 else key, value), bottom=True)
    fits.PrimaryHDU(data, header=header).writeto(path)
    return path


# ------------------------------------------------------------------- one messy folder, one run
@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("hostile")
    raw = base / "raw"
    two_temperature_set(raw, frames=4)
    # 2: a FIFO and a device under FITS names (reading either would wait, or read, for ever).
    os.mkfifo(raw / "stream.fits")
    os.symlink("/dev/zero", raw / "zeros.fits")
    # 8: one frame whose BZERO card was stripped: unsigned values stored as int16 read negative.
    signed = (bias_pixels(level=200, seed=21).astype(np.int32) - 32768).astype(np.int16)
    write_frame(raw / "stripped_bzero.fits", signed, temperature=0.0)
    # 9: two TEMPERATURE cards that disagree, two that agree.
    header_frame(raw / "two_temperatures.fits", bias_pixels(level=210, seed=22),
                 [("TEMPERATURE", 20.0), ("TEMPERATURE", 10.017), ("EXPOSURE", 0.0)])  # fmt: skip
    header_frame(raw / "same_twice.fits", bias_pixels(level=210, seed=23),
                 [("TEMPERATURE", 10.0), ("TEMPERATURE", 10.0), ("EXPOSURE", 0.0)])  # fmt: skip
    header_frame(raw / "two_exposures.fits", bias_pixels(level=200, seed=24),
                 [("TEMPERATURE", 0.0), ("EXPOSURE", 0.0), ("EXPOSURE", 30.0)])  # fmt: skip
    # 10: a stuck readout, a byte-identical copy, and the same pixels under another header.
    write_frame(raw / "stuck.fits", np.full((48, 64), 3200, dtype=np.uint16), temperature=0.0)
    shutil.copy(raw / "good_+0.0_1.fits", raw / "good_+0.0_1_copy.fits")
    same_pixels = fits.getdata(raw / "good_+10.0_2.fits")
    header_frame(raw / "renamed_header.fits", same_pixels,
                 [("TEMPERATURE", 10.0), ("EXPOSURE", 0.0), ("FRAMENUM", 99)])  # fmt: skip
    # 11: frame types: a zero-second dark, a flat, MaxIm's "Bias Frame", a numeric FRAME counter.
    header_frame(raw / "dark_zero_s.fits", bias_pixels(level=200, seed=25),
                 [("IMAGETYP", "DARK"), ("TEMPERATURE", 0.0), ("EXPOSURE", 0.0)])  # fmt: skip
    header_frame(raw / "flat.fits", bias_pixels(level=200, seed=26),
                 [("OBSTYPE", "FLAT"), ("TEMPERATURE", 0.0), ("EXPOSURE", 0.05)])  # fmt: skip
    header_frame(raw / "maxim_bias.fits", bias_pixels(level=210, seed=27),
                 [("IMAGETYP", "Bias Frame"), ("TEMPERATURE", 10.0), ("EXPOSURE", 0.0)])  # fmt: skip
    header_frame(raw / "frame_counter.fits", bias_pixels(level=200, seed=28),
                 [("FRAME", 12), ("TEMPERATURE", 0.0), ("EXPOSURE", 0.0)])  # fmt: skip
    # 17: a frame and an ignored file whose names are not UTF-8.
    odd = os.fsdecode(b"caf\xe9_bias.fits")
    write_frame(raw / odd, bias_pixels(level=210, seed=29), temperature=10.0)
    (raw / os.fsdecode(b"notes_\xff.txt")).write_text("not a frame")
    # 18: a gzip file cut in half.
    with gzip.open(raw / "cut.fits.gz", "wb") as handle:
        handle.write((raw / "good_+0.0_0.fits").read_bytes())
    whole = (raw / "cut.fits.gz").read_bytes()
    (raw / "cut.fits.gz").write_bytes(whole[: len(whole) // 2])
    out = base / "out"
    done = run(raw, out, "-q", "--no-evaluation", timeout=120)
    return done, manifest(out), out


HOSTILE_FRAMES = [
    ("stream.fits", "ignored", "a FIFO (named pipe), not a regular file: only regular files are read"),
    ("zeros.fits", "ignored", "a character device, not a regular file"),
    ("stripped_bzero.fits", "rejected", "are negative, down to -"),
    ("stripped_bzero.fits", "rejected", "stored as signed 16-bit without BZERO = 32768"),
    ("two_temperatures.fits", "rejected", "2 TEMPERATURE cards disagree (20 and 10.017)"),
    ("same_twice.fits", "used", ""),
    ("two_exposures.fits", "rejected", "2 EXPOSURE cards disagree (0 and 30)"),
    ("stuck.fits", "rejected", "every pixel holds 3200: a stuck readout"),
    ("good_+0.0_1_copy.fits", "ignored", "byte-identical copy of"),
    ("renamed_header.fits", "rejected", "its pixels are identical to those of"),
    ("dark_zero_s.fits", "rejected", "frame type 'DARK' (IMAGETYP) is not a bias frame"),
    ("flat.fits", "rejected", "frame type 'FLAT' (OBSTYPE) is not a bias frame"),
    ("maxim_bias.fits", "used", ""),
    ("frame_counter.fits", "used", ""),
    (os.fsdecode(b"caf\xe9_bias.fits"), "used", ""),
    ("cut.fits.gz", "rejected", "truncated: the gzip stream ends before its end marker"),
]


def test_the_hostile_folder_runs_to_the_end(hostile_run):
    done, rows, out = hostile_run
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert rows["good_+0.0_1_copy.fits"]["reason"].endswith("used once")
    assert "good_+0.0_1.fits" in rows["good_+0.0_1_copy.fits"]["reason"]
    assert "good_+10.0_2.fits" in rows["renamed_header.fits"]["reason"]


@pytest.mark.parametrize(("name", "status", "reason"), HOSTILE_FRAMES, ids=[f"{f[0]}-{i}" for i, f in
                                                                            enumerate(HOSTILE_FRAMES)])  # fmt: skip
def test_hostile_frame(hostile_run, name, status, reason):
    _, rows, _ = hostile_run
    row = rows[name]
    assert row["status"] == status, row
    assert reason in row["reason"], row["reason"]


def test_names_that_are_not_utf8_are_inspected(hostile_run):
    _, _, out = hostile_run
    done = subprocess.run(
        [sys.executable, "-m", "bias_pipeline", "inspect", str(out)],
        capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr


def test_frame_type_check_can_be_switched_off(tmp_path):
    raw = tmp_path / "raw"
    two_temperature_set(raw)
    header_frame(raw / "dark_zero_s.fits", bias_pixels(level=200, seed=25),
                 [("IMAGETYP", "DARK"), ("TEMPERATURE", 0.0), ("EXPOSURE", 0.0)])  # fmt: skip
    done = run(raw, tmp_path / "out", "-q", "--no-evaluation", "--frame-type-keys", "none")
    assert done.returncode == 0, done.stderr
    assert manifest(tmp_path / "out")["dark_zero_s.fits"]["status"] == "used"


# ------------------------------------------------------------------ data sets that mislead
def test_a_data_set_whose_bzero_was_stripped_is_refused(tmp_path):
    raw = tmp_path / "raw"
    two_temperature_set(raw)
    for path in raw.iterdir():
        data = fits.getdata(path).astype(np.int32) - 32768  # the unsigned values, read as signed
        header = fits.getheader(path)
        path.unlink()
        fits.PrimaryHDU(data.astype(np.int16), header=header).writeto(path)
        assert "BZERO" not in fits.getheader(path)
    done = run(raw, tmp_path / "out", "--no-evaluation")
    one_line_error(done, 3, "no usable bias frames", "all 6 rejected for one reason", "restore the BZERO card")


def test_kelvin_temperatures_are_named_as_such(tmp_path):
    raw = tmp_path / "raw"
    two_temperature_set(raw, temperatures=(273.15, 283.15))
    done = run(raw, tmp_path / "out", "--no-evaluation")
    one_line_error(done, 3, "all 6 rejected for one reason", "looks like kelvin (273.15 K = 0.00 deg C)",
                   "--temperature-unit K")  # fmt: skip
    again = run(raw, tmp_path / "out", "-q", "--no-evaluation", "--temperature-unit", "K")
    assert again.returncode == 0, again.stderr
    assert fits.getheader(tmp_path / "out" / "bias_grouped_by_temp" / "master_bias_10.0C.fits")["NCOMBINE"] == 3


@pytest.mark.parametrize("shape", [(40, 1), (40, 3), (1, 40), (3, 40), (1, 1)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_narrow_frames_of_pure_noise_are_used(tmp_path, shape):
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(7)
    for t in (0.0, 10.0, 20.0):
        for i in range(5):
            data = (np.clip(np.rint(200 + 0.2 * t + rng.normal(0, 2.0, shape)), 0, 4095) * 16).astype(np.uint16)
            write_frame(raw / f"f_{t:+.0f}_{i}.fits", data, temperature=t)
    done = run(raw, tmp_path / "out", "-q")
    assert done.returncode == 0, done.stderr
    rows = manifest(tmp_path / "out")
    assert [r["status"] for r in rows.values()] == ["used"] * 15, {k: r["reason"] for k, r in rows.items()}
    assert not [r for r in rows.values() if r["flag"]], "a flag on pure noise"  # 1x1: the estimate's error counts
    assert (tmp_path / "out" / "report.html").is_file()


def test_an_inverted_mask_is_named(tmp_path):
    raw = tmp_path / "raw"
    two_temperature_set(raw)
    inverted = np.ones((48, 64), dtype=np.uint8)
    inverted[10, 10:13] = 0  # 1 = good, the wrong way round: three pixels left
    fits.writeto(tmp_path / "mask.fits", inverted)
    done = run(raw, tmp_path / "out", "-q", "--no-evaluation", "--hot-pixel-mask", str(tmp_path / "mask.fits"))
    assert done.returncode == 0
    assert "marks 99.9 % of the pixels as hot (3069 of 3072): is it inverted?" in done.stderr


def test_a_group_of_identical_frames_and_groups_too_close_to_tell_apart(tmp_path):
    raw = tmp_path / "raw"
    two_temperature_set(raw, temperatures=(0.0, 10.0, 20.0))
    same = fits.getdata(raw / "good_+20.0_0.fits")
    for i in (1, 2):  # the 20 deg C group: three files of one frame, headers differing
        (raw / f"good_+20.0_{i}.fits").unlink()
        header_frame(raw / f"good_+20.0_{i}.fits", same, [("TEMPERATURE", 20.0), ("EXPOSURE", 0.0), ("N", i)])
    done = run(raw, tmp_path / "out", "-q", "--no-evaluation")
    assert done.returncode == 0, done.stderr
    rows = manifest(tmp_path / "out")
    assert "identical to those of" in rows["good_+20.0_1.fits"]["reason"]
    assert "fell below --min-frames-per-group" in rows["good_+20.0_0.fits"]["reason"]
    # Groups 1e-8 deg C apart: a slope nothing measures.
    close = tmp_path / "close"
    close.mkdir()
    for k, t in enumerate((5.0, 5.00000001)):
        for i in range(3):
            write_frame(close / f"f{k}_{i}.fits", bias_pixels(level=200, seed=50 + 3 * k + i), temperature=t)
    done = run(close, tmp_path / "out2", "-q", "--no-evaluation", "--temp-bin-width", "1e-9")
    assert done.returncode == 0
    assert "the slope is not measured" in done.stderr and "span only 1e-08 deg C" in done.stderr


def _sbig_like_set(raw: Path, *, set_point_key: str | None, shifted: bool) -> None:
    """A camera whose thermometer reads in steps of 0.415 deg C (readings flip between two steps at
    a set point), read noise 6.4 ADU; optionally two frames a week older, 4.5 ADU low at -5 deg C,
    and a warm-up frame 4 ADU high at the start of the -10 deg C series."""
    raw.mkdir()
    rng = np.random.default_rng(11)
    step, origin = 0.415, -10.2
    for set_point in (-10.0, -5.0, 0.0, 10.0):
        lattice = origin + step * np.round((set_point - origin) / step)
        for i in range(8):
            reading = round(lattice + step * (i % 2), 2)
            level = 1000.0 + 3.0 * set_point
            if shifted and set_point == -5.0 and i < 2:
                level -= 4.5
            if shifted and set_point == -10.0 and i == 0:
                level += 4.0
            data = np.rint(level + rng.normal(0, 6.4, (48, 64))).astype(np.uint16)
            cards: list[tuple[str, object]] = [("TEMPERATURE", reading), ("EXPOSURE", 0.0)]
            if set_point_key:
                cards.append((set_point_key, set_point))
            header_frame(raw / f"sbig_{set_point:+.0f}_{i}.fits", data, cards)


@pytest.mark.parametrize("set_point_key", [None, "SET-TEMP"])
def test_thermometer_steps_do_not_split_set_points(tmp_path, set_point_key):
    _sbig_like_set(tmp_path / "raw", set_point_key=set_point_key, shifted=False)
    done = run(tmp_path / "raw", tmp_path / "out", "--no-evaluation")
    assert done.returncode == 0, done.stderr
    masters = sorted(p.name for p in (tmp_path / "out" / "bias_grouped_by_temp").iterdir())
    assert len(masters) == 4, masters  # one per set point, not two
    assert all(fits.getheader(tmp_path / "out" / "bias_grouped_by_temp" / m)["NCOMBINE"] == 8 for m in masters)
    log = (tmp_path / "out" / "pipeline.log").read_text()
    if set_point_key:
        assert "grouping 32 frames by their set point (SET-TEMP)" in log
    else:
        assert "temperature readings come in steps of 0.41" in log


def test_frames_whose_level_is_shifted_are_rejected(tmp_path):
    _sbig_like_set(tmp_path / "raw", set_point_key="SET-TEMP", shifted=True)
    done = run(tmp_path / "raw", tmp_path / "out", "-q", "--no-evaluation")
    assert done.returncode == 0, done.stderr
    rows = manifest(tmp_path / "out")
    shifted = {"sbig_-5_0.fits", "sbig_-5_1.fits", "sbig_-10_0.fits"}
    for name, row in rows.items():
        if name in shifted:
            assert row["status"] == "rejected" and "its level is offset by" in row["reason"], row
        else:
            assert row["status"] == "used", row
            assert abs(float(row["offset_adu"])) < 3.2 and row["offset_sigma"]  # recorded for every used frame
    assert "offset by -4." in rows["sbig_-5_0.fits"]["reason"] and "offset by +4." in rows["sbig_-10_0.fits"]["reason"]
    # One combination more per group with shifted frames, both of the -5 deg C group's at once.
    log = (tmp_path / "out" / "pipeline.log").read_text()
    assert log.count("combining 8 frames of") == 4 and log.count("combining 6 frames of") == 1
    assert log.count("combining 7 frames of") == 1


def test_when_most_frames_disagree_the_model_is_named(tmp_path):
    """Frames of each set point from two epochs whose bias drifted by 6 ADU (within the level
    tolerance): their temperatures from the bias differ by +-1 deg C from the headers."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(3)
    for t in (0.0, 10.0, 20.0):
        for i in range(6):
            level = 3200.0 + 3.0 * t + (6.0 if i % 2 else -6.0)
            data = np.rint(level + rng.normal(0, 32.0, (48, 64))).astype(np.uint16)
            write_frame(raw / f"f_{t:+.0f}_{i}.fits", data, temperature=t)
    done = run(raw, tmp_path / "out", "-q")
    assert done.returncode == 0, done.stderr
    assert "18 of 18 frames disagree with the temperature the model gives their bias" in done.stderr
    assert "the model is more likely at fault than their headers" in done.stderr
    assert done.stderr.count("WARNING") <= 2, done.stderr  # one warning, not one per frame


# ------------------------------------------------------------------ options at their limits
@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--scale-factor", "1e40", "--input-bits", "12"], "--scale-factor must lie in (0, 65536]"),
        (["--memory-limit", "1e-9"], "--memory-limit must be at least 1 MiB"),
        (["--threads", "100000"], "--threads must be a whole number from 0"),
        (["--set-point-keys", "SET-TEMP,none"], "--set-point-keys needs at least one header keyword"),
    ],
)
def test_options_refused_before_any_work(tmp_path, options, fragment):
    two_temperature_set(tmp_path / "raw")
    done = run(tmp_path / "raw", tmp_path / "out", *options)
    one_line_error(done, 2, fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options", [["--nonlinear-pvalue", "1e-16"], ["--min-frames-per-group", "1"]])
def test_options_at_their_limits_run(tmp_path, options):
    raw = tmp_path / "raw"
    two_temperature_set(raw, temperatures=(0.0, 10.0, 20.0))  # three groups: the chi-square test has a dof
    header_frame(raw / "alone.fits", bias_pixels(level=230, seed=40), [("TEMPERATURE", 30.0), ("EXPOSURE", 0.0)])
    done = run(raw, tmp_path / "out", "-q", "--no-evaluation", *options)
    assert done.returncode == 0, done.stderr
    if "--min-frames-per-group" in options:
        with fits.open(tmp_path / "out" / "bias_grouped_by_temp" / "master_bias_30.0C.fits") as hdul:
            assert hdul[0].header["NCOMBINE"] == 1 and "NOISEMED" not in hdul[0].header  # no NaN card


def test_a_mask_that_is_not_fits(tmp_path):
    two_temperature_set(tmp_path / "raw")
    (tmp_path / "mask.fits").write_text("1 1 0 1\n")
    done = run(tmp_path / "raw", tmp_path / "out", "--hot-pixel-mask", str(tmp_path / "mask.fits"))
    line = one_line_error(done, 3, "--hot-pixel-mask", "not a FITS file (it does not begin with a SIMPLE card)")
    assert "ignore_missing_simple" not in line


# ------------------------------------------------------------------------------- generate
@pytest.fixture(scope="module")
def degree_two_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("degree2")
    spec = SimulationSpec(shape=(24, 32), temperatures=(-10.0, 0.0, 10.0, 20.0, 30.0), frames_per_temperature=4,
                          quadratic_fraction=0.2, seed=4)  # fmt: skip
    truth = simulate_dataset(base / "sim", spec)
    done = run(truth.raw_dir, base / "out", "-q", "--no-evaluation", "--degree", "2")
    assert done.returncode == 0, done.stderr
    return base / "out"


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("generate_bias.py", *args)


def test_a_degree_two_model_stays_degree_two_however_it_is_loaded(degree_two_run, tmp_path):
    model_dir = degree_two_run / "bias_model"
    whole = BiasModel.load(degree_two_run)
    assert whole.degree == 2
    assert BiasModel.load(model_dir / "bias_a_map.fits").degree == 2
    maps = ["--a-map", str(model_dir / "bias_a_map.fits"), "--b-map", str(model_dir / "bias_b_map.fits")]
    for source in (maps, ["--model", str(model_dir / "bias_model.fits")], ["--model", str(degree_two_run)]):
        out = tmp_path / f"frame_{len(source)}_{source[1][-6:]}.fits"
        done = generate(*source, "--temperature", "25", "--output", str(out))
        assert done.returncode == 0, done.stderr
        np.testing.assert_allclose(fits.getdata(out), whole.predict(25.0), rtol=1e-6)
        assert fits.getheader(out)["MODEL"] == "bias(T) = A + B*T + C*T^2"
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    for name in ("bias_a_map.fits", "bias_b_map.fits"):
        shutil.copy(model_dir / name, lonely / name)
    done = generate("--a-map", str(lonely / "bias_a_map.fits"), "--temperature", "25", "--output", str(tmp_path))
    one_line_error(done, 3, "degree-2 model (DEGREE = 2)", "bias_model.fits", "--model")
    inspected = subprocess.run(
        [sys.executable, "-m", "bias_pipeline", "inspect", str(model_dir / "bias_a_map.fits")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )  # fmt: skip
    assert inspected.returncode == 0 and "degree 2" in inspected.stdout, inspected.stdout + inspected.stderr


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("linear")
    two_temperature_set(base / "raw")
    done = run(base / "raw", base / "out", "-q", "--no-evaluation")
    assert done.returncode == 0, done.stderr
    return base / "out"


def test_generate_refuses_maps_that_do_not_make_a_frame(linear_run, tmp_path):
    model_dir = linear_run / "bias_model"
    a_map, b_map, whole = (str(model_dir / n) for n in ("bias_a_map.fits", "bias_b_map.fits", "bias_model.fits"))
    out = str(tmp_path / "frame.fits")
    swapped = generate("--a-map", b_map, "--b-map", a_map, "--temperature", "5", "--output", out)
    one_line_error(swapped, 3, "is a b-map (PRODTYPE = BIAS_B), not an a-map", "swapped")
    twice = generate("--a-map", whole, "--b-map", whole, "--temperature", "5", "--output", out)
    one_line_error(twice, 3, "is a one-file model (PRODTYPE = BIAS_MODEL)", "--model")
    absurd = generate("--model", whole, "--temperature", "1e39", "--output", out)
    one_line_error(absurd, 3, "beyond what a float32 frame holds")
    # Maps made elsewhere (no PRODTYPE) given the wrong way round.
    fits.writeto(tmp_path / "a.fits", fits.getdata(a_map))
    fits.writeto(tmp_path / "b.fits", fits.getdata(b_map))
    foreign = generate("--a-map", str(tmp_path / "b.fits"), "--b-map", str(tmp_path / "a.fits"),
                       "--temperature", "5", "--output", out)  # fmt: skip
    one_line_error(foreign, 3, "are they swapped?")
    assert not (tmp_path / "frame.fits").exists()
    negative_seed = generate("--model", whole, "--temperature", "5", "--noise", "--seed", "-1", "--output", out)
    one_line_error(negative_seed, 2, "--seed", "is negative")
    minus_infinity = generate("--model", whole, "--temperature", "-inf", "--output", out)
    one_line_error(minus_infinity, 2, "'-inf' is not a finite number")
    small_negative = generate("--model", whole, "--temperature", "-1e-3", "--output", str(tmp_path))
    assert small_negative.returncode == 0 and (tmp_path / "synthetic_bias_-0.001C.fits").is_file()


def test_generate_never_overwrites_what_it_must_not(linear_run, tmp_path):
    model_dir = linear_run / "bias_model"
    whole = str(model_dir / "bias_model.fits")
    before = (model_dir / "bias_a_map.fits").read_bytes()
    own_input = generate("--a-map", str(model_dir / "bias_a_map.fits"), "--b-map", str(model_dir / "bias_b_map.fits"),
                         "--temperature", "5", "--output", str(model_dir / "bias_a_map.fits"))  # fmt: skip
    one_line_error(own_input, 4, "is the command's own input (--a-map)")
    assert (model_dir / "bias_a_map.fits").read_bytes() == before
    other = generate("--model", whole, "--temperature", "5", "--output", str(model_dir / "bias_b_map.fits"))
    one_line_error(other, 4, "exists and is not a synthetic frame")
    (tmp_path / "afile").write_text("x")
    in_the_way = generate("--model", whole, "--temperature", "5", "--output", str(tmp_path / "afile") + "/")
    one_line_error(in_the_way, 4, "is a file, not a folder")
    names = set()
    for temperature in ("-0.0", "-0.04", "1e-320"):
        done = generate("--model", whole, "--temperature", temperature, "--output", str(tmp_path / "set") + "/")
        assert done.returncode == 0, done.stderr
        names |= {p.name for p in (tmp_path / "set").iterdir()}
    assert names == {"synthetic_bias_0.0C.fits", "synthetic_bias_-0.04C.fits"}
    fixed = str(tmp_path / "fixed.fits")
    assert generate("--model", whole, "--temperature", "5", "--output", fixed).returncode == 0
    reused = generate("--model", whole, "--temperature", "7", "--output", fixed)
    assert reused.returncode == 0 and "held the frame at 5 deg C; it is replaced by the frame at 7" in reused.stderr


# ------------------------------------------------------------------ grouping: what must not merge
def test_set_points_that_each_read_one_value_stay_apart(tmp_path):
    """Evenly spaced set points of a well-regulated sensor, each read as one value, are not a
    thermometer's steps: four groups, not fewer."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for t in (0.0, 5.0, 10.0, 25.0):
        for i in range(3):
            write_frame(raw / f"f_{t:+.0f}_{i}.fits", bias_pixels(level=200 + int(t), seed=60 + int(t) + i),
                        temperature=t)  # fmt: skip
    done = run(raw, tmp_path / "out", "-q", "--no-evaluation")
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "out" / "bias_grouped_by_temp").iterdir())
    assert names == ["master_bias_0.0C.fits", "master_bias_10.0C.fits", "master_bias_25.0C.fits",
                     "master_bias_5.0C.fits"]  # fmt: skip


def test_one_set_point_on_every_frame_does_not_decide_the_groups(tmp_path):
    """A sweep with the cooler off writes the same SET-TEMP on every frame: the readings group."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for t in (0.0, 10.0, 20.0):
        for i in range(3):
            header_frame(raw / f"f_{t:+.0f}_{i}.fits", bias_pixels(level=200 + int(t), seed=70 + int(t) + i),
                         [("TEMPERATURE", t), ("EXPOSURE", 0.0), ("SET-TEMP", -10.0)])  # fmt: skip
    done = run(raw, tmp_path / "out", "--no-evaluation")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out" / "bias_grouped_by_temp").iterdir())) == 3
    assert "do not separate the frames' temperatures" in (tmp_path / "out" / "pipeline.log").read_text()


def test_frames_of_a_drifting_group_are_not_taken_for_shifted_ones(tmp_path):
    """Readings that drift by +-0.8 deg C at one set point with a steep sensor (20 ADU/deg C):
    the frames differ by +-16 ADU, half the read noise, because of their temperatures."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(13)
    for set_point in (0.0, 10.0, 20.0):
        for i, drift in enumerate(np.linspace(-0.8, 0.8, 7)):
            reading = set_point + drift
            data = np.rint(3000 + 20.0 * reading + rng.normal(0, 32.0, (48, 64))).astype(np.uint16)
            header_frame(raw / f"f_{set_point:+.0f}_{i}.fits", data,
                         [("TEMPERATURE", round(reading, 3)), ("EXPOSURE", 0.0), ("SET-TEMP", set_point)])  # fmt: skip
    done = run(raw, tmp_path / "out", "-q", "--no-evaluation")
    assert done.returncode == 0, done.stderr
    rows = manifest(tmp_path / "out")
    assert all(r["status"] == "used" for r in rows.values()), {k: r["reason"] for k, r in rows.items() if r["reason"]}
    assert all(abs(float(r["offset_adu"])) < 5 for r in rows.values())  # the slope is taken out

"""``python -m bias_pipeline verify``: a model checked on new bias frames.

One small pipeline run (module-scoped) gives the model; new frames of the same sensor (the same
``seed``) are simulated at temperatures between its set points, of its own epoch (they must pass),
of an aged sensor (a global offset of a fraction of the read noise: they must fail), and beyond
its range (warned). The rules' false-alarm rates are checked on pure-noise frames.
"""

from __future__ import annotations

import csv
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bias_pipeline import PipelineConfig, run_bias_pipeline, verification
from bias_pipeline.dates import format_date
from bias_pipeline.model import BiasModel
from bias_pipeline.registry import A_MAP_NAME, MODEL_DIR, VERIFICATION_CSV, VERIFICATION_REPORT
from bias_pipeline.simulate import SimulationSpec, SimulationTruth, simulate_dataset
from bias_pipeline.verification import (
    MAD_RELATIVE_ERROR,
    OUTLIER_SIGMA,
    VerificationRules,
    verification_csv,
    verify_folder,
    verify_residual,
)

from conftest import REPO

SEED = 11
SHAPE = (48, 64)
MODEL_SPEC = SimulationSpec(shape=SHAPE, temperatures=(-10.0, 0.0, 10.0, 20.0), frames_per_temperature=4, seed=SEED)
READ_NOISE_ADU = MODEL_SPEC.read_noise_dn * 16
AGED_OFFSET = 0.4 * READ_NOISE_ADU  # an aged sensor: a global offset of a fraction of the read noise
PROG = "python -m bias_pipeline verify"


def new_frames(folder: Path, *, faults: bool = False, **spec: object) -> SimulationTruth:
    """New frames of the model's sensor (same seed) at temperatures between its set points."""
    values: dict[str, object] = {"shape": SHAPE, "temperatures": (5.0, 15.0), "frames_per_temperature": 2}
    values.update(spec)
    return simulate_dataset(folder, SimulationSpec(seed=SEED, **values), faults=faults)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of one pipeline run on the model's epoch."""
    truth = simulate_dataset(tmp_path_factory.mktemp("model_sim"), MODEL_SPEC)
    out = tmp_path_factory.mktemp("model_run")
    assert truth.truth_dir is not None
    run_bias_pipeline(
        truth.raw_dir,
        out,
        truth.truth_dir / "hot_pixel_mask.fits",
        config=PipelineConfig(show_progress=False, evaluation=False),
    )
    return out


@pytest.fixture(scope="module")
def model(fitted: Path) -> BiasModel:
    return BiasModel.load(fitted)


@pytest.fixture(scope="module")
def own_epoch(tmp_path_factory: pytest.TempPathFactory) -> SimulationTruth:
    """Six frames of the model's own sensor, new noise (epoch 1, not aged), between the set points,
    with a long dark, a readout dropout, a truncated file and a text note beside them."""
    return new_frames(tmp_path_factory.mktemp("own"), temperatures=(-5.0, 5.0, 15.0), epoch=1, faults=True)


@pytest.fixture(scope="module")
def aged(tmp_path_factory: pytest.TempPathFactory) -> SimulationTruth:
    return new_frames(tmp_path_factory.mktemp("aged"), epoch=2, offset_adu=AGED_OFFSET)


def rules_of(model: BiasModel) -> VerificationRules:
    return VerificationRules(model.offset_tolerance())


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


class Records(logging.Handler):
    """The records of one logger, whatever the console's configuration."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def verify_log():
    handler = Records()
    logger = logging.getLogger("bias_pipeline.verification")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


# ----------------------------------------------------------------------- simulated epochs
def test_frames_of_the_models_own_epoch_between_set_points_pass(model, own_epoch) -> None:
    run = verify_folder(model, own_epoch.raw_dir, rules_of(model), model_path="model")
    verified = [f for f in run.files if f.result is not None]
    assert len(verified) == len(own_epoch.frame_paths) == 6
    assert run.holds and run.count("failed") == 0, [f.reason for f in run.files if f.status == "failed"]
    for entry in verified:
        result = entry.result
        # The truth is no offset: the mean residual is noise, within 5 of its standard errors.
        assert abs(result.mean_residual) < 5 * result.mean_error, entry
        # The residual noise is the model's (read noise and fit error) to what the ratio's scatter allows.
        assert abs(result.noise_ratio - 1) < result.noise_bound
        assert result.outlier_fraction <= run.rules.max_outlier_fraction
        assert not result.extrapolated
    # Every file is listed; those that are no bias frame with step 1's reason, never dropped.
    found = sorted(p for p in own_epoch.raw_dir.rglob("*") if p.is_file())
    assert sorted(f.record.path for f in run.files) == found
    reasons = {f.record.path.name: (f.status, f.reason) for f in run.files if f.result is None}
    assert reasons["dark_10s.fits"][0] == "rejected" and "--max-exposure" in reasons["dark_10s.fits"][1]
    assert reasons["bias_dropout.fits"][0] == "rejected" and "zero" in reasons["bias_dropout.fits"][1]
    assert reasons["bias_cut_short.fits"][0] == "rejected"
    assert reasons["observing_notes.txt"][0] == "ignored"


def test_frames_of_an_aged_sensor_fail_on_their_offset(model, aged) -> None:
    run = verify_folder(model, aged.raw_dir, rules_of(model))
    assert run.verified == len(aged.frame_paths) and run.count("failed") == run.verified and not run.holds
    for entry in run.files:
        result = entry.result
        # The offset found is the simulator's, to the noise; it is the only reason (the noise and
        # the outliers are unchanged by a global offset).
        assert abs(result.mean_residual - AGED_OFFSET) < 5 * result.mean_error
        assert len(result.failures) == 1 and result.failures[0].startswith("mean residual +")
        assert "beyond the tolerance" in entry.reason


def test_a_frame_outside_the_models_range_is_warned_in_the_log_and_the_table(model, tmp_path, verify_log) -> None:
    truth = new_frames(tmp_path, temperatures=(32.0,), frames_per_temperature=1, epoch=3)
    run = verify_folder(model, truth.raw_dir, rules_of(model))
    (entry,) = run.files
    assert entry.result.extrapolated and "outside the model's range" in entry.result.notes[0]
    warnings = [r.getMessage() for r in verify_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and truth.frame_paths[0].name in warnings[0] and "outside" in warnings[0]
    (row,) = csv.DictReader(verification_csv(run).splitlines())
    assert row["in_model_range"] == "no" and "extrapolation" in row["notes"]


# ---------------------------------------------------------------------- the rules' errors
def pure_noise_frames(count: int, rng: np.random.Generator, noise_factor: float = 1.0):
    """Frames drawn as the model expects (read noise, fit error; ``noise_factor`` x the noise), quantised as the
    camera stores them, with the read-noise map estimated from 12 frames a pixel (as a model of 16
    frames in 4 groups has)."""
    true_noise, fit_error, dof = READ_NOISE_ADU, 7.0, 12
    measured = math.hypot(true_noise, 16 / math.sqrt(12))  # what a model measures: the quantised noise
    read_noise = (measured * np.sqrt(rng.chisquare(dof, SHAPE) / dof)).astype(np.float32)
    prediction = rng.uniform(3000.0, 3400.0, SHAPE).astype(np.float32)
    sigma = np.full(SHAPE, fit_error, np.float32)
    usable = np.ones(SHAPE, bool)
    for _ in range(count):
        truth = prediction + rng.normal(0.0, fit_error, SHAPE)  # the model's error, drawn anew
        frame = np.rint((truth + rng.normal(0.0, noise_factor * true_noise, SHAPE)) / 16) * 16
        yield frame.astype(np.float32), prediction, sigma, read_noise, usable


def test_no_false_alarm_on_pure_noise_frames() -> None:
    rng = np.random.default_rng(5)
    rules = VerificationRules(tolerance=0.1 * READ_NOISE_ADU)
    results = [verify_residual(*arrays, rules) for arrays in pure_noise_frames(300, rng)]
    assert not [r.failures for r in results if r.failures]
    n = SHAPE[0] * SHAPE[1]
    ratios = np.array([r.noise_ratio for r in results])
    # The noise bound is built on the MAD's standard error: check it on these frames.
    assert np.std(ratios) == pytest.approx(MAD_RELATIVE_ERROR / math.sqrt(n), rel=0.2)
    assert abs(np.mean(ratios) - 1) < 0.01  # the noise the model expects is the noise there is
    # Beyond 6 sigma: with 12-frame noise estimates (t tails), about 6e-5 of the pixels; far below the bound.
    outliers = sum(r.outliers for r in results) / (len(results) * n)
    assert outliers < 0.1 * rules.max_outlier_fraction
    significances = np.array([r.significance for r in results])
    assert np.std(significances) == pytest.approx(1.0, abs=0.15)  # the standard error is honest


def test_each_rule_fails_the_frames_it_guards_against() -> None:
    rng = np.random.default_rng(6)
    rules = VerificationRules(tolerance=0.1 * READ_NOISE_ADU)
    (noisy,) = pure_noise_frames(1, rng, noise_factor=1.3)
    result = verify_residual(*noisy, rules)
    assert len(result.failures) == 1 and result.failures[0].startswith("residual noise"), result.failures
    frame, prediction, sigma, read_noise, usable = next(pure_noise_frames(1, rng))
    hot = rng.choice(frame.size, 10, replace=False)  # 0.33 % of the pixels turned hot
    frame.flat[hot] += 20 * READ_NOISE_ADU
    result = verify_residual(frame, prediction, sigma, read_noise, usable, rules)
    assert result.outliers >= 10 and len(result.failures) == 1 and "beyond 6 sigma" in result.failures[0]
    # Flagged pixels are left out: the same hot pixels flagged, the frame passes.
    flagged = usable.copy()
    flagged.flat[hot] = False
    assert verify_residual(frame, prediction, sigma, read_noise, flagged, rules).passed
    assert OUTLIER_SIGMA == 6


def test_an_offset_a_small_frame_cannot_measure_is_a_note_not_a_failure() -> None:
    shape = (4, 4)
    prediction = np.full(shape, 3200.0, np.float32)
    spread = READ_NOISE_ADU * np.resize([1.0, -1.0], shape)  # 16 pixels, one read noise apart: error 8 ADU
    frame = prediction + 6.0 + spread
    noise = np.full(shape, READ_NOISE_ADU, np.float32)
    result = verify_residual(frame, prediction, np.zeros(shape), noise, np.ones(shape, bool), VerificationRules(3.2))
    assert abs(result.mean_residual) > 3.2 and abs(result.significance) < 5
    assert result.passed and "too few pixels" in result.notes[0]


# ---------------------------------------------------------------------------- the command
def run_verify(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bias_pipeline", "verify", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def test_command_passes_the_own_epoch_and_writes_the_table_and_page(fitted, own_epoch, tmp_path) -> None:
    out = tmp_path / "verify"
    done = run_verify(fitted, "--basepath", own_epoch.raw_dir, "--output-dir", out)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"verify: 6 frames verified against {fitted}, 0 failed: the model holds"), first
    assert first.endswith("; 4 files not verified (rejected or ignored)"), first
    assert str(out / VERIFICATION_CSV) in done.stdout
    rows = csv_rows(out / VERIFICATION_CSV)
    assert list(rows[0]) == list(verification.CSV_COLUMNS)
    by_name = {Path(row["path"]).name: row for row in rows}
    assert len(rows) == len(list(own_epoch.raw_dir.iterdir()))
    for path, date, temperature in zip(
        own_epoch.frame_paths, own_epoch.frame_dates, own_epoch.frame_temperatures, strict=True
    ):
        row = by_name[path.name]
        assert row["status"] == "passed" and row["reason"] == ""
        assert row["date_obs"] == format_date(date)
        assert float(row["temperature"]) == pytest.approx(temperature, abs=1e-3)
        assert row["in_model_range"] == "yes"
        assert float(row["tolerance_adu"]) == pytest.approx(0.1 * BiasModel.load(fitted).typical_read_noise, rel=1e-3)
    assert by_name["observing_notes.txt"]["status"] == "ignored" and by_name["observing_notes.txt"]["reason"]
    page = (out / VERIFICATION_REPORT).read_text(encoding="utf-8")
    assert "the model holds for all 6 frames" in page and "bias_+5.0C_000.fits" in page
    assert "<script" not in page and "http" not in page  # self-contained


def test_command_fails_the_aged_sensor_and_is_silent_with_q(fitted, aged, tmp_path) -> None:
    done = run_verify(fitted / MODEL_DIR / "bias_model.fits", "--basepath", aged.raw_dir, "--output-dir", tmp_path)
    assert done.returncode == 1, done.stderr
    assert "4 frames verified against" in done.stdout and "4 failed: the model does NOT hold" in done.stdout
    assert len(done.stdout.splitlines()) == 2 + 4 and "mean residual +" in done.stdout
    rows = csv_rows(tmp_path / VERIFICATION_CSV)
    assert {row["status"] for row in rows} == {"failed"}
    assert all("beyond the tolerance" in row["reason"] for row in rows)
    quiet = run_verify(fitted, "--basepath", aged.raw_dir, "--output-dir", tmp_path / "q", "-q")
    assert quiet.returncode == 1 and quiet.stdout == "" and "Traceback" not in quiet.stderr
    assert (tmp_path / "q" / VERIFICATION_CSV).is_file()


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch):
    """``verification.main`` in this process, leaving the test session's logging alone."""
    monkeypatch.setattr(verification, "setup_logging", lambda *args, **kwargs: None)
    return lambda *args: verification.main([str(a) for a in args], prog=PROG)


def one_error_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), captured.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_bad_inputs_are_one_line_and_their_exit_code(fitted, own_epoch, tmp_path, in_process, capsys) -> None:
    raw = own_epoch.raw_dir
    assert in_process(tmp_path / "no_model", "--basepath", raw, "--output-dir", tmp_path / "o") == 3
    one_error_line(capsys, "MODEL", "no_model", "does not exist")
    a_map_only = fitted / MODEL_DIR / A_MAP_NAME  # a and b without the noise map verify needs
    assert in_process(a_map_only, "--basepath", raw, "--output-dir", tmp_path / "o") == 3
    one_error_line(capsys, "read-noise map")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert in_process(fitted, "--basepath", empty, "--output-dir", tmp_path / "o") == 3
    one_error_line(capsys, "--basepath", "holds no files")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no frames this week\n")
    assert in_process(fitted, "--basepath", notes, "--output-dir", tmp_path / "o") == 3
    one_error_line(capsys, "no bias frame to verify", "1 ignored", VERIFICATION_CSV)
    assert csv_rows(tmp_path / "o" / VERIFICATION_CSV)[0]["status"] == "ignored"
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way\n")
    assert in_process(fitted, "--basepath", raw, "--output-dir", blocker / "out") == 4
    one_error_line(capsys, "--output-dir", "cannot be made")
    assert in_process(fitted, "--basepath", raw, "--output-dir", tmp_path / "o", "--temperature-limits", "5", "-5") == 2
    one_error_line(capsys, "--temperature-limits")
    with pytest.raises(SystemExit) as stop:
        in_process(fitted, "--basepath", raw, "--output-dir", tmp_path / "o", "--tolerance", "-1")
    assert stop.value.code == 2
    one_error_line(capsys, "--tolerance")


def test_help_names_the_frame_selection_options_and_ends_with_an_example() -> None:
    text = verification.build_parser(PROG).format_help()
    for flag in ("--temperature-keys", "--max-exposure", "--input-bits", "--tolerance", "-q", "--version"):
        assert flag in text
    assert text.index("examples:") > text.index("--version")  # the example ends the help
    assert "verify results/ --basepath" in text

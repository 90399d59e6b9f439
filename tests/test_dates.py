"""Dates into the run: observation dates read (ISO or MJD), carried into the manifest and every
product (DATE-BEG, DATE-END), the declared validity (VALID-FROM, VALID-TO), and the warning
when temperature is confounded with date across epochs."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import BiasModel, PipelineConfig, cli, inspection, run_bias_pipeline
from bias_pipeline.config_file import format_config, load_config_file
from bias_pipeline.dates import format_date, parse_date, to_mjd
from bias_pipeline.epochs import CONFOUNDING_CORRELATION, DatedFrame, check_epochs, cluster_dates, pearson
from bias_pipeline.errors import ConfigError
from bias_pipeline.frames import FrameRecord
from bias_pipeline.simulate import SimulationSpec, SimulationTruth, simulate_dataset
from bias_pipeline.steps.step1_load_data import NAMED_DATE_PROBLEMS, scan_frames, warn_unreadable_dates

from conftest import SHAPE, bias_pixels

UTC = _dt.timezone.utc
COLD = (-10.0, 0.0, 10.0)
WARM = (20.0, 30.0)
EVERY = COLD + WARM
VALID_FROM, VALID_TO = "2026-03-01", "2026-08-31T23:59:59"


def epoch(out: Path, temperatures: tuple[float, ...], number: int, start: str, frames: int = 3) -> SimulationTruth:
    """One epoch of the same simulated sensor (seed 7); later epochs age it by a global offset."""
    spec = SimulationSpec(
        shape=SHAPE,
        temperatures=temperatures,
        frames_per_temperature=frames,
        seed=7,
        epoch=number,
        offset_adu=4.0 * number,
        start_date=start,
    )
    return simulate_dataset(out, spec)


def merge(raw: Path, truths: dict[str, SimulationTruth]) -> dict[str, _dt.datetime]:
    """Copy each epoch's frames into ``raw`` under distinct names; ``{name: true date}``."""
    raw.mkdir(parents=True)
    dates = {}
    for tag, truth in truths.items():
        for path, date in zip(truth.frame_paths, truth.frame_dates, strict=True):
            name = f"{tag}_{path.name}"
            shutil.copy(path, raw / name)
            dates[name] = date
    return dates


def manifest_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "frames_manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------ parse_date
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-01", _dt.datetime(2026, 3, 1, tzinfo=UTC)),
        ("2026-03-01T12:30", _dt.datetime(2026, 3, 1, 12, 30, tzinfo=UTC)),
        ("2026-03-01T12:30:05", _dt.datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC)),
        ("2026-03-01T12:30:05.25", _dt.datetime(2026, 3, 1, 12, 30, 5, 250000, tzinfo=UTC)),
        ("2026-03-01T12:30:05.1234567Z", _dt.datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)),
        (" 2026-03-01 12:30:05+00:00 ", _dt.datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC)),
        # MJD 61100 is 2026-03-01 00:00 UTC (MJD 0 = 1858-11-17), as a number or as text.
        (61100.5, _dt.datetime(2026, 3, 1, 12, tzinfo=UTC)),
        (61100, _dt.datetime(2026, 3, 1, tzinfo=UTC)),
        ("61100.25", _dt.datetime(2026, 3, 1, 6, tzinfo=UTC)),
        (np.float64(61101.0), _dt.datetime(2026, 3, 2, tzinfo=UTC)),
        (
            _dt.datetime(2026, 3, 1, 14, 0, tzinfo=_dt.timezone(_dt.timedelta(hours=2))),
            _dt.datetime(2026, 3, 1, 12, tzinfo=UTC),
        ),
    ],
)
def test_parse_date_reads_iso_texts_and_mjd_numbers_as_utc(value, expected):
    parsed = parse_date(value)
    assert parsed == expected and parsed.utcoffset() == _dt.timedelta(0)
    assert parse_date(format_date(parsed)) == expected.replace(microsecond=expected.microsecond // 1000 * 1000)
    assert parse_date(to_mjd(parsed)) == pytest.approx(parsed, abs=_dt.timedelta(microseconds=50))


@pytest.mark.parametrize(
    "value",
    ["2026-02-30", "2026-03-01T25:00", "yesterday", "", "12", 12, 1.7e9, True, None, float("nan"), "03/01/2026"],
)
def test_parse_date_refuses_what_is_no_date(value):
    with pytest.raises(ValueError, match="date|MJD"):
        parse_date(value)


# ------------------------------------------------------------------ the epoch check (pure)
@pytest.fixture(scope="module")
def epochs_on_disk(tmp_path_factory) -> dict[str, SimulationTruth]:
    """Simulated epochs of one sensor: March and June, every temperature, and cold and warm apart."""
    base = tmp_path_factory.mktemp("epochs")
    return {
        "march_all": epoch(base / "ma", EVERY, 0, "2026-03-01"),
        "june_all": epoch(base / "ja", EVERY, 1, "2026-06-01"),
        "march_cold": epoch(base / "mc", COLD, 0, "2026-03-01"),
        "june_warm": epoch(base / "jw", WARM, 1, "2026-06-01"),
    }


def dated(truth: SimulationTruth, temperatures: tuple[float, ...]) -> list[DatedFrame]:
    """The frames of a simulated epoch, each at its set point's temperature, in file order."""
    per = len(truth.frame_paths) // len(temperatures)
    return [
        DatedFrame(f"{temperatures[i // per]:.1f}", temperatures[i // per], date)
        for i, date in enumerate(truth.frame_dates)
    ]


def test_one_epoch_is_one_cluster_and_not_confounded_though_its_temperature_follows_its_dates(epochs_on_disk):
    truth = epochs_on_disk["march_all"]
    frames = dated(truth, EVERY)
    # Within the epoch the set points are visited in order: temperature follows the date ...
    within = pearson([to_mjd(f.date) for f in frames], [f.temperature for f in frames])
    assert within is not None and within > 0.9
    check = check_epochs(frames, 7.0)
    # ... but the epoch is one cluster, and one cluster is never confounded.
    assert len(check.clusters) == 1 and check.correlation is None
    assert not check.confounded and check.warning is None
    assert check.date_range == (min(truth.frame_dates), max(truth.frame_dates))
    assert check.clusters[0].n_frames == len(frames)


def test_two_epochs_each_at_every_temperature_are_not_confounded(epochs_on_disk):
    frames = dated(epochs_on_disk["march_all"], EVERY) + dated(epochs_on_disk["june_all"], EVERY)
    check = check_epochs(frames, 7.0)
    assert len(check.clusters) == 2
    assert check.correlation is None or abs(check.correlation) < 0.1  # each group holds both equally
    assert not check.confounded and check.warning is None


def test_cold_in_one_epoch_warm_in_another_is_confounded_and_named(epochs_on_disk):
    frames = dated(epochs_on_disk["march_cold"], COLD) + dated(epochs_on_disk["june_warm"], WARM)
    check = check_epochs(frames, 7.0)
    assert len(check.clusters) == 2 and check.confounded
    assert abs(check.correlation) >= CONFOUNDING_CORRELATION
    assert [g[0] for g in check.clusters[0].groups] == ["-10.0", "0.0", "10.0"]
    assert [g[0] for g in check.clusters[1].groups] == ["20.0", "30.0"]
    warning = check.warning
    assert warning.count("epoch 1:") == 1 and warning.count("epoch 2:") == 1
    for text in ("2026-03-01", "2026-06-01", "-10.0 (3)", "30.0 (3)", "9 frames", "6 frames", "each epoch on its own"):
        assert text in warning, text
    # A gap longer than the epochs' distance makes them one epoch: nothing to warn about.
    assert not check_epochs(frames, 120.0).confounded
    # Undated frames are counted, not clustered.
    with_undated = check_epochs([*frames, DatedFrame("0.0", 0.0, None)], 7.0)
    assert with_undated.undated == 1 and with_undated.confounded


def test_date_clusters_cut_at_gaps_longer_than_the_gap():
    days = [parse_date("2026-03-01") + _dt.timedelta(days=d) for d in (0, 5, 10, 30)]
    assert [len(c) for c in cluster_dates(days, 7.0)] == [3, 1]
    assert [len(c) for c in cluster_dates(days, 4.9)] == [1, 1, 1, 1]
    assert [len(c) for c in cluster_dates(reversed(days), 5.0)] == [3, 1]
    assert cluster_dates([], 7.0) == []


# ------------------------------------------------------------------ a run across two epochs (command line)
@pytest.fixture(scope="module")
def two_epoch_run(epochs_on_disk, tmp_path_factory):
    """The run command on March's cold frames and June's warm ones, in one raw folder."""
    base = tmp_path_factory.mktemp("two_epochs")
    dates = merge(base / "raw", {"e0": epochs_on_disk["march_cold"], "e1": epochs_on_disk["june_warm"]})
    out = base / "out"
    argv = [sys.executable, "-m", "bias_pipeline", "run", "--basepath", str(base / "raw"), "--output-dir", str(out),
            "--no-evaluation", "--generate-set", "--valid-from", VALID_FROM, "--valid-to", VALID_TO]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    return out, dates, done


def test_a_run_across_two_distant_epochs_warns_once_everywhere(two_epoch_run):
    out, _, done = two_epoch_run
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("temperature is confounded with date") == 1, done.stderr  # the console
    log = (out / "pipeline.log").read_text(encoding="utf-8")
    assert log.count("temperature is confounded with date") == 1
    document = json.loads((out / "run_config.json").read_text(encoding="utf-8"))
    assert len(document["warnings"]) == 1 and "confounded with date" in document["warnings"][0]
    epochs = document["run"]["epochs"]
    assert epochs["confounded"] is True and len(epochs["clusters"]) == 2
    assert [c["frames"] for c in epochs["clusters"]] == [9, 6]
    page = (out / "report.html").read_text(encoding="utf-8")
    block = page[page.index('id="warnings"') : page.index("</div>", page.index('id="warnings"'))]
    assert "confounded with date" in block and "2026-06-01" in block and "each epoch on its own" in block
    assert 'class="epochs"' in page  # the date clusters listed in the frames section


def test_manifest_has_each_frames_date(two_epoch_run):
    out, dates, _ = two_epoch_run
    rows = manifest_rows(out)
    assert {"date_obs", "date_key", "date_problem"} <= set(rows[0])
    assert sorted(row["path"] for row in rows) == sorted(dates)
    for row in rows:
        assert row["status"] == "used"
        assert parse_date(row["date_obs"]) == dates[row["path"]] and row["date_key"] == "DATE-OBS"
        assert row["date_problem"] == ""


def test_every_product_carries_the_dates_of_the_frames_behind_it(two_epoch_run):
    out, dates, _ = two_epoch_run
    by_group: dict[str, list[_dt.datetime]] = {}
    for row in manifest_rows(out):
        by_group.setdefault(row["group"], []).append(dates[row["path"]])
    masters = sorted((out / "bias_grouped_by_temp").glob("master_bias_*.fits"))
    assert len(masters) == len(by_group) == 5
    for path in masters:
        header = fits.getheader(path)
        group = by_group[path.name.removeprefix("master_bias_").removesuffix("C.fits")]
        assert parse_date(header["DATE-BEG"]) == min(group) and parse_date(header["DATE-END"]) == max(group)
        assert header["DATE-END"] < "2026-03-02" or header["DATE-BEG"] >= "2026-06-01"  # one epoch each
    first, last = min(dates.values()), max(dates.values())
    model = BiasModel.load(out)
    assert model.date_range == (first, last)
    assert model.valid_from == parse_date(VALID_FROM) and model.valid_to == parse_date(VALID_TO)
    for path in [*(out / "bias_model").glob("*.fits"), *(out / "bias_masks_by_temp").glob("*.fits")]:
        header = fits.getheader(path)
        assert (parse_date(header["DATE-BEG"]), parse_date(header["DATE-END"])) == (first, last), path.name
    assert fits.getheader(out / "bias_model" / "bias_a_map.fits")["VALID-TO"] == format_date(parse_date(VALID_TO))
    document = json.loads((out / "run_config.json").read_text(encoding="utf-8"))
    assert document["run"]["date_range"] == {"date_beg": format_date(first), "date_end": format_date(last)}
    assert document["options"]["valid_from"] == format_date(parse_date(VALID_FROM))


def test_the_run_config_with_dates_reads_back_and_inspects(two_epoch_run, capsys):
    out, _, _ = two_epoch_run
    args, _ = cli.parse_run_args(cli.build_run_parser(), ["--config", str(out / "run_config.json")])
    config = cli.config_from_args(args)
    assert config.valid_from == parse_date(VALID_FROM) and config.valid_to == parse_date(VALID_TO)
    assert inspection.main([str(out)]) == 0
    assert "valid_from" in capsys.readouterr().out  # an option changed from its default


# ------------------------------------------------------------------ a run within one epoch (library)
@pytest.fixture(scope="module")
def one_epoch_run(epochs_on_disk, tmp_path_factory):
    """One epoch, one frame without a date and one whose date is unreadable."""
    base = tmp_path_factory.mktemp("one_epoch")
    truth = epochs_on_disk["march_all"]
    dates = merge(base / "raw", {"e0": truth})
    undated, unreadable = sorted(dates)[0], sorted(dates)[1]
    for name, value in ((undated, None), (unreadable, "last Tuesday")):
        with fits.open(base / "raw" / name, mode="update") as hdul:
            if value is None:
                del hdul[0].header["DATE-OBS"]
            else:
                hdul[0].header["DATE-OBS"] = value
        dates.pop(name)
    handler = _Collect()
    logging.getLogger("bias_pipeline").addHandler(handler)
    try:
        config = PipelineConfig(show_progress=False, evaluation=False)
        result = run_bias_pipeline(base / "raw", base / "out", config=config)
    finally:
        logging.getLogger("bias_pipeline").removeHandler(handler)
    return result, dates, undated, unreadable, handler.records


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_run_within_one_epoch_does_not_warn(one_epoch_run):
    result, dates, _, _, records = one_epoch_run
    assert result.warnings == [] and not result.epochs.confounded and len(result.epochs.clusters) == 1
    assert not any("confounded" in r.getMessage() for r in records)
    document = json.loads((result.output_dir / "run_config.json").read_text(encoding="utf-8"))
    assert document["warnings"] == [] and document["run"]["epochs"]["confounded"] is False
    assert 'id="warnings"' not in (result.output_dir / "report.html").read_text(encoding="utf-8")
    assert result.model.date_range == (min(dates.values()), max(dates.values()))
    assert BiasModel.load(result.output_dir).valid_from is None  # not declared: no card


def test_an_unreadable_date_is_warned_naming_the_file_and_the_frame_is_used(one_epoch_run):
    result, dates, undated, unreadable, records = one_epoch_run
    rows = {row["path"]: row for row in manifest_rows(result.output_dir)}
    assert all(row["status"] == "used" for row in rows.values())
    assert rows[undated]["date_obs"] == "" and rows[undated]["date_problem"] == ""
    assert rows[unreadable]["date_obs"] == "" and "last Tuesday" in rows[unreadable]["date_problem"]
    warned = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and unreadable in warned[0] and "used, undated" in warned[0], warned
    assert result.epochs.undated == 2
    page = (result.output_dir / "report.html").read_text(encoding="utf-8")
    first, last = format_date(min(dates.values())), format_date(max(dates.values()))
    assert f"{first} to {last}" in page and "2 without a date" in page


def test_many_unreadable_dates_are_not_a_flood(tmp_path, caplog):
    records = [
        FrameRecord(path=tmp_path / f"f{i:02d}.fits", date_problem="date keyword DATE-OBS 'x' ...") for i in range(9)
    ]
    records.append(FrameRecord(path=tmp_path / "rejected.fits", status="rejected", date_problem="bad"))
    with caplog.at_level(logging.WARNING, logger="bias_pipeline"):
        troubled = warn_unreadable_dates(records)
    assert len(troubled) == 9
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == NAMED_DATE_PROBLEMS + 1
    assert all(f"f{i:02d}.fits" in messages[i] for i in range(NAMED_DATE_PROBLEMS))
    assert "4 more frames" in messages[-1] and "9 in all" in messages[-1]
    assert not any("rejected.fits" in m for m in messages)


def test_date_keys_choose_the_keyword_or_switch_dates_off(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i, temperature in enumerate((0.0, 0.0, 10.0, 10.0)):
        header = fits.Header({"EXPOSURE": 0.0, "MJD-OBS": 61100.5 + i, "DATE-OBS": "2026-01-01T00:00:00"})
        header["HIERARCH TEMPERATURE"] = temperature
        fits.PrimaryHDU(bias_pixels(seed=i), header=header).writeto(raw / f"f{i}.fits")
    by_mjd, _ = scan_frames(raw, PipelineConfig(date_keys="MJD-OBS", show_progress=False))
    assert [r.date_obs for r in by_mjd] == [parse_date(61100.5 + i) for i in range(4)]
    assert {r.date_key for r in by_mjd} == {"MJD-OBS"}
    default, _ = scan_frames(raw, PipelineConfig(show_progress=False))
    assert {r.date_obs for r in default} == {parse_date("2026-01-01")}  # DATE-OBS comes first
    off, _ = scan_frames(raw, PipelineConfig(date_keys="none", show_progress=False))
    assert {r.date_obs for r in off} == {None} and {r.date_key for r in off} == {""}


# ------------------------------------------------------------------ --valid-from / --valid-to
def test_valid_dates_round_trip_through_toml_and_run_config(tmp_path):
    config = PipelineConfig(valid_from="2026-03-01T06:00", valid_to=61300.0, date_gap=14.0, show_progress=False)
    assert config.valid_to == parse_date(61300.0)
    saved = tmp_path / "saved.toml"
    saved.write_text(format_config(config), encoding="utf-8")
    assert "valid-from = 2026-03-01T06:00:00Z" in saved.read_text(encoding="utf-8")  # a TOML date-time
    values, _ = load_config_file(saved)
    assert PipelineConfig(**values, show_progress=False) == config
    record = tmp_path / "run_config.json"
    record.write_text(json.dumps({"options": config.options_record()}), encoding="utf-8")
    assert PipelineConfig(**load_config_file(record)[0], show_progress=False) == config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("valid-from = 2026-03-01", "2026-03-01T00:00:00"),  # a TOML date: midnight UTC
        ("valid-from = 2026-03-01T06:00:00+02:00", "2026-03-01T04:00:00"),  # an offset: to UTC
        ("valid-from = 2026-03-01T06:00:00", "2026-03-01T06:00:00"),  # a local date-time: UTC
        ('valid-from = "61100.5"', "2026-03-01T12:00:00"),
        ("valid-from = 61100.5", "2026-03-01T12:00:00"),
    ],
)
def test_a_toml_file_gives_dates_in_every_form(tmp_path, text, expected):
    path = tmp_path / "c.toml"
    path.write_text(text + "\n", encoding="utf-8")
    values, _ = load_config_file(path)
    assert format_date(values["valid_from"]) == expected


@pytest.fixture
def run(monkeypatch, capsys):
    """``run(*argv)``: the run command in this process, ``(exit code, stdout, stderr)``."""
    monkeypatch.setattr(cli, "setup_logging", lambda *args, **kwargs: None)

    def call(*argv: object) -> tuple[int, str, str]:
        try:
            code = cli.run_main([str(a) for a in argv], prog="run_pipeline.py")
        except SystemExit as exc:  # argparse's own errors exit from the parser
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return call


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--valid-from", "soon"], ["--valid-from", "'soon' is not an ISO date"]),
        (["--valid-to", "2026-13-01"], ["--valid-to", "not a valid date"]),
        (
            ["--valid-from", "2026-06-01", "--valid-to", "2026-03-01"],
            ["--valid-to 2026-03-01T00:00:00 must be after --valid-from 2026-06-01"],
        ),
        (["--date-gap", "0"], ["--date-gap must be a finite number greater than zero"]),
        (["--config", "BAD"], ["bad.toml", "'valid-to'", "'never' is not an ISO date"]),
    ],
)
def test_bad_dates_are_one_line_naming_the_option(tmp_path, run, argv, fragments):
    bad = tmp_path / "bad.toml"
    bad.write_text('valid-to = "never"\n', encoding="utf-8")
    argv = [str(bad) if a == "BAD" else a for a in argv]
    code, out, err = run("--basepath", tmp_path, "--output-dir", tmp_path / "o", *argv)
    lines = err.splitlines()
    assert code == 2 and not out and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "o").exists()


def test_a_python_caller_gets_a_config_error():
    with pytest.raises(ConfigError, match=r"^--valid-from: 'x' is not an ISO date"):
        PipelineConfig(valid_from="x")
    with pytest.raises(ConfigError, match=r"^--valid-to .* must be after --valid-from"):
        PipelineConfig(valid_from="2026-03-02", valid_to="2026-03-01")
    with pytest.raises(ConfigError, match=r"^--valid-from: .* not a plausible MJD"):
        PipelineConfig(valid_from=5)

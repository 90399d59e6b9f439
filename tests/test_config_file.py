"""``--config FILE`` and ``--write-config``: precedence, paths, round trip, run_config.json, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest

from bias_pipeline import cli
from bias_pipeline.config import options
from bias_pipeline.config_file import toml_value

from conftest import run_cli, two_temperature_set

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


@pytest.fixture
def run(monkeypatch, capsys):
    """``run(*argv)`` runs the command in this process: ``(exit code, stdout, stderr)``.

    Logging is left alone (``setup_logging`` would take the package's records away from
    later tests' ``caplog``)."""
    monkeypatch.setattr(cli, "setup_logging", lambda *args, **kwargs: None)

    def call(*argv: str) -> tuple[int, str, str]:
        code = cli.run_main([str(a) for a in argv], prog="run_pipeline.py")
        out, err = capsys.readouterr()
        return code, out, err

    return call


def parse(*argv: object):
    """The merged arguments and the keys taken from the file."""
    return cli.parse_run_args(cli.build_run_parser(), [str(a) for a in argv])


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_flags_win_over_the_file_and_the_file_over_the_defaults(tmp_path):
    config = write(
        tmp_path / "run.toml",
        'basepath = "/data/raw"\noutput_dir = "/data/out"\ncombine-method = "median"\nclip-sigma = 2.5\n'
        "generate-set = true\nevaluation = false\ntemperature-limits = [-40, 70]\ninput-bits = 12\n"
        'temperature_keys = ["ccd-temp", "TEMP"]\n',
    )
    args, from_file = parse("--config", config, "--clip-sigma", "4", "--no-generate-set", "--output-dir", "/elsewhere")
    assert args.combine_method == "median" and args.clip_sigma == 4.0 and args.generate_set is False
    assert args.evaluation is False and args.temperature_limits == [-40.0, 70.0] and args.input_bits == "12"
    assert args.temperature_keys == ("CCD-TEMP", "TEMP")  # through the same type function as the flag
    assert args.output_dir == Path("/elsewhere") and args.basepath == Path("/data/raw")
    assert args.max_exposure == 0.1 and args.degree == 1  # defaults where neither says anything
    assert from_file == {
        "basepath": "basepath",
        "combine_method": "combine-method",
        "evaluation": "evaluation",
        "temperature_limits": "temperature-limits",
        "input_bits": "input-bits",
        "temperature_keys": "temperature_keys",
    }
    config_obj = cli.config_from_args(args)
    assert config_obj.evaluation is False and config_obj.temperature_limits == (-40.0, 70.0)
    # A flag that repeats the default still wins over the file.
    args, _ = parse("--config", config, "--combine-method", "sigma-clip", "--evaluation")
    assert args.combine_method == "sigma-clip" and args.evaluation is True and args.generate_set is True
    # A switch may be given by its negative name too.
    negated = write(tmp_path / "neg.toml", "no-evaluation = true\nno_save_eval_fits = false\n")
    args, _ = parse("--config", negated, "--output-dir", "o")
    assert args.evaluation is False and args.save_eval_fits is True


def test_relative_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = write(
        tmp_path / "cfg" / "run.toml",
        'basepath = "../raw"\noutput-dir = "out"\nhot-pixel-mask = "~/mask.fits"\n',
    )
    monkeypatch.chdir(write(tmp_path / "elsewhere" / "x", "").parent)
    args, _ = parse("--config", "../cfg/run.toml")
    assert args.basepath == tmp_path / "raw"
    assert args.output_dir == tmp_path / "cfg" / "out"
    assert args.hot_pixel_mask == tmp_path / "home" / "mask.fits"
    args, _ = parse("--config", config, "--output-dir", "rel")
    assert args.output_dir == Path("rel")  # a flag's path stays relative to the working directory


def test_write_config_round_trip(tmp_path, monkeypatch, run):
    monkeypatch.chdir(tmp_path)
    argv = [
        "--basepath", 'raw "q" \\ ü\tx', "--output-dir", "out", "--hot-pixel-mask", "m.fits",
        "--generate-set", "--no-evaluation", "--temperature-keys", 'ccd-temp,A"B\\C', "--temperature-limits",
        "-40.5", "65", "--input-bits", "auto", "--combine-method", "median", "--threads", "2", "--degree", "2",
        "--max-exposure", "0.30000000000000004", "--nonlinear-pvalue", "1e-7", "--memory-limit", "1e300",
    ]  # fmt: skip
    code, text, err = run(*argv, "--write-config")
    assert code == 0, err
    assert not (tmp_path / "out").exists()  # printed, not run
    document = tomllib.loads(text)
    assert document["basepath"] == str(tmp_path / 'raw "q" \\ ü\tx')  # absolute: the file may go anywhere
    assert document["evaluation"] is False and document["max-exposure"] == 0.30000000000000004
    assert "hot-pixel-mask" in document and "verbose" not in document and "config" not in document

    saved = write(tmp_path / "elsewhere" / "saved.toml", text)
    monkeypatch.chdir(saved.parent)
    code, again, err = run("--config", saved, "--write-config")
    assert code == 0, err
    assert again == text
    monkeypatch.chdir(tmp_path)
    original, _ = parse(*argv)
    restored, _ = parse("--config", saved)
    # The same PipelineConfig, paths included (the file holds them absolute).
    paths = ("basepath", "output_dir", "hot_pixel_mask")
    expected = cli.config_from_args(original)
    expected = dataclasses.replace(expected, **{name: tmp_path / getattr(expected, name) for name in paths})
    assert cli.config_from_args(restored) == expected
    for dest in ("basepath", "output_dir", "hot_pixel_mask"):
        assert getattr(restored, dest) == (tmp_path / getattr(original, dest))
    for dest in ("generate_set", "save_eval_fits", "evaluation"):
        assert getattr(restored, dest) == getattr(original, dest)


def test_write_config_alone_prints_a_template_that_reads_back(tmp_path, run):
    code, text, err = run("--write-config")
    assert code == 0, err
    assert '# basepath = "RAW_DIR"  # not set' in text and "combine-method = " in text
    code, again, err = run("--config", write(tmp_path / "t.toml", text), "--write-config")
    assert (code, again) == (0, text), err
    # Uncommented and filled in, it runs as it stands.
    filled = text.replace('# basepath = "RAW_DIR"  # not set', 'basepath = "raw"')
    args, _ = parse("--config", write(tmp_path / "t.toml", filled), "--output-dir", tmp_path / "o")
    assert args.basepath == tmp_path / "raw"


def test_run_config_json_is_accepted(pipeline_run, tmp_path, run):
    recorded_path = pipeline_run.output_dir / "run_config.json"
    recorded = json.loads(recorded_path.read_text())["options"]
    args, from_file = parse("--config", recorded_path)
    # The record is the schema's options, paths and switches included, under their option names.
    assert cli.config_from_args(args).options_record() == recorded
    assert list(recorded) == list(options())
    assert "memory_limit" in from_file and "evaluation" in from_file
    # The options it gives print as TOML like any other configuration.
    code, text, err = run("--config", recorded_path, "--write-config")
    assert code == 0, err
    assert tomllib.loads(text)["basepath"] == recorded["basepath"]


def test_an_older_run_config_with_the_earlier_option_names_is_accepted(tmp_path):
    older = write(
        tmp_path / "old" / "run_config.json",
        json.dumps(
            {
                "options": {
                    "basepath": "/data/raw",
                    "output_dir": "/data/out",
                    "hot_pixel_mask": None,
                    "memory_limit_mb": 64.0,
                    "evaluate": False,
                    "show_progress": True,
                    "combine_method": "median",
                }
            }
        ),
    )
    args, from_file = parse("--config", older)
    config = cli.config_from_args(args)
    assert config.memory_limit == 64.0 and config.evaluation is False and config.combine_method == "median"
    assert from_file["memory_limit"] == "memory_limit" and from_file["evaluation"] == "evaluation"
    assert config.hot_pixel_mask is None and config.basepath == Path("/data/raw")


def test_a_value_in_a_file_is_overridden_by_its_flag(tmp_path):
    config = write(tmp_path / "run.toml", 'output-dir = "out"\nmemory-limit = 64\nthreads = 3\n')
    args, from_file = parse("--config", config, "--threads", "1")
    built = cli.config_from_args(args)
    assert (built.memory_limit, built.threads) == (64.0, 1)
    assert from_file == {"output_dir": "output-dir", "memory_limit": "memory-limit"}


def test_demo_on_the_command_line_wins_over_the_files_basepath(tmp_path):
    config = write(tmp_path / "run.toml", 'basepath = "raw"\noutput-dir = "out"\n')
    args, from_file = parse("--config", config, "--demo")
    assert args.demo and args.basepath is None and "basepath" not in from_file


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("max-exposur = 0.1", ["unknown key 'max-exposur'", "did you mean 'max-exposure'"]),
        ('max-exposure = "abc"', ["'max-exposure' must be a number", 'got "abc"']),
        ("threads = 2.5", ["'threads' must be a whole number"]),
        ("temperature-limits = [-60]", ["'temperature-limits' must be a list of 2 numbers"]),
        ('generate-set = "yes"', ["'generate-set' must be true or false"]),
        ('combine-method = "foo"', ["'combine-method'", "is not one of", "median"]),
        ("input-bits = 14", ["'input-bits' = 14 is not one of"]),
        ("max-exposure = nan", ["'max-exposure'", "not a finite number"]),
        ("max-exposure = {a = 1}", ["'max-exposure' must be a number", "got a dict"]),
        ("temperature-keys = []", ["'temperature-keys'", "at least one keyword"]),
        ("basepath = 3", ["'basepath' must be a path"]),
        ("quiet = true", ["'quiet' is a command-line option only", "-q"]),
        ("demo = true", ["'demo' is a command-line option only"]),
        ('output-dir = "a"\noutput_dir = "b"', ["'output-dir' and 'output_dir' set the same option"]),
        ("max-exposure = ", ["not valid TOML", "line 1"]),
        ("temp-bin-width = 0", ["--temp-bin-width must be", "(set by temp-bin-width in --config"]),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path, run, text, fragments):
    config = write(tmp_path / "bad.toml", text + "\n")
    code, out, err = run("--config", config, "--basepath", tmp_path, "--output-dir", tmp_path / "o")
    assert code == 2 and not out
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("run_pipeline.py: error:")
    assert "bad.toml" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [("missing", "cannot read it"), ("folder", "is a folder"), ("json", 'no "options"'), ("binary", "UTF-8")],
)
def test_unreadable_config_files(tmp_path, run, setup, fragment):
    path = {"missing": tmp_path / "nope.toml", "folder": tmp_path, "json": tmp_path / "x.json"}.get(
        setup, tmp_path / "b.toml"
    )
    if setup == "json":
        path.write_text('{"software": {}}')
    if setup == "binary":
        path.write_bytes(b"\xff\xfe\x00")
    code, _, err = run("--config", path, "--output-dir", tmp_path / "o")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"--config {path}" in err and fragment in err


def test_output_dir_is_still_required(run):
    code, _, err = run("--basepath", "raw")
    assert code == 2 and "--output-dir OUT_DIR is required" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "value",
    [0.1 + 0.2, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, 1e16, 123456789.123, -60, 2**53 + 1, math.pi],
)
def test_toml_numbers_read_back_exactly(value):
    read = tomllib.loads(f"x = {toml_value(value)}")["x"]
    assert read == value and type(read) is type(value) and math.copysign(1, read) == math.copysign(1, value)


def test_toml_strings_are_escaped():
    text = 'a"b\\c\n\t\r\b\f\x00\x1f\x7f é 漢 \U0001f600'
    assert tomllib.loads(f"x = {toml_value([text, 'plain'])}")["x"] == [text, "plain"]
    with pytest.raises(ValueError, match="not valid Unicode"):
        toml_value("bad \udcff byte")


def test_end_to_end_run_from_a_config_file_and_again_from_its_run_config(tmp_path, run):
    data = tmp_path / "data"
    two_temperature_set(data / "raw")
    write(
        data / "run.toml",
        "# a run kept beside its data\n"
        'basepath = "raw"\noutput-dir = "out"\ngenerate-set = true\nevaluation = false\n'
        'combine-method = "median"\ntemperature-limits = [-50, 70.5]\n',
    )
    done = run_cli("run_pipeline.py", "--config", str(data / "run.toml"), "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    first = json.loads((data / "out" / "run_config.json").read_text())
    options = first["options"]
    assert options["basepath"] == str(data / "raw") and options["output_dir"] == str(data / "out")
    assert options["combine_method"] == "median" and options["temperature_limits"] == [-50.0, 70.5]
    assert options["evaluation"] is False and options["generate_set"] is True
    assert len(list((data / "out" / "bias_masks_by_temp").glob("*.fits"))) == 2

    # Repeated from its run_config.json (in this process: the subprocess above covers the script).
    code, _, err = run("--config", data / "out" / "run_config.json", "--output-dir", tmp_path / "again", "-q")
    assert code == 0, err
    second = json.loads((tmp_path / "again" / "run_config.json").read_text())
    assert {**second["options"], "output_dir": options["output_dir"]} == options
    assert second["inputs"]["digest_sha256"] == first["inputs"]["digest_sha256"]

    bad_toml = write(tmp_path / "bad.toml", "threads = -1\n")
    bad = run_cli("run_pipeline.py", "--config", str(bad_toml), "--output-dir", str(tmp_path / "o"), cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.splitlines() == [
        "run_pipeline.py: error: --threads must be a whole number from 0 (as many as CPUs) to 256, got -1 "
        f"(set by threads in --config {bad_toml})"
    ]


def test_a_config_that_is_no_regular_file_is_refused_at_once(tmp_path):
    """A FIFO would block the read for ever and /dev/zero fill the memory: refused before reading."""
    import os

    fifo = tmp_path / "options.toml"
    os.mkfifo(fifo)
    cases = ((fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file"), (tmp_path, "a folder"))
    for given, what in cases:
        done = run_cli("run_pipeline.py", "--config", str(given), "--output-dir", str(tmp_path / "o"), "--write-config")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert f"--config {given}: is {what}" in done.stderr


def test_a_run_record_holding_an_option_under_both_names_is_refused(tmp_path):
    record = tmp_path / "run_config.json"
    record.write_text(json.dumps({"options": {"memory_limit": 512.0, "memory_limit_mb": 100.0}}))
    done = run_cli("run_pipeline.py", "--config", str(record), "--output-dir", str(tmp_path / "o"), "--write-config")
    assert done.returncode == 2 and "holds both 'memory_limit_mb' and 'memory_limit'" in done.stderr, done.stderr

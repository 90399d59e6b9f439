"""The option schema: every option of the run command is one field of PipelineConfig, with its
flag, help, default and kind; the deprecated names keep working."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest

from bias_pipeline import PipelineConfig, cli
from bias_pipeline.config import DEPRECATED_NAMES, GROUPS, KINDS, help_text, option_defaults, options
from bias_pipeline.errors import ConfigError


def test_every_option_has_a_flag_help_default_kind_and_group():
    schema = options()
    assert len(schema) == len(dataclasses.fields(PipelineConfig)) - 1  # all but show_progress
    defaults = option_defaults()
    for name, opt in schema.items():
        assert opt.flag == "--" + name.replace("_", "-"), name  # one name per option
        assert opt.help and opt.kind in KINDS and opt.group in GROUPS, name
        assert name in defaults
        shown = opt.shown_default(defaults[name])
        if shown is not None:  # the help's default is made from the field's, not retyped
            assert help_text(name).endswith(f"(default {shown})"), name
    assert help_text("max_frame_offset").endswith("(default 0.5)")
    assert help_text("temperature_limits").endswith("(default -60 80)")
    assert "plot" in help_text("threads")  # --threads also sets the plotting processes


def test_the_paths_and_switches_are_options_too():
    config = PipelineConfig(basepath="raw", hot_pixel_mask=None, generate_set=True, show_progress=False)
    assert config.basepath == Path("raw") and config.generate_set is True and config.save_eval_fits is False
    record = config.options_record()
    assert record["basepath"] == "raw" and record["output_dir"] is None and "show_progress" not in record
    assert json.loads(json.dumps(record)) == record


def test_validation_names_the_flag():
    with pytest.raises(ConfigError, match=r"^--memory-limit must be at least 1 MiB"):
        PipelineConfig(memory_limit=0.5)
    with pytest.raises(ConfigError, match=r"^--fit-on must be masters or frames, got 'x'"):
        PipelineConfig(fit_on="x")
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_exposur'"):
        PipelineConfig(max_exposur=1.0)


@pytest.mark.parametrize(
    ("old", "new", "value"), [("memory_limit_mb", "memory_limit", 64.0), ("evaluate", "evaluation", False)]
)
def test_deprecated_names_warn_and_work(old, new, value):
    assert DEPRECATED_NAMES[old] == new
    with pytest.warns(DeprecationWarning, match=f"{old}=.*deprecated; use {new}"):
        config = PipelineConfig(**{old: value}, show_progress=False)
    assert getattr(config, new) == value and getattr(config, old) == value  # read by the old name too
    # dataclasses.replace passes every current field with the old name: the old name wins.
    base = PipelineConfig(show_progress=False)
    with pytest.warns(DeprecationWarning):
        replaced = dataclasses.replace(base, **{old: value})
    assert getattr(replaced, new) == value != getattr(base, new)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names give no warning
        PipelineConfig(**{new: value})


def test_help_and_write_config_are_made_from_the_schema(capsys, monkeypatch):
    monkeypatch.setattr(cli, "setup_logging", lambda *args, **kwargs: None)
    text = cli.build_run_parser().format_help()
    for name, opt in options().items():
        assert opt.flag in text, name
    assert cli.run_main(["--write-config"], prog="run_pipeline.py") == 0
    written = capsys.readouterr().out
    for opt in options().values():
        assert f"{opt.key} = " in written, opt.key  # every option, set or as a comment to fill in


def test_write_config_read_back_gives_the_same_config(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "setup_logging", lambda *args, **kwargs: None)
    argv = ["--basepath", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "out"), "--degree", "2",
            "--memory-limit", "77", "--no-evaluation", "--frame-type-keys", "none", "--save-eval-fits"]  # fmt: skip
    assert cli.run_main([*argv, "--write-config"], prog="run_pipeline.py") == 0
    saved = tmp_path / "saved.toml"
    saved.write_text(capsys.readouterr().out, encoding="utf-8")
    original = cli.config_from_args(cli.parse_run_args(cli.build_run_parser(), argv)[0])
    restored = cli.config_from_args(cli.parse_run_args(cli.build_run_parser(), ["--config", str(saved)])[0])
    assert restored == original
    assert restored.frame_type_keys == () and restored.memory_limit == 77.0 and restored.evaluation is False


def test_the_command_line_is_parsed_once(monkeypatch):
    import argparse

    calls = []
    parse = argparse.ArgumentParser.parse_args

    def counted(self, *args, **kwargs):
        calls.append(args)
        return parse(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", counted)
    args, from_file = cli.parse_run_args(cli.build_run_parser(), ["--output-dir", "o", "--threads", "2"])
    assert len(calls) == 1 and args.threads == 2 and args.degree == 1 and from_file == {}


def test_run_bias_pipeline_takes_paths_from_config_and_its_arguments_win(tmp_path):
    from bias_pipeline import run_bias_pipeline

    from conftest import two_temperature_set

    two_temperature_set(tmp_path / "raw")
    mask = tmp_path / "mask.fits"
    import numpy as np
    from astropy.io import fits

    fits.writeto(mask, np.zeros((48, 64), dtype=np.uint8))
    config = PipelineConfig(
        basepath=tmp_path / "elsewhere", hot_pixel_mask=mask, generate_set=False, evaluation=False, show_progress=False
    )
    result = run_bias_pipeline(tmp_path / "raw", tmp_path / "out", config=config)
    record = json.loads((tmp_path / "out" / "run_config.json").read_text())["options"]
    assert record["basepath"] == str(tmp_path / "raw")  # the positional argument wins
    assert record["hot_pixel_mask"] == str(mask)  # None as argument leaves config's mask
    assert record["generate_set"] is False and result.synthetic_paths == []  # left out: config's switch
    assert record == {**config.options_record(), **{k: record[k] for k in ("basepath", "output_dir")}}
    given = run_bias_pipeline(tmp_path / "raw", tmp_path / "given", generate_set=True, config=config)
    assert len(given.synthetic_paths) == 2  # given: the argument wins


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"memory_limit": "512"}, "--memory-limit must be a number, got '512'"),
        ({"max_exposure": "0.1"}, "--max-exposure must be a number"),
        ({"evaluation": "false"}, "--evaluation is a switch: give True or False, got 'false'"),
        ({"generate_set": "no"}, "--generate-set is a switch"),
        ({"degree": True}, "--degree must be a whole number, got True"),
        ({"threads": 1.5}, "--threads must be a whole number"),
    ],
)
def test_a_value_of_the_wrong_type_from_python_is_refused_naming_the_option(values, message):
    """The command line and --config convert text; a Python caller's string would otherwise pass
    (and "false" is true in Python) and fail deep in the run without naming the option."""
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        PipelineConfig(**values)

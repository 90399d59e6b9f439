"""Configuration files of the run command: read them, merge them with the command line, write them.

``run_pipeline.py --config FILE`` takes options from a TOML file, or from the ``run_config.json``
a finished run wrote (its recorded ``options``), so that a run can be repeated.
``--write-config`` prints the effective options as TOML that ``--config`` reads back to the same
configuration. Everything here is made from the option schema of
:class:`~bias_pipeline.config.PipelineConfig`; nothing reads argparse.

The rules:

- Keys are the command's long option names without the leading dashes; dashes and underscores
  are interchangeable (``output-dir`` or ``output_dir``). A switch is ``true``/``false``
  (``generate-set = true``; ``no-evaluation = true`` works too); an option taking several values
  is an array (``temperature-limits = [-60, 80]``, ``temperature-keys = ["TEMPERATURE", "TEMP"]``).
  A date is a TOML date or date-time (``valid-from = 2026-03-01``, UTC unless it states an
  offset) or a string (``valid-from = "2026-03-01T12:00:00"``, an MJD number as ``"61100.5"``).
- A relative path in a file is taken relative to the file's folder, not to the working
  directory, so a configuration kept beside its data works from anywhere. ``~`` is expanded.
- Precedence: a flag on the command line wins over the file, the file wins over the defaults.
- Options that choose how one invocation behaves rather than what is computed (``-v``, ``-q``,
  ``--demo``, ``--config``, ``--write-config``) are command-line only.
- Every value passes the checks of the command line: its kind and choices in the option schema
  (:mod:`bias_pipeline.config`) here, :class:`~bias_pipeline.config.PipelineConfig` afterwards. A bad file, an
  unknown key or a wrong type is a :class:`~bias_pipeline.errors.ConfigError` naming the file
  and the key.

The reader is :mod:`tomllib` (Python 3.11+) or its backport ``tomli``; the writer is the small
:func:`toml_value` below, enough for the value types options have.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import logging
import math
import numbers
import os
import re
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

from .config import (
    CHOICE,
    DATE,
    DEPRECATED_NAMES,
    GROUPS,
    INTEGER,
    KEYWORDS,
    NUMBER,
    PATH,
    RECORDED_NOT_OPTIONS,
    SWITCH,
    TEXT,
    Option,
    PipelineConfig,
    option_defaults,
    options,
)
from .dates import format_date, parse_date
from .errors import BiasPipelineError, ConfigError, one_line

logger = logging.getLogger(__name__)

_EXPECTED = {
    SWITCH: ("true or false", "true or false"),
    INTEGER: ("a whole number", "whole numbers"),
    NUMBER: ("a number", "numbers"),
    CHOICE: ("a string", "strings"),
    TEXT: ("a string", "strings"),
    PATH: ("a path (a string)", "paths"),
    KEYWORDS: ("a list of header keywords", "keyword lists"),
    DATE: ('a date (a TOML date or datetime, or a string such as "2026-03-01T12:00:00")', "dates"),
}

_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def read_config_file(path: str | Path) -> dict[str, object]:
    """The key/value pairs of a TOML configuration file or of a run's ``run_config.json``.

    A file whose name ends in ``.json`` is read as the ``run_config.json`` of a finished run:
    its ``options`` are taken (the names of an earlier version under their present ones, unset values left
    out). Any other file is TOML.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    dict
        Keys as written in the file, values as parsed.

    Raises
    ------
    ConfigError
        When the file cannot be read or is not valid TOML (or not a ``run_config.json``).
    """
    path = Path(path)
    where = f"--config {path}"
    _check_readable(path, where)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot read it ({exc.strerror or exc}); give a TOML file or a finished run's run_config.json"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: is not UTF-8 text; give a TOML file or a run's run_config.json") from None
    if path.suffix.lower() == ".json":
        return _run_config_options(text, where)
    tomllib = _toml_reader(where)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{where}: not valid TOML: {one_line(exc)}; fix that line (options look like max-exposure = 0.1, "
            'basepath = "raw/")'
        ) from None
    return data


#: A configuration file larger than this is no configuration file (a run's record of ten
#: thousand frames is a few MiB).
MAX_CONFIG_BYTES = 64 * 1024 * 1024


def _check_readable(path: Path, where: str) -> None:
    """Refuse what is not a regular file of a sensible size before reading it: a FIFO would
    block for ever, a device such as /dev/zero would fill the memory."""
    try:
        info = path.stat()
    except OSError:
        return  # missing or unreadable: the read says which
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a pipe or device)"
        raise ConfigError(f"{where}: is {kind}; give a TOML file or a finished run's run_config.json")
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{where}: is {info.st_size / 2**20:.0f} MiB, too large for a configuration file; give a TOML file "
            "or a finished run's run_config.json"
        )


def _toml_reader(where: str) -> ModuleType:
    """:mod:`tomllib`, or its backport ``tomli`` on Python 3.10."""
    # Imported here, not at the top: without tomli on Python 3.10 only --config fails.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 only
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError(
                f"{where}: reading TOML on Python {sys.version_info[0]}.{sys.version_info[1]} needs tomli; "
                "pip install 'tomli>=2' (or give a run_config.json)"
            ) from None
    return tomllib


def _run_config_options(text: str, where: str) -> dict[str, object]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{where}: not valid JSON: {one_line(exc)}; give a run's run_config.json as written"
        ) from None
    options_ = document.get("options") if isinstance(document, dict) else None
    if not isinstance(options_, dict):
        raise ConfigError(
            f'{where}: is not a run_config.json (no "options" object); give the run_config.json of a finished run '
            "or a TOML file (a name not ending in .json)"
        )
    # A record of an earlier version may hold the earlier names of two options and show_progress.
    for old, new in DEPRECATED_NAMES.items():
        if old in options_ and new in options_:
            raise ConfigError(f"{where}: holds both {old!r} and {new!r}, the same option; keep one ({new!r})")
    return {
        DEPRECATED_NAMES.get(key, key): value
        for key, value in options_.items()
        if key not in RECORDED_NOT_OPTIONS and value is not None
    }


def _by_key() -> dict[str, tuple[str, bool]]:
    """``{key: (field name, negated)}``: every key a file may use for an option (``no-KEY`` for a switch)."""
    keys: dict[str, tuple[str, bool]] = {}
    for name, opt in options().items():
        keys[opt.key] = (name, False)
        if opt.kind == SWITCH:
            keys["no-" + opt.key] = (name, True)
    return keys


def load_config_file(
    path: str | Path, *, command_line_only: Mapping[str, Sequence[str]] = {}
) -> tuple[dict[str, object], dict[str, str]]:
    """The options a configuration file sets, checked by their schema entries.

    Parameters
    ----------
    path
        A TOML file or a run's ``run_config.json`` (see :func:`read_config_file`).
    command_line_only
        ``{key: flags}`` of options a file may not set (``{"quiet": ("-q", "--quiet")}``).

    Returns
    -------
    values : dict
        ``{field name: value}`` as the command line would give it (relative paths joined to the
        file's folder).
    keys : dict
        ``{field name: key as written in the file}``.

    Raises
    ------
    ConfigError
        Naming the file and the key: unreadable or invalid file, unknown key, wrong type,
        value the option does not accept, a command-line-only option, one option set twice.
    """
    path = Path(path)
    where = f"--config {path}"
    base = Path(os.path.abspath(path)).parent
    schema, by_key = options(), _by_key()
    values: dict[str, object] = {}
    keys: dict[str, str] = {}
    for key, value in read_config_file(path).items():
        name = str(key).strip().replace("_", "-")
        if name in command_line_only:
            flags = ", ".join(command_line_only[name])
            raise ConfigError(f"{where}: key {key!r} is a command-line option only; give {flags} on the command line")
        if name not in by_key:
            close = difflib.get_close_matches(name, list(by_key))
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where}: unknown key {key!r}{hint}; keys are the long options of the run command without the "
                "leading dashes, see --help"
            )
        field_name, negated = by_key[name]
        if field_name in keys:
            raise ConfigError(f"{where}: keys {keys[field_name]!r} and {key!r} set the same option; keep one")
        values[field_name] = _file_value(schema[field_name], field_name, str(key), value, negated, where, base)
        keys[field_name] = str(key)
    logger.debug("--config %s: %s", path, ", ".join(keys.values()) or "no options")
    return values, keys


def blame_file(exc: BiasPipelineError, from_file: Mapping[str, str], path: str | Path) -> None:
    """Add "(set by KEY in --config FILE)" to an error that starts with an option the file set."""
    match = re.match(r"--[\w-]+", str(exc))
    by_flag = {opt.flag: name for name, opt in options().items()}
    name = by_flag.get(match.group()) if match else None
    if name is not None and name in from_file:
        exc.args = (f"{exc} (set by {from_file[name]} in --config {path})",)


def _file_value(opt: Option, name: str, key: str, value: object, negated: bool, where: str, base: Path) -> object:
    default = option_defaults()[name]
    if opt.kind == SWITCH:
        if not isinstance(value, bool):
            raise _wrong_type(where, key, value, opt, default)
        return value != negated
    if opt.nargs is not None:
        if not isinstance(value, list) or len(value) != opt.nargs:
            raise _wrong_type(where, key, value, opt, default)
        return [_file_item(opt, key, item, where, base, default) for item in value]
    return _file_item(opt, key, value, where, base, default)


def _file_item(opt: Option, key: str, value: object, where: str, base: Path, default: object) -> object:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    kind = opt.kind
    if kind == PATH:
        if not isinstance(value, str) or not value:
            raise _wrong_type(where, key, value, opt, default)
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(os.path.normpath(base / path))
    if kind == KEYWORDS and isinstance(value, (str, list)) and all(isinstance(item, str) for item in value):
        assert opt.parse is not None
        try:
            return opt.parse(value if isinstance(value, str) else ",".join(value))
        except ValueError as exc:
            raise ConfigError(f"{where}: key {key!r}: {exc}; correct the value") from None
    if kind == DATE and isinstance(value, (str, _dt.date, int, float)) and not isinstance(value, bool):
        if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):  # a TOML date: midnight UTC
            value = value.isoformat()
        try:
            return parse_date(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: key {key!r}: {exc}; give a date such as 2026-03-01T12:00:00 (UTC)") from None
    if kind == NUMBER and number:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise ConfigError(f"{where}: key {key!r}: {value!r} is not a finite number; correct the value")
        converted: object = float(value)  # type: ignore[arg-type]
    elif kind == INTEGER and number and isinstance(value, int):
        converted = value
    elif kind in (CHOICE, TEXT) and isinstance(value, str):
        converted = value
    elif kind == CHOICE and number and opt.choices is not None:
        converted = str(value)  # input-bits = 12 for "12"; the choices are checked below
    else:
        raise _wrong_type(where, key, value, opt, default)
    if opt.choices is not None and converted not in opt.choices:
        choices = ", ".join(toml_value(c) for c in opt.choices)
        raise ConfigError(f"{where}: key {key!r} = {_shown(value)} is not one of {choices}")
    return converted


def _wrong_type(where: str, key: str, value: object, opt: Option, default: object) -> ConfigError:
    single, plural = _EXPECTED[opt.kind]
    expected = f"a list of {opt.nargs} {plural}" if opt.nargs else single
    example = f", e.g. {key} = true" if opt.kind == SWITCH else ""
    if default is not None and opt.kind != SWITCH:
        try:
            example = f", e.g. {key} = {toml_value(default)}"
        except ValueError:
            pass
    return ConfigError(f"{where}: key {key!r} must be {expected}{example}; got {_shown(value)}")


def _shown(value: object) -> str:
    try:
        return toml_value(value)
    except ValueError:
        return f"a {type(value).__name__}"  # a table or a date


def toml_value(value: object) -> str:
    r"""The TOML form of an option's value.

    Booleans, integers, floats (their ``repr``, which reads back to the same float), strings
    and paths (basic strings, escaped), datetimes (a TOML date-time in UTC, ``Z``), and lists or
    tuples of those.

    Raises
    ------
    ValueError
        For any other type, and for text TOML cannot hold (unpaired surrogates, e.g. a path
        that is not valid UTF-8).

    Examples
    --------
    >>> print(toml_value(["TEMP", 'C:\\raw "new"\n']))
    ["TEMP", "C:\\raw \"new\"\n"]
    >>> toml_value((-60.0, 80.0)), toml_value(1e-4), toml_value(True), toml_value(3)
    ('[-60.0, 80.0]', '0.0001', 'true', '3')
    >>> toml_value(parse_date("2026-03-01T12:00"))
    '2026-03-01T12:00:00Z'
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _dt.datetime):  # a TOML offset date-time, in UTC
        return format_date(value) + "Z"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return "nan"
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        return repr(number)
    if isinstance(value, (str, os.PathLike)):
        return _toml_string(os.fspath(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise ValueError(f"no TOML form for a {type(value).__name__}")


def _toml_string(text: str | bytes) -> str:
    if isinstance(text, bytes):
        raise ValueError("no TOML form for bytes")
    out = []
    for char in text:
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04X}")
        elif "\ud800" <= char <= "\udfff":
            raise ValueError(f"{text!r} is not valid Unicode text")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def format_config(config: PipelineConfig, *, header: Sequence[str] = ()) -> str:
    """The options of ``config`` as a TOML configuration file that :func:`load_config_file`
    reads back to the same configuration.

    Options come in the order of ``--help``, under their group's title; paths are made absolute
    (so the text may be saved anywhere); an unset option is a comment to fill in.

    Parameters
    ----------
    config
        The options in effect.
    header
        Comment lines for the top of the file.

    Returns
    -------
    str
        The TOML text, ending in a newline.

    Raises
    ------
    ConfigError
        When a value has no TOML form (a path that is not valid UTF-8).
    """
    lines = [f"# {line}" if line else "#" for line in header]
    schema = options()
    for group in GROUPS:
        entries = []
        for name, opt in schema.items():
            if opt.group != group:
                continue
            value = getattr(config, name)
            if value is None:
                placeholder = opt.metavar if isinstance(opt.metavar, str) else opt.key.upper()
                entries.append(f"# {opt.key} = {_toml_string(placeholder)}  # not set")
                continue
            if isinstance(value, Path):
                value = os.path.abspath(value.expanduser())
            try:
                entries.append(f"{opt.key} = {toml_value(value)}")
            except ValueError as exc:
                raise ConfigError(f"--write-config: {opt.flag}: {exc}; cannot be written as TOML") from None
        if entries:
            lines += ["", f"# {group}", *entries]
    return "\n".join(lines).lstrip("\n") + "\n"

"""Configuration files of the run command: read them, merge them with the command line, write them.

``run_pipeline.py --config FILE`` takes options from a TOML file, or from the ``run_config.json``
a finished run wrote (its recorded ``options``), so that a run can be repeated.
``--write-config`` prints the effective options as TOML that ``--config`` reads back to the same
configuration.

The rules:

- Keys are the command's long option names without the leading dashes; dashes and underscores
  are interchangeable (``output-dir`` or ``output_dir``). A switch is ``true``/``false``
  (``generate-set = true``; ``no-evaluation = true`` works too); an option taking several values
  is an array (``temperature-limits = [-60, 80]``, ``temperature-keys = ["TEMPERATURE", "TEMP"]``).
- A relative path in a file is taken relative to the file's folder, not to the working
  directory, so a configuration kept beside its data works from anywhere. ``~`` is expanded.
- Precedence: a flag on the command line wins over the file, the file wins over the defaults.
- Options that choose how one invocation behaves rather than what is computed (``-v``, ``-q``,
  ``--demo``, ``--config``, ``--write-config``) are command-line only.
- Every value passes the checks of the command line: the option's argparse ``type`` and
  ``choices`` here, :class:`~bias_pipeline.config.PipelineConfig` afterwards. A bad file, an
  unknown key or a wrong type is a :class:`~bias_pipeline.errors.ConfigError` naming the file
  and the key.

The reader is :mod:`tomllib` (Python 3.11+) or its backport ``tomli``; the writer is the small
:func:`toml_value` below, enough for the value types options have.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import numbers
import os
import re
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import ModuleType

from .errors import BiasPipelineError, ConfigError, one_line

logger = logging.getLogger(__name__)

BOOLEAN = "boolean"
INTEGER = "integer"
NUMBER = "number"
STRING = "string"
PATH = "path"
KEYWORDS = "keywords"

#: The kind of value a file gives for an option, by the option's argparse ``type``; a command
#: adds its own type functions (see :func:`merge_config_file`). Unknown types read a string.
BASE_KINDS: dict[object, str] = {None: STRING, str: STRING, int: INTEGER, float: NUMBER, Path: PATH}

_EXPECTED = {
    BOOLEAN: ("true or false", "true or false"),
    INTEGER: ("a whole number", "whole numbers"),
    NUMBER: ("a number", "numbers"),
    STRING: ("a string", "strings"),
    PATH: ("a path (a string)", "paths"),
    KEYWORDS: ("a list of header keywords", "keyword lists"),
}

#: Names in ``run_config.json``'s ``options`` that differ from the option names ...
RUN_CONFIG_RENAMED: dict[str, str] = {"memory_limit_mb": "memory-limit", "evaluate": "evaluation"}
#: ... and recorded values that are not options of a file (set by ``-q``).
RUN_CONFIG_SKIPPED: frozenset[str] = frozenset({"show_progress"})

_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def read_config_file(path: str | Path) -> dict[str, object]:
    """The key/value pairs of a TOML configuration file or of a run's ``run_config.json``.

    A file whose name ends in ``.json`` is read as the ``run_config.json`` of a finished run:
    its ``options`` are taken (renamed to option names where they differ, unset values left
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
    options = document.get("options") if isinstance(document, dict) else None
    if not isinstance(options, dict):
        raise ConfigError(
            f'{where}: is not a run_config.json (no "options" object); give the run_config.json of a finished run '
            "or a TOML file (a name not ending in .json)"
        )
    return {
        RUN_CONFIG_RENAMED.get(key, key): value
        for key, value in options.items()
        if key not in RUN_CONFIG_SKIPPED and value is not None
    }


def merge_config_file(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    path: str | Path,
    *,
    kinds: Mapping[object, str] | None = None,
    command_line_only: Collection[str] = (),
) -> tuple[argparse.Namespace, dict[str, str]]:
    """Parse ``argv`` with the options of a configuration file as defaults.

    The file's values are checked one by one with their option's argparse ``type`` and
    ``choices``, become the parser's defaults (``parser`` is changed), and ``argv`` is parsed
    again: a flag on the command line wins over the file, the file over the built-in defaults.

    Parameters
    ----------
    parser
        The command's parser.
    argv
        The command line (``None``: ``sys.argv[1:]``).
    path
        The configuration file (see :func:`read_config_file`).
    kinds
        Kinds of value (``NUMBER``, ``KEYWORDS``, ...) of the command's own argparse type
        functions, added to :data:`BASE_KINDS`.
    command_line_only
        Destinations of options a file may not set (``verbose``, ``config``, ...).

    Returns
    -------
    args : argparse.Namespace
        The merged arguments.
    from_file : dict
        ``{dest: key as written}`` of the options whose value came from the file.

    Raises
    ------
    ConfigError
        Naming the file and the key: unreadable or invalid file, unknown key, wrong type,
        value the option does not accept, a command-line-only option, one option set twice.
    """
    path = Path(path)
    values = read_config_file(path)
    defaults, keys = file_defaults(
        parser,
        values,
        where=f"--config {path}",
        base=Path(os.path.abspath(path)).parent,
        kinds={**BASE_KINDS, **(kinds or {})},
        command_line_only=command_line_only,
    )
    given = given_on_command_line(parser, argv)
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    from_file = {dest: keys[dest] for dest in defaults if dest not in given}
    logger.debug("--config %s: %s", path, ", ".join(from_file.values()) or "every value overridden")
    return args, from_file


def file_defaults(
    parser: argparse.ArgumentParser,
    values: Mapping[str, object],
    *,
    where: str,
    base: Path,
    kinds: Mapping[object, str],
    command_line_only: Collection[str] = (),
) -> tuple[dict[str, object], dict[str, str]]:
    """Check a file's values against the parser's options.

    Returns ``({dest: value as the command line would give it}, {dest: key as written})``;
    relative paths are joined to ``base``. Raises :class:`ConfigError` naming ``where`` and the
    key.
    """
    by_name = _options_by_name(parser)
    defaults: dict[str, object] = {}
    keys: dict[str, str] = {}
    for key, value in values.items():
        name = str(key).strip().replace("_", "-")
        action = by_name.get(name)
        if action is None:
            close = difflib.get_close_matches(name, [n for n, a in by_name.items() if a.dest not in command_line_only])
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where}: unknown key {key!r}{hint}; keys are the long options of {parser.prog} without the "
                "leading dashes, see --help"
            )
        if action.dest in command_line_only:
            flags = ", ".join(action.option_strings)
            raise ConfigError(f"{where}: key {key!r} is a command-line option only; give {flags} on the command line")
        if action.dest in keys:
            raise ConfigError(f"{where}: keys {keys[action.dest]!r} and {key!r} set the same option; keep one")
        defaults[action.dest] = _file_value(action, name, str(key), value, where, base, kinds)
        keys[action.dest] = str(key)
    return defaults, keys


def given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """Destinations of the options present in ``argv``."""
    unset = object()
    # argparse fills in a default only where the namespace has no value yet, so whatever is
    # not ``unset`` after parsing came from the command line.
    blank = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    parsed = parser.parse_args(argv, blank)
    return {dest for dest, value in vars(parsed).items() if value is not unset}


def blame_file(
    exc: BiasPipelineError, parser: argparse.ArgumentParser, from_file: Mapping[str, str], path: str | Path
) -> None:
    """Add "(set by KEY in --config FILE)" to an error that starts with an option the file set."""
    match = re.match(r"--[\w-]+", str(exc))
    action = parser._option_string_actions.get(match.group()) if match else None
    if action is not None and action.dest in from_file:
        exc.args = (f"{exc} (set by {from_file[action.dest]} in --config {path})",)


def _options_by_name(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        option[2:]: action
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and action.dest != argparse.SUPPRESS
    }


def _file_value(
    action: argparse.Action,
    name: str,
    key: str,
    value: object,
    where: str,
    base: Path,
    kinds: Mapping[object, str],
) -> object:
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise _wrong_type(where, key, value, BOOLEAN, None, action)
        if isinstance(action, argparse.BooleanOptionalAction):
            return value != name.startswith("no-")
        return action.const if value else action.default
    kind = kinds.get(action.type, STRING)
    if isinstance(action.nargs, int):
        if not isinstance(value, list) or len(value) != action.nargs:
            raise _wrong_type(where, key, value, kind, action.nargs, action)
        return [_file_item(action, key, item, where, base, kind) for item in value]
    return _file_item(action, key, value, where, base, kind)


def _file_item(action: argparse.Action, key: str, value: object, where: str, base: Path, kind: str) -> object:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == PATH:
        if not isinstance(value, str) or not value:
            raise _wrong_type(where, key, value, kind, action.nargs, action)
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(os.path.normpath(base / path))
    if kind == KEYWORDS and isinstance(value, list) and all(isinstance(item, str) for item in value):
        text = ",".join(value)
    elif kind in (NUMBER, INTEGER) and number and (kind == NUMBER or isinstance(value, int)):
        text = repr(value)  # repr of a float gives it back exactly
    elif kind in (STRING, KEYWORDS) and isinstance(value, str):
        text = value
    elif kind == STRING and number and action.choices is not None:
        text = str(value)  # input-bits = 12 for "12"; the choices are checked below
    else:
        raise _wrong_type(where, key, value, kind, action.nargs, action)
    try:
        converted = text if action.type is None else action.type(text)  # type: ignore[operator]
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: key {key!r}: {exc}; correct the value") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(toml_value(c) for c in action.choices)
        raise ConfigError(f"{where}: key {key!r} = {_shown(value)} is not one of {choices}")
    return converted


def _wrong_type(where: str, key: str, value: object, kind: str, nargs: object, action: argparse.Action) -> ConfigError:
    single, plural = _EXPECTED[kind]
    expected = f"a list of {nargs} {plural}" if isinstance(nargs, int) and nargs else single
    example = f", e.g. {key} = true" if kind == BOOLEAN else ""
    if action.default is not None and action.nargs != 0:
        try:
            example = f", e.g. {key} = {toml_value(action.default)}"
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
    and paths (basic strings, escaped), and lists or tuples of those.

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
    """
    if isinstance(value, bool):
        return "true" if value else "false"
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


def format_config(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    exclude: Collection[str] = (),
    header: Sequence[str] = (),
) -> str:
    """The options in ``args`` as a TOML configuration file that :func:`merge_config_file` reads
    back to the same values.

    Options come in the order of ``--help``, under their group's title; paths are made absolute
    (so the text may be saved anywhere); an unset option is a comment to fill in.

    Parameters
    ----------
    parser
        The command's parser.
    args
        The parsed (merged) arguments.
    exclude
        Destinations to leave out (command-line-only options).
    header
        Comment lines for the top of the file.

    Raises
    ------
    ConfigError
        When a value has no TOML form (a path that is not valid UTF-8).
    """
    lines = [f"# {line}" if line else "#" for line in header]
    for group in parser._action_groups:
        entries = []
        for action in group._group_actions:
            names = [o[2:] for o in action.option_strings if o.startswith("--")]
            if not names or action.dest in exclude or action.dest == argparse.SUPPRESS:
                continue
            value = getattr(args, action.dest, None)
            if value is None:
                placeholder = action.metavar if isinstance(action.metavar, str) else names[0].upper()
                entries.append(f"# {names[0]} = {_toml_string(placeholder)}  # not set")
                continue
            if isinstance(value, Path):
                value = os.path.abspath(value.expanduser())
            try:
                entries.append(f"{names[0]} = {toml_value(value)}")
            except ValueError as exc:
                raise ConfigError(f"--write-config: --{names[0]}: {exc}; cannot be written as TOML") from None
        if entries:
            lines += ["", f"# {group.title}", *entries]
    return "\n".join(lines).lstrip("\n") + "\n"

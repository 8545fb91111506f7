"""YAML configs as HAT uses them: every key is also a command-line flag (kebab-case), flags override YAML.

``--configs=A.yml`` and ``--sub-configs=B.yml`` are read in that order; the command line comes last, so it wins
(argparse keeps the last occurrence). Keys no parser knows are reported with the file they came from.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from hat.errors import ConfigError

CONFIG_FLAGS = ("--configs", "--sub-configs")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader, except that a key given twice in one mapping is an error (yaml keeps the last value
    silently; a config whose first value is quietly ignored is a mistake the user should see)."""


def _unique_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # the constructor below reports an unhashable key
        if key in seen:
            raise _DuplicateKey(key, seen[key], key_node.start_mark.line + 1)
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key, first: int, again: int):
        super().__init__(key, first, again)
        self.key, self.first, self.again = key, first, again


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(path: str) -> Dict[str, object]:
    """A YAML mapping from ``path``; every problem (missing, not UTF-8, not YAML, not a mapping, a key given twice)
    is one :class:`ConfigError` naming the file."""
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a directory, not a YAML file")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as "
                          f"UTF-8") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as e:
        raise ConfigError(f"{path} line {e.again}: key '{e.key}' given twice (first on line {e.first}); keep one"
                          ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    out: Dict[str, object] = {}
    spelled: Dict[str, str] = {}
    for k, v in data.items():
        norm = str(k).replace("_", "-")
        if norm in spelled:  # lat_iter and lat-iter are one key
            raise ConfigError(f"{path}: key '{norm}' given twice (as '{spelled[norm]}' and '{k}'); keep one")
        spelled[norm] = str(k)
        out[str(k)] = v
    return out


def int_at_least(low: int):
    """An argparse ``type``: an integer >= ``low`` (the error is one line through the stage parsers)."""

    def parse(text):
        try:
            v = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v

    parse.__name__ = f"int>={low}"
    return parse


def float_between(low: float, high: float, high_open: bool = False):
    """An argparse ``type``: a float in [low, high] (or [low, high) with ``high_open``)."""

    def parse(text):
        try:
            v = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
        if not (low <= v <= high) or (high_open and v >= high):
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}{')' if high_open else ']'}, got {v}")
        return v

    parse.__name__ = "float"
    return parse


def _scalar(v) -> str:
    return str(v)


def to_argv(d: Dict[str, object], positional: Sequence[str] = ()) -> Tuple[List[str], List[str]]:
    """YAML mapping -> (flag argv, positional values). ``True`` becomes a bare flag, ``False``/``None`` nothing,
    lists become several values after one flag."""
    argv, pos = [], []
    for key, val in d.items():
        if key in positional:
            if val is not None:
                pos.append(_scalar(val))
            continue
        flag = "--" + key.replace("_", "-")
        if val is None or val is False:
            continue
        if val is True:
            argv.append(flag)
        elif isinstance(val, (list, tuple)):
            argv.append(flag)
            argv.extend(_scalar(v) for v in val)
        else:
            argv.append(f"{flag}={_scalar(val)}" if str(val).startswith("-") else flag)
            if not str(val).startswith("-"):
                argv.append(_scalar(val))
    return argv, pos


def split_config_flags(argv: Sequence[str], flags: Iterable[str] = CONFIG_FLAGS) -> Tuple[Dict[str, str], List[str]]:
    """Take ``--configs X`` / ``--configs=X`` (and the other config flags) out of argv."""
    flags = tuple(flags)
    found: Dict[str, str] = {}
    rest: List[str] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        tok = argv[i]
        name, eq, val = tok.partition("=")
        if name in flags:
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{name} needs a file path")
                val = argv[i + 1]
                i += 1
            found[name.lstrip("-").replace("-", "_")] = val
        else:
            rest.append(tok)
        i += 1
    return found, rest


class Loaded:
    """YAML files merged in order, remembering which file each key came from."""

    def __init__(self, paths: Sequence[Optional[str]]):
        self.values: Dict[str, object] = {}
        self.origin: Dict[str, str] = {}
        for path in paths:
            if not path:
                continue
            for key, val in load_yaml(path).items():
                norm = key.replace("_", "-")
                self.values[norm] = val
                self.origin[norm] = path

    def check_known(self, known: Iterable[str], ignore: Iterable[str] = ()):
        """Raise ConfigError for the first key that is not a known option (dest or flag name)."""
        known = {k.replace("_", "-").lstrip("-") for k in known}
        ignore = set(ignore)
        for key, path in self.origin.items():
            if key not in known and key not in ignore:
                raise ConfigError(f"unknown key '{key}' in {path}")


def given_dests(values: Dict[str, object], cli: Sequence[str]) -> set:
    """The argparse dests a user set: the YAML keys and the ``--flags`` on the command line (not defaults)."""
    out = {k.replace("-", "_") for k in values}
    out |= {t[2:].split("=", 1)[0].replace("-", "_") for t in cli if t.startswith("--")}
    return out


def parser_option_names(parser: argparse.ArgumentParser) -> List[str]:
    names = []
    for action in parser._actions:
        names.append(action.dest)
        names.extend(action.option_strings)
    return names


class StageArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one :class:`ConfigError` line (exit code 2 through :func:`hat.cli.run`), not usage +
    error on stderr."""

    def error(self, message):
        raise ConfigError(message)

    def parse_known_args(self, args=None, namespace=None):
        """An unknown ``--flag`` is named first, before a missing required argument it may have displaced."""
        import sys

        argv = list(sys.argv[1:] if args is None else args)
        known = {o for a in self._actions for o in a.option_strings}
        for tok in argv:
            if tok == "--":
                break
            if tok.startswith("--") and tok.split("=", 1)[0] not in known:
                raise ConfigError(f"unrecognized arguments: {tok}")
        return super().parse_known_args(argv, namespace)


def stage_parser(description: str, prog: Optional[str] = None) -> argparse.ArgumentParser:
    """A parser for a stage script whose options are its YAML keys; errors are one :class:`ConfigError` line."""
    return StageArgumentParser(description=description, allow_abbrev=False, prog=prog)


def parse_stage(parser: argparse.ArgumentParser, argv: Sequence[str], config_flags=("--configs",)):
    """Parse a non-fairseq stage: YAML files from ``config_flags`` become defaults, flags override them, and an
    unknown YAML key is an error naming key and file."""
    found, rest = split_config_flags(argv, config_flags)
    loaded = Loaded([found.get(f.lstrip("-").replace("-", "_")) for f in config_flags])
    loaded.check_known(parser_option_names(parser))
    yaml_argv, _ = to_argv(loaded.values)
    args = parser.parse_args(yaml_argv + rest)
    args.given_keys = sorted(given_dests(loaded.values, rest))
    for f in config_flags:
        setattr(args, f.lstrip("-").replace("-", "_"), found.get(f.lstrip("-").replace("-", "_")))
    return args

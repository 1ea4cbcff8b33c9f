"""Config dataclasses as the one home of every default.

A config class is a plain ``@dataclass``; each field may carry ``metadata={"help": ...}``.
``add_config_args`` turns its fields into command-line flags, ``config_from_args`` builds the
instance back, so a flag, a JSON config file (``--config FILE``) and a Python call all mean the
same thing: dataclass default < config file < explicit flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from dynacomp.errors import UsageError

C = TypeVar("C")
CONFIG_KEYS = "_config_keys"   # parser default: the fields of every config class it was given


def field(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """``dataclasses.field`` with a help text for the generated flag."""
    if isinstance(default, (list, dict, set)):
        value = default
        kwargs["default_factory"] = lambda: type(value)(value)
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(metadata={"help": help}, **kwargs)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _argparse_kwargs(tp: Any) -> dict[str, Any]:
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        choices = typing.get_args(tp)
        return {"choices": choices, "type": type(choices[0])}
    if origin in (tuple, list):
        inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return {"nargs": "+", "type": inner[0] if inner else str}
    if tp in (int, float, str, Path):
        return {"type": tp}
    raise TypeError(f"no command-line form for field type {tp!r}")


def add_config_args(parser: argparse.ArgumentParser, config_cls: type, *, config_file: bool = True) -> None:
    """Add one flag per field of ``config_cls`` (and ``--config FILE`` for a JSON file)."""
    hints = typing.get_type_hints(config_cls)
    group = parser.add_argument_group(f"{config_cls.__name__} options")
    for f in dataclasses.fields(config_cls):
        if not f.init or f.name.startswith("_"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "")
        group.add_argument(
            _flag(f.name), dest=f.name, default=argparse.SUPPRESS,
            help=f"{help_text} (default: {default})" if help_text else f"(default: {default})",
            **_argparse_kwargs(hints[f.name]),
        )
    if config_file and not any(a.dest == "config" for a in parser._actions):
        parser.add_argument("--config", type=Path, default=None,
                            help="JSON file with option values; flags given here override it")
    # Every config class of the command, so a file key that none of them knows is an error.
    known = parser.get_default(CONFIG_KEYS) or frozenset()
    parser.set_defaults(**{CONFIG_KEYS: known | {f.name for f in dataclasses.fields(config_cls) if f.init}})


def _check_scalar(config_cls: type, key: str, tp: Any, value: Any) -> Any:
    """``value`` if it fits a scalar or Literal field of type ``tp`` (an int where a float is due
    becomes one); a ValueError naming the field if not. Other types pass unchecked."""
    if typing.get_origin(tp) is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{config_cls.__name__}.{key} is one of {typing.get_args(tp)}, got {value!r}")
        return value
    if tp not in (bool, int, float, str):
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"{config_cls.__name__}.{key} is {tp.__name__}, got {value!r}")
    return value


def config_from_dict(config_cls: type[C], values: dict[str, Any]) -> C:
    """Build ``config_cls`` from a dict, refusing unknown keys and values of the wrong type, and
    coercing JSON lists to tuples and strings to paths."""
    hints = typing.get_type_hints(config_cls)
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} option(s): {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in values.items():
        tp, optional = _unwrap_optional(hints[key])
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        elif tp is Path and isinstance(value, str):
            value = Path(value)
        elif value is not None or not optional:
            value = _check_scalar(config_cls, key, tp, value)
        kwargs[key] = value
    return config_cls(**kwargs)


def config_from_args(config_cls: type[C], args: argparse.Namespace) -> C:
    """Merge dataclass defaults, the optional ``--config`` JSON file and explicit flags."""
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path is not None:
        try:
            values.update(json.loads(Path(config_path).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"cannot read config file {config_path}: {err}; pass a JSON object of options") from err
    unknown = set(values) - getattr(args, CONFIG_KEYS, set(values))
    if unknown:
        raise UsageError(f"config file {config_path}: unknown option(s) {', '.join(sorted(unknown))}; "
                         f"see --help for the options")
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return config_from_dict(config_cls, {k: v for k, v in values.items() if k in names})


def require_positive(config: Any, *names: str) -> None:
    """For a config's ``__post_init__``: a ValueError naming the option (and its flag) for the first
    of ``names`` that is not > 0 (None passes: it means "the default")."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ValueError(f"{type(config).__name__}.{name} ({_flag(name)}) must be > 0, got {value}")


def to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config (paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))

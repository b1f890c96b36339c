"""Specs: a config section as a frozen dataclass, checked once at a module's boundary.

Every command, trainer and study turns its `ConfigDict` into one of these (`to_dataclass`),
so a wrong type, range or unknown key is a `ConfigError` naming the key, raised before
anything runs; each default is defined once, in the dataclass (`config_dict` builds a config
section from it). This module reads no files, so the library layers (diffusion, pipeline,
weights, train, studies) can check their inputs without depending on config loading
(`diffjax.config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Sequence

import ml_collections


class ConfigError(ValueError):
    """A config file, override or value is wrong; the message names the key."""


def unknown_key_message(key: str, valid: Sequence[str], what: str = "config key") -> str:
    """Name the unknown key and the closest valid ones (by full path or by last part)."""
    leaf = key.rsplit(".", 1)[-1]

    def score(candidate: str) -> float:
        return max(difflib.SequenceMatcher(None, key, candidate).ratio(),
                   difflib.SequenceMatcher(None, leaf, candidate.rsplit(".", 1)[-1]).ratio())

    close = [c for c in sorted(valid, key=score, reverse=True)[:3] if score(c) >= 0.5]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (f"unknown {what} {key!r}{hint} (valid keys: "
            f"{', '.join(sorted(valid)[:40])}{', ...' if len(valid) > 40 else ''})")


def _check_type(value, tp, name: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{name} must be a sequence, got {value!r}")
        if args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name} must have {len(args)} items, got {value!r}")
            return tuple(_check_type(v, a, f"{name}[{i}]")
                         for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else typing.Any
        return tuple(_check_type(v, inner, f"{name}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return to_dataclass(value, tp, prefix=name + ".")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{name} must be {tp.__name__}, got {value!r}")
    return value


def to_dataclass(config, cls, prefix: str = ""):
    """Build frozen dataclass `cls` from a ConfigDict/dict, checking every field's type.

    Missing fields take the dataclass default; a field with no default must be present;
    unknown keys fail (they are typos). Range checks live in the dataclass's
    `__post_init__` and raise ConfigError naming the field.
    """
    data = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(unknown_key_message(prefix + unknown[0],
                                               [prefix + k for k in fields]))
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check_type(data[name], hints[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config key {prefix + name!r} is required")
    return cls(**kwargs)


def config_dict(cls, **values) -> ml_collections.ConfigDict:
    """A ConfigDict of every field of dataclass `cls`: its default, or `values[name]`.

    How a config file states a section so that each default is defined once, in the
    dataclass its trainer or command reads: the file sets only its own choices, yet every
    key is in the config (so `--config.a.b=...` can override it and config.json records
    it). A field without a default must be given; an unknown name fails.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(unknown_key_message(unknown[0], list(fields)))
    out = {}
    for name, f in fields.items():
        if name in values:
            out[name] = values[name]
        elif f.default is not dataclasses.MISSING:
            out[name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[name] = f.default_factory()
        else:
            raise ConfigError(f"{cls.__name__}.{name} has no default; the config must set it")
        if dataclasses.is_dataclass(out[name]):
            out[name] = dataclasses.asdict(out[name])
    return ml_collections.ConfigDict(out)


def check_range(name: str, value, lo=None, hi=None, lo_open=False) -> None:
    """Raise ConfigError naming `name` unless lo <= value <= hi (lo < value if lo_open)."""
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name} must be <= {hi}, got {value!r}")

"""Configs are the experiment: loading, overriding, validating and saving them.

A config is an `ml_collections.ConfigDict` built by a `get_config(arg)` function
(big_vision style), then changed by `--config.a.b=value` overrides, then locked so that a
typo is an error naming the key and the closest valid keys. `--config` names one of:

- a packaged config by module name, `diffjax.configs.sample:steps=30,sampler=euler` (the
  commands' defaults ship inside the package, so an installed wheel needs no checkout);
- a config file, `configs/sample.py:steps=30` (a path, run with `runpy.run_path`);
- a run's saved `config.json`.

At module boundaries it becomes a frozen dataclass (`to_dataclass`), which checks types and
ranges with messages naming the field. Every run writes the resolved config as JSON
(`save_config`); passing that JSON back as `--config` reproduces the run.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import json
import os
import re
import runpy
import types
import typing
from collections.abc import Mapping, Sequence

import ml_collections

CONFIG_JSON = "config.json"


class ConfigError(ValueError):
    """A config file, override or value is wrong; the message names the key."""


# ----------------------------------------------------------------------------------------
# get_config(arg) helpers
# ----------------------------------------------------------------------------------------
NONFINITE = ("nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity")


def _parse_scalar(text: str, like, key: str):
    """Parse `text` into the type of `like` (the default value), naming `key` on failure."""
    if like is None or isinstance(like, str) and not isinstance(like, bool):
        if like is None:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                pass
            # nan, inf: numbers Python's literal syntax lacks (the consumer checks them)
            return float(text) if text.strip().lower() in NONFINITE else text
        return text
    try:
        if isinstance(like, bool):
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(like, int):
            value = ast.literal_eval(text)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
            return value
        if isinstance(like, float):
            return float(text)
        if isinstance(like, (tuple, list)):
            if text.strip()[:1] in "([":
                value = ast.literal_eval(text)
            else:  # "5,10,20": items typed like the default's first item
                value = tuple(v for v in text.split(",") if v)
                if like and not isinstance(like[0], str):
                    value = tuple(_parse_scalar(v.strip(), like[0], key) for v in value)
            if not isinstance(value, (tuple, list)):
                value = (value,)
            return type(like)(value)
    except (ValueError, SyntaxError):
        pass
    raise ConfigError(f"config key {key!r}: cannot parse {text!r} as "
                      f"{type(like).__name__} (its default is {like!r})")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parse a get_config argument `"a=1,b=x"` typed by the defaults (big_vision style).

    Unknown names fail naming the closest known ones, so `:stesp=3` is not silently ignored.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        if "=" not in item:
            raise ConfigError(f"config argument {item!r} is not key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in defaults:
            raise ConfigError(_unknown_key_message(key, list(defaults), "config argument"))
        out[key] = _parse_scalar(text, defaults[key], key)
    return ml_collections.ConfigDict(out)


# ----------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _config_function(source: str):
    """The `get_config` of a config file (`*.py`, by path) or a packaged config module."""
    if source.endswith(".py"):
        if not os.path.exists(source):
            raise ConfigError(f"config file {source!r} does not exist")
        namespace = runpy.run_path(source)
    elif MODULE_NAME.fullmatch(source):
        try:
            namespace = vars(importlib.import_module(source))
        except ModuleNotFoundError as e:
            if e.name is None or not (source == e.name or source.startswith(e.name + ".")):
                raise
            raise ConfigError(f"config module {source!r} does not exist (packaged configs: "
                              "diffjax.configs.sample, diffjax.configs.bench.tiny, ...)"
                              ) from None
    else:
        raise ConfigError(f"config {source!r}: expected a packaged config module "
                          "(diffjax.configs.NAME), a .py file with get_config, or a .json "
                          "saved by a previous run")
    if not callable(namespace.get("get_config")):
        raise ConfigError(f"config {source!r} has no get_config(arg) function")
    return namespace["get_config"]


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load a config, apply overrides, lock, return it.

    spec: `diffjax.configs.NAME[:arg]` (a packaged config module), `path.py[:arg]` (a config
    file) or a saved `config.json`; `arg` is passed to `get_config(arg)`.
    overrides: `"a.b=value"` strings (the part after `--config.`).
    """
    if spec.endswith(".json"):
        if not os.path.exists(spec):
            raise ConfigError(f"config file {spec!r} does not exist")
        with open(spec, encoding="utf-8") as f:
            data = json.load(f)
        data.pop("_diffjax", None)
        config = ml_collections.ConfigDict(data)
    else:
        source, _, arg = spec.partition(":")
        get_config = _config_function(source)
        config = get_config(arg or None) if arg else get_config()
        if not isinstance(config, ml_collections.ConfigDict):
            config = ml_collections.ConfigDict(config)
    config.lock()
    _unlock_open_groups(config)
    for override in overrides:
        apply_override(config, override)
    return config


# Groups whose keys are not fixed by the config: an override may add one, or a group
# inside one (the consumer checks them: a sampler's options against its function's
# signature; a study's {sampler: {option: value}}).
OPEN_GROUPS = ("options", "sampler_options")


def _unlock_open_groups(config: ml_collections.ConfigDict) -> None:
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            if key in OPEN_GROUPS:
                value.unlock()
            else:
                _unlock_open_groups(value)


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(_flat_keys(v, prefix + k + "."))
    return keys


def _unknown_key_message(key: str, valid: Sequence[str], what: str = "config key") -> str:
    """Name the unknown key and the closest valid ones (by full path or by last part)."""
    leaf = key.rsplit(".", 1)[-1]

    def score(candidate: str) -> float:
        return max(difflib.SequenceMatcher(None, key, candidate).ratio(),
                   difflib.SequenceMatcher(None, leaf, candidate.rsplit(".", 1)[-1]).ratio())

    close = [c for c in sorted(valid, key=score, reverse=True)[:3] if score(c) >= 0.5]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (f"unknown {what} {key!r}{hint} (valid keys: "
            f"{', '.join(sorted(valid)[:40])}{', ...' if len(valid) > 40 else ''})")


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Apply one `a.b=value` override, typed by the current value; unknown keys fail."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not key=value")
    dotted, text = override.split("=", 1)
    node = config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if (isinstance(node, ml_collections.ConfigDict) and part not in node
                and config.is_locked and not node.is_locked):
            if i == len(parts) - 1:
                node[part] = _parse_scalar(text, None, dotted)  # a new key of an open group
                return
            node[part] = ml_collections.ConfigDict()   # a new group inside an open group
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(_unknown_key_message(dotted, _flat_keys(config)))
        if i < len(parts) - 1:
            node = node[part]
    last = parts[-1]
    current = node[last]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config key {dotted!r} is a group; set one of its keys "
                          f"({', '.join(current.keys())})")
    value = _parse_scalar(text, current, dotted)
    with node.unlocked():
        node[last] = value
    if config.is_locked:       # leaving `unlocked()` locked the groups below `node` again
        _unlock_open_groups(config)


# ----------------------------------------------------------------------------------------
# saving
# ----------------------------------------------------------------------------------------
def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def save_config(config: ml_collections.ConfigDict, directory: str, name: str = CONFIG_JSON,
                extra: Mapping | None = None) -> str:
    """Write the resolved config (plus diffjax version) as JSON, atomically; return its path."""
    from etils import epath

    from diffjax import __version__
    data = config_to_dict(config)
    data["_diffjax"] = {"version": __version__, **(extra or {})}
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = directory / (name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return os.fspath(path)


# ----------------------------------------------------------------------------------------
# ConfigDict -> frozen dataclass
# ----------------------------------------------------------------------------------------
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
        raise ConfigError(_unknown_key_message(prefix + unknown[0],
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
        raise ConfigError(_unknown_key_message(unknown[0], list(fields)))
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

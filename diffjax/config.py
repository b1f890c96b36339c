"""Configs are the experiment: loading, overriding, validating and saving them.

A config is an `ml_collections.ConfigDict` built by a `get_config(arg)` function
(big_vision style), then changed by `--config.a.b=value` overrides, then locked so that a
typo is an error naming the key and the closest valid keys. `--config` names one of:

- a packaged config by module name, `diffjax.configs.sample:steps=30,sampler=euler` (the
  commands' defaults ship inside the package, so an installed wheel needs no checkout);
- a config file, `configs/sample.py:steps=30` (a path, run with `runpy.run_path`);
- a run's saved `config.json`.

At module boundaries it becomes a frozen dataclass (`diffjax.spec.to_dataclass`), which
checks types and ranges with messages naming the field. Every run writes the resolved
config as JSON (`save_config`); passing that JSON back as `--config` reproduces the run.
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import os
import re
import runpy
from collections.abc import Mapping, Sequence

import ml_collections

from diffjax.spec import ConfigError, unknown_key_message

CONFIG_JSON = "config.json"


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
            raise ConfigError(unknown_key_message(key, list(defaults), "config argument"))
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
        namespace = _run_config_file(source)
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


def _run_config_file(source: str) -> dict:
    """Run a config file; its syntax errors and exceptions become one-line ConfigErrors
    naming the file and line (a config file is the user's input, not diffjax's code)."""
    try:
        return runpy.run_path(source)
    except SyntaxError as e:
        raise ConfigError(f"config file {source!r} line {e.lineno}: syntax error "
                          f"({e.msg})") from None
    except Exception as e:  # noqa: BLE001 - whatever the user's file raises
        raise ConfigError(f"config file {source!r} raised {type(e).__name__}: {e}"
                          f"{_user_line(e, source)}") from None


def _user_line(e: BaseException, source: str) -> str:
    """' (line N)' of the innermost frame of `e` inside `source`, if any."""
    import traceback
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(source)]
    return f" (line {frames[-1].lineno})" if frames else ""


def _read_json_config(spec: str) -> dict:
    if not os.path.exists(spec):
        raise ConfigError(f"config file {spec!r} does not exist")
    if os.path.isdir(spec):
        raise ConfigError(f"config {spec!r} is a directory; expected a config.json file")
    try:
        with open(spec, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {spec!r} is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        what = "is empty" if not e.doc.strip() else f"is not valid JSON ({e.msg}, line {e.lineno})"
        raise ConfigError(f"config file {spec!r} {what}; expected a config.json written by "
                          "a diffjax run") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"config file {spec!r} holds {type(data).__name__} "
                          f"{json.dumps(data)[:40]}; expected a JSON object of config keys")
    return data


def check_finite(config, prefix: str = "") -> None:
    """Refuse NaN anywhere in a config, and infinities outside the open option groups
    (where the consumer decides: heun's s_tmax defaults to inf). A non-finite number is
    never what a user meant, and would silently give black images or be dropped."""
    items = config.items() if hasattr(config, "items") else ()
    for key, value in items:
        name = prefix + str(key)
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            if key not in OPEN_GROUPS:
                check_finite(value, name + ".")
            else:
                _check_no_nan(value, name + ".")
            continue
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"config key {name!r} is {v}; expected a finite number")


def _check_no_nan(group, prefix: str) -> None:
    for key, value in group.items():
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            _check_no_nan(value, prefix + str(key) + ".")
        elif isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"config key {prefix + str(key)!r} is nan; expected a number")


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load a config, apply overrides, lock, return it.

    spec: `diffjax.configs.NAME[:arg]` (a packaged config module), `path.py[:arg]` (a config
    file) or a saved `config.json`; `arg` is passed to `get_config(arg)`.
    overrides: `"a.b=value"` strings (the part after `--config.`).
    """
    if spec.endswith(".json"):
        data = _read_json_config(spec)
        data.pop("_diffjax", None)
        config = ml_collections.ConfigDict(data)
    else:
        source, _, arg = spec.partition(":")
        get_config = _config_function(source)
        try:
            config = get_config(arg or None) if arg else get_config()
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - a user's get_config may raise anything
            raise ConfigError(f"config {source!r}: get_config({arg!r}) raised "
                              f"{type(e).__name__}: {e}") from None
        if not isinstance(config, ml_collections.ConfigDict):
            try:
                config = ml_collections.ConfigDict(config)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"config {source!r}: get_config returned "
                                  f"{type(config).__name__}; expected a ConfigDict or dict"
                                  ) from e
    config.lock()
    _unlock_open_groups(config)
    for override in overrides:
        apply_override(config, override)
    check_finite(config)
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
            raise ConfigError(unknown_key_message(dotted, _flat_keys(config)))
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

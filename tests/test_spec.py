"""Specs (diffjax/spec.py): a config section as a frozen dataclass, checked at a module's
boundary — types, ranges and unknown keys named; `config_dict` states every field once."""

import dataclasses
import typing

import pytest

from diffjax import spec
from diffjax.config import apply_override


@dataclasses.dataclass(frozen=True)
class _Inner:
    rate: float = 0.1


@dataclasses.dataclass(frozen=True)
class _Spec:
    steps: int
    name: typing.Literal["a", "b"] = "a"
    inner: _Inner = _Inner()
    shape: tuple[int, ...] = (1,)

    def __post_init__(self):
        spec.check_range("steps", self.steps, lo=1)


def test_to_dataclass_checks_fields():
    s = spec.to_dataclass({"steps": 3, "inner": {"rate": 1}, "shape": [2, 3]}, _Spec)
    assert s == _Spec(3, "a", _Inner(1.0), (2, 3))
    with pytest.raises(spec.ConfigError, match="steps must be >= 1, got 0"):
        spec.to_dataclass({"steps": 0}, _Spec)
    with pytest.raises(spec.ConfigError, match="name must be one of"):
        spec.to_dataclass({"steps": 1, "name": "c"}, _Spec)
    with pytest.raises(spec.ConfigError, match="inner.rate must be a number"):
        spec.to_dataclass({"steps": 1, "inner": {"rate": "fast"}}, _Spec)
    with pytest.raises(spec.ConfigError, match="'stepz'"):
        spec.to_dataclass({"steps": 1, "stepz": 2}, _Spec)
    with pytest.raises(spec.ConfigError, match="'steps' is required"):
        spec.to_dataclass({}, _Spec)


def test_config_dict_states_every_field_once():
    """A config section from the dataclass: its defaults, the given choices, every key
    present (overridable), and back through to_dataclass unchanged."""
    c = spec.config_dict(_Spec, steps=4, shape=(1, 1))
    assert c.to_dict() == {"steps": 4, "name": "a", "inner": {"rate": 0.1}, "shape": (1, 1)}
    c.lock()
    apply_override(c, "inner.rate=2")
    assert spec.to_dataclass(c, _Spec) == _Spec(4, "a", _Inner(2.0), (1, 1))
    with pytest.raises(spec.ConfigError, match="_Spec.steps has no default"):
        spec.config_dict(_Spec)
    with pytest.raises(spec.ConfigError, match="unknown config key 'stepz'"):
        spec.config_dict(_Spec, stepz=1)

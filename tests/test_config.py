"""Config system: typed get_config args, locked overrides, JSON round trip, dataclass checks."""

import glob
import json
import os

import pytest

from diffjax import config as cfg

REPO = os.path.join(os.path.dirname(__file__), "..")
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True))
# Packaged configs by module name: diffjax/configs/bench/tiny.py -> diffjax.configs.bench.tiny
PACKAGED_CONFIGS = sorted(
    os.path.relpath(p, REPO)[:-3].replace(os.sep, ".")
    for p in glob.glob(os.path.join(REPO, "diffjax", "configs", "**", "*.py"), recursive=True)
    if os.path.basename(p) != "__init__.py")


def test_there_are_configs():
    assert CONFIG_FILES, "configs/ holds no config files"
    assert "diffjax.configs.sample" in PACKAGED_CONFIGS
    assert "diffjax.configs.bench.tiny" in PACKAGED_CONFIGS


@pytest.mark.parametrize("path", CONFIG_FILES + PACKAGED_CONFIGS,
                         ids=lambda p: p if p.startswith("diffjax.") else os.path.basename(p))
def test_every_config_loads_locks_and_round_trips(path, tmp_path):
    c = cfg.load_config(path)
    with pytest.raises(AttributeError):
        c.surely_not_a_key = 1           # locked: new keys are typos
    saved = cfg.save_config(c, str(tmp_path))
    data = json.loads(open(saved).read())
    assert data["_diffjax"]["version"]
    again = cfg.load_config(saved)
    assert cfg.config_to_dict(again) == cfg.config_to_dict(c)


def test_typed_get_config_args():
    c = cfg.load_config("configs/sample.py:steps=7,sampler=euler,guidance_scale=2")
    assert c.sampler.steps == 7 and isinstance(c.sampler.steps, int)
    assert c.sampler.name == "euler"
    assert c.guidance_scale == 2.0 and isinstance(c.guidance_scale, float)
    with pytest.raises(cfg.ConfigError, match="'stesp'.*did you mean 'steps'"):
        cfg.load_config("configs/sample.py:stesp=3")
    with pytest.raises(cfg.ConfigError, match="'steps'.*cannot parse 'x' as int"):
        cfg.load_config("configs/sample.py:steps=x")


def test_overrides_are_typed_and_typos_fail():
    c = cfg.load_config("configs/sample.py", ["sampler.steps=3", "mesh.shape=(2,1,4)",
                                              "guidance_scale=1", "negative_prompt=ugly"])
    assert c.sampler.steps == 3 and tuple(c.mesh.shape) == (2, 1, 4)
    assert c.guidance_scale == 1.0 and c.negative_prompt == "ugly"
    with pytest.raises(cfg.ConfigError, match="'num_stepz'.*did you mean 'sampler.steps'"):
        cfg.load_config("configs/sample.py", ["num_stepz=3"])
    with pytest.raises(cfg.ConfigError, match="'sampler.steps'.*cannot parse"):
        cfg.load_config("configs/sample.py", ["sampler.steps=2.5"])
    with pytest.raises(cfg.ConfigError, match="'sampler' is a group"):
        cfg.load_config("configs/sample.py", ["sampler=euler"])
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load_config("configs/nope.py")


def test_packaged_config_by_module_name_is_the_file_config():
    """`diffjax.configs.sample:args` (what an installed wheel uses) is the same config as the
    repository's `configs/sample.py:args`, which re-exports it."""
    by_name = cfg.load_config("diffjax.configs.sample:steps=7,sampler=euler", ["seeds=3"])
    by_path = cfg.load_config("configs/sample.py:steps=7,sampler=euler", ["seeds=3"])
    assert cfg.config_to_dict(by_name) == cfg.config_to_dict(by_path)
    assert by_name.sampler.steps == 7 and by_name.seeds == "3"
    with pytest.raises(cfg.ConfigError, match="config module 'diffjax.configs.nope' does not"):
        cfg.load_config("diffjax.configs.nope")
    with pytest.raises(cfg.ConfigError, match="'diffjax.config' has no get_config"):
        cfg.load_config("diffjax.config")
    with pytest.raises(cfg.ConfigError, match="expected a packaged config module"):
        cfg.load_config("configs/sample")
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load_config("runs/nope/config.json")


def test_list_override_items_are_typed_like_the_default():
    c = cfg.load_config("diffjax.configs.compare.gmm_convergence",
                        ["steps=5, 10", "guidance_scales=1,3.5", "samplers=euler,heun"])
    assert c.steps == (5, 10) and c.guidance_scales == (1.0, 3.5)
    assert c.samplers == ("euler", "heun")
    with pytest.raises(cfg.ConfigError, match="cannot parse '5,ten'"):
        cfg.apply_override(c, "steps=5,ten")


def test_new_keys_of_open_groups_parse_nan_and_inf_as_numbers():
    """So a sampler option set to nan is refused as NaN, naming it (and s_tmax=inf, heun's
    own default, is a number)."""
    c = cfg.load_config("diffjax.configs.compare.gmm_convergence", [
        "sampler_options.heun.s_tmax=inf", "sampler_options.heun.s_noise=1.003",
        "sampler_options.unipc.variant=bh1"])
    opts = c.sampler_options
    assert opts.heun.s_tmax == float("inf")
    assert opts.heun.s_noise == 1.003 and opts.unipc.variant == "bh1"
    with pytest.raises(cfg.ConfigError, match="'sampler_options.heun.s_churn' is nan"):
        cfg.load_config("diffjax.configs.compare.gmm_convergence",
                        ["sampler_options.heun.s_churn=nan"])


def test_non_finite_numbers_are_refused_in_every_key():
    """nan or inf in any key outside the open option groups is named at load time (in a
    list too), before anything uses it."""
    with pytest.raises(cfg.ConfigError, match="'guidance_scales' is nan; expected a finite"):
        cfg.load_config("diffjax.configs.compare.gmm_convergence", ["guidance_scales=1,nan"])
    with pytest.raises(cfg.ConfigError, match="'guidance_scale' is inf; expected a finite"):
        cfg.load_config("diffjax.configs.sample", ["guidance_scale=inf"])

"""The trainers' config path (diffjax/train/spec.py): every packaged training config holds
every key of its trainer's spec (so each can be overridden and is recorded) and reads back
as that spec; run records written before a key existed read with its default; bad values
and typos are named before anything is built."""

import glob
import json
import os

import ml_collections
import pytest

from diffjax.config import load_config

from diffjax.spec import ConfigError
from diffjax.train.spec import (SHAPES_PROMPTS, CLIPRun, UNetRun, VAERun, run_spec,
                                spec_dict)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {"unet": UNetRun, "vae": VAERun, "clip": CLIPRun}
PACKAGED = ["diffjax.configs.train.unet", "diffjax.configs.train.vae",
            "diffjax.configs.train.clip", "diffjax.configs.mini.unet",
            "diffjax.configs.mini.vae", "diffjax.configs.mini.clip"]


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_config_is_its_spec_with_every_key(name):
    config = load_config(name)
    spec = run_spec(config, RUNS[config.trainer])
    assert json.loads(json.dumps(spec_dict(spec))) == json.loads(config.to_json())


def test_recorded_stage_configs_read_with_defaults_for_newer_keys():
    """The mini recipe's shipped records (config.json of each stage, written before
    train.sample_prompts and the VAE's train_only existed) read as specs."""
    records = [os.path.join(REPO, "diffjax", "assets", "mini", "diffjax_mini.json"),
               *glob.glob(os.path.join(REPO, "experiments", "results", "mini", "*",
                                       "diffjax_mini.json"))]
    seen = set()
    for path in records:
        with open(path) as f:
            for stage, config in json.load(f)["configs"].items():
                config = {k: v for k, v in config.items() if k != "_diffjax"}
                spec = run_spec(ml_collections.ConfigDict(config), RUNS[config["trainer"]])
                seen.add(config["trainer"])
                if config["trainer"] == "unet":
                    assert "sample_prompts" not in config["train"]
                    assert spec.train.sample_prompts == SHAPES_PROMPTS
                    assert spec.train.clip_skip == config["train"]["clip_skip"]
    assert seen == {"unet", "vae", "clip"}


def test_sample_prompts_and_other_keys_are_settable():
    config = load_config("diffjax.configs.train.unet", [
        "train.sample_prompts=a red circle,a blue square", "train.sample_seeds=3,4",
        "mesh.shape=2,4,1"])
    spec = run_spec(config, UNetRun)
    assert spec.train.sample_prompts == ("a red circle", "a blue square")
    assert spec.train.sample_seeds == (3, 4) and spec.mesh.shape == (2, 4, 1)
    spec = run_spec(load_config("diffjax.configs.train.clip", ["data.text_length=32"]), CLIPRun)
    assert spec.data.text_length == 32


@pytest.mark.parametrize("name, overrides, match", [
    ("unet", ["train.compute_dtype=float16"], "train.compute_dtype must be one of"),
    ("unet", ["train.sample_every=10", "train.sample_prompts=,"],
     "train.sample_prompts is empty"),
    ("unet", ["data.caption_dropout=1.5"], r"data.caption_dropout must be <= 1.0"),
    ("vae", ["train.train_only=encoder"], r"train.train_only must be one of \['', 'decoder'\]"),
    ("vae", ["train.recon_loss=l3"], r"train.recon_loss must be one of \['l1', 'l2'\]"),
    ("clip", ["data.batch_size=0"], "data.batch_size must be >= 1"),
    ("clip", ["train.sample_every=1"], "unknown config key 'train.sample_every'"),
])
def test_bad_values_are_named(name, overrides, match):
    with pytest.raises(ConfigError, match=match):
        run_spec(load_config(f"diffjax.configs.train.{name}", overrides), RUNS[name])


def test_a_key_the_trainer_does_not_read_is_refused():
    config = load_config("diffjax.configs.train.vae").to_dict()
    config["train"]["kl_weigth"] = 1.0
    with pytest.raises(ConfigError, match="unknown config key 'train.kl_weigth'; did you mean "
                                          "'train.kl_weight'"):
        run_spec(config, VAERun)

"""The sampler comparison's config at its boundary (diffjax/studies/compare_spec.py):
every committed study's config.json (those written before StudySpec hold comma-separated
strings, later ones typed lists) reads as the same StudySpec the packaged config gives
with the same values, and bad values are named ConfigErrors before anything runs."""

import glob
import json
import os

import pytest

from diffjax.config import load_config

from diffjax.spec import ConfigError
from diffjax.studies import compare_samplers as runner
from diffjax.studies.compare_spec import spec_to_dict, study_spec, upgrade_saved

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = sorted(glob.glob(os.path.join(REPO, "experiments", "results", "*", "config.json")))
SEPARATED = ("samplers", "steps", "guidance_scales", "schedules", "metrics")


def _items(value) -> list:
    """A saved list: a pre-StudySpec comma-separated string or a typed JSON list."""
    return value.split(",") if isinstance(value, str) else list(value)


def _is_pre_spec(path) -> bool:
    with open(path) as f:
        return isinstance(json.load(f)["steps"], str)


def test_every_committed_study_config_is_found():
    names = {os.path.basename(os.path.dirname(p)) for p in COMMITTED}
    assert {"gmm_convergence", "gmm_exact_endpoint", "gmm_guidance", "mini_samplers"} <= names
    # the old format's upgrade path stays exercised by committed files
    assert {"gmm_convergence", "gmm_exact_endpoint", "gmm_guidance"} <= {
        os.path.basename(os.path.dirname(p)) for p in COMMITTED if _is_pre_spec(p)}


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_committed_config_json_reads_as_the_packaged_config(path):
    """The saved lists (old strings or typed lists) as typed tuples, the saved sampler
    options (none before StudySpec), everything else as saved; the packaged config with
    those values overridden is the same spec, and the study's grid plans (names,
    schedules, reference fineness checked)."""
    with open(path) as f:
        saved = json.load(f)
    spec = study_spec(load_config(path))
    for key in SEPARATED:
        assert [str(v) for v in getattr(spec, key)] == [
            str(type(getattr(spec, key)[0])(v)) for v in _items(saved[key])], key
    assert spec.sampler_options == saved.get("sampler_options", {})
    assert spec.steps == tuple(int(n) for n in _items(saved["steps"]))
    assert spec.guidance_scales == tuple(float(g) for g in _items(saved["guidance_scales"]))
    assert spec_to_dict(spec)["reference"] == saved["reference"]
    assert spec_to_dict(spec)["model"] == saved["model"]
    packaged = ("diffjax.configs.compare.mini_samplers" if saved["model"]["kind"] == "pipeline"
                else "diffjax.configs.compare.gmm_convergence")
    overrides = [f"{k}={','.join(map(str, _items(saved[k])))}" for k in SEPARATED]
    overrides += [f"{k}={saved[k]}" for k in ("name", "out", "seeds", "fit_last")]
    overrides += [f"reference.{k}={v}" for k, v in saved["reference"].items()]
    assert spec_to_dict(study_spec(load_config(packaged, overrides))) == spec_to_dict(spec)
    plan = runner.make_plan(spec)
    assert len(plan.cells) == (len(spec.samplers) * len(spec.steps) * len(spec.schedules)
                               * len(spec.guidance_scales))


def test_saved_spec_round_trips_through_config_json(tmp_path):
    """What a run records (every field, lists, options) reads back as the same spec."""
    config = load_config("diffjax.configs.compare.gmm_convergence")
    with config.unlocked():
        config.sampler_options = {"heun": {"s_churn": 40.0}}
    spec = study_spec(config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(spec_to_dict(spec)))
    assert study_spec(load_config(str(path))) == spec
    assert spec.options("heun") == {"s_churn": 40.0} and spec.options("euler") == {}


def test_upgrade_reads_only_the_old_strings():
    assert upgrade_saved({"steps": "5, 10", "samplers": ["euler"]}) == {
        "steps": [5, 10], "samplers": ["euler"], "sampler_options": {}}
    with pytest.raises(ConfigError, match="steps: cannot read '5,ten' as comma-separated int"):
        upgrade_saved({"steps": "5,ten"})


@pytest.mark.parametrize("over, options, match", [
    (["steps=0,5"], None, r"steps must all be >= 1, got \(0, 5\)"),
    (["guidance_scales=-1"], None, "guidance_scales must be >= 0"),
    (["seeds=1"], None, "seeds must be >= 2"),
    (["dtype=float16"], None, "dtype must be one of"),
    (["reference.steps=1"], None, "reference.steps must be >= 2"),
    (["steps=5,x"], None, "cannot parse '5,x'"),
    ([], {"heun": {"s_churn": 40.0}}, r"sampler_options names samplers the study does not "
                                      r"run: \['heun'\]"),
    (["samplers=euler,heun"], {"euler": {"eta": 1.0}},
     r"sampler 'euler' has no option\(s\) \['eta'\]; valid options \(default\): none"),
    (["samplers=heun"], {"heun": {"s_churn": float("nan")}}, "s_churn=nan: must be a number"),
    (["samplers=heun"], {"heun": 40}, "sampler_options.heun must map option names"),
])
def test_bad_study_config_is_named(over, options, match):
    with pytest.raises(ConfigError, match=match):
        config = load_config("diffjax.configs.compare.gmm_convergence", ["samplers=euler", *over])
        if options is not None:
            with config.unlocked():
                config.sampler_options = options
        runner.make_plan(config)


def test_sampler_options_can_be_set_by_override_and_are_checked():
    """`--config.sampler_options.<sampler>.<option>=value` adds to the open group; a reload
    of the recorded study accepts more of them."""
    config = load_config("diffjax.configs.compare.gmm_convergence", [
        "samplers=heun,euler_ancestral", "sampler_options.heun.s_churn=40",
        "sampler_options.heun.s_noise=1.003", "sampler_options.euler_ancestral.eta=0.5"])
    spec = study_spec(config)
    assert spec.sampler_options == {"heun": {"s_churn": 40, "s_noise": 1.003},
                                    "euler_ancestral": {"eta": 0.5}}
    runner.make_plan(spec)   # names, types and values all valid
    with pytest.raises(ConfigError, match=r"sampler 'heun' has no option\(s\) \['churn'\]"):
        runner.make_plan(load_config("diffjax.configs.compare.gmm_convergence",
                                     ["samplers=heun", "sampler_options.heun.churn=40"]))
    with pytest.raises(ConfigError, match="unknown config key 'sampler_optons.heun.s_churn'"):
        load_config("diffjax.configs.compare.gmm_convergence", ["sampler_optons.heun.s_churn=1"])

"""The sampler catalogue and its checked entry points (diffjax/diffusion/samplers/):
options read from each function's signature, `check_options`' named errors, the
`diffjax samplers` listing. No torch: parity lives in test_samplers_{classic,dpm,unipc_deis}.
"""

import math

import jax.numpy as jnp
import pytest

from diffjax.cli import main
from diffjax.spec import ConfigError
from diffjax.diffusion import samplers
from diffjax.diffusion.samplers.base import SamplerOptionError, signature_options

S = jnp.asarray([10.0, 1.0, 0.0])


def denoise(x, sigma):
    return x * 0.5


def test_options_are_the_signature_keywords_with_defaults():
    assert samplers.SAMPLERS["heun"].options == dict(s_churn=0.0, s_tmin=0.0, s_tmax=math.inf,
                                                     s_noise=1.0)
    assert samplers.SAMPLERS["dpmpp_2m_sde"].options == dict(eta=1.0, s_noise=1.0,
                                                             solver_type="midpoint",
                                                             noise="brownian")
    assert samplers.SAMPLERS["euler"].options == {}
    assert samplers.SAMPLERS["ipndm"].options == dict(max_order=4)
    for name, info in samplers.SAMPLERS.items():   # every entry's function has the signature
        assert signature_options(info.fn) == info.options, name


def test_signature_without_the_common_head_or_defaults_is_refused():
    with pytest.raises(TypeError, match="must start with"):
        signature_options(lambda denoise, x, key, sigmas: x)
    with pytest.raises(TypeError, match=r"options \['eta'\] have no default"):
        signature_options(lambda denoise, x, sigmas, key, eta: x)


@pytest.mark.parametrize("name, options, match", [
    ("euler", dict(order=3), r"sampler 'euler' has no option\(s\) \['order'\]; valid options "
                             r"\(default\): none"),
    ("heun", dict(s_churn=40, eta=0.5, churn=1),
     r"sampler 'heun' has no option\(s\) \['churn', 'eta'\]; valid options \(default\): "
     r"s_churn=0.0, s_tmin=0.0, s_tmax=inf, s_noise=1.0"),
    ("euler_ancestral", dict(eta=math.nan), "option eta=nan: must be a number, not NaN"),
    ("euler_ancestral", dict(eta=math.inf), "option eta=inf: must be finite"),
    ("heun", dict(s_churn="40"), "option s_churn='40': must be a number"),
    ("lms", dict(order=2.0), "option order=2.0: must be an integer"),
    ("unipc", dict(use_corrector=1), "option use_corrector=1: must be true or false"),
    ("dpmpp_2m_sde", dict(solver_type=2), "option solver_type=2: must be a string"),
    # the samplers' own value checks, reached by tracing before anything compiles
    ("lms", dict(order=5), "sampler 'lms': lms order must be 1..4, got 5; valid options "
                           r"\(default\): order=4"),
    ("dpmpp_2m_sde", dict(solver_type="rk4"), "sampler 'dpmpp_2m_sde': solver_type must be "
                                              "'midpoint' or 'heun', got 'rk4'"),
    ("unipc", dict(variant="bh3"), "unipc variant must be 'bh1' or 'bh2'"),
    ("deis", dict(order=4), r"deis order must be one of \(1, 2, 3\), got 4"),
])
def test_bad_options_are_named_config_errors(name, options, match):
    with pytest.raises(SamplerOptionError, match=match) as e:
        samplers.check_options(name, options)
    assert isinstance(e.value, ConfigError)   # commands exit 2 on it


def test_good_options_pass():
    samplers.check_options("heun", dict(s_churn=40, s_tmax=math.inf, s_noise=1.003))
    samplers.check_options("unipc", dict(order=3, variant="bh1", use_corrector=False))
    samplers.check_options("ddim", dict(eta=1))      # an int is a number


def test_bad_input_is_named():
    with pytest.raises(ConfigError, match="unknown sampler 'eulr'; valid: .*euler_ancestral"):
        samplers.run_sampler("eulr", denoise, jnp.ones(6), S, None)
    with pytest.raises(ValueError, match="strictly decreasing"):
        samplers.run_sampler("euler", denoise, jnp.ones(6), jnp.asarray([1.0, 2.0, 0.0]), None)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        samplers.run_sampler("euler", denoise, jnp.ones(6), jnp.asarray([1.0]), None)
    with pytest.raises(SamplerOptionError, match="'euler' has no option.*'order'"):
        samplers.run_sampler("euler", denoise, jnp.ones(6), S, None, order=3)
    with pytest.raises(SamplerOptionError, match="lms order must be 1..4, got 5"):
        samplers.run_sampler("lms", denoise, jnp.ones(6), S, None, order=5)


def test_catalogue_lists_every_sampler_and_its_options(capsys):
    table = samplers.catalogue_table(steps=10)
    lines = table.splitlines()
    for name, info in samplers.SAMPLERS.items():
        row, options = [line for line in lines if line.split()[:1] == [name]]
        nfe = info.nfe(10)   # None: adaptive step size (dpm_adaptive)
        assert row.split()[1] == ("adaptive" if nfe is None else str(nfe))
        assert options.split(None, 1)[1] == samplers.format_options(info.options)
    assert samplers.SAMPLERS["heun"].nfe(10) == 19 and samplers.SAMPLERS["plms"].nfe(10) == 11
    assert "s_churn=0.0, s_tmin=0.0, s_tmax=inf, s_noise=1.0" in table
    assert main(["samplers", "--steps", "10"]) == 0
    assert capsys.readouterr().out == table + "\n"

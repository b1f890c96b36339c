"""The sampler library: every sampler one pure function on one signature (see base.py).

`SAMPLERS` is an explicit dict merged from each family's own dict; `get_sampler`,
`check_options` and `run_sampler` are the checked entry points. A sampler's options are
its keyword parameters (`SamplerInfo.options`); configs pass them as `sampler.options`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.spec import ConfigError
from diffjax.diffusion.samplers import (cfg_pp, classic, distilled, dpm_adaptive, dpm_solver,
                                       exponential, restart, sa_solver, unipc_deis)
from diffjax.diffusion.samplers.base import (SamplerInfo, SamplerOptionError,
                                             check_option_value, check_sigmas)


def _merge(*families: dict[str, SamplerInfo]) -> dict[str, SamplerInfo]:
    """One dict from the families' own dicts; a name defined twice is a bug, not an override."""
    merged: dict[str, SamplerInfo] = {}
    for family in families:
        clash = sorted(set(merged) & set(family))
        if clash:
            raise ValueError(f"sampler names defined twice: {clash}")
        merged.update(family)
    return merged


SAMPLERS: dict[str, SamplerInfo] = _merge(classic.SAMPLERS, dpm_solver.SAMPLERS,
                                          unipc_deis.SAMPLERS, exponential.SAMPLERS,
                                          cfg_pp.SAMPLERS, dpm_adaptive.SAMPLERS,
                                          distilled.SAMPLERS, restart.SAMPLERS,
                                          sa_solver.SAMPLERS)


def get_sampler(name: str) -> SamplerInfo:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; valid: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def format_options(options: dict) -> str:
    """`a=1.0, b='x'` (or `none`): how errors and `diffjax samplers` show options."""
    return ", ".join(f"{k}={v!r}" for k, v in options.items()) or "none"


def check_options(name: str, options) -> None:
    """Check a sampler's options before anything compiles: names against the function's
    signature, value types against its defaults, then the sampler's own value checks (an
    order it lacks, an unknown solver type) by tracing it once on a 2-step toy grid.

    Raises SamplerOptionError (a ConfigError) naming the sampler, the bad option(s) and the
    valid ones with their defaults."""
    info = get_sampler(name)
    valid = info.options
    bad = sorted(set(options) - set(valid))
    if bad:
        raise SamplerOptionError(f"sampler {name!r} has no option(s) {bad}; valid options "
                                 f"(default): {format_options(valid)}")
    for key, value in options.items():
        check_option_value(name, key, value, valid[key])
    try:
        jax.eval_shape(lambda: info.fn(lambda x, sigma: x, jnp.zeros(2),
                                       jnp.asarray([2.0, 1.0, 0.0]), jax.random.key(0),
                                       **dict(options)))
    except SamplerOptionError as e:
        raise SamplerOptionError(f"sampler {name!r}: {e}; valid options (default): "
                                 f"{format_options(valid)}") from None


def run_sampler(name: str, denoise, x, sigmas, key, **options):
    """Check the name, options and sigma grid, then run the sampler."""
    info = get_sampler(name)
    check_options(name, options)
    check_sigmas(sigmas)
    return info.fn(denoise, x, sigmas, key, **options)


def catalogue_table(steps: int = 20) -> str:
    """The table `diffjax samplers` prints: a row per sampler, then each one's options."""
    rows = [("name", f"NFE@{steps}", "order", "stochastic", "reference")]
    for name in sorted(SAMPLERS):
        info = SAMPLERS[name]
        nfe = info.nfe(steps)   # None: adaptive (data-dependent)
        rows.append((name, "adaptive" if nfe is None else str(nfe), str(info.order),
                     "yes" if info.stochastic else "no", info.reference))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines += ["", "options (set as sampler.options.<name>=value; default shown):"]
    lines += [f"  {name.ljust(widths[0])}  {format_options(SAMPLERS[name].options)}"
              for name in sorted(SAMPLERS)]
    return "\n".join(lines)

"""The sampler library: every sampler one pure function on one signature (see base.py).

`SAMPLERS` is an explicit dict merged from each family's own dict; `get_sampler` and
`run_sampler` are the checked entry points.
"""

from __future__ import annotations

import inspect

from diffjax.diffusion.samplers import classic, dpm_solver, unipc_deis
from diffjax.diffusion.samplers.base import SamplerInfo, check_sigmas


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
                                          unipc_deis.SAMPLERS)


def get_sampler(name: str) -> SamplerInfo:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def check_options(name: str, options: dict) -> None:
    """Reject options the sampler does not take, naming them and the ones it does."""
    params = inspect.signature(get_sampler(name).fn).parameters
    valid = [p for p in list(params)[4:]]
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ValueError(f"sampler {name!r} has no option(s) {bad}; it takes "
                         f"{valid or 'no options'}")


def run_sampler(name: str, denoise, x, sigmas, key, **options):
    """Check the name, options and sigma grid, then run the sampler."""
    info = get_sampler(name)
    check_options(name, options)
    check_sigmas(sigmas)
    return info.fn(denoise, x, sigmas, key, **options)


def catalogue_table(steps: int = 20) -> str:
    """The table `diffjax samplers` prints."""
    rows = [("name", f"NFE@{steps}", "order", "stochastic", "reference")]
    for name in sorted(SAMPLERS):
        info = SAMPLERS[name]
        rows.append((name, str(info.nfe(steps)), str(info.order),
                     "yes" if info.stochastic else "no", info.reference))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]
                     for r in rows)

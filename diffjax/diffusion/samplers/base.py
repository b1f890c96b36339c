"""What every sampler shares: its catalogue entry, options, per-step noise, input checks.

Signature of every sampler (k-diffusion style, VE/"Karras" parameterisation):

    sample_<name>(denoise, x, sigmas, key, **options) -> x
    denoise(x, sigma) -> x0_hat      # already conditioned and guided
    sigmas: float32 [N+1], strictly decreasing, sigmas[-1] == 0 (N = steps)
    x: the initial latent, already scaled by sigmas[0]

The step loop is one `lax.scan` over the N steps; stochastic samplers draw step i's noise
from `fold_in(key, i)` so a trajectory depends on its own key only, or, for the DPM++ SDE
samplers by default (`noise="brownian"`), from the seed's Brownian path queried at the
step's sigmas (diffusion/brownian.py), so that grids of the same seed share one path.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffjax.diffusion.brownian import BrownianNoise, increment_noise
from diffjax.spec import ConfigError

# Every sampler's leading parameters; whatever follows them is an option.
POSITIONAL = ("denoise", "x", "sigmas", "key")


class SamplerOptionError(ConfigError):
    """A sampler option is unknown or has a bad value. A ConfigError, so a command that
    passes a config's `sampler.options` through exits 2 with this one-line message."""


def signature_options(fn: Callable) -> dict[str, object]:
    """{option: default} of a sampler function: its keyword parameters after POSITIONAL.

    Read from the signature so the catalogue cannot drift from the code that runs."""
    params = list(inspect.signature(fn).parameters.values())
    head = tuple(p.name for p in params[:len(POSITIONAL)])
    if head != POSITIONAL:
        raise TypeError(f"{fn.__name__} must start with {POSITIONAL}, got {head}")
    missing = [p.name for p in params[len(POSITIONAL):] if p.default is inspect.Parameter.empty]
    if missing:
        raise TypeError(f"{fn.__name__}: options {missing} have no default")
    return {p.name: p.default for p in params[len(POSITIONAL):]}


@dataclasses.dataclass(frozen=True)
class SamplerInfo:
    """A row of the sampler catalogue (`SAMPLERS`, `diffjax samplers`)."""

    fn: Callable
    nfe: Callable[[int], int]   # denoiser calls for N steps
    order: int                  # order of convergence of the deterministic solver (default options)
    stochastic: bool            # draws noise during sampling
    reference: str              # paper + algorithm it implements

    @property
    def options(self) -> dict[str, object]:
        """{option: default}, from `fn`'s signature."""
        return signature_options(self.fn)


def check_option_value(sampler: str, name: str, value, default) -> None:
    """The value's type must be the default's (an int is a float); floats must not be NaN,
    and may be infinite only where the default is (heun's s_tmax)."""
    def bad(why: str):
        return SamplerOptionError(f"sampler {sampler!r} option {name}={value!r}: {why} "
                                  f"(default {default!r})")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("must be true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("must be an integer")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("must be a number")
        if value != value:
            raise bad("must be a number, not NaN")
        if abs(value) == float("inf") and value != default:
            raise bad("must be finite")
    elif isinstance(default, str) and not isinstance(value, str):
        raise bad("must be a string")


def step_noise(key, step, like):
    """Standard normal noise for step `step`, derived only from (key, step)."""
    return jax.random.normal(jax.random.fold_in(key, step), like.shape, like.dtype)


NOISES = ("brownian", "gaussian")


class _StepNoise:
    """Per-step noise of an SDE sampler, threaded through its scan: `draw(i, sigma,
    sigma_next, w) -> (z, w)` with `start` the initial carry `w`.

    "gaussian": z = step_noise(key, i, like) (w unused). "brownian": z is the normalised
    increment of the seed's Brownian path (diffusion/brownian.py) over [sigma_next, sigma];
    w carries W(sigma) so each step queries the path once."""

    def __init__(self, kind, key, like, sigmas, active):
        self.kind, self.key = kind, key
        self.tree = BrownianNoise(key, like) if kind == "brownian" and active else None
        self.start = (self.tree.value(sigmas[0]) if self.tree is not None
                      else jnp.zeros_like(like))

    def __call__(self, i, sigma, sigma_next, w):
        if self.tree is None:
            return step_noise(self.key, i, w), w
        w_next = self.tree.value(sigma_next)
        return increment_noise(w, w_next, sigma, sigma_next), w_next


def step_noise_source(kind, key, like, sigmas, active=True) -> _StepNoise:
    """The noise of a sampler's `noise` option ("brownian" | "gaussian"), checked."""
    if kind not in NOISES:
        raise SamplerOptionError(f"noise must be one of {NOISES}, got {kind!r}")
    return _StepNoise(kind, key, like, sigmas, active)


def to_d(x, sigma, denoised):
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def check_sigmas(sigmas) -> None:
    """Reject sigma grids samplers cannot use, naming what is wrong (static shapes only)."""
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D grid of steps+1 >= 2 values, got shape "
                         f"{tuple(sigmas.shape)} (steps must be >= 1)")
    try:
        s = jnp.asarray(sigmas)
        decreasing = bool(jnp.all(s[1:] < s[:-1]))
    except jax.errors.ConcretizationTypeError:
        return  # traced inside jit: checked where the grid is made
    if not decreasing:
        raise ValueError(f"sigmas must be strictly decreasing, got {s.tolist()}")
    if float(s[-1]) < 0:
        raise ValueError(f"sigmas must end at >= 0, got last value {float(s[-1])}")

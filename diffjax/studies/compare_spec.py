"""The sampler comparison's config as a frozen dataclass: `study_spec(config) -> StudySpec`.

The study's one config path: `diffjax compare` loads a ConfigDict (a packaged study such as
`diffjax.configs.compare.gmm_convergence`, a file, or a study's saved config.json), and the
runner turns it into a StudySpec here, once, before anything else reads it. Types are
checked by `diffjax.spec.to_dataclass`; names (samplers, schedules, metrics) and the
sampler options are checked by the runner's plan, which knows the catalogues.

Config.json files written before the spec existed (every committed study under
experiments/results/) hold the lists as comma-separated strings ("euler,ddim", "5,10,20")
and no `sampler_options`; `upgrade_saved` reads them once, so those studies rerun to the
same table.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping

import ml_collections

from diffjax.spec import ConfigError, check_range, to_dataclass

# Keys whose values were comma-separated strings before StudySpec, and the item type.
SEPARATED_BEFORE_SPEC = {"samplers": str, "steps": int, "guidance_scales": float,
                         "schedules": str, "metrics": str}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What is sampled: the exact Gaussian-mixture benchmark or a pipeline model."""

    kind: typing.Literal["gmm", "pipeline"]
    path: str                # pipeline: preset, "mini", diffusers folder, diffjax checkpoint
    seed: int                # gmm: mixture seed; pipeline: random-init seed for presets
    dim: int                 # gmm: data dimension
    n_components: int        # gmm: mixture components (= classes for guidance)
    spread: float            # gmm: std of the component means
    std: float               # gmm: std of each component


@dataclasses.dataclass(frozen=True)
class ReferenceSpec:
    """The fine deterministic solve every cell's RMSE is measured against."""

    sampler: str
    steps: int
    schedule: str
    sigma_min: float         # > 0 (gmm, continuous schedule): solve down to this sigma

    def __post_init__(self):
        check_range("reference.steps", self.steps, lo=2)
        check_range("reference.sigma_min", self.sigma_min, lo=0.0)


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """One comparison grid: samplers x steps x guidance scales x schedules.

    The packaged studies (diffjax/configs/compare/) set every field without a default."""

    name: str
    out: str                         # the study directory (`--out`)
    model: ModelSpec
    samplers: tuple[str, ...]
    # {sampler name: {option: value}}, checked against each sampler's signature.
    sampler_options: Mapping[str, Mapping[str, typing.Any]]
    steps: tuple[int, ...]
    guidance_scales: tuple[float, ...]
    schedules: tuple[str, ...]
    seeds: int                       # samples per cell: seeds 0..seeds-1, shared by every cell
    metrics: tuple[str, ...]
    reference: ReferenceSpec
    fit_last: int                    # slopes over the fit_last finest cells (0: all)
    dtype: typing.Literal["float32", "float64"]
    prompts: str                     # pipeline: '|'-separated, cycled; or "shapes:<split>"
    feature_extractor: str           # frechet/clip_score on a pipeline: "mini" or a folder
    real_images: str = ""            # pipeline frechet: "shapes:<split>" or a folder
    grid_prompts: int = 0            # pipeline: image grids of seeds 0..grid_prompts-1

    def __post_init__(self):
        for key in SEPARATED_BEFORE_SPEC:
            if not getattr(self, key):
                raise ConfigError(f"{key} is empty; give at least one")
        if min(self.steps) < 1:
            raise ConfigError(f"steps must all be >= 1, got {self.steps}")
        if min(self.guidance_scales) < 0:
            raise ConfigError(f"guidance_scales must be >= 0, got {self.guidance_scales}")
        check_range("seeds", self.seeds, lo=2)
        check_range("fit_last", self.fit_last, lo=0)
        check_range("grid_prompts", self.grid_prompts, lo=0)
        unknown = sorted(set(self.sampler_options) - set(self.samplers))
        if unknown:
            raise ConfigError(f"sampler_options names samplers the study does not run: "
                              f"{unknown} (samplers: {', '.join(self.samplers)})")
        object.__setattr__(self, "sampler_options", plain_options(self.sampler_options))

    def options(self, sampler: str) -> dict:
        """The keyword options this study passes to `sampler` (a copy)."""
        return dict(self.sampler_options.get(sampler, {}))


def plain_options(options) -> dict[str, dict[str, typing.Any]]:
    """{sampler: {option: value}} as plain dicts (from dicts or ConfigDicts), copied."""
    out = {}
    for sampler, opts in dict(options).items():
        if not isinstance(opts, (Mapping, ml_collections.ConfigDict)):
            raise ConfigError(f"sampler_options.{sampler} must map option names to values, "
                              f"got {opts!r}")
        out[sampler] = dict(opts.items())
    return out


def upgrade_saved(data: dict) -> dict:
    """A config dict with the pre-StudySpec comma-separated strings split into lists
    ("euler,ddim" -> ["euler", "ddim"], "5,10" -> [5, 10]) and, where missing,
    `sampler_options` = {} (those studies ran every sampler with its defaults); anything
    else is unchanged."""
    data = dict(data)
    data.setdefault("sampler_options", {})
    for key, cast in SEPARATED_BEFORE_SPEC.items():
        value = data.get(key)
        if isinstance(value, str):
            try:
                data[key] = [cast(item.strip()) for item in value.split(",") if item.strip()]
            except ValueError:
                raise ConfigError(f"{key}: cannot read {value!r} as comma-separated "
                                  f"{cast.__name__} values") from None
    return data


def study_spec(config) -> StudySpec:
    """The checked StudySpec of a ConfigDict/dict (a StudySpec passes through)."""
    if isinstance(config, StudySpec):
        return config
    data = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    data.pop("_diffjax", None)
    return to_dataclass(upgrade_saved(data), StudySpec)


def spec_to_dict(spec: StudySpec) -> dict:
    """The resolved study as plain data (what config.json records)."""
    return dataclasses.asdict(spec)

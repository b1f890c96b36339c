"""Sampler comparison grid: samplers x steps x guidance scales x schedules -> quality vs NFE.

    diffjax compare --config diffjax.configs.compare.gmm_convergence --out runs/gmm
    diffjax compare --config runs/gmm/config.json --out runs/gmm_again   # same table.md

Models (config.model.kind):
  "gmm"       the exact benchmark: Gaussian-mixture data (diffjax.diffusion.gaussian_mixture)
              whose denoiser is closed form, on SD's training sigmas. Guidance is
              class-conditional: seed i is assigned component i % K, the conditional
              denoiser is that component's posterior mean, and the guided denoiser is
              D_u + w (D_c - D_u) (w = 0: unconditional, w = 1: conditional).
  "pipeline"  any model `diffjax.weights.load.load` takes ("mini", preset, diffusers
              folder, diffjax checkpoint), sampled through `TextToImage(...,
              output="latents")` on config.prompts ('|'-separated, cycled over the seeds,
              or "shapes:<split>": seed i gets the caption of example i of that split).

Metrics (config.metrics): rmse (convergence error against a fine deterministic reference
solve from the same initial noise, `diffjax.metrics.convergence`); frechet (gmm: Fréchet
distance of the samples' Gaussian fit to the exact target moments; pipeline: between the
CLIP image features of the samples and of config.real_images, "shapes:<split>" renders or
a folder of images); clip_score (pipeline: mean 100 max(cos, 0) of image and prompt);
prompt_accuracy (pipeline, `shapes` prompts: the oracle reads back every attribute the
prompt states). The CLIP is config.feature_extractor: "mini" (the shipped model's) or a
folder with text_encoder/ and image_encoder/. Pipeline studies also write image grids
(rows: samplers, columns: steps) for the first config.grid_prompts seeds. NFE, compile time
and wall time per sample are kept apart in results.json/csv; the Markdown table holds only
deterministic numbers, so a rerun from the saved config.json reproduces it exactly.

Sampler options (config.sampler_options, {sampler: {option: value}}, e.g.
`--config.sampler_options.heun.s_churn=40`) reach every cell of that sampler; `diffjax
samplers` lists each sampler's options. The config is read once, as a frozen StudySpec
(compare_spec.py), which also reads the committed studies' older config.json files.

The grid is resumable: each finished cell is a JSON file under <out>/cells/ and each
reference an .npy under <out>/reference/; a rerun into the same directory (same config)
computes only what is missing. Everything is checked (samplers and their options, metrics,
schedules, reference fineness, feature folder) before any compute starts.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import time

import numpy as np

from diffjax.spec import ConfigError
from diffjax.studies.compare_spec import StudySpec, spec_to_dict, study_spec

METRICS = {
    "rmse": "RMSE of final latents vs the reference solve (same initial noise)",
    "frechet": "Fréchet distance to the target (gmm: exact moments; pipeline: real images' "
               "CLIP features)",
    "clip_score": "mean CLIP score 100 max(cos(image, prompt), 0) (pipeline)",
    "prompt_accuracy": "fraction of images whose every prompt-stated attribute the `shapes` "
                       "oracle reads back (pipeline, shapes prompts)",
    "kid": "KID x 1000 (torch-fidelity's unbiased MMD^2, cubic kernel) of the images' CLIP "
           "features vs the real images' (pipeline)",
    "precision": "improved precision (Kynkaanniemi et al., k=3) on CLIP features vs the real "
                 "images (pipeline)",
    "recall": "improved recall (Kynkaanniemi et al., k=3) on CLIP features (pipeline)",
}
# metrics against the real images' features (diffjax.metrics: kid, precision_recall)
REAL_FEATURE_METRICS = ("frechet", "kid", "precision", "recall")
PIPELINE_ONLY = ("clip_score", "prompt_accuracy", "kid", "precision", "recall")
IMAGE_METRICS = ("frechet", "clip_score", "prompt_accuracy", "kid", "precision",
                 "recall")  # pipeline: on decoded images
CONTINUOUS = ("karras", "exponential", "polyexponential")  # take sigma_min


class CompareError(ConfigError):
    """The comparison config is wrong; the message names the key and the bad value."""


# ----------------------------------------------------------------------------------------
# the plan: everything checked before compute
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Cell:
    sampler: str
    schedule: str
    guidance: float
    steps: int
    nfe: int

    @property
    def key(self) -> str:
        return f"{self.schedule}-g{self.guidance:g}-{self.sampler}-{self.steps}"


@dataclasses.dataclass(frozen=True)
class Plan:
    spec: StudySpec
    cells: tuple[Cell, ...]
    metrics: tuple[str, ...]
    guidances: tuple[float, ...]
    seeds: np.ndarray
    reference_nfe: int


def make_plan(config) -> Plan:
    """Check the whole grid and return its cells; raises CompareError (a ConfigError) /
    FileNotFoundError / ReferenceSolveError naming the problem before any model is built
    or sampled. config: a ConfigDict (turned into a StudySpec here) or a StudySpec."""
    from diffjax.diffusion.samplers import SAMPLERS, check_options
    from diffjax.diffusion.schedules import SCHEDULES
    from diffjax.metrics import convergence

    spec = study_spec(config)
    kind, samplers, metrics = spec.model.kind, spec.samplers, spec.metrics
    for name in samplers:
        if name not in SAMPLERS:
            raise CompareError(f"samplers: unknown sampler {name!r}; valid: "
                               f"{', '.join(sorted(SAMPLERS))}")
        if SAMPLERS[name].nfe(1) is None:
            raise CompareError(f"samplers: {name!r} chooses its own steps (adaptive: no NFE "
                               "per step count), so it has no place in a steps grid")
    for name, options in spec.sampler_options.items():
        check_options(name, options)
    for m in metrics:
        if m not in METRICS:
            raise CompareError(f"metrics: unknown metric {m!r}; valid: {', '.join(METRICS)}")
    for s in spec.schedules:
        if s not in SCHEDULES:
            raise CompareError(f"schedules: unknown schedule {s!r}; valid: "
                               f"{', '.join(SCHEDULES)}")
    if kind == "gmm" and set(metrics) & set(PIPELINE_ONLY):
        raise CompareError(f"metrics: {sorted(set(metrics) & set(PIPELINE_ONLY))} need a "
                           "pipeline model (images and prompts); the gmm has neither")
    if kind == "pipeline":
        _check_pipeline_inputs(spec)
    ref = spec.reference
    if ref.sampler not in SAMPLERS:
        raise CompareError(f"reference.sampler: unknown sampler {ref.sampler!r}")
    if ref.schedule not in SCHEDULES:
        raise CompareError(f"reference.schedule: unknown schedule {ref.schedule!r}")
    if ref.sigma_min > 0 and (ref.schedule not in CONTINUOUS or kind != "gmm"):
        raise CompareError(f"reference.sigma_min={ref.sigma_min} needs a gmm model and a "
                           f"continuous reference.schedule ({', '.join(CONTINUOUS)}); got "
                           f"{kind!r}, {ref.schedule!r}")
    cells = tuple(Cell(s, sch, g, n, SAMPLERS[s].nfe(n)) for sch in spec.schedules
                  for g in spec.guidance_scales for s in samplers for n in spec.steps)
    ref_info = SAMPLERS[ref.sampler]
    convergence.check_reference(ref.sampler, ref_info.nfe(ref.steps), ref_info.stochastic,
                                {c.key: c.nfe for c in cells})
    from diffjax.diffusion.schedules import make_sigmas
    for sch in spec.schedules:       # named schedule errors (e.g. repeated sigmas) now,
        for n in spec.steps:         # on SD's training sigmas (the gmm's; SD models')
            make_sigmas(sch, n, _sd_train_sigmas())
    return Plan(spec, cells, metrics, spec.guidance_scales,
                np.arange(spec.seeds, dtype=np.uint32), ref_info.nfe(ref.steps))


def _check_feature_extractor(name: str, need_text: bool) -> None:
    """"mini" (packaged) or a folder with image_encoder/ (and text_encoder/ for CLIP score)."""
    from diffjax.metrics import frechet
    from diffjax.weights.components import PACKAGED_MODELS
    if name in PACKAGED_MODELS and not os.path.exists(name):
        return
    frechet.check_feature_folder(name)
    for sub in ("image_encoder",) + (("text_encoder",) if need_text else ()):
        if not os.path.isdir(os.path.join(name, sub)):
            raise FileNotFoundError(f"feature_extractor {name!r} has no {sub}/ (a CLIP folder "
                                    "needs image_encoder/ and, for clip_score, text_encoder/)")


def _shapes_examples(spec: str, n: int, key: str) -> list[dict]:
    """Examples 0..n-1 of the `shapes` split named by spec "shapes:<split>" (config `key`)."""
    from diffjax.data import shapes as S
    split = spec.split(":", 1)[1]
    if split not in S.SPLITS:
        raise CompareError(f"{key} {spec!r}: unknown shapes split {split!r}; valid: "
                           f"{', '.join(S.SPLITS)}")
    return [S.example(split, i, 32) for i in range(n)]


def study_prompts(spec: str, n: int) -> list[str]:
    """n prompts: "shapes:<split>" -> captions of examples 0..n-1; else '|'-separated,
    cycled."""
    if spec.startswith("shapes:"):
        return [e["caption"] for e in _shapes_examples(spec, n, "prompts")]
    prompts = [p.strip() for p in spec.split("|") if p.strip()]
    if not prompts:
        raise CompareError("prompts is empty; give '|'-separated prompts or shapes:<split>")
    return [prompts[i % len(prompts)] for i in range(n)]


def real_images(spec: str, n: int) -> np.ndarray:
    """The real images frechet compares with: "shapes:<split>" renders of examples 0..n-1,
    or every image in a folder (uint8 [N, H, W, 3])."""
    if spec.startswith("shapes:"):
        return np.stack([e["image"] for e in _shapes_examples(spec, n, "real_images")])
    from PIL import Image
    files = sorted(f for f in os.listdir(spec)
                   if f.lower().endswith((".png", ".jpg", ".jpeg", ".webp")))
    return np.stack([np.asarray(Image.open(os.path.join(spec, f)).convert("RGB"))
                     for f in files])


def _check_pipeline_inputs(study: StudySpec) -> None:
    """Named errors for the pipeline-only inputs, before anything is loaded or sampled."""
    from diffjax.data import shapes as S
    metrics = study.metrics
    if set(metrics) & {"clip_score", *REAL_FEATURE_METRICS}:
        _check_feature_extractor(study.feature_extractor, need_text="clip_score" in metrics)
    if set(metrics) & set(REAL_FEATURE_METRICS):
        spec = study.real_images
        if not spec:
            named = "/".join(sorted(set(metrics) & set(REAL_FEATURE_METRICS)))
            raise CompareError(f"metrics: {named} on a pipeline model needs real_images "
                               "(shapes:<split> or a folder of images)")
        if spec.startswith("shapes:"):
            _shapes_examples(spec, 0, "real_images")  # the split's name, checked now
        else:
            if not os.path.isdir(spec):
                raise FileNotFoundError(f"real_images folder {spec!r} does not exist")
            if not any(f.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))
                       for f in os.listdir(spec)):
                raise CompareError(f"real_images folder {spec!r} holds no .png/.jpg/.webp")
    prompts = study_prompts(study.prompts, study.seeds)
    if "prompt_accuracy" in metrics:
        for p in dict.fromkeys(prompts):
            try:
                stated = S.parse_caption(p)
            except ValueError as e:
                raise CompareError(f"prompt_accuracy: prompt {p!r}: {e}") from None
            if stated["shape"] is None and stated["colour"] is None:
                raise CompareError(f"prompt_accuracy needs `shapes` prompts (naming a shape "
                                   f"or colour); {p!r} states neither")


def _sd_train_sigmas():
    """SD's training sigmas (scaled_linear betas, 1000 steps): the benchmark's noise levels."""
    from diffjax.diffusion import schedules
    return schedules.sigmas_from_alphas_cumprod(schedules.alphas_cumprod_for("scaled_linear"))


# ----------------------------------------------------------------------------------------
# models: (sampler, schedule, steps, guidance) -> final latents [n_seeds, ...]
# ----------------------------------------------------------------------------------------
class GMMBenchmark:
    """The exact benchmark (see module docstring)."""

    def __init__(self, mc, seeds):
        from diffjax.diffusion.gaussian_mixture import make_gaussian_mixture
        self.gm = make_gaussian_mixture((mc.dim,), mc.n_components, mc.seed, mc.spread, mc.std)
        self.seeds = seeds
        self.classes = (np.arange(len(seeds)) % mc.n_components).astype(np.int32)
        self.train_sigmas = _sd_train_sigmas()

    def _denoiser(self, guidance: float):
        import jax.numpy as jnp

        from diffjax.diffusion.guidance import report_uncond
        gm = self.gm

        def conditional(x, sigma, k):
            mu = jnp.asarray(gm.means, x.dtype)[k]
            s2 = jnp.asarray(gm.stds, x.dtype)[k] ** 2
            return mu + s2 / (s2 + sigma ** 2) * (x - mu)

        def denoise(x, sigma, k):
            du = gm.denoise(x, sigma)
            if guidance == 0.0:
                return du
            report_uncond(du)   # CFG++ samplers re-noise along the unconditional x0
            return du + guidance * (conditional(x, sigma, k) - du)
        return denoise

    def run(self, sampler, schedule, steps, guidance, sigma_min=0.0, options=None):
        """(latents, compile seconds, run seconds) for one cell; sigma_min > 0 ends a
        continuous grid's nonzero sigmas there instead of at the training minimum;
        options: the sampler's keyword options."""
        import jax
        import jax.numpy as jnp

        from diffjax.diffusion.sample import sample
        from diffjax.diffusion.schedules import make_sigmas
        extra = dict(sigma_min=sigma_min) if sigma_min > 0 else {}
        sigmas = make_sigmas(schedule, steps, self.train_sigmas, **extra)
        denoise = self._denoiser(guidance)
        fn = jax.jit(lambda seeds, cls: sample(denoise, self.gm.means.shape[1:], seeds,
                                               sampler, sigmas, cond=cls, options=options))
        seeds, cls = jnp.asarray(self.seeds), jnp.asarray(self.classes)
        t0 = time.perf_counter()
        compiled = fn.lower(seeds, cls).compile()
        t1 = time.perf_counter()
        out = np.asarray(jax.block_until_ready(compiled(seeds, cls)))
        return out, t1 - t0, time.perf_counter() - t1

    def target(self, guidance: float):
        """(means, stds, weights) of the distribution the cell should sample: the mixture
        (w = 0), else the seeds' assigned components in their proportions (exact for w = 1;
        for w > 1 the distance measures how far guidance moves samples off it)."""
        if guidance == 0.0:
            return self.gm.means, self.gm.stds, self.gm.weights
        counts = np.bincount(self.classes, minlength=len(self.gm.weights)).astype(np.float64)
        return self.gm.means, self.gm.stds, counts / counts.sum()


class PipelineModel:
    """Any `diffjax.weights.load.load` source, sampled to latents by TextToImage."""

    def __init__(self, study: StudySpec, seeds):
        from diffjax.weights.load import load
        self.components = load(study.model.path, "float32", "auto",
                                          study.model.seed)
        self.prompts = study_prompts(study.prompts, len(seeds))
        self.seeds = [int(s) for s in seeds]
        self._decode = None

    def decode(self, latents) -> np.ndarray:
        """Final latents -> uint8 images, with the pipeline's VAE (jitted once)."""
        import jax
        import jax.numpy as jnp

        from diffjax.models.vae import AutoencoderKL
        c = self.components
        if self._decode is None:
            vae = AutoencoderKL(c.vae_config)
            self._decode = jax.jit(lambda p, z: jnp.clip(jnp.rint(
                (vae.apply({"params": p}, z / c.vae_config.scaling_factor,
                           method=AutoencoderKL.decode) + 1.0) * 127.5), 0, 255))
        return np.asarray(self._decode(c.vae_params, jnp.asarray(latents))).astype(np.uint8)

    def run(self, sampler, schedule, steps, guidance, sigma_min=0.0, options=None):
        from diffjax.pipeline import TextToImage
        from diffjax.sample_spec import SampleSpec
        spec = SampleSpec(sampler=sampler, steps=steps, schedule=schedule,
                          sampler_options=tuple(sorted((options or {}).items())),
                          guidance_scale=guidance, batch_size=len(self.seeds),
                          mesh_shape=(1, 1, 1))
        import jax
        pipe = TextToImage(self.components, spec, devices=jax.devices()[:1], output="latents")
        t0 = time.perf_counter()
        pipe.compile_seconds()
        t1 = time.perf_counter()
        out = pipe(self.prompts, self.seeds)
        return out, t1 - t0, time.perf_counter() - t1


# ----------------------------------------------------------------------------------------
# running (resumable)
# ----------------------------------------------------------------------------------------
def _check_same_job(out: str, spec: StudySpec) -> None:
    """Refuse to resume into a directory that holds another study (its config.json, read
    as a StudySpec like any saved config, differs)."""
    from diffjax.config import CONFIG_JSON
    path = os.path.join(out, CONFIG_JSON)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        old = spec_to_dict(study_spec(json.load(f)))
    new = spec_to_dict(spec)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise CompareError(f"{out} holds another study (config keys differ: "
                           f"{', '.join(changed)}); use a new --out or the same config")


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _atomic_save_npy(path: str, array) -> None:
    tmp = path + ".tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def run_study(config, out: str, progress: bool = True) -> list[dict]:
    """Run (or resume) every cell of the grid; write all outputs; return the rows.

    config: a ConfigDict (turned into a StudySpec once, here) or a StudySpec. The resolved
    spec, every field included, is what <out>/config.json records."""
    import jax
    import ml_collections
    from tqdm import tqdm

    from diffjax.config import save_config
    from diffjax.metrics import convergence, frechet
    plan = make_plan(config)
    spec = plan.spec
    _check_same_job(out, spec)
    os.makedirs(os.path.join(out, "cells"), exist_ok=True)
    os.makedirs(os.path.join(out, "reference"), exist_ok=True)
    save_config(ml_collections.ConfigDict(spec_to_dict(spec)), out)
    x64 = jax.enable_x64(True) if spec.dtype == "float64" else contextlib.nullcontext()
    with x64:
        model = (GMMBenchmark(spec.model, plan.seeds) if spec.model.kind == "gmm"
                 else PipelineModel(spec, plan.seeds))
        ref = spec.reference
        references, ref_errors = {}, {}
        for g in plan.guidances:
            path = os.path.join(out, "reference", f"g{g:g}.npy")
            half = os.path.join(out, "reference", f"g{g:g}-half.npy")
            if not os.path.exists(path):
                _atomic_save_npy(path, model.run(ref.sampler, ref.schedule, ref.steps, g,
                                                 ref.sigma_min)[0])
            if not os.path.exists(half):   # the reference's own error estimate
                _atomic_save_npy(half, model.run(ref.sampler, ref.schedule,
                                                 ref.steps // 2, g, ref.sigma_min)[0])
            references[g] = np.load(path)
            ref_errors[g] = convergence.rmse(np.load(half), references[g])
        scorer = (ImageScorer(spec, model, plan.metrics)
                  if spec.model.kind == "pipeline" else None)
        todo = [c for c in plan.cells
                if not os.path.exists(os.path.join(out, "cells", c.key + ".json"))]
        bar = tqdm(total=len(plan.cells), initial=len(plan.cells) - len(todo), unit="cell",
                   desc="compare", disable=not progress, dynamic_ncols=True)
        for cell in todo:
            x, compile_s, run_s = model.run(cell.sampler, cell.schedule, cell.steps,
                                            cell.guidance, options=spec.options(cell.sampler))
            row = dict(sampler=cell.sampler, schedule=cell.schedule, guidance=cell.guidance,
                       steps=cell.steps, nfe=cell.nfe,
                       compile_s=compile_s, seconds_per_sample=run_s / len(plan.seeds))
            if "rmse" in plan.metrics:
                row["rmse"] = convergence.rmse(x, references[cell.guidance])
            if scorer is not None:
                row.update(scorer.score(x, os.path.join(out, "cells", cell.key + ".npy")))
            elif "frechet" in plan.metrics:
                row["frechet"] = frechet.frechet_to_mixture(x, *model.target(cell.guidance))
            _atomic_write(os.path.join(out, "cells", cell.key + ".json"), json.dumps(row))
            bar.set_postfix_str(cell.key)
            bar.update(1)
        bar.close()
        ref_rows = {}
        for g in plan.guidances:
            if scorer is not None and "frechet" in plan.metrics:
                ref_rows[g] = scorer.score(references[g])["frechet"]
            elif "frechet" in plan.metrics:
                ref_rows[g] = frechet.frechet_to_mixture(references[g], *model.target(g))
    rows = []
    for cell in plan.cells:
        with open(os.path.join(out, "cells", cell.key + ".json"), encoding="utf-8") as f:
            rows.append(json.load(f))
    summary = dict(reference=dict(sampler=ref.sampler, steps=ref.steps, schedule=ref.schedule,
                                  nfe=plan.reference_nfe, sigma_min=ref.sigma_min,
                                  rmse_vs_half_steps={f"{g:g}": e for g, e in
                                                      ref_errors.items()},
                                  frechet={f"{g:g}": e for g, e in ref_rows.items()}),
                   slopes=fit_slopes(rows, spec.fit_last) if "rmse" in plan.metrics else [])
    write_outputs(out, spec, plan, rows, summary)
    if spec.model.kind == "pipeline" and spec.grid_prompts:
        write_image_grids(out, plan, rows, spec.grid_prompts)
    return rows


class ImageScorer:
    """The image metrics of a pipeline study: decode a cell's latents, score the images.

    The CLIP (study.feature_extractor) and the real images' features are loaded once.
    """

    def __init__(self, study: StudySpec, model, metrics):
        self.model, self.metrics = model, metrics
        self.grid_prompts = study.grid_prompts
        self.clip = None
        if set(metrics) & {"clip_score", *REAL_FEATURE_METRICS}:
            from diffjax.metrics.clip_features import CLIPFeatures
            self.clip = CLIPFeatures.from_model(study.feature_extractor)
        if set(metrics) & set(REAL_FEATURE_METRICS):
            from diffjax.metrics import frechet
            real = real_images(study.real_images, len(model.seeds))
            self.real_features = self.clip.frechet_features(real)
            self.real_stats = frechet.gaussian_stats(self.real_features)

    def score(self, latents, grid_path: str | None = None) -> dict:
        """{metric: value} for the images of `latents`; saves the first grid_prompts images
        (uint8) to grid_path for the image grids."""
        from diffjax.metrics import frechet, shapes_oracle
        if not (set(self.metrics) & set(IMAGE_METRICS) or (grid_path and self.grid_prompts)):
            return {}
        images = self.model.decode(latents)
        if grid_path and self.grid_prompts:
            _atomic_save_npy(grid_path, images[:self.grid_prompts])
        row = {}
        feats = (self.clip.frechet_features(images)
                 if set(self.metrics) & set(REAL_FEATURE_METRICS) else None)
        if "frechet" in self.metrics:
            row["frechet"] = frechet.frechet_distance(*frechet.gaussian_stats(feats),
                                                      *self.real_stats)
        if "kid" in self.metrics:
            from diffjax.metrics.kid import kid
            m = min(1000, len(feats), len(self.real_features))
            row["kid"] = 1000 * kid(feats, self.real_features, subset_size=m)[0]
        if {"precision", "recall"} & set(self.metrics):
            from diffjax.metrics.precision_recall import precision_recall
            p, r = precision_recall(feats, self.real_features)
            row.update({k: v for k, v in (("precision", p), ("recall", r))
                        if k in self.metrics})
        if "clip_score" in self.metrics:
            row["clip_score"] = float(np.mean(self.clip.clip_score(images, self.model.prompts)))
        if "prompt_accuracy" in self.metrics:
            row["prompt_accuracy"] = shapes_oracle.prompt_accuracy(images, self.model.prompts)
        return row


def write_image_grids(out: str, plan, rows, n_prompts: int) -> list[str]:
    """Per (schedule, guidance) and seed i < n_prompts: a PNG grid of that seed's image,
    rows = samplers, columns = step counts (grid_<schedule>_g<guidance>_seed<i>.png)."""
    from diffjax.train.run_log import save_grid
    paths = []
    steps = sorted({r["steps"] for r in rows})
    for (schedule, guidance), by_sampler in _groups(rows).items():
        stacks = {}
        for sampler, rs in by_sampler.items():
            by_steps = {r["steps"]: r for r in rs}
            for n in steps:
                key = Cell(sampler, schedule, guidance, n, 0).key
                stacks[(sampler, n)] = (np.load(os.path.join(out, "cells", key + ".npy"))
                                        if n in by_steps else None)
        for i in range(n_prompts):
            tiles = []
            for sampler in by_sampler:
                for n in steps:
                    a = stacks[(sampler, n)]
                    tiles.append(a[i] if a is not None and i < len(a) else
                                 np.zeros_like(next(v for v in stacks.values()
                                                    if v is not None)[0]))
            path = os.path.join(out, f"grid_{schedule}_g{guidance:g}_seed{i}.png")
            save_grid(np.stack(tiles), path, cols=len(steps), scale=3)
            paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------
def _groups(rows):
    """(schedule, guidance) -> sampler -> rows sorted by NFE, in first-seen order."""
    groups: dict = {}
    for r in rows:
        group = groups.setdefault((r["schedule"], r["guidance"]), {})
        group.setdefault(r["sampler"], []).append(r)
    for g in groups.values():
        for s in g.values():
            s.sort(key=lambda r: r["nfe"])
    return groups


def fit_slopes(rows, fit_last: int) -> list[dict]:
    """Per (schedule, guidance, sampler): log-log slope of rmse vs NFE over the `fit_last`
    finest cells (0: all)."""
    from diffjax.metrics.convergence import fit_loglog_slope
    out = []
    for (schedule, guidance), by_sampler in _groups(rows).items():
        for sampler, rs in by_sampler.items():
            out.append(dict(schedule=schedule, guidance=guidance, sampler=sampler,
                            slope=fit_loglog_slope([r["nfe"] for r in rs],
                                                   [r["rmse"] for r in rs], fit_last)))
    return out


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3e}"


def markdown_table(spec: StudySpec, plan, rows, summary) -> str:
    """Deterministic numbers only (no timings): the table a rerun must reproduce exactly."""
    from diffjax.diffusion.samplers import SAMPLERS
    lines = [f"# Sampler comparison: {spec.name}", ""]
    ref = summary["reference"]
    lines.append(f"Model: {spec.model.kind}; {len(plan.seeds)} seeds; reference: "
                 f"{ref['sampler']} {ref['steps']} steps ({ref['schedule']}), NFE "
                 f"{ref['nfe']}, "
                 + (f"last nonzero sigma {ref['sigma_min']:g}" if ref["sigma_min"] > 0 else
                    "same last nonzero sigma as the cells")
                 + f"; dtype {spec.dtype}. Cells show the metric, with the NFE "
                 "in brackets where it differs from the step count.")
    lines.append("")
    for g, e in ref["rmse_vs_half_steps"].items():
        lines.append(f"- reference error estimate (RMSE vs the same solve at half the steps), "
                     f"guidance {g}: {_fmt(e)}")
    floor = ("finite-sample floor" if spec.model.kind == "gmm" else
             "the reference solve's own, against the real images")
    for g, e in ref["frechet"].items():
        lines.append(f"- reference Fréchet distance ({floor}), guidance {g}: {_fmt(e)}")
    steps = sorted({r["steps"] for r in rows})
    slopes = {(s["schedule"], s["guidance"], s["sampler"]): s["slope"]
              for s in summary["slopes"]}
    for metric in plan.metrics:
        for (schedule, guidance), by_sampler in _groups(rows).items():
            lines += ["", f"## {metric} — schedule {schedule}, guidance {guidance:g}", ""]
            head = ["sampler", "order"] + [f"{n} steps" for n in steps]
            if metric == "rmse":
                head.append(f"slope (last {spec.fit_last or 'all'})")
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            for sampler, rs in by_sampler.items():
                info = SAMPLERS[sampler]
                by_steps = {r["steps"]: r for r in rs}
                cells = []
                for n in steps:
                    r = by_steps.get(n)
                    if r is None:
                        cells.append("")
                        continue
                    cells.append(_fmt(r[metric]) + ("" if r["nfe"] == n else f" [{r['nfe']}]"))
                order = f"{info.order}{' (stoch.)' if info.stochastic else ''}"
                row = [sampler, order] + cells
                if metric == "rmse":
                    s = slopes[(schedule, guidance, sampler)]
                    row.append("nan" if math.isnan(s) else f"{s:.2f}")
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_plots(out: str, plan, rows, summary) -> list[str]:
    """One log-log plot per metric and (schedule, guidance): metric vs NFE per sampler,
    rmse legends carrying the fitted slope."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    slopes = {(s["schedule"], s["guidance"], s["sampler"]): s["slope"]
              for s in summary["slopes"]}
    paths = []
    for metric in plan.metrics:
        for (schedule, guidance), by_sampler in _groups(rows).items():
            fig, ax = plt.subplots(figsize=(7, 5))
            colors = plt.get_cmap("tab20").colors
            for i, (sampler, rs) in enumerate(by_sampler.items()):
                label = sampler
                if metric == "rmse":
                    label += f" (slope {slopes[(schedule, guidance, sampler)]:.2f})"
                ax.plot([r["nfe"] for r in rs], [r[metric] for r in rs], "os^vDP*X"[i % 8] + "-",
                        color=colors[i % len(colors)], label=label, markersize=4)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("NFE (denoiser calls)")
            ax.set_ylabel(metric)
            ax.set_title(f"{metric} vs NFE — {schedule}, guidance {guidance:g}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
            path = os.path.join(out, f"{metric}_{schedule}_g{guidance:g}.png")
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            plt.close(fig)
            paths.append(path)
    return paths


def write_outputs(out: str, spec: StudySpec, plan, rows, summary) -> None:
    columns = ["sampler", "schedule", "guidance", "steps", "nfe", *plan.metrics,
               "compile_s", "seconds_per_sample"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _atomic_write(os.path.join(out, "results.csv"), buf.getvalue())
    _atomic_write(os.path.join(out, "results.json"),
                  json.dumps(dict(rows=rows, **summary), indent=1) + "\n")
    _atomic_write(os.path.join(out, "table.md"), markdown_table(spec, plan, rows, summary))
    write_plots(out, plan, rows, summary)

"""SDXL's ensemble of experts: a base model's program down to the switch, then a refiner's
from there, the latents staying on the devices in between."""

from __future__ import annotations

import dataclasses

import numpy as np

from diffjax.compiled_memory import programs_in_turn
from diffjax.pipeline import TextToImage
from diffjax.prompt_batches import by_group
from diffjax.sample_spec import InitImage, SampleSpec
from diffjax.sharding import local_rows
from diffjax.spec import ConfigError


class BaseRefiner:
    """SDXL's ensemble of experts: the base denoises down to `spec.refiner_switch`
    (denoising_end), its latents stay on the devices and the refiner continues from there
    (denoising_start), both with the job's sampler, steps and schedule, as diffusers'
    base(denoising_end=s, output_type="latent") -> refiner(image=latents,
    denoising_start=s). Same interface as TextToImage for commands."""

    def __init__(self, base, refiner, spec: SampleSpec, devices=None,
                 output: str = "images", init: InitImage | None = None):
        """base / refiner: Components."""
        base_spec = dataclasses.replace(spec, refiner="", denoising_end=spec.refiner_switch)
        ref_spec = dataclasses.replace(spec, refiner="", denoising_start=spec.refiner_switch)
        self.spec = spec
        self.base = TextToImage(base, base_spec, devices, output="latents", init=init)
        self.refiner = TextToImage(refiner, ref_spec, devices, output=output)
        if self.base.latent_shape != self.refiner.latent_shape:
            raise ConfigError(f"refiner latents {self.refiner.latent_shape} differ from the "
                              f"base's {self.base.latent_shape}")
        self.height, self.width = self.base.height, self.base.width
        self.components, self.mesh = base, self.base.mesh

    def compile_seconds(self, batch_size: int | None = None) -> float:
        return self.base.compile_seconds() + self.refiner.compile_seconds()

    def memory_plan(self) -> dict:
        """Both programs' plans as one (`compiled_memory.programs_in_turn`): the base's
        latents are alive during the refiner's run, both models stay loaded."""
        return programs_in_turn(self.base.memory_plan(), self.refiner.memory_plan())

    def generate_local(self, prompts, negatives, seeds, prompts_2=None, negatives_2=None):
        groups = self.base.prompt_groups(prompts, negatives, prompts_2, negatives_2)
        if len(groups) > 1:
            return by_group(self.generate_local, groups, prompts, negatives, seeds,
                            prompts_2, negatives_2)
        latents = self.base.run_global(prompts, negatives, seeds, prompts_2, negatives_2)
        out = self.refiner.run_global(prompts, negatives, seeds, prompts_2, negatives_2,
                                      latents=latents)
        return local_rows(out, len(prompts))

    def __call__(self, prompts, seeds, negative_prompts=None) -> np.ndarray:
        if isinstance(prompts, str):
            prompts = [prompts] * len(seeds)
        negatives = negative_prompts or [""] * len(prompts)
        if isinstance(negatives, str):
            negatives = [negatives] * len(prompts)
        b = self.spec.batch_size
        return np.concatenate([self.generate_local(prompts[i:i + b], negatives[i:i + b],
                                                   seeds[i:i + b])[0]
                               for i in range(0, len(prompts), b)])

    def metadata(self, prompt: str, negative_prompt: str, seed: int) -> dict:
        meta = self.base.metadata(prompt, negative_prompt, seed)
        meta.pop("denoising_end", None)
        meta.update(refiner=self.refiner.components.name,
                    refiner_switch=self.spec.refiner_switch)
        return meta


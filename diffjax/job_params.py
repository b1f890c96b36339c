"""The params of one sampling job, born sharded: their shardings and abstract structs
before anything is placed, and the placed arrays in their inference dtypes.

Building, lowering and compiling a job need only the shardings and structs (`abstract`),
so a model of configs without params (`preset_components(..., weights=False)`) compiles
for devices it cannot run on: a TPU topology's (`diffjax plan`). `placed` puts the
weights on the devices on first use, each in the dtype the network computes it in
(`models.inference_dtypes`: a bfloat16 network's weights in bfloat16, which leaves every
output bit unchanged and halves their memory and the bytes each call reads), cast on the
host before placement so the float32 masters never occupy the devices.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np


class JobParams:
    """{params key: params} of every network of a job ("text", "text_2", "unet", "vae"),
    on a mesh."""

    def __init__(self, components, vae_config, mesh):
        """vae_config: the VAE's config as the job runs it (its dtype decides its params'
        inference dtypes)."""
        from diffjax import sharding
        from diffjax.models.abstract import abstract_params
        c = components
        rows = [("text", c.text_config, c.text_params),
                ("text_2", c.text_config_2, c.text_params_2),
                ("unet", c.unet_config, c.unet_params), ("vae", vae_config, c.vae_params)]
        rows = [r for r in rows if r[1] is not None]
        self.model_name = c.name
        self._configs = {k: cfg for k, cfg, _ in rows}
        self._loaded = {k: p for k, _, p in rows}
        self._boxed = {k: abstract_params(cfg) for k, cfg, _ in rows}
        self.shardings = sharding.param_shardings(self._boxed, mesh)
        self._placed = None

    def inference_dtypes(self):
        """{params key: each param's storage dtype while sampling}."""
        from diffjax.models.inference_dtypes import inference_dtypes
        return {k: inference_dtypes(cfg) for k, cfg in self._configs.items()}

    def loaded(self):
        """The params as loaded (float32 masters); an error for a model of configs only."""
        if any(p is None for p in self._loaded.values()):
            raise ValueError(f"model {self.model_name!r} was built without params "
                             "(configs only): it can be lowered and compiled, not run")
        return self._loaded

    def placed_masters(self):
        """The loaded params on their shardings, as loaded: what a LoRA is fused into
        before the weights are cast for sampling."""
        return jax.device_put(self.loaded(), self.shardings)

    @property
    def placed(self):
        """The params on their shardings in their inference dtypes, placed on first use."""
        if self._placed is None:
            from diffjax.models.inference_dtypes import cast_for_inference
            self._placed = jax.device_put(
                cast_for_inference(self.loaded(), self.inference_dtypes()), self.shardings)
        return self._placed

    @placed.setter
    def placed(self, value):
        from diffjax.models.inference_dtypes import cast_for_inference
        self._placed = cast_for_inference(value, self.inference_dtypes())

    @property
    def is_placed(self) -> bool:
        return self._placed is not None

    def abstract(self):
        """The params as ShapeDtypeStructs on their shardings and in their inference
        dtypes (the loaded params' shapes, or the configs' where there are none): what a
        program is lowered with."""
        from diffjax.models.inference_dtypes import stored_struct
        shapes = {k: p if p is not None else nn.meta.unbox(self._boxed[k])
                  for k, p in self._loaded.items()}
        structs = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(np.shape(a), a.dtype,
                                                                 sharding=s),
                               shapes, self.shardings)
        return jax.tree.map(stored_struct, structs, self.inference_dtypes())

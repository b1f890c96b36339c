"""Scaled-down SDXL models for tests (random weights, diffjax Components; write them as
diffusers folders with `weights.diffusers_folder.export_sd_folder`): two bases with
different level counts, per-block heads/depths, widths and cross dims, and a refiner with
only the second (bigG-like) tower and 5 time ids (aesthetic score)."""

from __future__ import annotations

import jax
import numpy as np

from diffjax.models.clip import CLIPTextConfig
from diffjax.models.unet import UNetConfig
from diffjax.models.vae import VAEConfig
from diffjax.weights.components import SD_SCHEDULER, Components, random_params


def _text(hidden, layers, heads, act, projection=None):
    return CLIPTextConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          hidden_act=act, projection_dim=projection)


def _random(config, seed):
    import flax.linen as nn

    from diffjax.models.abstract import abstract_params
    params = random_params(nn.meta.unbox(abstract_params(config)), seed)
    # non-trivial norms and biases (random_params leaves them at 1 and 0)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, a: (a + 0.1 * rng.standard_normal(a.shape).astype(np.float32)
                      if str(getattr(p[-1], "key", "")) in ("bias", "scale") else a), params)


def _vae(**kw):
    return VAEConfig(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                     sample_size=64, scaling_factor=0.13025, **kw)


def _components(name, text, text_2, unet, vae, seed, **flags):
    tc = text and _text(*text)
    tc2 = _text(*text_2)
    return Components(name, tc, tc and _random(tc, seed), unet, _random(unet, seed + 1),
                      vae, _random(vae, seed + 2), None,
                      dict(SD_SCHEDULER, _class_name="EulerDiscreteScheduler",
                           timestep_spacing="leading", steps_offset=1),
                      text_config_2=tc2, text_params_2=_random(tc2, seed + 3), **flags)


def _unet(blocks, down, up, heads, depths, cross, pooled, n_ids, **kw):
    return UNetConfig(sample_size=8, block_out_channels=blocks, down_block_types=down,
                      up_block_types=up, layers_per_block=1, attention_head_dim=heads,
                      transformer_layers_per_block=depths, cross_attention_dim=cross,
                      use_linear_projection=True, norm_num_groups=8,
                      addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=pooled + n_ids * 8, **kw)


def base_a():
    """Two levels, 1 transformer block, ViT-L-like 24-wide + bigG-like 32-wide towers."""
    unet = _unet((32, 48), ("DownBlock2D", "CrossAttnDownBlock2D"),
                 ("CrossAttnUpBlock2D", "UpBlock2D"), (2, 4), (1, 2), 24 + 32, 16, 6)
    return _components("base-a", (24, 3, 2, "quick_gelu"), (32, 3, 4, "gelu", 16), unet,
                       _vae(), 10, force_zeros_for_empty_prompt=True)


def base_b():
    """Three levels, per-block heads/depths (2, 1 / 2), other widths, VAE latents_mean/std."""
    unet = _unet((16, 32, 32), ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), (1, 2, 4),
                 (1, 2, 1), 16 + 40, 24, 6)
    vae = _vae(latents_mean=(0.1, -0.2, 0.3, 0.0), latents_std=(0.9, 1.1, 1.2, 0.8))
    return _components("base-b", (16, 2, 2, "quick_gelu"), (40, 3, 5, "gelu", 24), unet,
                       vae, 20, force_zeros_for_empty_prompt=True)


def refiner():
    """Second tower only (bigG-like, 32 wide like base A's), 5 time ids (aesthetic)."""
    unet = _unet((24, 48), ("DownBlock2D", "CrossAttnDownBlock2D"),
                 ("CrossAttnUpBlock2D", "UpBlock2D"), (2, 2), 2, 32, 16, 5)
    return _components("refiner", None, (32, 2, 4, "gelu", 16), unet, _vae(), 30,
                       requires_aesthetics_score=True)

"""Every model size in one place: frozen config dataclasses, looked up by name.

The config dataclasses are defined beside their modules (`clip.CLIPTextConfig`,
`unet.UNetConfig`, `vae.VAEConfig`); this file only holds the named instances, so a
reader finds every size of every network here.
"""

from __future__ import annotations

from diffjax.models.clip import CLIPTextConfig, CLIPVisionConfig

# ---------------------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------------------
CLIP_TEXT_PRESETS: dict[str, CLIPTextConfig] = {
    # SD 1.x: OpenAI CLIP ViT-L/14 text tower (123,060,480 params).
    "sd1": CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                          num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu"),
    # SD 2.x: OpenCLIP ViT-H/14 text tower. It has 24 layers, but SD2 conditions on the
    # penultimate one, so its checkpoints store 23: this preset is what they hold.
    "sd2": CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                          num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu",
                          pad_token_id=1),
    # SDXL's first text encoder: the same OpenAI ViT-L/14 tower as SD 1.x (SDXL reads its
    # penultimate layer without the final LN: context_style "sdxl").
    "sdxl-l": CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                             num_hidden_layers=12, num_attention_heads=12,
                             hidden_act="quick_gelu"),
    # SDXL's second: OpenCLIP ViT-bigG/14's text tower with its projection
    # (CLIPTextModelWithProjection, 694,659,840 params; pooled output through it).
    "sdxl-bigg": CLIPTextConfig(vocab_size=49408, hidden_size=1280, intermediate_size=5120,
                                num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
                                projection_dim=1280),
    "tiny": CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4),
    # diffjax-mini (trained on `shapes`, shipped): the real CLIP vocabulary, so most of its
    # 3.3M params are the token embedding.
    "mini": CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=256,
                           num_hidden_layers=2, num_attention_heads=4, projection_dim=64),
}

CLIP_VISION_PRESETS: dict[str, CLIPVisionConfig] = {
    "vit-l-14": CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                 num_attention_heads=16, image_size=224, patch_size=14,
                                 projection_dim=768),
    "tiny": CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, image_size=32, patch_size=8,
                             projection_dim=32),
    # diffjax-mini's image tower (CLIP score / Frechet features on 32px `shapes`).
    "mini": CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                             num_attention_heads=4, image_size=32, patch_size=4,
                             projection_dim=64),
}

# ---------------------------------------------------------------------------------------
# UNet and VAE
# ---------------------------------------------------------------------------------------
from diffjax.models.unet import UNetConfig  # noqa: E402
from diffjax.models.vae import VAEConfig  # noqa: E402

UNET_PRESETS: dict[str, UNetConfig] = {
    # SD 1.4 / 1.5: 859,520,964 params, 8 heads per block, conv projections.
    "sd15": UNetConfig(),
    # SD 2.0 / 2.1 base (512, eps): OpenCLIP context 1024, 64-dim heads, linear projections.
    "sd21-base": UNetConfig(attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                            use_linear_projection=True),
    # SD 2.0 / 2.1 768-v: same network, 96x96 latents; trained with v-prediction
    # (the pipeline's prediction_type comes from the checkpoint's scheduler config).
    "sd21-768": UNetConfig(sample_size=96, attention_head_dim=(5, 10, 20, 20),
                           cross_attention_dim=1024, use_linear_projection=True),
    # SDXL base 1.0: 2,567,463,684 params; three levels (no attention at the first),
    # 1/2/10 transformer blocks, 64-dim heads, two text encoders' 2048-wide context, and
    # micro-conditioning (pooled bigG embedding 1280 + 6 time ids x 256 = 2816).
    "sdxl": UNetConfig(sample_size=128, block_out_channels=(320, 640, 1280),
                       down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                         "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                       attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
                       cross_attention_dim=2048, use_linear_projection=True,
                       addition_embed_type="text_time", addition_time_embed_dim=256,
                       projection_class_embeddings_input_dim=2816),
    # SDXL refiner 1.0: bigG context only (1280), 4 transformer blocks everywhere, and
    # 5 time ids (sizes, crop, aesthetic score): 1280 + 5 x 256 = 2560.
    "sdxl-refiner": UNetConfig(sample_size=128, block_out_channels=(384, 768, 1536, 1536),
                               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                 "CrossAttnDownBlock2D", "DownBlock2D"),
                               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D",
                                               "CrossAttnUpBlock2D", "UpBlock2D"),
                               attention_head_dim=(6, 12, 24, 24), transformer_layers_per_block=4,
                               cross_attention_dim=1280, use_linear_projection=True,
                               addition_embed_type="text_time", addition_time_embed_dim=256,
                               projection_class_embeddings_input_dim=2560),
    # Tests, benchmarks and the random-weight default: 32x32 images through a 2x VAE.
    "tiny": UNetConfig(sample_size=16, block_out_channels=(32, 64),
                       down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                       layers_per_block=1, attention_head_dim=4, cross_attention_dim=32,
                       norm_num_groups=8),
    # diffjax-mini: 8x8x4 latents (32px images through the f4 mini VAE); cross-attention at
    # both levels. Sized for CPU training: 16x16 self-attention costs 3x the whole step.
    "mini": UNetConfig(sample_size=8, block_out_channels=(64, 128),
                       down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                       layers_per_block=1, attention_head_dim=4, cross_attention_dim=64,
                       norm_num_groups=16),
}

VAE_PRESETS: dict[str, VAEConfig] = {
    "sd": VAEConfig(),  # the SD 1.x/2.x KL-f8 autoencoder, scaling_factor 0.18215
    # SDXL's: the same shapes, retrained; scaling_factor 0.13025, float32 decode (it
    # overflows in float16, as diffusers' force_upcast says).
    "sdxl": VAEConfig(sample_size=1024, scaling_factor=0.13025, force_upcast=True),
    "tiny": VAEConfig(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                      sample_size=32),
    # diffjax-mini: KL-f4, 32x32x3 -> 8x8x4. scaling_factor here is a placeholder: the
    # recipe sets it to 1/std of the trained encoder's latents (as LDM did for 0.18215).
    "mini": VAEConfig(block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
                      sample_size=32),
}

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
    "tiny": CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4),
}

CLIP_VISION_PRESETS: dict[str, CLIPVisionConfig] = {
    "vit-l-14": CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                 num_attention_heads=16, image_size=224, patch_size=14,
                                 projection_dim=768),
    "tiny": CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, image_size=32, patch_size=8,
                             projection_dim=32),
}

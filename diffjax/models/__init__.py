"""Flax (linen) modules of the Stable Diffusion family: CLIP, UNet2DCondition, AutoencoderKL."""

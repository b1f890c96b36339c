"""img2img (SDEdit) and inpainting as an initial state and denoiser/network wrappers.

img2img: the sampler runs the tail of the grid from the sigma that `strength` picks. Like
diffusers, `strength * steps` (floored) steps are run: the grid is
`sigmas[start_index(steps, strength):]`, and x_T is the init latent noised to its first
sigma with the seed's own noise, `init_latent + sigma * noise`. At full strength x_T is
text-to-image's own (the init latent is ignored, as diffusers' inpainting pipeline does),
so strength 1 equals text-to-image; strength 0 runs no step (the caller returns the init
latent).

Inpainting (the mask is 1 = repaint, 0 = keep):
  (a) an ordinary network: RePaint-style blending. Before every denoiser evaluation (i.e.
      after every step, for every sampler, without touching the samplers' scans) the kept
      region of x is replaced by the init latent noised to the current sigma with the
      seed's own noise, init_latent + sigma * noise; the result's kept region is the init
      latent. The mask reaches the latent grid by max-pooling: a latent cell is kept only
      if all of its pixels are.
  (b) an inpainting network (in_channels = 2 * latent channels + 1, SD-inpainting's 9):
      its input is [latents, mask, masked-image latents] (diffusers' order; the masked
      image has the repaint region set to 0 in [-1, 1], i.e. 0.5 in [0, 1]; the mask
      reaches the latent grid by nearest-neighbour sampling as in diffusers). No blending,
      as diffusers.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from diffjax.diffusion.sample import noise_to_x_T


def start_index(steps: int, strength: float) -> int:
    """Index into the steps+1 sigma grid where img2img starts (diffusers' rule); `steps`
    (the grid's last sigma) when strength is too low for one step."""
    return steps - min(int(steps * strength), steps)


def latent_mask(mask, factor: int, mode: str = "max"):
    """[H, W] pixel mask -> [H/f, W/f, 1] latent mask: "max" repaints a cell if any of its
    pixels is repainted (blending: no masked pixel is kept); "nearest" takes the cell's
    top-left pixel (torch `interpolate(mode="nearest")`, what diffusers gives its
    inpainting UNet)."""
    h, w = mask.shape
    if mode == "max":
        m = mask.reshape(h // factor, factor, w // factor, factor).max(axis=(1, 3))
    elif mode == "nearest":
        m = mask[::factor, ::factor]
    else:
        raise ValueError(f"latent mask mode {mode!r} is not 'max' or 'nearest'")
    return m[..., None]


def masked_image(image, mask):
    """The inpainting network's masked image: [0, 1] pixels, the repaint region grey."""
    return image * (1.0 - mask[..., None]) + 0.5 * mask[..., None]


def with_extra_channels(network, extra):
    """`network(x, t, ctx)` whose input gets `extra` ([h, w, k], the same for every
    sample) concatenated after x's channels: the inpainting network's
    [latents, mask, masked-image latents]."""
    def extended(x, t, ctx):
        e = jnp.broadcast_to(extra, (*x.shape[:-1], extra.shape[-1]))
        return network(jnp.concatenate([x, e.astype(x.dtype)], -1), t, ctx)

    return extended


def inpainting_network(network, mask, masked_latent, factor: int):
    """An inpainting network's wrapper: mask [H, W] (pixels) and the masked image's
    latent [h, w, c] join x as extra input channels."""
    return with_extra_channels(
        network, jnp.concatenate([latent_mask(mask, factor, "nearest"), masked_latent], -1))


def repaint_denoiser(denoise, init_latent, keep, noise):
    """RePaint blending: the kept region (keep = 1) of x is the init latent noised to the
    current sigma with the seed's noise, before every denoiser evaluation."""
    def blended(x, sigma):
        x = keep * (init_latent + sigma * noise) + (1.0 - keep) * x
        return denoise(x, sigma)

    return blended


@dataclasses.dataclass(frozen=True)
class FromImage:
    """img2img / inpainting start for `diffusion.sample.sample`.

    init_latent: [h, w, c]; keep: [h, w, 1] latent mask (1 = keep) for RePaint blending,
    or None; full_strength: the grid is whole, so x_T is text-to-image's (VP-scaled noise).
    """

    init_latent: object
    keep: object = None
    full_strength: bool = False

    def x_T(self, noise, sigma_max):
        if self.full_strength:
            return noise_to_x_T(noise, sigma_max, "vp")
        return self.init_latent + sigma_max * noise

    def denoiser(self, denoise, noise):
        if self.keep is None:
            return denoise
        return repaint_denoiser(denoise, self.init_latent, self.keep, noise)

    def final(self, x):
        if self.keep is None:
            return x
        return self.keep * self.init_latent + (1.0 - self.keep) * x


def paste_back(images, round_trip, mask):
    """Decoded images [B, H, W, 3] with the pixels outside `mask` [H, W] taken from the
    init image's VAE round trip: with blending the latents there are exactly the init
    latents, but the decoder (its mid-block attention sees the whole latent) carries the
    repainted region into every pixel."""
    m = mask[None, :, :, None]
    return m * images + (1.0 - m) * round_trip

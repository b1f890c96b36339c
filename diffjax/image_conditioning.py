"""Image-conditioned generation: img2img (SDEdit) and inpainting, with every sampler.

img2img: the init image is VAE-encoded (the posterior mean, so a run is deterministic),
noised to the sigma that `strength` picks on the truncated grid, and the sampler runs the
remaining steps. Like diffusers, `strength * steps` (floored) steps are run: the grid is
`sigmas[steps - int(steps * strength):]`. Strength 0 runs no step and returns the VAE round
trip of the init image; strength 1 starts from exactly the text-to-image noise of the same
seed (the init image is ignored, as diffusers' inpainting pipeline does at full strength),
so it equals text-to-image.

Inpainting (the mask is 1 = repaint, 0 = keep; binarised at 0.5):
  (a) an ordinary UNet: RePaint-style blending. Before every denoiser evaluation (i.e.
      after every step, for every sampler, without touching the samplers' scans) the kept
      region of x is replaced by the init latent noised to the current sigma with the
      seed's own noise, x0 + sigma * eps; the result's kept region is the init latent.
      The mask reaches the latent grid by max-pooling: a latent cell is kept only if all
      of its pixels are.
  (b) an inpainting UNet (in_channels = 2 * latent channels + 1, SD-inpainting's 9): its
      input is [latents, mask, masked-image latents] (diffusers' order; the masked image
      has the repaint region set to 0 in [-1, 1]; the mask reaches the latent grid by
      nearest-neighbour sampling as in diffusers). No blending, as diffusers.

Per-seed keys are those of `diffusion.sample`: the noise from `fold_in(key(seed), 0)`, the
sampler's key `fold_in(key(seed), 1)`, so an image depends only on its own seed.
`ImageToImage` subclasses `pipeline.TextToImage` and swaps in its own jitted function (the
init image and mask are replicated inputs, the seeds sharded as in text-to-image).
"""

from __future__ import annotations

import hashlib
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.pipeline import TextToImage


class ImageConditioningError(ValueError):
    """Bad init image, mask, strength or size request; the message names what and why."""


# ----------------------------------------------------------------------------------------
# sizes
# ----------------------------------------------------------------------------------------
def parse_aspect(aspect: str) -> float:
    """'16:9' (width:height), '1.5' -> width / height."""
    try:
        if ":" in aspect:
            w, h = aspect.split(":")
            value = float(w) / float(h)
        else:
            value = float(aspect)
    except (ValueError, ZeroDivisionError):
        raise ImageConditioningError(f"aspect {aspect!r} is not 'W:H' (e.g. 16:9) or a "
                                     f"positive number") from None
    if not (math.isfinite(value) and value > 0):
        raise ImageConditioningError(f"aspect {aspect!r} must be a positive ratio")
    return value


def nearest_size(aspect: str, pixels: int, factor: int) -> tuple[int, int]:
    """(height, width), multiples of `factor`, nearest to `pixels` pixels at `aspect`.

    Among the floor/ceil multiples around the exact real solution, the one minimising
    |log aspect error| + |log area error| (each relative error counts the same).
    """
    a = parse_aspect(aspect)
    if int(pixels) != pixels or pixels < factor * factor:
        raise ImageConditioningError(f"pixels {pixels} must be an integer >= factor^2 = "
                                     f"{factor * factor}")
    if factor < 1:
        raise ImageConditioningError(f"factor {factor} must be >= 1")
    h, w = math.sqrt(pixels / a), math.sqrt(pixels * a)
    cands = [(hh, ww) for hh in {max(factor, math.floor(h / factor) * factor),
                                  max(factor, math.ceil(h / factor) * factor)}
             for ww in {max(factor, math.floor(w / factor) * factor),
                        max(factor, math.ceil(w / factor) * factor)}]
    cost = lambda s: (abs(math.log(s[1] / s[0] / a)) + abs(math.log(s[0] * s[1] / pixels)),  # noqa
                      s)
    return min(cands, key=cost)


# ----------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------
def check_strength(strength) -> float:
    s = float(strength)
    if not 0.0 <= s <= 1.0:
        raise ImageConditioningError(f"strength {strength} must be in [0, 1] (0 = return "
                                     f"the init image, 1 = ignore it)")
    return s


def start_index(steps: int, strength: float) -> int:
    """Index into the steps+1 sigma grid where img2img starts (diffusers' rule)."""
    return steps - min(int(steps * check_strength(strength)), steps)


def _as_float_image(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        raise ImageConditioningError(f"float images must be in [0, 1], got range "
                                     f"[{a.min():.3g}, {a.max():.3g}]")
    return a


def check_init_image(image, height: int, width: int, resize: bool = True) -> np.ndarray:
    """The init image as float32 [height, width, 3] in [0, 1].

    image: uint8 or [0, 1] float array [H, W, 3] (RGBA drops its alpha), or a PIL image.
    Another size is resized (bicubic, with a warning) when `resize`, else an error.
    """
    from PIL import Image
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ImageConditioningError(f"init image must be [H, W, 3] RGB, got shape "
                                     f"{tuple(a.shape)}")
    a = _as_float_image(a)
    if a.shape[:2] != (height, width):
        if not resize:
            raise ImageConditioningError(
                f"init image is {a.shape[0]}x{a.shape[1]} (HxW) but the output is "
                f"{height}x{width}; resize it, or allow resizing")
        warnings.warn(f"init image {a.shape[0]}x{a.shape[1]} resized to {height}x{width} "
                      f"(bicubic)", stacklevel=2)
        pil = Image.fromarray(np.round(a * 255).astype(np.uint8))
        a = np.asarray(pil.resize((width, height), Image.BICUBIC), np.float32) / 255.0
    return np.ascontiguousarray(a, np.float32)


def check_mask(mask, height: int, width: int) -> np.ndarray:
    """The mask as float32 [height, width] of 0 (keep) / 1 (repaint), binarised at 0.5.

    mask: [H, W] or [H, W, 1], uint8 or [0, 1] float, or a PIL image of mode L / 1.
    A multi-channel mask or one of another size than the image is an error (a mask is
    not resized: a shifted edge would silently repaint the wrong pixels).
    """
    from PIL import Image
    if isinstance(mask, Image.Image):
        if mask.mode not in ("L", "1"):
            raise ImageConditioningError(f"mask must be single-channel (mode L or 1), got "
                                         f"PIL mode {mask.mode!r} with {len(mask.getbands())}"
                                         f" channels")
        mask = np.asarray(mask.convert("L"))
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ImageConditioningError(f"mask must be single-channel [H, W], got shape "
                                     f"{tuple(m.shape)}")
    if m.shape != (height, width):
        raise ImageConditioningError(f"mask is {m.shape[0]}x{m.shape[1]} (HxW) but the image"
                                     f" is {height}x{width}")
    return (_as_float_image(m) >= 0.5).astype(np.float32)


def load_image(path: str) -> np.ndarray:
    """An image file as uint8 [H, W, 3] (RGB) or [H, W] (single-channel modes)."""
    from PIL import Image
    with Image.open(path) as im:
        if im.mode in ("L", "1", "I", "I;16", "F"):
            return np.asarray(im.convert("L"))
        if im.mode == "LA":
            raise ImageConditioningError(f"{path}: mode LA has 2 channels")
        return np.asarray(im.convert("RGB"))


def load_mask(path: str) -> np.ndarray:
    """A mask file as uint8; RGB files are refused by `check_mask` as multi-channel."""
    from PIL import Image
    with Image.open(path) as im:
        if im.mode in ("L", "1", "I", "I;16", "F"):
            return np.asarray(im.convert("L"))
        return np.asarray(im.convert("RGB") if im.mode != "RGBA" else im)


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def array_sha256(a) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(str((a.dtype.str, a.shape)).encode() + a.tobytes()).hexdigest()


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
        raise ImageConditioningError(f"latent mask mode {mode!r} is not 'max' or 'nearest'")
    return m[..., None]


# ----------------------------------------------------------------------------------------
# the pipeline
# ----------------------------------------------------------------------------------------
class ImageToImage(TextToImage):
    """img2img / inpainting for one init image (and mask) with many prompts and seeds.

    `pipe(prompts, seeds)` and `generate_local` work as in TextToImage. With an inpainting
    UNet (2c+1 input channels) a mask is required; with an ordinary one a mask switches on
    blending.
    """

    def __init__(self, components, spec, init_image, mask=None, strength: float = 0.75,
                 resize: bool = True, paste_back: bool = True, devices=None,
                 output: str = "images", init_image_hash: str | None = None,
                 mask_hash: str | None = None):
        """init_image / mask: arrays or PIL images (see check_init_image / check_mask);
        resize: resize an init image of another size (with a warning) instead of failing;
        paste_back: with blending, the decoded pixels outside the mask are the VAE round
          trip of the init image. The latents there are exactly the init latents, but the
          decoder (its mid-block attention sees the whole latent) carries the repainted
          region into every pixel; pasting back keeps the known pixels as the round trip.
        *_hash: recorded in metadata (default: a hash of the array)."""
        from diffjax import sharding
        self.strength = check_strength(strength)
        c = components
        # Inputs are checked before the model is placed (TextToImage re-checks the size).
        f = c.vae_config.downsample_factor
        height = spec.height or c.unet_config.sample_size * f
        width = spec.width or c.unet_config.sample_size * f
        self.has_mask = mask is not None
        m = (check_mask(mask, height, width) if self.has_mask
             else np.zeros((height, width), np.float32))
        image = check_init_image(init_image, height, width, resize)
        lc, inc = c.vae_config.latent_channels, c.unet_config.in_channels
        if inc == lc:
            self.inpaint_unet = False
        elif inc == 2 * lc + 1:
            self.inpaint_unet = True
            if mask is None:
                raise ImageConditioningError(
                    f"the UNet has {inc} input channels (an inpainting UNet: latents + mask "
                    f"+ masked-image latents) and needs a mask")
        else:
            raise ImageConditioningError(
                f"UNet in_channels {inc} is neither the VAE's {lc} latent channels nor an "
                f"inpainting UNet's {2 * lc + 1}")
        super().__init__(components, spec, devices=devices, output=output)
        self.init_image_hash = init_image_hash or array_sha256(image)
        self.mask_hash = (mask_hash or array_sha256(m)) if self.has_mask else None
        self.start = start_index(spec.steps, self.strength)
        self.paste_back = bool(paste_back)
        rep = sharding.replicated(self.mesh)
        put = lambda a: jax.make_array_from_callback(a.shape, rep, lambda i: a[i])  # noqa
        self.image_array, self.mask_array = put(image), put(m)
        self._jitted = jax.jit(self._generate_conditioned,
                               in_shardings=(self.param_shardings,
                                             sharding.batch_sharding(self.mesh, 2),
                                             sharding.batch_sharding(self.mesh, 2),
                                             sharding.batch_sharding(self.mesh, 1), rep, rep),
                               out_shardings=sharding.batch_sharding(self.mesh, 4))
        self._compiled = {}

    def _global_inputs(self, prompts, negatives, seeds):
        return (*super()._global_inputs(prompts, negatives, seeds), self.image_array,
                self.mask_array)

    def _executable(self):
        b = self.spec.batch_size
        if b not in self._compiled:
            ids = jax.ShapeDtypeStruct((b, self.tokenizer.max_length), jnp.int32)
            seeds = jax.ShapeDtypeStruct((b,), jnp.uint32)
            self._compiled[b] = self._jitted.lower(self.params, ids, ids, seeds,
                                                   self.image_array,
                                                   self.mask_array).compile()
        return self._compiled[b]

    def _generate_conditioned(self, params, ids, neg_ids, seeds, image, mask):
        from diffjax.diffusion.denoisers import cfg_model, vp_denoiser
        from diffjax.diffusion.sample import initial_noise, seed_keys
        from diffjax.diffusion.samplers import check_options, get_sampler
        _, unet, vae = self._modules()
        spec, c = self.spec, self.components
        sf, f = c.vae_config.scaling_factor, self.vae_factor
        vae_vars = {"params": params["vae"]}
        encode_image = lambda im: vae.apply(vae_vars, im[None] * 2.0 - 1.0,  # noqa: E731
                                            method=vae.encode).mode()[0] * sf
        init_latent = encode_image(image)                      # [h, w, c]
        shape = init_latent.shape

        context, uncontext = self.encode_text(params, ids), self.encode_text(params, neg_ids)

        if self.inpaint_unet:      # [latents, mask, masked-image latents], diffusers' order
            extra = jnp.concatenate([latent_mask(mask, f, "nearest"),
                                     encode_image(image * (1.0 - mask[..., None])
                                                  + 0.5 * mask[..., None])], -1)

            def network(x, t, ctx):
                e = jnp.broadcast_to(extra, (*x.shape[:-1], extra.shape[-1]))
                return unet.apply({"params": params["unet"]},
                                  jnp.concatenate([x, e.astype(x.dtype)], -1), t, ctx)
        else:
            def network(x, t, ctx):
                return unet.apply({"params": params["unet"]}, x, t, ctx)

        if spec.guidance_scale == 1.0:
            model = lambda x, t, ctx, unctx: network(x[None], t[None], ctx[None])[0]  # noqa
        else:
            model = cfg_model(network, spec.guidance_scale, spec.guidance_rescale)
        denoise = vp_denoiser(model, self.train_sigmas, c.scheduler["prediction_type"])
        blend = self.has_mask and not self.inpaint_unet
        keep = 1.0 - latent_mask(mask, f, "max")              # [h, w, 1], 1 = keep
        sigmas = jnp.asarray(self.sigmas[self.start:], jnp.float32)
        info, options = get_sampler(spec.sampler), self._sampler_options()
        check_options(spec.sampler, options)

        def one(seed, cond):
            noise_key, key = seed_keys(seed)
            eps = jax.random.normal(noise_key, shape, jnp.float32)
            if self.start == 0:          # full strength: text-to-image's own x_T
                x = initial_noise(seed, shape, sigmas[0], "vp", jnp.float32)
            else:
                x = init_latent + sigmas[0] * eps

            def d(x, s):
                if blend:                # RePaint: the kept region is the noised original
                    x = keep * (init_latent + s * eps) + (1.0 - keep) * x
                return denoise(x, s, *cond)

            x = info.fn(d, x, sigmas, key, **options)
            return keep * init_latent + (1.0 - keep) * x if blend else x

        if self.start == len(self.sigmas) - 1:   # strength too low for one step
            latents = jnp.broadcast_to(init_latent, (seeds.shape[0], *shape))
        else:
            latents = jax.vmap(one)(seeds, (context, uncontext))
        if self.output == "latents":
            return latents
        images = vae.apply(vae_vars, latents / sf, method=vae.decode)
        if blend and self.paste_back:
            round_trip = vae.apply(vae_vars, init_latent[None] / sf, method=vae.decode)
            m = mask[None, :, :, None]
            images = m * images + (1.0 - m) * round_trip
        return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)

    def metadata(self, prompt: str, negative_prompt: str, seed: int) -> dict:
        meta = super().metadata(prompt, negative_prompt, seed)
        meta.update(init_image_sha256=self.init_image_hash, strength=self.strength)
        if self.has_mask:
            meta["mask_sha256"] = self.mask_hash
        return meta


# ----------------------------------------------------------------------------------------
# `diffjax sample --init-image ... --mask ... --strength ... --aspect ... --pixels ...`
# ----------------------------------------------------------------------------------------
IMAGE_DEFAULTS = dict(init_image="", mask="", strength=0.75, resize=True)


def add_arguments(parser) -> None:
    """The image-conditioning flags of `diffjax sample` (recorded in config.image)."""
    parser.add_argument("--init-image", help="img2img / inpainting: the init image "
                                             "(config.image.init_image)")
    parser.add_argument("--mask", help="inpainting mask, single-channel, the image's size; "
                                       "white = repaint (config.image.mask)")
    parser.add_argument("--strength", type=float, help="0 = the init image, 1 = ignore it "
                                                       "(config.image.strength, default 0.75)")
    parser.add_argument("--no-resize", action="store_true", default=None,
                        help="an init image of another size is an error, not resized")
    parser.add_argument("--aspect", help="W:H, e.g. 16:9; with --pixels picks height/width")
    parser.add_argument("--pixels", type=int, help="about this many pixels (e.g. 262144)")


def apply_flags(config, args):
    """Put the image flags into `config` (config.image, height, width) so config.json
    reruns the job. --aspect/--pixels need the model's size factor, so they load the model:
    returns its Components (to be reused) or None."""
    import ml_collections

    from diffjax.config import apply_override
    flags = dict(init_image=getattr(args, "init_image", None), mask=getattr(args, "mask", None),
                 strength=getattr(args, "strength", None),
                 resize=False if getattr(args, "no_resize", None) else None)
    if any(v is not None for v in flags.values()) and "image" not in config:
        with config.unlocked():
            config.image = ml_collections.ConfigDict(IMAGE_DEFAULTS)
    for key, value in flags.items():
        if value is not None:
            apply_override(config, f"image.{key}={value}")
    if "image" in config:
        check_strength(config.image.strength)
        if not config.image.init_image and (config.image.mask or flags["strength"] is not None):
            raise ImageConditioningError("--mask / --strength need --init-image")
    aspect, pixels = getattr(args, "aspect", None), getattr(args, "pixels", None)
    if aspect is None and pixels is None:
        return None
    from diffjax.weights.load import load
    comps = load(config.model, config.dtype, config.attention, 0)
    factor = comps.vae_config.downsample_factor * comps.unet_config.downsample_factor
    native = comps.unet_config.sample_size * comps.vae_config.downsample_factor
    height, width = nearest_size(aspect or "1:1", pixels or native * native, factor)
    apply_override(config, f"height={height}")
    apply_override(config, f"width={width}")
    return comps


def pipeline_for(config, spec, components=None) -> TextToImage:
    """ImageToImage when config.image names an init image, else TextToImage; the PNG
    metadata records the init image's and mask's file hashes (sha256) and the strength."""
    if components is None:
        from diffjax.weights.load import load
        components = load(config.model, spec.dtype, spec.attention, 0)
    image = config.get("image")
    if not image or not image.init_image:
        return TextToImage(components, spec)
    mask = load_mask(image.mask) if image.mask else None
    return ImageToImage(components, spec, load_image(image.init_image), mask, image.strength,
                        resize=image.resize, init_image_hash=file_sha256(image.init_image),
                        mask_hash=file_sha256(image.mask) if image.mask else None)

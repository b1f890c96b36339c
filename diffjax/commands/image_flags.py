"""`diffjax sample --init-image ... --mask ... --strength ... --aspect ... --pixels ...`:
the image-conditioning flags, recorded in the config (config.image, height, width) so that
config.json reruns the job, and the pipeline they ask for (with config.refiner.model, the
SDXL base -> refiner pair). --aspect alone picks SDXL's training bucket for SDXL models."""

from __future__ import annotations

from diffjax.images import (ImageConditioningError, check_strength, file_sha256, load_image,
                            load_mask, nearest_size)

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
    from diffjax.pipeline_loading import model_options
    from diffjax.weights.load import load
    comps = load(config.model, config.dtype, config.attention, 0, **model_options(config))
    factor = comps.vae_config.downsample_factor   # the UNet takes any latent size
    native = comps.unet_config.sample_size * comps.vae_config.downsample_factor
    if comps.is_sdxl and pixels is None:          # SDXL: the training bucket of that aspect
        height, width = sdxl_bucket(aspect, native, factor)
    else:
        height, width = nearest_size(aspect or "1:1", pixels or native * native, factor)
    apply_override(config, f"height={height}")
    apply_override(config, f"width={width}")
    return comps


# SDXL's multi-aspect training buckets, (height, width) at ~1024^2 pixels (Podell et al.
# 2023, appendix; the sizes SDXL front ends offer): outside them SDXL composes worse.
SDXL_BUCKETS = ((1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216),
                (1344, 768), (768, 1344), (1536, 640), (640, 1536))


def sdxl_bucket(aspect: str, native: int = 1024, factor: int = 8) -> tuple[int, int]:
    """(height, width): the SDXL bucket whose aspect (W:H) is nearest `aspect` in log
    ratio, scaled to a model whose native size is `native` (a scaled-down test model), in
    multiples of `factor`."""
    import math

    from diffjax.images import parse_aspect
    a = parse_aspect(aspect)
    h, w = min(SDXL_BUCKETS, key=lambda s: (abs(math.log(s[1] / s[0] / a)), s))
    scale = native / 1024
    return (max(factor, round(h * scale / factor) * factor),
            max(factor, round(w * scale / factor) * factor))


def pipeline_for(config, spec, components=None):
    """The pipeline the config asks for: with config.image naming an init image, img2img
    or inpainting from it (the PNG metadata records the init image's and mask's file hashes
    (sha256) and the strength); else text-to-image."""
    from diffjax.base_refiner import BaseRefiner
    from diffjax.pipeline import TextToImage
    from diffjax.pipeline_loading import add_embeddings, fuse_loras, model_options
    from diffjax.sample_spec import InitImage
    from diffjax.weights.load import load
    options = model_options(config)
    if components is None:
        components = load(config.model, spec.dtype, spec.attention, 0, **options)
    ti_hashes = add_embeddings(components, tuple(config.get("embeddings", ())),
                               options["allow_pickle"])
    image = config.get("image")
    init = None
    if image and image.init_image:
        init = InitImage(load_image(image.init_image),
                         load_mask(image.mask) if image.mask else None, image.strength,
                         resize=image.resize, image_hash=file_sha256(image.init_image),
                         mask_hash=file_sha256(image.mask) if image.mask else None)
    if spec.refiner:     # base (text-to-image or img2img) -> refiner
        pipe = BaseRefiner(components, load(spec.refiner, spec.dtype, spec.attention, 10),
                           spec, init=init)
    else:
        pipe = TextToImage(components, spec, init=init)
    # LoRAs fused on the params' shardings; LoRA / embedding hashes go in the metadata
    return fuse_loras(pipe, tuple(config.get("loras", ())), options["allow_pickle"],
                      ti_hashes)

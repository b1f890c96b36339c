"""A ready pipeline from what a user names: a preset, a diffusers folder, a diffjax
checkpoint or a single file, with LoRAs fused into its params and textual-inversion
embeddings added to its tokenizers, and a refiner after it where the spec names one."""

from __future__ import annotations

from diffjax.base_refiner import BaseRefiner
from diffjax.pipeline import TextToImage
from diffjax.sample_spec import SampleSpec, spec_from_config


def load_pipeline(path_or_preset: str, config=None, seed: int = 0, loras=(), embeddings=(),
                  prediction_type: str | None = None, allow_pickle: bool = False,
                  **kwargs) -> TextToImage | BaseRefiner:
    """A TextToImage from a preset name (random weights), a diffusers-format folder, a
    diffjax checkpoint (`diffjax convert`) or a single-file checkpoint.

    config: a SampleSpec, a sample ConfigDict (`diffjax.configs.sample`), or None for
    defaults. loras: "FILE:SCALE" strings or `weights.lora.LoraSpec`s, fused into the
    params on their devices; embeddings: textual-inversion files (token: the file's own or
    its name). prediction_type / allow_pickle: see `weights.load.load`.
    """
    from diffjax.weights.load import load
    if config is None:
        spec = SampleSpec()
    elif isinstance(config, SampleSpec):
        spec = config
    else:
        spec = spec_from_config(config)
    comps = load(path_or_preset, spec.dtype, spec.attention, seed, prediction_type,
                 allow_pickle)
    ti_hashes = add_embeddings(comps, embeddings, allow_pickle)
    if spec.refiner:
        pipe = BaseRefiner(comps, load(spec.refiner, spec.dtype, spec.attention, seed + 10),
                           spec, **kwargs)
    else:
        pipe = TextToImage(comps, spec, **kwargs)
    return fuse_loras(pipe, loras, allow_pickle, ti_hashes)


def model_options(config) -> dict:
    """`weights.load.load`'s single-file options from a sample config (absent keys of an
    older config.json: the defaults)."""
    return dict(prediction_type=config.get("prediction_type") or None,
                allow_pickle=bool(config.get("allow_pickle", False)))


def fuse_loras(pipe, loras, allow_pickle: bool = False, ti_hashes=None):
    """LoRAs fused into a built pipeline's params on their shardings (the base's, with a
    refiner), their and the embeddings' A1111 hashes kept for the metadata."""
    base = pipe.base if isinstance(pipe, BaseRefiner) else pipe
    base.ti_hashes = dict(ti_hashes or {})
    if loras:
        from diffjax.weights import lora
        deltas, base.lora_hashes = lora.load_loras(base.components, loras, allow_pickle)
        base.params = lora.fuse_placed(base.placed_masters(), deltas)
    return pipe


def add_embeddings(components, paths, allow_pickle: bool = False) -> dict[str, str]:
    """Textual-inversion files added to `components` (tokenizers and token embeddings);
    {token: A1111 TI hash} for the metadata."""
    from diffjax.a1111 import embedding_hash
    from diffjax.weights.textual_inversion import add_embedding
    hashes = {}
    for path in paths:
        token, _ = add_embedding(components, path, allow_pickle=allow_pickle)
        hashes[token] = embedding_hash(path)
    return hashes

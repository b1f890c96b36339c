"""SDXL's conditioning, as diffusers' `StableDiffusionXLPipeline` builds it: the text
context of both towers with the pooled embedding (`encode_prompt`), and the
micro-conditioning time ids (`_get_add_time_ids`).

The context an SDXL sample carries is a pytree {"context": both towers'
`hidden_states[-(clip_skip + 2)]` concatenated, "text_embeds": the last tower's pooled
projection, "time_ids": the micro-conditioning}; guidance stacks the pytree (cond and
uncond in one UNet call). `towers` below is [(params key, CLIPTextModel)] in diffusers'
order (the refiner has only the second).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.spec import ConfigError


def encode(towers, params, ids, clip_skip: int) -> dict:
    """ids (one [B, L] array per tower) -> {"context": [B, L, D1 + D2], "text_embeds":
    [B, P]}: each tower's `hidden_states[-(clip_skip + 2)]` (no final layer norm)
    concatenated, and the last tower's pooled projection (diffusers' `encode_prompt`)."""
    outs = [text.apply({"params": params[key]}, i) for (key, text), i in zip(towers, ids)]
    context = jnp.concatenate([o.hidden_states[-(clip_skip + 2)] for o in outs], -1)
    return {"context": context, "text_embeds": outs[-1].pooled}


def contexts(towers, params, ids, neg_ids, clip_skip: int, empty_ids=None):
    """(context, uncontext) as diffusers' `encode_prompt` builds them, prompts and negative
    prompts through each tower in ONE batched call. The negatives' context is the
    penultimate layer whatever clip_skip (diffusers ignores clip_skip for them).

    ids / neg_ids: one [B, L] array per tower, or A1111-syntax {"ids", "weights"} [B, 77 k]
    per tower (`weighted_contexts`). empty_ids: the first tower's ids of the empty prompt
    for a model with force_zeros_for_empty_prompt (else None): rows with no negative
    prompt then get zeros (embeddings and pooled), an empty negative prompt being
    diffusers' `negative_prompt=None`."""
    if isinstance(ids[0], dict):     # A1111 emphasis / 75-token chunks (prompt_weights)
        context, unctx = weighted_contexts(towers, params, ids, neg_ids, clip_skip)
        neg_first = neg_ids[0]["ids"]
    else:
        b = ids[0].shape[0]
        outs = [text.apply({"params": params[key]}, jnp.concatenate([i, n]))
                for (key, text), i, n in zip(towers, ids, neg_ids)]
        pick = lambda skip, rows: {  # noqa: E731
            "context": jnp.concatenate([o.hidden_states[-(skip + 2)][rows] for o in outs], -1),
            "text_embeds": outs[-1].pooled[rows]}
        context, unctx = pick(clip_skip, slice(0, b)), pick(0, slice(b, 2 * b))
        neg_first = neg_ids[0]
    if empty_ids is not None:
        reps = neg_first.shape[-1] // empty_ids.shape[0]          # every chunk empty
        empty = jnp.all(neg_first == jnp.tile(jnp.asarray(empty_ids), reps)[None], axis=-1)
        unctx = jax.tree.map(
            lambda u: jnp.where(empty.reshape((-1,) + (1,) * (u.ndim - 1)), 0.0, u)
            .astype(u.dtype), unctx)
    return context, unctx


def weighted_contexts(towers, params, ids, neg_ids, clip_skip: int):
    """`contexts` for chunked / emphasised ids ({"ids", "weights"} [B, 77 k] per tower):
    every chunk through each tower, A1111 emphasis per chunk, chunks concatenated; the
    pooled embedding is the first chunk's (as A1111)."""
    from diffjax.prompt_weights import encode_chunks
    b = ids[0]["ids"].shape[0]
    parts, pooled = {"pos": [], "neg": []}, None
    for (key, text), i, n in zip(towers, ids, neg_ids):
        both = {k: jnp.concatenate([i[k], n[k]]) for k in ("ids", "weights")}
        k = both["ids"].shape[1] // 77
        out = {}

        def encode_chunk(x, text=text, key=key, out=out):
            o = text.apply({"params": params[key]}, x)
            out["pooled"] = o.pooled
            out["neg"] = o.hidden_states[-2]          # negatives: penultimate layer
            return o.hidden_states[-(clip_skip + 2)]
        states = encode_chunks(encode_chunk, both["ids"], both["weights"])
        neg_states = encode_chunks(lambda x, out=out: out["neg"], both["ids"], both["weights"])
        parts["pos"].append(states[:b])
        parts["neg"].append(neg_states[b:])
        pooled = out["pooled"].reshape(2 * b, k, -1)[:, 0]
    return ({"context": jnp.concatenate(parts["pos"], -1), "text_embeds": pooled[:b]},
            {"context": jnp.concatenate(parts["neg"], -1), "text_embeds": pooled[b:]})


def sdxl_time_ids(spec, height: int, width: int, aesthetics: bool,
                  img2img: bool) -> tuple[np.ndarray, np.ndarray]:
    """(time ids, negative time ids) float32, as diffusers' SDXL pipelines build them:
    original_size + crops_coords_top_left + target_size (defaults: the output size, (0,
    0)); with requires_aesthetics_score the target size is replaced by the aesthetic
    score (the refiner). Negative ones: text-to-image uses the positive ids unless both
    negative sizes are given; img2img (StableDiffusionXLImg2ImgPipeline) defaults each
    negative size to the positive one and, without aesthetics, uses the POSITIVE crop."""
    size = (height, width)
    orig, target = spec.original_size or size, spec.target_size or size
    crop = spec.crops_coords_top_left
    neg_orig, neg_target = spec.negative_original_size, spec.negative_target_size
    neg_crop = spec.negative_crops_coords_top_left
    if aesthetics:
        pos = orig + crop + (spec.aesthetic_score,)
        neg = (neg_orig or orig) + neg_crop + (spec.negative_aesthetic_score,)
    elif img2img:
        pos = orig + crop + target
        neg = (neg_orig or orig) + crop + (neg_target or target)
    else:
        pos = orig + crop + target
        neg = neg_orig + neg_crop + neg_target if neg_orig and neg_target else pos
    return np.asarray(pos, np.float32), np.asarray(neg, np.float32)


def check_time_ids(components, n_ids: int) -> None:
    """The UNet's added embedding must take n_ids time ids plus the pooled embedding (a
    refiner needs requires_aesthetics_score: 5 ids; the base 6)."""
    u = components.unet_config
    if getattr(u, "addition_embed_type", None) != "text_time":
        raise ConfigError(f"model {components.name!r} has two text towers but its UNet has "
                          "no addition_embed_type 'text_time'")
    pooled = components.text_config_2.projection_dim or components.text_config_2.hidden_size
    passed = u.addition_time_embed_dim * n_ids + pooled
    expected = u.projection_class_embeddings_input_dim
    if passed != expected:
        hint = {u.addition_time_embed_dim: " (is requires_aesthetics_score set? the UNet "
                                           "wants one more time id)",
                -u.addition_time_embed_dim: " (requires_aesthetics_score is set but the "
                                            "UNet wants a target size, not a score)"}
        raise ConfigError(f"the UNet's added embedding takes {expected} inputs but "
                          f"{n_ids} time ids x {u.addition_time_embed_dim} + pooled "
                          f"{pooled} = {passed}" + hint.get(expected - passed, ""))


"""Exploratory: can the mini CLIP text tower keep held-out (shape, colour) pairs apart?

    python experiments/mini_clip_colour_invariance.py OUT_DIR [--weight 1.0] [--steps 1000]
        [--clip-run runs/mini/clip] [--data data/shapes/r32-train50000-test1000-holdout1000/1.0.0]

Why: diffjax-mini draws a "purple star" as a purple triangle because its frozen text tower
gives the shape token of the unseen pair nearly the state of a seen one (cosine 0.958 to
"purple triangle"; tools/mini_heldout_probes.py states). This fine-tunes the trained CLIP
(both towers, from the run's EMA) on `shapes` train captions with the contrastive loss plus
`weight` x (1 - cosine) between the last-layer state of the shape token in a caption and in
the same caption with its colour word swapped to another colour whose pair with that shape
is seen (never a held-out pair, not even as text). Then it probes the tower as
mini_heldout_probes does (cosines, nearest caption of each held-out pair) and the CLIP
ranking of 500 held-out renders (own caption above the next example's).
Writes OUT_DIR/results.json and OUT_DIR/clip_params.pkl (both towers and logit_scale;
runs on the CPU in ~11 min for 1,000 steps of 128). Not part of the recipe: the UNet must
then be fine-tuned on the new tower (configs/mini/unet.py with a base folder holding it).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import time

import numpy as np

PAIRS = ((("purple", "star"), ("purple", "triangle")), (("blue", "square"), ("blue", "circle")),
         (("green", "circle"), ("green", "square")), (("red", "star"), ("red", "diamond")),
         (("purple", "star"), ("red", "star")))


def colour_swapped_batch(src, tok, rng, size: int):
    """(ids, ids with the colour swapped, position of the shape token, pixels in [-1, 1])."""
    from diffjax.data import shapes as S
    colours = tuple(S.COLOURS)
    ex = [src[int(i)] for i in rng.integers(len(src), size=size)]
    caps = [e["caption"].decode() if isinstance(e["caption"], bytes) else str(e["caption"])
            for e in ex]
    alts = []
    for e, cap in zip(ex, caps):
        shape, colour = S.SHAPES[int(e["shape"])], colours[int(e["colour"])]
        others = [c for c in colours if c != colour and (shape, c) not in S.HELDOUT_SHAPE_COLOUR]
        alts.append(re.sub(rf"\b{colour}\b", others[rng.integers(len(others))], cap, count=1))
    ids, alt = np.asarray(tok.tokenize(caps).ids), np.asarray(tok.tokenize(alts).ids)
    shape_pos = np.argmax(ids != alt, axis=1) + 1   # the token after the (one) colour token
    pixels = np.stack([np.asarray(e["image"]) for e in ex]).astype(np.float32) / 127.5 - 1
    return ids, alt, shape_pos, pixels


def probe(text_model, text_params, tok) -> dict:
    """mini_heldout_probes' state cosines for PAIRS, and each held-out pair's two nearest
    captions (of all 36 colour-shape pairs)."""
    from diffjax.data import shapes as S
    from tools.mini_heldout_probes import STATE_POSITIONS, centre_caption_states, cosine
    words = [f"{c} {s}" for c in S.COLOURS for s in S.SHAPES]
    states = centre_caption_states(text_model, text_params, tok, words)
    out = {}
    for where in STATE_POSITIONS:
        row = {f"{' '.join(a)} ~ {' '.join(b)}": round(
            cosine(states[" ".join(a)][where], states[" ".join(b)][where]), 3) for a, b in PAIRS}
        for a in ("purple star", "blue square", "green circle"):
            near = sorted(((cosine(states[a][where], states[w][where]), w)
                           for w in words if w != a), reverse=True)[:2]
            row[f"nearest to {a}"] = [(w, round(v, 3)) for v, w in near]
        out[where] = row
    return out


def main(argv=None) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from diffjax.data import builders
    from diffjax.data import shapes as S
    from diffjax.models.clip import CLIPModel, CLIPTextModel
    from diffjax.text import load_tokenizer
    from diffjax.train.checkpoint import load_trained_params
    from diffjax.train.clip_trainer import MAX_LOGIT_SCALE, clip_configs, contrastive_loss
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--clip-run", default="runs/mini/clip")
    p.add_argument("--data", default="data/shapes/r32-train50000-test1000-holdout1000/1.0.0")
    p.add_argument("--tokenizer", default="diffjax/assets/mini/tokenizer")
    a = p.parse_args(argv)
    tc, vc = clip_configs("mini", "mini", 32)
    model, text_model = CLIPModel(tc, vc), CLIPTextModel(tc)
    params = jax.tree.map(jnp.asarray, load_trained_params(a.clip_run)[0])
    tok = load_tokenizer(a.tokenizer)
    src = builders.open_source(a.data, "train", None)
    rng = np.random.default_rng(0)
    result = {"weight": a.weight, "steps": a.steps, "batch": a.batch,
              "before": probe(text_model, params["text_model"], tok)}

    def loss_fn(p, ids, alt, pos, pixels):
        contrastive, aux = contrastive_loss(model.apply({"params": p}, ids, pixels))
        tp = {"params": p["text_model"]}
        rows = jnp.arange(ids.shape[0])
        u = text_model.apply(tp, ids).last_hidden_state[rows, pos]
        v = text_model.apply(tp, alt).last_hidden_state[rows, pos]
        cos = jnp.sum(u * v, -1) / jnp.linalg.norm(u, axis=-1) / jnp.linalg.norm(v, axis=-1)
        invariance = jnp.mean(1.0 - cos)
        return contrastive + a.weight * invariance, (contrastive, invariance, aux["accuracy"])

    tx = optax.adamw(optax.warmup_cosine_decay_schedule(
        0.0, 3e-4, min(50, a.steps // 2), max(a.steps, 2), 3e-5), weight_decay=0.1)

    @jax.jit
    def step(p, opt, ids, alt, pos, pixels):
        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, ids, alt, pos, pixels)
        updates, opt = tx.update(grads, opt, p)
        p = optax.apply_updates(p, updates)
        p = {**p, "logit_scale": jnp.clip(p["logit_scale"], 0.0, MAX_LOGIT_SCALE)}
        return p, opt, aux

    opt, t0, log = tx.init(params), time.time(), []
    for i in range(a.steps):
        params, opt, aux = step(params, opt, *colour_swapped_batch(src, tok, rng, a.batch))
        if i % 100 == 0 or i == a.steps - 1:
            log.append({"step": i, "contrastive": float(aux[0]), "invariance": float(aux[1]),
                        "accuracy": float(aux[2]), "seconds": round(time.time() - t0)})
            print(log[-1], flush=True)
    result["log"] = log
    result["after"] = probe(text_model, params["text_model"], tok)
    held = [S.example("holdout", i, 32) for i in range(501)]
    pixels = np.stack([e["image"] for e in held[:500]]).astype(np.float32) / 127.5 - 1
    own, other = (jnp.asarray(tok.tokenize([e["caption"] for e in part]).ids)
                  for part in (held[:500], held[1:]))
    score = lambda ids: np.diag(np.asarray(model.apply({"params": params}, ids, pixels)))  # noqa
    result["heldout_own_above_next"] = float(np.mean(score(own) > score(other)))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "clip_params.pkl"), "wb") as f:
        pickle.dump(jax.tree.map(np.asarray, params), f)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("before", "after", "heldout_own_above_next")},
                     indent=1))
    return result


if __name__ == "__main__":
    main()

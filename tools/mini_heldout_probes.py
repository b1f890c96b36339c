"""Why does diffjax-mini miss held-out (shape, colour) pairs? The three probes behind
experiments/results/mini/README.md ("Held-out combinations"), rerunnable on any model:

    python tools/mini_heldout_probes.py pairs   [--model mini] [--n 300]
    python tools/mini_heldout_probes.py splice  [--model mini] [--seeds 16]
    python tools/mini_heldout_probes.py states  [--model mini]
    python tools/mini_heldout_probes.py article [--model mini] [--n 64] [--seeds 16]

`pairs`: shape accuracy (oracle) per held-out pair on `holdout` captions 500..500+n (seeds
the same), kept apart from `mini_recipe.py evaluate`'s 0..499 so nothing is tuned on it;
and the shapes drawn instead.
`splice`: the UNet conditioned on the text-tower states of one caption up to and including
its colour word and of another caption after it: where does the UNet read colour and
shape from?
`states`: cosine between the text tower's states at the shape token (and at the last
word) of "a large {colour} {shape} in the center" for held-out pairs and their nearest
seen neighbours, at each clip_skip.
`article`: a word the mini CLIP never trained on. `shapes` writes "a orange"; the first n
`test` captions that say it, sampled as written and as "an orange" (same seeds), and
"an orange cross at the top" on `seeds` seeds: does the untrained "an" change the image?
"""

from __future__ import annotations

import argparse
import collections
import sys

import numpy as np

SPLICES = (  # (caption up to the colour word, caption after it)
    ("a large purple star in the center on a white background",) * 2,
    ("a large purple star in the center on a white background",
     "a large red star in the center on a white background"),
    ("a large red star in the center on a white background",
     "a large purple star in the center on a white background"),
    ("a large red square in the center on a white background",
     "a large blue square in the center on a white background"),
)


def sample_pipeline(model: str, batch: int):
    """`model` with the default sample config at batch size `batch`: the setup every figure
    of tools/mini_recipe.py is measured with, so the probes' figures compare with its."""
    from diffjax.config import load_config
    from diffjax.pipeline_loading import load_pipeline
    return load_pipeline(model, load_config("diffjax.configs.sample", [f"batch_size={batch}"]))


def probe_pairs(model: str, n: int) -> dict:
    """Shape accuracy per held-out (shape, colour) pair and over the (shape, position)
    pairs; the most common substitutions."""
    from diffjax.data import shapes as S
    from diffjax.metrics import shapes_oracle
    pipe = sample_pipeline(model, 100)
    ex = [S.example("holdout", 500 + i, 32) for i in range(n)]
    images = pipe([e["caption"] for e in ex], [500 + i for i in range(n)])
    right, swaps = collections.defaultdict(list), collections.Counter()
    for im, e in zip(images, ex):
        if not S.parse_caption(e["caption"])["shape"]:
            continue
        drawn = shapes_oracle.analyze(im)["shape"]
        pair = (f"{e['shape']}/{e['colour']}" if (e["shape"], e["colour"])
                in S.HELDOUT_SHAPE_COLOUR else "(shape, position) pairs")
        right[pair].append(drawn == e["shape"])
        if drawn != e["shape"]:
            swaps[f"{e['shape']} -> {drawn}"] += 1
    return {"shape_right": {k: (round(float(np.mean(v)), 3), len(v))
                            for k, v in sorted(right.items())},
            "drawn_instead": dict(swaps.most_common(8))}


def probe_splice(model: str, seeds: int) -> list:
    """Shapes and colours the oracle reads on `seeds` images per splice of SPLICES."""
    import jax
    import jax.numpy as jnp

    from diffjax.metrics import shapes_oracle
    pipe = sample_pipeline(model, seeds)

    def generate(params, ids_a, ids_b, neg, seed_ids):
        a, b = pipe.encode_text(params, ids_a), pipe.encode_text(params, ids_b)
        # The colour word is the first token where the captions differ.
        differs = ids_a != ids_b
        after = (jnp.cumsum(differs, 1) > 0) & ~(differs & (jnp.cumsum(differs, 1) == 1))
        context = jnp.where(after[..., None], b, a)
        return pipe.generate_from_context(params, context, pipe.encode_text(params, neg),
                                          seed_ids)

    run = jax.jit(generate)
    ids = lambda caps: jnp.asarray(pipe.tokenizer.tokenize(caps).ids)  # noqa: E731
    out = []
    for a, b in SPLICES:
        images = run(pipe.params, ids([a] * seeds), ids([b] * seeds), ids([""] * seeds),
                     jnp.arange(seeds, dtype=jnp.uint32))
        found = [shapes_oracle.analyze(np.asarray(im)) for im in images]
        out.append({"up_to_colour": a, "after_colour": b,
                    "shapes": dict(collections.Counter(f["shape"] for f in found)),
                    "colours": dict(collections.Counter(f["colour"] for f in found))})
    return out


STATE_POSITIONS = {"shape token": 4, "last word": 7}  # <start> a large COLOUR SHAPE in the CENTER


def centre_caption_states(text_model, text_params, tokenizer, words, clip_skip: int = 0) -> dict:
    """{"purple star": {"shape token": state, "last word": state}, ...}: the text tower's
    context at those tokens of "a large {words} in the center" (words: "colour shape")."""
    import jax.numpy as jnp
    ids = jnp.asarray(tokenizer.tokenize([f"a large {w} in the center" for w in words]).ids)
    ctx = np.asarray(text_model.apply({"params": text_params}, ids, clip_skip=clip_skip).context)
    return {w: {where: ctx[i, pos] for where, pos in STATE_POSITIONS.items()}
            for i, w in enumerate(words)}


def cosine(u, v) -> float:
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def probe_states(model: str) -> dict:
    """Cosines of text-tower states between caption pairs that differ in the shape only."""
    from diffjax.weights.load import load
    from diffjax.models.clip import CLIPTextModel
    from diffjax.text import load_tokenizer
    c = load(model)
    text, tok = CLIPTextModel(c.text_config), load_tokenizer(c.tokenizer_dir)
    pairs = {"held-out purple star ~ purple triangle": ("purple star", "purple triangle"),
             "held-out blue square ~ blue circle": ("blue square", "blue circle"),
             "held-out green circle ~ green square": ("green circle", "green square"),
             "seen red star ~ red diamond": ("red star", "red diamond")}
    words = sorted({w for pair in pairs.values() for w in pair})
    out = {}
    for skip in range(c.text_config.num_hidden_layers + 1):
        states = centre_caption_states(text, c.text_params, tok, words, skip)
        out[f"clip_skip {skip}"] = {
            where: {name: round(cosine(states[a][where], states[b][where]), 3)
                    for name, (a, b) in pairs.items()}
            for where in STATE_POSITIONS}
    return out


def probe_article(model: str, n: int, seeds: int) -> dict:
    """Prompt accuracy (oracle) of n seen captions with "a orange" and with "an orange";
    the colours drawn for "an orange cross at the top" over `seeds` seeds."""
    import re

    from diffjax.data import shapes as S
    from diffjax.metrics import shapes_oracle
    pipe = sample_pipeline(model, max(n, seeds))
    captions, ids, i = [], [], 0
    while len(captions) < n:
        caption = S.example("test", i, 32)["caption"]
        if re.search(r"\ba orange\b", caption):
            captions.append(caption)
            ids.append(i)
        i += 1
    out = {"captions": n, "first_test_indices": ids[:5]}
    for name, written in (("a orange", captions),
                          ("an orange", [re.sub(r"\ba orange\b", "an orange", c)
                                         for c in captions])):
        images = pipe(written, ids)
        right = [shapes_oracle.check(im, c)["all"] for im, c in zip(images, written)]
        out[f"prompt_accuracy {name}"] = round(float(np.mean(right)), 4)
    cross = "an orange cross at the top"
    images = pipe([cross] * seeds, list(range(seeds)))
    found = [shapes_oracle.analyze(im) for im in images]
    out[cross] = {"seeds": seeds,
                  "colours": dict(collections.Counter(f["colour"] for f in found)),
                  "shapes": dict(collections.Counter(f["shape"] for f in found))}
    return out


def main(argv=None) -> int:
    import json
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("probe", choices=("pairs", "splice", "states", "article"))
    p.add_argument("--model", default="mini", help="model name or folder")
    p.add_argument("--n", type=int, default=None,
                   help="pairs: held-out captions (300); article: seen captions (64)")
    p.add_argument("--seeds", type=int, default=16,
                   help="splice: images per splice; article: seeds of the orange cross")
    a = p.parse_args(argv)
    result = {"pairs": lambda: probe_pairs(a.model, a.n or 300),
              "splice": lambda: probe_splice(a.model, a.seeds),
              "states": lambda: probe_states(a.model),
              "article": lambda: probe_article(a.model, a.n or 64, a.seeds)}[a.probe]()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

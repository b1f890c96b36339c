"""One batch of prompts as the token ids the sample program takes, and a call's prompts
grouped by the program they need.

Plain ids are [B, 77] per text tower. A1111's syntax (`prompt_weights`: emphasis, BREAK,
75-token chunks) gives {"ids", "weights"} [B, 77 k] per tower instead, prompts and
negatives (and SDXL's towers) padded to one chunk count k with empty-prompt chunks. Since
that padding changes an image, a call whose prompts need different k runs one program per
group (`prompt_groups`), so each image depends only on its own prompt and seed.

`tokenizers` is one tokenizer per text tower; `per_tower` is True for SDXL models (ids as a
tuple, one per tower: the base reads `prompts` with its first tower and `prompts_2` with
its second, the refiner's only tower reads `prompts`, as diffusers zips prompts with the
tokenizers present) and False for SD1/SD2 (one array).
"""

from __future__ import annotations

import logging

import numpy as np


def plain_ids(tokenizers, per_tower: bool, prompts, prompts_2):
    """Token ids of one padded batch as the text is (truncated at 75 tokens, reported by
    the tokenizer): an array, or with `per_tower` a tuple of arrays."""
    if not per_tower:
        return tokenizers[0].tokenize(prompts).ids
    texts = [prompts, [p2 or p for p, p2 in zip(prompts, prompts_2)]]
    return tuple(t.tokenize(x).ids for t, x in zip(tokenizers, texts))


def weighted_items(tokenizers, per_tower: bool, max_chunks: int, prompts, prompts_2,
                   negatives, negatives_2):
    """`prompt_weights.tokenize_weighted` of every text: [tower][prompts, negatives][i]."""
    from diffjax import prompt_weights as pw
    texts = [[prompts, negatives]]
    if per_tower:
        texts = [[prompts, negatives], [[b or a for a, b in zip(prompts, prompts_2)],
                                        [b or a for a, b in zip(negatives, negatives_2)]]]
        texts = texts[:len(tokenizers)]
    return [[[pw.tokenize_weighted(tok, t, max_chunks) for t in side] for side in sides]
            for tok, sides in zip(tokenizers, texts)]


def chunk_key(items) -> int:
    """The program a prompt's tokenized texts need: 0 = plain ids (one chunk, no
    emphasis), else the chunk count k of the A1111-syntax program."""
    k = max(len(it.ids) for it in items)
    return 0 if k == 1 and all(np.all(it.weights == 1.0) for it in items) else k


def weighted_ids(tokenizers, per_tower: bool, max_chunks: int, prompts, prompts_2,
                 negatives, negatives_2):
    """(ids, neg_ids, tokens truncated) with A1111's syntax: plain arrays, exactly as
    `plain_ids`, when no prompt of the batch has emphasis or more than 75 tokens;
    otherwise {"ids", "weights"} [B, 77 k] per tower. Truncation only with max_chunks > 0
    (the most tokens dropped from one text, also logged)."""
    from diffjax import prompt_weights as pw
    items = weighted_items(tokenizers, per_tower, max_chunks, prompts, prompts_2, negatives,
                           negatives_2)
    flat = [it for sides in items for side in sides for it in side]
    truncated = max(it.n_truncated for it in flat)
    if truncated:
        logging.getLogger(__name__).warning(
            "prompt truncated to max_prompt_chunks=%d chunks of 75 tokens: %d token(s) "
            "dropped", max_chunks, truncated)
    k = chunk_key(flat)
    if k == 0:
        out = [[np.stack([it.ids[0] for it in side]) for side in sides] for sides in items]
    else:
        out = []
        for tok, sides in zip(tokenizers, items):
            empty = pw.empty_chunk(tok)

            def pad(it, empty=empty):
                n = k - len(it.ids)
                return (np.concatenate([it.ids] + [empty[None]] * n),
                        np.concatenate([it.weights, np.ones((n, 77), np.float32)]))
            out.append([{"ids": np.stack([pad(it)[0].reshape(-1) for it in side]),
                         "weights": np.stack([pad(it)[1].reshape(-1) for it in side])}
                        for side in sides])
    if not per_tower:
        return out[0][0], out[0][1], truncated
    return tuple(o[0] for o in out), tuple(o[1] for o in out), truncated


def prompt_groups(tokenizers, per_tower: bool, max_chunks: int, prompts, negatives,
                  prompts_2, negatives_2) -> list[list[int]]:
    """The positions of a call's A1111-syntax prompts grouped by the program their own
    texts need (`chunk_key`), in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i in range(len(prompts)):
        items = weighted_items(tokenizers, per_tower, max_chunks, [prompts[i]],
                               [prompts_2[i]], [negatives[i]], [negatives_2[i]])
        key = chunk_key([it for sides in items for side in sides for it in side])
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def by_group(generate_local, groups, prompts, negatives, seeds, prompts_2, negatives_2,
             **extra):
    """`generate_local` run on each group of positions (`prompt_groups`), its rows put
    back in the call's order: (images [n, ...], positions this process owns)."""
    n, images, owned = len(prompts), None, []
    for rows in groups:
        pick = lambda xs: None if xs is None else [xs[r] for r in rows]  # noqa: E731
        sub = {k: (None if v is None else v[np.asarray(rows)]) for k, v in extra.items()}
        got, mine = generate_local(pick(prompts), pick(negatives), pick(seeds),
                                   pick(prompts_2), pick(negatives_2), **sub)
        if images is None:
            images = np.zeros((n, *got.shape[1:]), got.dtype)
        images[np.asarray(rows)] = got
        owned += [rows[j] for j in mine]
    return images, sorted(owned)

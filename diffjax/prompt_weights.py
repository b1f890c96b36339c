"""A1111 prompt syntax: emphasis weights, BREAK, and prompts longer than 75 tokens.

AUTOMATIC1111's rules (modules/prompt_parser.py, modules/sd_hijack_clip.py), which most
prompts shared with images are written for:
- `(text)` multiplies the attention weight of `text` by 1.1, `[text]` by 1/1.1, nesting
  multiplies; `(text:1.3)` sets the factor; `\\(`, `\\)`, `\\[`, `\\]`, `\\\\` are literal;
  unclosed brackets still apply to the end; `BREAK` (a word, upper case) starts a new chunk.
- A prompt is tokenized into chunks of 75 tokens, each encoded separately as
  <BOS> 75 tokens <EOS> (77, padded as the tokenizer pads) and the encodings concatenated
  along the sequence: nothing is truncated unless asked (`max_chunks`), and then it is
  reported. A chunk that would split a phrase moves the words after the last comma (within
  20 tokens) to the next chunk (A1111's comma backtrack).
- Emphasis (A1111's "Original"): each token's hidden state is multiplied by its weight,
  then the chunk's states are rescaled so their mean is the unweighted one. diffjax does
  this per prompt (A1111 takes the mean over its whole batch; the same at batch size 1),
  so an image does not depend on the other prompts in its batch.
Prompts of one batch are padded to the same chunk count with chunks of the empty prompt
(negative prompts too), as A1111 pads a batch.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

CHUNK = 75                 # tokens per chunk, between BOS and EOS
COMMA_BACKTRACK = 20       # A1111's default `comma_padding_backtrack`

_TOKENS = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|      # escapes (and a lone backslash)
\(|\[|                           # openers
:\s*([+-]?[.\d]+)\s*\)|          # ":1.3)" closes a round bracket with an explicit weight
\)|]|                            # closers
[^\\()\[\]:]+|                   # plain text
:                                # a colon that is not a weight
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """A1111's parse: [(text, weight), ...] with runs of equal weight merged; a BREAK is
    ("BREAK", -1). The empty prompt is [("", 1.0)]."""
    pieces: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for p in pieces[start:]:
            p[1] *= factor

    for m in _TOKENS.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            pieces.append([tok[1:], 1.0])
        elif tok == "(":
            round_open.append(len(pieces))
        elif tok == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif tok == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(_BREAK.split(tok)):
                if i:
                    pieces.append(["BREAK", -1])
                pieces.append([part, 1.0])
    for start in round_open:
        scale(start, 1.1)
    for start in square_open:
        scale(start, 1 / 1.1)
    if not pieces:
        pieces = [["", 1.0]]
    merged = [pieces[0]]
    for p in pieces[1:]:
        if p[1] == merged[-1][1]:
            merged[-1][0] += p[0]
        else:
            merged.append(p)
    return [(t, float(w)) for t, w in merged]


@dataclasses.dataclass(frozen=True)
class WeightedPrompt:
    ids: np.ndarray          # [k, 77] int32: each chunk as the tokenizer lays one out
    weights: np.ndarray      # [k, 77] float32: 1 at BOS/EOS/padding
    n_truncated: int         # tokens dropped (only with max_chunks)


def tokenize_weighted(tokenizer, prompt: str, max_chunks: int = 0,
                      comma_backtrack: int = COMMA_BACKTRACK) -> WeightedPrompt:
    """A prompt -> 75-token chunks with per-token weights (A1111's `tokenize_line`).
    tokenizer: `diffjax.text.Tokenizer` (max_length 77). max_chunks > 0 truncates to that
    many chunks and counts what was dropped."""
    if tokenizer.max_length != CHUNK + 2:
        raise ValueError(f"chunked prompts need a 77-token tokenizer, got "
                         f"{tokenizer.max_length}")
    parsed = parse_prompt_attention(prompt)
    texts = [t for t, w in parsed if w != -1 or t != "BREAK"]
    token_lists = iter(tokenizer.pieces(texts)) if texts else iter(())
    comma = tokenizer._tok.convert_tokens_to_ids(",</w>")
    chunks: list[tuple[list[int], list[float]]] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def next_chunk():
        nonlocal tokens, weights, last_comma
        chunks.append((tokens, weights))
        tokens, weights, last_comma = [], [], -1

    for text, weight in parsed:
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        for token in next(token_lists):
            if token == comma:
                last_comma = len(tokens)
            elif (comma_backtrack and len(tokens) == CHUNK and last_comma != -1
                  and len(tokens) - last_comma <= comma_backtrack):
                cut = last_comma + 1
                moved_t, moved_w = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                next_chunk()
                tokens, weights = moved_t, moved_w
            if len(tokens) == CHUNK:
                next_chunk()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        next_chunk()
    dropped = 0
    if max_chunks and len(chunks) > max_chunks:
        dropped = sum(len(t) for t, _ in chunks[max_chunks:])
        chunks = chunks[:max_chunks]
    ids = np.full((len(chunks), CHUNK + 2), tokenizer.pad_id, np.int32)
    w = np.ones((len(chunks), CHUNK + 2), np.float32)
    for i, (t, ws) in enumerate(chunks):
        ids[i, 0] = tokenizer.bos_id
        ids[i, 1:1 + len(t)] = t
        ids[i, 1 + len(t)] = tokenizer.eos_id      # then the tokenizer's own padding
        w[i, 1:1 + len(ws)] = ws
    return WeightedPrompt(ids, w, dropped)


def empty_chunk(tokenizer) -> np.ndarray:
    """The empty prompt's one chunk [77]: what shorter prompts of a batch are padded with."""
    return tokenize_weighted(tokenizer, "").ids[0]


def batch(tokenizer, prompts, n_chunks: int = 0, max_chunks: int = 0):
    """Prompts -> (ids [B, 77 k], weights [B, 77 k], tokens dropped per prompt), every
    prompt padded with empty-prompt chunks to k = max(n_chunks, the longest prompt's)."""
    items = [tokenize_weighted(tokenizer, p, max_chunks) for p in prompts]
    k = max([n_chunks] + [len(it.ids) for it in items])
    empty = empty_chunk(tokenizer)
    ids = np.stack([np.concatenate([it.ids] + [empty[None]] * (k - len(it.ids))).reshape(-1)
                    for it in items])
    weights = np.stack([np.concatenate([it.weights, np.ones((k - len(it.ids), CHUNK + 2),
                                                            np.float32)]).reshape(-1)
                        for it in items])
    return ids, weights, tuple(it.n_truncated for it in items)


def apply_emphasis(z, weights):
    """A1111's "Original" emphasis on one chunk's states: z [..., 77, D] * weights [..., 77],
    rescaled so that each prompt's chunk keeps its unweighted mean (per leading index)."""
    import jax.numpy as jnp
    axes = (-2, -1)
    original = jnp.mean(z, axis=axes, keepdims=True)
    weighted = z * weights[..., None].astype(z.dtype)
    return weighted * (original / jnp.mean(weighted, axis=axes, keepdims=True))


def encode_chunks(encode, ids, weights):
    """ids/weights [B, 77 k] -> states [B, 77 k, D]: `encode` ([N, 77] ids -> [N, 77, D])
    on every chunk at once, A1111 emphasis per chunk, chunks concatenated in order. With
    all weights 1 the states are exactly encode's (the rescale is skipped)."""
    import jax.numpy as jnp
    b, length = ids.shape
    k = length // (CHUNK + 2)
    z = encode(ids.reshape(b * k, CHUNK + 2))
    w = weights.reshape(b * k, CHUNK + 2)
    plain = jnp.all(w == 1.0, axis=-1)[:, None, None]     # chunks without emphasis: as is
    z = jnp.where(plain, z, apply_emphasis(z, w))
    return z.reshape(b, length, z.shape[-1])

"""Textual-inversion embeddings: new tokens whose input embeddings were learned.

Formats, told by their keys:
- A1111 `.pt` (a pickle: `--allow-pickle`, read tensors-only): `string_to_param["*"]` [n, D].
- A1111 `.safetensors`: `emb_params` [n, D].
- SDXL (A1111 / kohya): `clip_l` [n, 768] and `clip_g` [n, 1280], one per text tower.
- diffusers `learned_embeds.safetensors` / `.bin`: `{token: [D] or [n, D]}`.

An embedding of n vectors becomes n new tokens, `token`, `token_1`, ..., `token_{n-1}` (as
diffusers' `load_textual_inversion` names them), appended to the tokenizer (a copy of its
folder with `added_tokens.json`) and to each tower's token-embedding matrix; a prompt's
`token` is expanded to all n before tokenizing (`multi_vector_tokens.expand_prompt`, diffusers'
`maybe_convert_prompt`). A token that the tokenizer already knows (a word of the vocabulary
or an earlier embedding) is refused: it would silently change what a prompt means.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np

from diffjax.multi_vector_tokens import token_names
from diffjax.text import BANG_PAD, load_tokenizer, write_tokenizer_dir
from diffjax.weights.io import WeightsError


class TextualInversionError(WeightsError):
    """An embedding file that cannot be added (format, size, or token name collision)."""


def read_embedding(path: str, allow_pickle: bool = False) -> tuple[dict[str, np.ndarray], str]:
    """(vectors per tower {"": [n, D]} or {"clip_l", "clip_g"}, the file's own token name or
    "" when it names none)."""
    if not os.path.exists(path):
        raise TextualInversionError(f"embedding file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from diffjax.weights.io import load_state_dict
        data = load_state_dict(path)
    else:
        from diffjax.weights.pickle_reader import load_pickle
        data = load_pickle(path, allow_pickle)
    if not isinstance(data, dict):
        raise TextualInversionError(f"{path}: not an embedding (a {type(data).__name__})")
    as2d = lambda a: np.asarray(a, np.float32).reshape(-1, np.shape(a)[-1])  # noqa: E731
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise TextualInversionError(f"{path}: string_to_param must hold one tensor")
        return {"": as2d(next(iter(params.values())))}, ""
    if "emb_params" in data:
        return {"": as2d(data["emb_params"])}, ""
    if "clip_l" in data or "clip_g" in data:
        return {k: as2d(data[k]) for k in ("clip_l", "clip_g") if k in data}, ""
    arrays = {k: v for k, v in data.items() if isinstance(v, np.ndarray)}
    if len(arrays) == 1:                        # diffusers: {token: vector(s)}
        token, value = next(iter(arrays.items()))
        return {"": as2d(value)}, token
    raise TextualInversionError(
        f"{path}: not a textual-inversion embedding diffjax knows (keys {sorted(data)[:6]}; "
        "expected string_to_param, emb_params, clip_l/clip_g or one {token: vectors})")


def _tokenizer_with(folder: str | None, names: list[str], pad_token: str | None) -> str:
    """A copy of the tokenizer folder (None: the packaged vocabulary) with `names` added
    after its vocabulary (ids from the current length on). Refuses known tokens."""
    tok = load_tokenizer(folder, pad_token=pad_token)
    vocab = tok._tok.get_vocab()
    known = [n for n in names if n in vocab or n.lower() in vocab or
             f"{n.lower()}</w>" in vocab]
    if known:
        raise TextualInversionError(
            f"embedding token(s) {', '.join(known)} already in the tokenizer (a word of its "
            "vocabulary or an embedding added before): give the embedding another token")
    out = tempfile.mkdtemp(prefix="diffjax-ti-tokenizer-")
    write_tokenizer_dir(out, folder, pad_token=pad_token)
    added_path = os.path.join(out, "added_tokens.json")
    added = {}
    if os.path.exists(added_path):
        with open(added_path, encoding="utf-8") as f:
            added = json.load(f)
    start = len(vocab)
    added.update({n: start + i for i, n in enumerate(names)})
    with open(added_path, "w", encoding="utf-8") as f:
        json.dump(added, f)
    for name in ("tokenizer.json",):     # a fast-tokenizer file would ignore added_tokens
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    return out


def _extend(config, params, vectors: np.ndarray, what: str):
    table = params["token_embedding"]["embedding"]
    if vectors.shape[1] != table.shape[1]:
        raise TextualInversionError(f"{what}: embedding width {vectors.shape[1]} does not "
                                    f"match the text encoder's {table.shape[1]}")
    params = dict(params, token_embedding=dict(params["token_embedding"], embedding=np.concatenate(
        [np.asarray(table, np.float32), vectors.astype(np.float32)])))
    return dataclasses.replace(config, vocab_size=config.vocab_size + len(vectors)), params


def add_embedding(components, path: str, token: str | None = None,
                  allow_pickle: bool = False) -> tuple[str, int]:
    """Add an embedding file's tokens to `components` (tokenizer copies and token-embedding
    rows, in place). Token: `token`, else the file's own (diffusers), else the file name's
    stem (A1111). Returns (token, number of vectors)."""
    vectors, own = read_embedding(path, allow_pickle)
    token = token or own or os.path.splitext(os.path.basename(path))[0]
    sdxl = getattr(components, "text_config_2", None) is not None
    if sdxl:
        towers = [("clip_l", "text_config", "text_params", "tokenizer_dir", None),
                  ("clip_g", "text_config_2", "text_params_2", "tokenizer_2_dir", BANG_PAD)]
        towers = [t for t in towers if getattr(components, t[1]) is not None]
        missing = [t[0] for t in towers if t[0] not in vectors]
        if missing:
            raise TextualInversionError(f"{path}: an SDXL model needs {' and '.join(missing)} "
                                        f"vectors; the file has {sorted(vectors)}")
    else:
        if "" not in vectors:
            raise TextualInversionError(f"{path}: an SDXL embedding ({sorted(vectors)}) for a "
                                        "one-tower model")
        towers = [("", "text_config", "text_params", "tokenizer_dir", None)]
    counts = {len(vectors[k]) for k, *_ in towers}
    if len(counts) != 1:
        raise TextualInversionError(f"{path}: towers have different vector counts {counts}")
    n = counts.pop()
    names = token_names(token, n)
    updates = []
    for key, config_field, params_field, tok_field, default_pad in towers:
        folder = getattr(components, tok_field)
        pad = default_pad if folder is None else None
        size = load_tokenizer(folder, pad_token=pad).vocab_size
        config = getattr(components, config_field)
        if size != config.vocab_size:
            raise TextualInversionError(
                f"tokenizer has {size} tokens but the text encoder {config.vocab_size} rows: "
                "new token ids would not line up")
        new_folder = _tokenizer_with(folder, names, pad)
        updates.append((config_field, params_field, tok_field, new_folder,
                        *_extend(config, getattr(components, params_field), vectors[key],
                                 f"{path} ({key or 'text'})")))
    for config_field, params_field, tok_field, folder, config, params in updates:
        setattr(components, tok_field, folder)
        setattr(components, config_field, config)
        setattr(components, params_field, params)
    return token, n


def remove_folder(folder: str) -> None:
    """Delete a tokenizer copy made by `add_embedding` (tests, long-lived processes)."""
    if os.path.basename(folder).startswith("diffjax-ti-tokenizer-"):
        shutil.rmtree(folder, ignore_errors=True)

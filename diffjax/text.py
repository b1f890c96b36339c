"""CLIP tokenization: prompts -> fixed-length id arrays, with truncation reported.

The tokenizer is transformers' `CLIPTokenizer` (pure Python/Rust, no torch) loaded from a
folder: either the `tokenizer/` folder of a Stable Diffusion checkpoint, or the packaged
default built from CLIP's original BPE list by `tools/build_clip_vocab.py`. The id layout is
CLIP's: <|startoftext|>, at most 75 tokens, <|endoftext|>, then padding to 77. SD1
tokenizers pad with <|endoftext|> (49407); SD2's pad with "!" (id 0); the folder's
`special_tokens_map.json` / `tokenizer_config.json` says which, and the tokenizer follows the
folder (SDXL's `tokenizer/` pads with eos, its `tokenizer_2/` with "!"). The packaged vocabulary
can be given another pad token (`pad_token`, e.g. "!" for the SDXL presets' second tokenizer);
`write_tokenizer_dir` writes such a folder for a diffusers export.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from importlib import resources

import numpy as np

from diffjax.multi_vector_tokens import expand_prompt, multi_vector_tokens

log = logging.getLogger(__name__)

MAX_LENGTH = 77


def default_tokenizer_dir() -> str:
    """The packaged CLIP ViT-L/14 vocabulary (same ids as openai/clip-vit-large-patch14)."""
    return str(resources.files("diffjax") / "assets" / "clip_tokenizer")


@dataclasses.dataclass(frozen=True)
class Tokenized:
    ids: np.ndarray            # [B, max_length] int32
    n_truncated: tuple[int, ...]  # tokens dropped from each prompt (0 = fit)


class Tokenizer:
    """Prompts -> [B, 77] int32 ids exactly as CLIP/diffusers pad and truncate them."""

    def __init__(self, hf_tokenizer, max_length: int = MAX_LENGTH):
        self._tok = hf_tokenizer
        self.max_length = max_length
        self.bos_id = hf_tokenizer.bos_token_id
        self.eos_id = hf_tokenizer.eos_token_id
        self.pad_id = hf_tokenizer.pad_token_id
        if None in (self.bos_id, self.eos_id, self.pad_id):
            raise ValueError("tokenizer lacks a bos, eos or pad token "
                             f"(bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id})")
        # textual-inversion embeddings of n > 1 vectors: "tok" is tokenized as tok tok_1 ...
        self.multi_vector = multi_vector_tokens(hf_tokenizer.get_added_vocab())

    def pieces(self, prompts: Sequence[str]) -> list[list[int]]:
        """Each prompt's token ids without BOS/EOS/padding or truncation (multi-vector
        embedding tokens expanded, as diffusers' `maybe_convert_prompt`)."""
        if self.multi_vector:
            prompts = [expand_prompt(p, self.multi_vector) for p in prompts]
        return self._tok(list(prompts), add_special_tokens=False)["input_ids"]

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def tokenize(self, prompts: Sequence[str] | str) -> Tokenized:
        """Tokenize, keep at most max_length-2 tokens, add BOS/EOS, pad to max_length.

        Truncation is never silent: the count of dropped tokens is returned and logged.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompt {i} must be a string, got {type(p).__name__}")
        body = self.max_length - 2
        pieces = self.pieces(prompts)
        ids = np.full((len(prompts), self.max_length), self.pad_id, dtype=np.int32)
        dropped = []
        for row, toks in enumerate(pieces):
            kept = toks[:body]
            dropped.append(len(toks) - len(kept))
            ids[row, 0] = self.bos_id
            ids[row, 1:1 + len(kept)] = kept
            ids[row, 1 + len(kept)] = self.eos_id
        for p, n in zip(prompts, dropped):
            if n:
                log.warning("prompt truncated to %d tokens, %d dropped: %.60r...",
                            body, n, p)
        return Tokenized(ids, tuple(dropped))

    def __call__(self, prompts) -> np.ndarray:
        return self.tokenize(prompts).ids


# The pad token of OpenCLIP-trained text towers (SD2's, SDXL's bigG): "!", id 0.
BANG_PAD = "!"


def write_tokenizer_dir(dest: str, source: str | None = None,
                        pad_token: str | None = None) -> None:
    """Copy a tokenizer folder (None: the packaged vocabulary) to `dest`, with `pad_token`
    (when given) written into its special_tokens_map.json and tokenizer_config.json, so that
    transformers' CLIPTokenizer and `load_tokenizer` read the same pad id from it."""
    import json
    import shutil
    shutil.copytree(source or default_tokenizer_dir(), dest, dirs_exist_ok=True)
    if pad_token is None:
        return
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(dest, name)
        d = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        d["pad_token"] = pad_token
        with open(path, "w", encoding="utf-8") as f:
            json.dump(d, f, indent=2)


@functools.lru_cache(maxsize=8)
def load_tokenizer(folder: str | None = None, max_length: int = MAX_LENGTH,
                   pad_token: str | None = None) -> Tokenizer:
    """Load a CLIP tokenizer folder (vocab.json + merges.txt); None = the packaged default.
    The pad token is the folder's own; `pad_token` replaces it (the packaged vocabulary as
    an OpenCLIP tokenizer: "!")."""
    # Without torch, transformers advises that "models won't be available": we only want
    # its tokenizer, so the advice is noise.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers import CLIPTokenizer

    folder = folder or default_tokenizer_dir()
    for name in ("vocab.json", "merges.txt"):
        if not os.path.exists(os.path.join(folder, name)):
            raise FileNotFoundError(f"tokenizer folder {folder!r} has no {name}")
    kwargs = {} if pad_token is None else {"pad_token": pad_token}
    hf = CLIPTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
    # We truncate and report ourselves; stop transformers warning about long prompts.
    hf.model_max_length = int(1e9)
    return Tokenizer(hf, max_length=max_length)

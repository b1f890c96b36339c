"""Multi-vector embedding tokens: how diffusers names the n tokens of a textual-inversion
embedding of n vectors (`token`, `token_1`, ..., `token_{n-1}`) and expands a prompt's
`token` to all of them before tokenizing (`maybe_convert_prompt`). The tokenizer reads
them (`text.Tokenizer`); the embedding loader writes them (`weights.textual_inversion`)."""

from __future__ import annotations

import re


def token_names(token: str, n: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def expand_prompt(prompt: str, added: dict[str, int]) -> str:
    """`token` -> `token token_1 ... token_{n-1}` for each multi-vector embedding (n > 1)
    the prompt uses: a plain text replacement, exactly as diffusers' `maybe_convert_prompt`."""
    for token, n in added.items():
        if n > 1 and token in prompt:
            prompt = prompt.replace(token, " ".join(token_names(token, n)))
    return prompt


def multi_vector_tokens(tokens: dict[str, int]) -> dict[str, int]:
    """{token: n} of the multi-vector embeddings in an added-tokens map (token, token_1...)."""
    out = {}
    for t in tokens:
        n = 1
        while f"{t}_{n}" in tokens:
            n += 1
        if n > 1 and not re.search(r"_\d+$", t):
            out[t] = n
    return out

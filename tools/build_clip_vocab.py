"""Build CLIP's `vocab.json` + `merges.txt` (Hugging Face format) from the original BPE list.

    python tools/build_clip_vocab.py tests/data/bpe_simple_vocab_16e6.txt.gz \
        diffjax/assets/clip_tokenizer

The order of the vocabulary is CLIP's own (openai/CLIP `simple_tokenizer.py`): the 256 byte
symbols, their `</w>` forms, one token per merge (lines 1..48,894), then <|startoftext|>
(49406) and <|endoftext|> (49407). This is exactly the vocabulary Hugging Face ships for
openai/clip-vit-large-patch14, the tokenizer folder of every SD 1.x checkpoint.
"""

from __future__ import annotations

import gzip
import json
import os
import sys

N_MERGES = 49152 - 256 - 2  # 48,894 merges follow the header line


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build(bpe_gz: str) -> tuple[dict[str, int], list[str]]:
    with gzip.open(bpe_gz, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1:N_MERGES + 1]
    if len(merges) != N_MERGES:
        raise ValueError(f"{bpe_gz}: expected {N_MERGES} merge lines, found {len(merges)}")
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__)
        return 2
    src, out = argv
    vocab, merges = build(src)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CLIP tokenizer: our packaged vocab through transformers gives CLIP's real ids.

The reference is OpenAI CLIP's own algorithm (`simple_tokenizer.py`: its regex, byte
encoding and BPE loop), re-implemented here and run on the original BPE list in
tests/data/ — independent of our vocab.json/merges.txt and of transformers.
"""

import gzip
import html
import os
import unicodedata

import numpy as np
import pytest
import regex

from diffjax.text import MAX_LENGTH, load_tokenizer

# OpenAI's original merge list (MIT licence, via open-clip-torch 3.3.0), kept in the repo
# so the test depends on nothing outside it.
BPE_GZ = os.path.join(os.path.dirname(__file__), "data", "bpe_simple_vocab_16e6.txt.gz")


class OpenAICLIPTokenizer:
    """OpenAI CLIP's simple_tokenizer, reimplemented from its published algorithm."""

    def __init__(self, bpe_path):
        from tools.build_clip_vocab import bytes_to_unicode  # the same fixed byte table
        self.byte_encoder = bytes_to_unicode()
        merges = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
        merges = [tuple(m.split()) for m in merges[1:49152 - 256 - 2 + 1]]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)

    def bpe(self, token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        return word

    def encode(self, text):
        text = unicodedata.normalize("NFC", html.unescape(html.unescape(text)).strip())
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token))
        return ids


PROMPTS = [
    "a photo of a cat",
    "A PHOTO OF A CAT, with Uppercase; punctuation!? (and brackets) -- 'quotes' & more...",
    "digits 1234567890 and 3.14159 and 1,000,000",
    "café naïve résumé Ångström über São Paulo",
    "emoji 🐱 and CJK 猫 and symbols #@$%^*",
    "  leading and   multiple    spaces\tand\ttabs\nnewlines  ",
    "it's they're we've I'm you'll he'd",
]


@pytest.fixture(scope="module")
def reference():
    return OpenAICLIPTokenizer(BPE_GZ)


def test_known_ids():
    ids = load_tokenizer().tokenize(["a photo of a cat"]).ids[0]
    np.testing.assert_array_equal(ids[:7], [49406, 320, 1125, 539, 320, 2368, 49407])
    assert ids.shape == (MAX_LENGTH,) and ids.dtype == np.int32
    assert (ids[7:] == 49407).all()  # SD1 pads with <|endoftext|>


@pytest.mark.parametrize("prompt", PROMPTS)
def test_matches_openai_clip(reference, prompt):
    body = reference.encode(prompt)
    assert len(body) <= MAX_LENGTH - 2
    want = [49406] + body + [49407] + [49407] * (MAX_LENGTH - 2 - len(body))
    got = load_tokenizer().tokenize([prompt])
    assert got.ids[0].tolist() == want
    assert got.n_truncated == (0,)


def test_long_prompt_truncated_and_reported(reference, caplog):
    prompt = " ".join(["a very long prompt about a red circle and a blue square"] * 12)
    body = reference.encode(prompt)
    assert len(body) > 75
    got = load_tokenizer().tokenize([prompt, "short"])
    assert got.ids[0].tolist() == [49406] + body[:75] + [49407]
    assert got.n_truncated == (len(body) - 75, 0)
    assert f"{len(body) - 75} dropped" in caplog.text


def test_sd2_folder_pads_with_exclamation(tmp_path):
    """An SD2 `tokenizer/` folder sets pad_token "!" (id 0): padding follows the folder."""
    import json
    import shutil
    from diffjax.text import default_tokenizer_dir
    folder = tmp_path / "tokenizer"
    shutil.copytree(default_tokenizer_dir(), folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["pad_token"] = "!"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    smap = json.loads((folder / "special_tokens_map.json").read_text())
    smap["pad_token"] = "!"
    (folder / "special_tokens_map.json").write_text(json.dumps(smap))
    ids = load_tokenizer(str(folder)).tokenize("a photo of a cat").ids[0]
    assert ids[:7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[7:] == 0).all()


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_tokenizer(str(tmp_path))

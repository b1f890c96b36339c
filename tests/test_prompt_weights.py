"""A1111 prompt syntax: the parser against A1111's `parse_prompt_attention` (its published
code, re-typed below) on 40 prompts and its own doctest outputs; 75-token chunks (a 200-token
prompt is 3 chunks, nothing dropped; BREAK; comma backtrack; truncation only when asked);
emphasis against a float64 numpy reference of A1111's rule; plain prompts encode exactly as
before (bit-exact)."""

import re

import numpy as np
import pytest

from diffjax import prompt_weights as pw
from diffjax.text import load_tokenizer


# ---- A1111 modules/prompt_parser.py (v1.10), parse_prompt_attention, as published --------
re_attention = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)

re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)


def a1111_parse_prompt_attention(text):
    res = []
    round_brackets = []
    square_brackets = []

    round_bracket_multiplier = 1.1
    square_bracket_multiplier = 1 / 1.1

    def multiply_range(start_position, multiplier):
        for p in range(start_position, len(res)):
            res[p][1] *= multiplier

    for m in re_attention.finditer(text):
        text = m.group(0)
        weight = m.group(1)

        if text.startswith('\\'):
            res.append([text[1:], 1.0])
        elif text == '(':
            round_brackets.append(len(res))
        elif text == '[':
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif text == ')' and round_brackets:
            multiply_range(round_brackets.pop(), round_bracket_multiplier)
        elif text == ']' and square_brackets:
            multiply_range(square_brackets.pop(), square_bracket_multiplier)
        else:
            parts = re.split(re_break, text)
            for i, part in enumerate(parts):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])

    for pos in round_brackets:
        multiply_range(pos, round_bracket_multiplier)

    for pos in square_brackets:
        multiply_range(pos, square_bracket_multiplier)

    if len(res) == 0:
        res = [["", 1.0]]

    # merge runs of identical weights
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1

    return res
# ------------------------------------------------------------------------------------------


CASES = [
    "", "normal text", "an (important) word", "(unbalanced", "\\(literal\\]",
    "(unnecessary)(parens)", "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "[[low]]", "((high))", "(word:1.3)", "(word: 0.7 )", "(word:-0.5)", "(word:+2)",
    "(a (b:1.5) c)", "[a (b) c]", "x BREAK y", "xBREAKy", "BREAK", "a BREAK BREAK b",
    "break is lower case", "(BREAK)", "a:b", "(a:b)", "(a:1.2:3)", "(:1.2)", "()", "[]",
    "a \\\\ b", "trailing \\", "\\(not emphasised\\)", "[unclosed square", "closing ] only",
    "closing ) only", "(x:1.1) (y:1.1)", "a, (b:0.9), [c], ((d)), e BREAK (f:1.4)",
    "(nested [square (and round)])", "((a) b)", "(a)(b:1.1)", "emoji 🙂 (smile:1.2)",
    "multi\nline (prompt)\nBREAK\nnext", "(a:.5)", "(a:1.)",
]
A1111_DOCTESTS = {   # modules/prompt_parser.py's own examples and outputs
    "normal text": [["normal text", 1.0]],
    "an (important) word": [["an ", 1.0], ["important", 1.1], [" word", 1.0]],
    "(unbalanced": [["unbalanced", 1.1]],
    "\\(literal\\]": [["(literal]", 1.0]],
    "(unnecessary)(parens)": [["unnecessaryparens", 1.1]],
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).": [
        ["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1],
        ["hill", 0.55], [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]],
}


def test_parser_equals_a1111_on_every_case():
    assert len(CASES) >= 30
    for text in CASES:
        want = [(t, float(w)) for t, w in a1111_parse_prompt_attention(text)]
        assert pw.parse_prompt_attention(text) == want, text
    for text, want in A1111_DOCTESTS.items():
        assert pw.parse_prompt_attention(text) == [tuple(x) for x in want], text


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


def test_long_prompt_is_chunked_not_truncated(tok):
    words = [f"w{i % 10}" for i in range(200)]
    prompt = " ".join(["red"] * 200)
    assert len(tok.pieces([prompt])[0]) == 200
    wp = pw.tokenize_weighted(tok, prompt)
    assert wp.ids.shape == (3, 77) and wp.n_truncated == 0
    body = [t for row in wp.ids for t in row[1:][:75] if t not in (tok.eos_id, tok.pad_id)]
    assert body == tok.pieces([prompt])[0]
    assert [int((row[1:] != tok.eos_id).sum()) for row in wp.ids] == [75, 75, 50]
    cut = pw.tokenize_weighted(tok, prompt, max_chunks=1)
    assert cut.ids.shape == (1, 77) and cut.n_truncated == 125
    # BREAK starts a chunk; weights follow their tokens; comma backtrack moves the phrase
    wp = pw.tokenize_weighted(tok, "a (red:1.5) cat BREAK [dog]")
    assert wp.ids.shape == (2, 77)
    np.testing.assert_allclose(wp.weights[0, :5], [1, 1, 1.5, 1, 1])
    np.testing.assert_allclose(wp.weights[1, :3], [1, 1 / 1.1, 1])
    phrase = " ".join(["x"] * 70) + ", " + " ".join(["long phrase"] * 5)
    wp = pw.tokenize_weighted(tok, phrase)
    n0 = int((wp.ids[0, 1:] != tok.eos_id).sum())
    assert n0 == 71 and wp.ids.shape == (2, 77)              # 70 x's and the comma
    ids, weights, dropped = pw.batch(tok, ["short", prompt, ""])
    assert ids.shape == weights.shape == (3, 231) and dropped == (0, 0, 0)
    np.testing.assert_array_equal(ids[0, 77:154], pw.empty_chunk(tok))
    del words


def test_emphasis_equals_float64_reference():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 77, 16)).astype(np.float32) + 0.3
    w = np.ones((2, 77), np.float32)
    w[0, 3:6], w[1, 10] = 1.21, 0.7
    got = np.asarray(pw.apply_emphasis(z, w))
    z64, w64 = z.astype(np.float64), w.astype(np.float64)
    for b in range(2):
        zw = z64[b] * w64[b][:, None]
        want = zw * (z64[b].mean() / zw.mean())
        np.testing.assert_allclose(got[b], want, rtol=2e-6, atol=2e-6 * np.abs(want).max())


def test_plain_prompts_encode_exactly_as_before(tok):
    import jax

    from diffjax.models.clip import CLIPTextModel
    from diffjax.weights.components import preset_components
    c = preset_components("tiny")
    # a final layer norm with a bias, as trained CLIP has (with bias 0 every token's state
    # has mean 0 and A1111's mean restoration divides ~0 by ~0)
    c.text_params["final_layer_norm"]["bias"] = np.linspace(-0.2, 0.6, 32).astype(np.float32)
    model = CLIPTextModel(c.text_config)
    encode = jax.jit(lambda i: model.apply({"params": c.text_params}, i).context)
    prompts = ["a red square", "two (blue:1.3) circles"]
    ids, weights, _ = pw.batch(tok, prompts)
    got = np.asarray(pw.encode_chunks(encode, ids, weights))
    np.testing.assert_array_equal(ids[0], tok.tokenize(prompts[:1]).ids[0])   # same ids
    z = np.asarray(encode(ids))                       # the same batch, without emphasis
    np.testing.assert_array_equal(got[0], z[0])       # no weights: untouched, bit-exact
    plain = z[1].astype(np.float64)
    zw = plain * weights[1][:, None]
    np.testing.assert_allclose(got[1], zw * plain.mean() / zw.mean(), rtol=1e-5, atol=1e-5)


def test_pipeline_encodes_weighted_and_long_prompts(tok):
    """The pipeline's text side (no sampling program compiled): plain prompts stay plain
    arrays (the program every other test runs), emphasis / >75 tokens become chunked ids
    with weights for prompts and negatives alike, encode_text applies the A1111 rule per
    chunk, truncation happens only with max_prompt_chunks and is reported."""
    import jax

    from diffjax.pipeline import TextToImage
    from diffjax.prompt_batches import weighted_ids
    from diffjax.sample_spec import SampleSpec
    from diffjax.weights.components import preset_components
    c = preset_components("tiny")
    c.text_params["final_layer_norm"]["bias"] = np.linspace(-0.2, 0.6, 32).astype(np.float32)
    spec = SampleSpec(batch_size=2)
    pipe = TextToImage(c, spec, devices=jax.devices()[:2])
    ids, neg, _ = weighted_ids(pipe.tokenizers, False, 0, ["a cat", "a dog"], None,
                               ["", "blurry"], None)
    np.testing.assert_array_equal(ids, tok.tokenize(["a cat", "a dog"]).ids)
    long = " ".join(["red"] * 200)
    ids, neg, truncated = weighted_ids(pipe.tokenizers, False, 0, ["a (cat:1.3)", long], None,
                                       ["", "blurry"], None)
    assert ids["ids"].shape == neg["ids"].shape == (2, 3 * 77) and truncated == 0
    np.testing.assert_array_equal(neg["ids"][0, 77:154], pw.empty_chunk(tok))
    params = {"text": c.text_params}
    got = np.asarray(jax.jit(pipe.encode_text)(params, ids))
    want = np.asarray(pw.encode_chunks(
        lambda i: pipe._text_modules()[0][1].apply({"params": c.text_params}, i).context,
        ids["ids"], ids["weights"]))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    ids, _, truncated = weighted_ids(pipe.tokenizers, False, 1, [long, "x"], None, ["", ""],
                                     None)
    assert truncated == 125 and np.shape(ids) == (2, 77)


def test_sdxl_weighted_contexts_match_the_plain_path():
    """SDXL: chunked ids through both towers give, for an unweighted one-chunk prompt, the
    plain path's context (penultimate layers of both towers) and pooled embedding; a long
    prompt's pooled embedding is its first chunk's (A1111)."""
    import jax

    from diffjax.pipeline import TextToImage
    from diffjax.prompt_batches import plain_ids, weighted_ids
    from diffjax.sample_spec import SampleSpec
    from diffjax.sdxl_conditioning import contexts
    from test_lora import _tiny_sdxl
    c = _tiny_sdxl()
    pipe = TextToImage(c, SampleSpec(batch_size=2, height=16, width=16),
                       devices=jax.devices()[:2])
    params = {"text": c.text_params, "text_2": c.text_params_2}
    prompts, negs = ["a red square", "a (blue:1.2) circle"], ["", "ugly"]
    toks = pipe.tokenizers
    plain = [plain_ids(toks, True, prompts, ["", ""]), plain_ids(toks, True, negs, ["", ""])]
    ids, neg, _ = weighted_ids(toks, True, 0, prompts, ["", ""], negs, ["", ""])
    assert isinstance(ids[0], dict) and ids[0]["ids"].shape == (2, 77)
    sdxl_contexts = jax.jit(lambda params, ids, neg: contexts(
        pipe._text_modules(), params, ids, neg, pipe.clip_skip, pipe._zeroed_empty_ids))
    ctx, unctx = sdxl_contexts(params, ids, neg)
    ref, unref = sdxl_contexts(params, *plain)
    # row 0 reads the same tokens both ways (row 1's plain ids keep "(", ":1.2", ")")
    for a, b, rows in ((ctx, ref, [0]), (unctx, unref, [0, 1])):
        for r in rows:
            np.testing.assert_allclose(a["context"][r], b["context"][r], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(a["text_embeds"][r], b["text_embeds"][r], rtol=1e-5,
                                       atol=1e-5)
    assert not np.allclose(ctx["context"][1], ref["context"][1], atol=1e-3)   # emphasis
    assert np.all(np.asarray(unctx["context"][0]) == 0)   # force_zeros: no negative prompt
    long = " ".join(["red"] * 100)
    ids, neg, _ = weighted_ids(toks, True, 0, [long, "a red"], ["", ""], negs, ["", ""])
    ctx, _ = sdxl_contexts(params, ids, neg)
    first = {k: {"ids": v["ids"][:, :77], "weights": v["weights"][:, :77]}
             for k, v in enumerate(ids)}
    ctx1, _ = sdxl_contexts(params, (first[0], first[1]),
                            tuple({"ids": n["ids"][:, :77], "weights": n["weights"][:, :77]}
                                  for n in neg))
    assert ctx["context"].shape[1] == 2 * 77
    np.testing.assert_allclose(ctx["text_embeds"], ctx1["text_embeds"], rtol=1e-5, atol=1e-5)

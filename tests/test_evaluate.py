"""`diffjax evaluate` on the packaged mini model with 500 captions (shapes captions; one
Euler step without guidance, so generation is cheap), scored with the mini CLIP
(clip_score, fd_clip) against `shapes:test` renders:

- a run killed with SIGKILL while generating, then rerun with the same arguments, finishes
  with the results.json that a from-scratch evaluation of the same images gives; the feature
  cache's own resume (chunks on disk read back, only the missing ones computed, a stale
  temporary ignored) is checked directly, without a model;
- a gate outside the measured range exits 1, one inside exits 0, a gate on a metric the
  run does not compute exits 2 before any work;
- bad inputs are one-line errors, exit 2.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from diffjax import cli
from diffjax.commands import evaluate

N = 500


def _args(out, captions, cache, *extra):
    return ["evaluate", "--prompts", captions, "--out", out, "--clip", "mini",
            "--ref-images", "shapes:test", "--chunk", "100", "--batch", "64",
            "--config.sampler.name=euler", "--config.sampler.steps=1",
            "--config.guidance_scale=1", "--config.batch_size=64",
            f"--config.compilation_cache={cache}", *extra]


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    from diffjax.data import shapes as S
    d = tmp_path_factory.mktemp("eval")
    path = d / "captions.tsv"
    rows = ["caption\tseed"] + [f"{S.example('test', i, 32)['caption']}\t"
                                f"{'' if i % 3 else 1000 + i}" for i in range(N)]
    path.write_text("\n".join(rows) + "\n")
    return str(path), str(d)


@pytest.mark.slow
def test_evaluate_resumes_after_kill_and_gates(captions, tmp_path):
    path, _ = captions
    cache = str(tmp_path / "xla-cache")
    out = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-m", "diffjax.cli", *_args(out, path, cache)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    images = os.path.join(out, "images")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:   # kill once some PNGs exist
        if os.path.isdir(images) and sum(f.endswith(".png") for f in os.listdir(images)) >= 64:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sum(f.endswith(".png") for f in os.listdir(images))
    assert 0 < done < N
    assert not os.path.exists(os.path.join(out, "results.json"))

    assert cli.main(_args(out, path, cache)) == 0             # resumes
    with open(os.path.join(out, "results.json")) as f:
        resumed = json.load(f)
    m = resumed["metrics"]
    assert m["num_images"] == N and set(m) == {"num_images", "clip_score", "fd_clip"}
    assert 0 < m["clip_score"] < 100 and m["fd_clip"] > 0
    with open(os.path.join(out, "clip_scores.jsonl")) as f:
        per_image = [json.loads(line) for line in f]
    assert len(per_image) == N and per_image[3]["file"] == "000003-seed1003.png"

    # a from-scratch evaluation of the same images: the same results.json
    fresh = str(tmp_path / "fresh")
    assert cli.main(["evaluate", "--images", images, "--prompts", path, "--out", fresh,
                     "--clip", "mini", "--ref-images", "shapes:test", "--chunk", "100",
                     "--batch", "64"]) == 0
    with open(os.path.join(fresh, "results.json")) as f:
        assert json.load(f)["metrics"] == m

    # gates (everything cached: no generation, no extraction)
    s = m["clip_score"]
    assert cli.main(_args(out, path, cache, "--gate", f"clip_score={s + 1}:{s + 2}")) == 1
    assert cli.main(_args(out, path, cache, "--gate", f"clip_score={s - 1}:{s + 1}",
                          "--gate", "fd_clip=0:")) == 0
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["metrics"] == m                     # gates do not change it


def test_bad_inputs_exit_2(captions, tmp_path, capsys):
    path, d = captions
    out = str(tmp_path / "bad")
    assert cli.main(_args(out, path, "", "--gate", "fid=1:2")) == 2   # fid not computed
    assert "gate on fid: not computed" in capsys.readouterr().err
    assert cli.main(_args(out, path, "", "--gate", "clip_score=3")) == 2
    assert "METRIC=LOW:HIGH" in capsys.readouterr().err
    bad = os.path.join(d, "bad.jsonl")
    with open(bad, "w") as f:
        f.write('{"caption": "ok"}\n{"prompt": 3}\n')
    assert cli.main(_args(out, bad, "")) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert cli.main(["evaluate", "--prompts", path, "--out", out]) == 2
    assert "no feature extractor" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "images"))


def test_read_captions_formats(tmp_path):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("a red circle\t7\nblue square\n")
    assert evaluate.read_captions(str(tsv)) == [("a red circle", 7), ("blue square", None)]
    hdr = tmp_path / "h.tsv"
    hdr.write_text("id\tcaption\n1\tgreen star\n")
    assert evaluate.read_captions(str(hdr)) == [("green star", None)]
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"caption": "x", "seed": 3}\n\n{"prompt": "y"}\n')
    assert evaluate.read_captions(str(jl)) == [("x", 3), ("y", None)]


def test_reference_images_from_a_tfds_dataset_folder(tmp_path):
    """--ref-images tfds:DIR:test reads a built dataset's images: the renders shapes:test
    names (the features and metrics downstream are the same code as above)."""
    import numpy as np

    from diffjax.data.builders import build_shapes
    dataset = build_shapes(str(tmp_path / "data"), 32, {"train": 2, "test": 5, "holdout": 2})
    got = evaluate._reference_images(f"tfds:{dataset}:test", 0)
    want = evaluate._reference_images("shapes:test", 5)
    assert len(got) == 5 and all(np.array_equal(a, b) for a, b in zip(got, want))
    with pytest.raises(evaluate.EvaluateError, match="tfds:DATASET:SPLIT"):
        evaluate._reference_images("tfds:nosplit", 0)


def test_feature_cache_computes_only_missing_chunks(tmp_path):
    import numpy as np

    from diffjax.metrics.evaluation import FeatureCache
    calls = []

    def extract(lo, hi):
        calls.append((lo, hi))
        return {"features": np.arange(lo, hi, dtype=np.float64)[:, None] * [1.0, 2.0]}
    full = FeatureCache(str(tmp_path / "a"), chunk=4).get(10, extract)["features"]
    assert calls == [(0, 4), (4, 8), (8, 10)]
    os.remove(next(p for p in (tmp_path / "a").iterdir() if p.name.startswith("00001-")))
    (tmp_path / "a" / "00002-8-10.npz.tmp-1.npz").write_bytes(b"half a file")   # a kill's
    calls.clear()
    again = FeatureCache(str(tmp_path / "a"), chunk=4).get(10, extract)["features"]
    assert calls == [(4, 8)] and np.array_equal(again, full)
    assert not any(".tmp-" in p.name for p in (tmp_path / "a").iterdir())

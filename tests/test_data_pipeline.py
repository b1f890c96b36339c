"""grain pipeline: exact resume from a JSON state, seeded shuffle, disjoint processes."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffjax.data import builders as B
from diffjax.data import pipeline as P
from diffjax.data import shapes as S


def _memory_source(n, h=20, w=28):
    """In-memory records: image i is filled with value i, caption 'c{i}'."""
    return [{"image": np.full((h, w, 3), i, np.uint8), "caption": f"c{i}".encode()}
            for i in range(n)]


def _fake_tokenize(captions):
    return np.array([[len(c), sum(map(ord, c)) % 1000] for c in captions], np.int32)


def _same(a, b):
    return (np.array_equal(a["image"], b["image"]) and list(a["caption"]) == list(b["caption"])
            and np.array_equal(a["ids"], b["ids"]))


@pytest.fixture(scope="module")
def shapes_source(tmp_path_factory):
    path = B.build_shapes(str(tmp_path_factory.mktemp("data")), 32, {"train": 40})
    return B.load_source(path, "train")


def test_batches_and_exact_resume_from_json_state(shapes_source):
    cfg = P.PipelineConfig(batch_size=4, resolution=24, seed=3, crop="random", flip=True,
                           caption_dropout=0.3)
    it = iter(P.make_dataset(shapes_source, cfg, _fake_tokenize))
    first = next(it)
    assert first["image"].shape == (4, 24, 24, 3) and first["image"].dtype == np.float32
    assert -1.0 <= first["image"].min() and first["image"].max() <= 1.0
    assert first["ids"].shape == (4, 2) and first["caption"].shape == (4,)
    for _ in range(12):  # past one epoch (40 examples = 10 batches)
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    straight = [next(it) for _ in range(8)]
    resumed_it = iter(P.make_dataset(shapes_source, cfg, _fake_tokenize))
    resumed_it.set_state(state)
    resumed = [next(resumed_it) for _ in range(8)]
    assert all(_same(a, b) for a, b in zip(straight, resumed))  # bitwise
    # A different seed is a different stream.
    other = next(iter(P.make_dataset(shapes_source, P.PipelineConfig(
        batch_size=4, resolution=24, seed=4, crop="random", flip=True), _fake_tokenize)))
    assert not _same(first, other)


def test_each_distinct_caption_is_tokenized_once():
    """The pipeline's caption -> ids memo: the same rows as tokenizing each example, the
    tokenizer called once per distinct caption, and the shared rows read-only."""
    calls = []

    def counting_tokenize(captions):
        calls.extend(captions)
        return _fake_tokenize(captions)

    source = [{"image": np.zeros((8, 8, 3), np.uint8), "caption": f"c{i % 3}".encode()}
              for i in range(12)]
    batch = next(iter(P.make_dataset(source, P.PipelineConfig(batch_size=12, resolution=8),
                                     counting_tokenize)))
    np.testing.assert_array_equal(batch["ids"], _fake_tokenize(list(batch["caption"])))
    assert sorted(calls) == ["c0", "c1", "c2"]
    ids_of = P.caption_ids_memo(_fake_tokenize)
    assert ids_of("a") is ids_of("a") and not ids_of("a").flags.writeable


def test_examples_are_read_once_within_the_memory_cap():
    """MemoSource: two epochs read each record once; past the byte cap, examples are read
    again each time; what it returns equals the source and is read-only."""
    reads = []

    class Counting:
        def __len__(self):
            return 8

        def __getitem__(self, i):
            reads.append(i)
            return {"image": np.full((4, 4, 3), i, np.uint8), "caption": f"c{i}"}

    cfg = P.PipelineConfig(batch_size=4, resolution=4)
    it = iter(P.make_dataset(Counting(), cfg))
    batches = [next(it) for _ in range(4)]  # two epochs
    assert sorted(reads) == list(range(8))
    assert sorted(b for x in batches for b in x["caption"]) == sorted([f"c{i}" for i in
                                                                      range(8)] * 2)
    memo = P.MemoSource(Counting(), max_bytes=3 * (48 + 2))  # room for 3 examples
    reads.clear()
    for _ in range(2):
        for i in range(8):
            ex = memo[i]
            assert ex["caption"] == f"c{i}" and (ex["image"] == i).all()
            assert not ex["image"].flags.writeable
    assert sorted(reads) == sorted(list(range(8)) + list(range(3, 8)))
    assert memo.bytes == 150


def test_latent_source_gives_the_image_pipelines_examples(shapes_source):
    """train.cache_latents: a LatentSource (here 'latents' that are the pixels themselves)
    through the pipeline gives the image pipeline's batches -- same examples, order and
    dropped captions -- with "latent" in place of "image"; random crops/flips are refused."""
    from diffjax.train import latent_cache
    cfg = P.PipelineConfig(batch_size=4, resolution=32, seed=5, caption_dropout=0.5)
    cached = latent_cache.encode_source(shapes_source, lambda x: x * 2.0, (32, 32, 3), cfg,
                                        batch_size=16, progress=False)   # 40 = 16 + 16 + 8
    assert len(cached) == len(shapes_source)
    with pytest.raises(ValueError, match="read-only"):  # examples are views of the cache
        cached[0]["latent"][0, 0, 0] = 1.0
    cfg_l = P.PipelineConfig(batch_size=4, resolution=32, seed=5, caption_dropout=0.5,
                             latents=True)
    images = iter(P.make_dataset(shapes_source, cfg, _fake_tokenize))
    latents = iter(P.make_dataset(cached, cfg_l, _fake_tokenize))
    dropped = 0
    for _ in range(15):  # past one epoch
        a, b = next(images), next(latents)
        np.testing.assert_array_equal(b["latent"], a["image"] * 2.0)
        assert list(a["caption"]) == list(b["caption"])
        np.testing.assert_array_equal(a["ids"], b["ids"])
        dropped += sum(c == "" for c in a["caption"])
    assert 0 < dropped < 60
    with pytest.raises(ValueError, match="precomputed latents need deterministic pixels"):
        P.PipelineConfig(batch_size=4, resolution=32, flip=True, latents=True)
    with pytest.raises(ValueError, match=r"train.cache_latents needs deterministic pixels: "
                                         r"data.crop 'center' and data.flip False"):
        latent_cache.encode_source(shapes_source, lambda x: x, (32, 32, 3),
                                   P.PipelineConfig(batch_size=4, resolution=24,
                                                    crop="random"), progress=False)
    with pytest.raises(ValueError, match=r"40 latents of shape \(4096, 4096, 16\) take "
                                         r"40.0 GiB of host memory"):
        latent_cache.encode_source(shapes_source, lambda x: x, (4096, 4096, 16), cfg)


def test_epochs_are_reshuffled_permutations_and_processes_disjoint():
    src = _memory_source(12)
    cfg = P.PipelineConfig(batch_size=12, resolution=16, seed=0, num_epochs=2)
    epochs = [list(b["caption"]) for b in P.make_dataset(src, cfg)]
    assert len(epochs) == 2
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(f"c{i}" for i in range(12))
    assert epochs[0] != epochs[1]  # reshuffled per epoch
    cfg1 = P.PipelineConfig(batch_size=3, resolution=16, seed=0, num_epochs=1)
    parts = [[c for b in P.make_dataset(src, cfg1, process_index=p, process_count=2)
              for c in b["caption"]] for p in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(f"c{i}" for i in range(12))


def test_resize_crop_flip_and_caption_dropout():
    # 20x28 image resized so the short side is 16 -> 16x22 (bicubic), center crop 16x16.
    im = np.zeros((20, 28, 3), np.uint8)
    im[:, 14:] = 255
    out = P.resize_and_crop(im, 16, None)
    assert out.shape == (16, 16, 3)
    assert out[:, 0].max() == 0 and out[:, -1].min() == 255  # symmetric crop keeps both sides
    rng = np.random.default_rng(0)
    offsets = {P.resize_and_crop(np.arange(20 * 28 * 3, dtype=np.uint8).reshape(20, 28, 3) * 0
                                 + np.arange(28, dtype=np.uint8)[None, :, None], 20, rng)[0, 0, 0]
               for _ in range(30)}
    assert offsets == set(range(9))  # every offset 0..8 of a 28 -> 20 random crop
    # Flip and dropout rates over 400 examples: binomial(400, 0.5 / 0.25), 5 sigma bounds.
    src = [{"image": np.tile(np.arange(16, dtype=np.uint8)[None, :, None], (16, 1, 3)),
            "caption": "x"} for _ in range(400)]
    cfg = P.PipelineConfig(batch_size=400, resolution=16, flip=True, caption_dropout=0.25)
    batch = next(iter(P.make_dataset(src, cfg)))
    flipped = np.mean(batch["image"][:, 0, 0, 0] > batch["image"][:, 0, -1, 0])
    dropped = np.mean(batch["caption"] == "")
    assert abs(flipped - 0.5) < 5 * 0.025 and abs(dropped - 0.25) < 5 * 0.0217
    assert set(batch["caption"]) == {"", "x"}


def test_global_batch_is_sharded_over_the_mesh(shapes_source):
    mesh = Mesh(np.array(jax.devices()).reshape(8), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    cfg = P.PipelineConfig(batch_size=8, resolution=32, seed=1)
    local = next(iter(P.make_dataset(shapes_source, cfg, _fake_tokenize)))
    g = P.global_batch(local, sharding)
    assert g["image"].shape == (8, 32, 32, 3) and g["image"].sharding == sharding
    assert len(g["image"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(g["ids"]), local["ids"])
    assert g["caption"] is local["caption"]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="crop must be 'center' or 'random', got 'left'"):
        P.PipelineConfig(batch_size=2, resolution=8, crop="left")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        P.PipelineConfig(batch_size=0, resolution=8)
    with pytest.raises(ValueError, match="source is empty"):
        P.make_dataset([], P.PipelineConfig(batch_size=2, resolution=8))
    cfg = P.PipelineConfig(batch_size=2, resolution=8, caption_key="text")
    with pytest.raises(KeyError, match="no feature 'text'; it has \\['caption', 'image'\\]"):
        next(iter(P.make_dataset(_memory_source(4), cfg)))
    assert S.example("train", 0)  # the shapes module is importable beside the pipeline

"""The `shapes` generator and the tfds builders (array_record, no TensorFlow)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from diffjax.data import builders as B
from diffjax.data import shapes as S


def test_examples_are_deterministic_and_distinct():
    a, b = S.example("train", 7), S.example("train", 7)
    assert np.array_equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    images = {S.example("train", i)["image"].tobytes() for i in range(50)}
    assert len(images) == 50  # continuous jitter: no two renders coincide
    assert S.example("train", 3, resolution=64)["image"].shape == (64, 64, 3)
    assert S.example("train", 3)["image"].dtype == np.uint8


def test_heldout_combinations_split_cleanly_and_everything_is_covered():
    train = [S.sample_spec("train", i) for i in range(3000)]
    test = [S.sample_spec("test", i) for i in range(500)]
    hold = [S.sample_spec("holdout", i) for i in range(500)]
    assert not any(S.is_heldout(s.shape, s.colour, s.position) for s in train + test)
    assert all(S.is_heldout(s.shape, s.colour, s.position) for s in hold)
    # Both kinds of held-out pair are exercised, and every held-out pair occurs.
    assert {(s.shape, s.colour) for s in hold} >= S.HELDOUT_SHAPE_COLOUR
    assert {(s.shape, s.position) for s in hold} >= S.HELDOUT_SHAPE_POSITION
    # Every attribute value appears in train (generalisation needs each word seen).
    for attr, values in (("shape", S.SHAPES), ("colour", S.COLOURS),
                         ("position", S.POSITIONS), ("size", S.SIZES),
                         ("background", S.BACKGROUNDS)):
        assert {getattr(s, attr) for s in train} == set(values), attr
    # Held out: 6 (shape, colour) + 6 (shape, position) pairs, one of each per shape.
    assert len(S.HELDOUT_SHAPE_COLOUR) == len(S.HELDOUT_SHAPE_POSITION) == len(S.SHAPES)


def test_captions_state_the_attributes():
    templates_seen = set()
    for i in range(1500):
        ex = S.example("train", i)
        parsed = S.parse_caption(ex["caption"])
        assert parsed["shape"] == ex["shape"] and parsed["colour"] == ex["colour"], ex
        for k in ("position", "size", "background"):
            assert parsed[k] in (None, ex[k]), (ex["caption"], k, parsed[k], ex[k])
        templates_seen.add(tuple(k for k in ("position", "size", "background") if parsed[k]))
    assert len(templates_seen) >= 5  # several templates, stating different attributes
    assert S.parse_caption("A big RED star in the upper left corner on a black background") == {
        "shape": "star", "colour": "red", "background": "black", "position": "top left",
        "size": "large"}


def test_render_colours_and_geometry():
    spec = S.ShapeSpec("square", "blue", "white", "center", "large", 0.5, 0.5, 0.2)
    im = S.render(spec, 32)
    assert tuple(im[0, 0]) == S.BACKGROUNDS["white"]
    assert tuple(im[16, 16]) == S.COLOURS["blue"]
    # Square of half side 0.8 r = 0.16 of 32 px = 5.12 px. PIL fills both boundary rows of
    # subpixels, so each side gains ~1 subpixel (1/4 px): coverage ~ (10.24 + 0.25)^2 = 110.0
    # px^2 (measured 110.29); 1% covers the subpixel rounding of the corners.
    alpha = S.shape_alpha("square", 0.5, 0.5, 0.2, 32)
    assert alpha.sum() == pytest.approx(10.49 ** 2, rel=0.01)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown shapes split 'val'"):
        S.example("val", 0)
    with pytest.raises(ValueError, match="index must be >= 0, got -1"):
        S.sample_spec("train", -1)
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        S.shape_alpha("hexagon", 0.5, 0.5, 0.1, 32)
    with pytest.raises(ValueError, match="names several of"):
        S.parse_caption("a red circle and a blue square")


def test_shapes_builder_writes_array_record_read_back_exactly(tmp_path):
    path = B.build_shapes(str(tmp_path), 32, {"train": 12, "holdout": 4})
    assert any(f.endswith(".array_record-00000-of-00001") for f in os.listdir(path))
    src = B.load_source(path, "train")
    assert len(src) == 12 and len(B.load_source(path, "holdout")) == 4
    for i in (0, 5, 11):
        rec, ex = src[i], S.example("train", i)
        assert rec["index"] == i
        assert np.array_equal(rec["image"], ex["image"])  # PNG is lossless
        assert rec["caption"].decode() == ex["caption"]
        assert S.SHAPES[rec["shape"]] == ex["shape"]
        assert list(S.COLOURS)[rec["colour"]] == ex["colour"]
        assert S.POSITIONS[rec["position"]] == ex["position"]
    assert all(B.load_source(path, "holdout")[i]["heldout"] for i in range(4))
    with pytest.raises(ValueError, match="has no split 'test'"):
        B.load_source(path, "test")


def test_image_folder_builder_counts_and_names_skipped_files(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(S.example("test", i)["image"]).save(folder / f"im{i}.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "wide.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    for name in ("im0", "im1", "wide", "broken"):
        (folder / f"{name}.txt").write_text(f"caption of {name}\n")
    path, report = B.build_image_folder(str(folder), str(tmp_path / "data"), "t1")
    assert report["found"] == 5 and report["written"] == 3
    assert report["unreadable"] == ["broken.png"]
    assert report["missing_caption"] == ["im2.png"]
    assert json.load(open(os.path.join(path, "build_report.json"))) == report
    src = B.load_source(path, "train")
    rows = {src[i]["file_name"].decode(): src[i] for i in range(len(src))}
    assert sorted(rows) == ["im0.png", "im1.png", "wide.jpg"]
    assert rows["wide.jpg"]["image"].shape == (20, 30, 3)
    assert rows["im1.png"]["caption"].decode() == "caption of im1"
    assert np.array_equal(rows["im0.png"]["image"], S.example("test", 0)["image"])


def test_image_folder_metadata_jsonl_and_errors(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(S.example("test", i)["image"]).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "0.png", "text": "zero"}) + "\n")
    usable, report = B.scan_image_folder(str(folder))
    assert usable == [("0.png", "zero")] and report["missing_caption"] == ["1.png"]
    (folder / "metadata.jsonl").write_text('{"file": "0.png"}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:1: expected a JSON object with 'file_name'"):
        B.scan_image_folder(str(folder))
    with pytest.raises(B.DatasetError, match="image folder .*nope.* does not exist"):
        B.scan_image_folder(str(tmp_path / "nope"))


def test_data_command_and_open_source(tmp_path, capsys):
    import argparse

    from diffjax.commands import data as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["shapes", "--out", str(tmp_path), "--train", "6", "--test", "0",
                              "--holdout", "2"])
    assert command.run(args) == 0
    assert "train: 6, holdout: 2" in capsys.readouterr().out
    path = os.path.join(str(tmp_path), "shapes", "r32-train6-holdout2", "1.0.0")
    assert len(B.open_source(path, "train")) == 6
    # By tfds name from the data_dir (what a config names for an installed tfds dataset).
    src = B.open_source("shapes/r32-train6-holdout2", "holdout", data_dir=str(tmp_path))
    assert len(src) == 2 and src[1]["heldout"]
    with pytest.raises(ValueError, match="cannot open dataset 'no_such_ds' split 'train'"):
        B.open_source("no_such_ds", "train", data_dir=str(tmp_path))

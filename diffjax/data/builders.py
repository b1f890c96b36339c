"""tfds builders that write array_record: `shapes` and `image_folder`.

Why tfds + array_record: the files are random-access, so grain can shuffle globally with a
seed and resume from an index (see `pipeline.py`). TensorFlow is not required: examples are
yielded as `PIL.Image` (tfds encodes them to PNG with PIL) and the `DatasetInfo` is built
directly. Read back with `load_source(data_dir, name, split)` — a `tfds.data_source` that
does not need these classes registered.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from diffjax.data import shapes as S
from diffjax.data.shapes import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of builders defined outside the tfds tree that download nothing.

    tfds looks for a checksums file next to the builder's source via `code_path`, which
    needs the `importlib_resources` backport when the class lives in an ordinary package;
    there are no URLs here, so there is no checksums file to find.
    """

    code_path = None


# ---------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class ShapesBuilderConfig(tfds.core.BuilderConfig):
    """Resolution and number of examples per split (indices 0..n-1 of each split)."""

    resolution: int = 32
    split_sizes: tuple[tuple[str, int], ...] = (("train", 20000), ("test", 1000),
                                                ("holdout", 1000))


class Shapes(_LocalBuilder):
    """The procedural `shapes` dataset (see `diffjax.data.shapes`)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [ShapesBuilderConfig(name="r32", resolution=32),
                       ShapesBuilderConfig(name="r64", resolution=64)]

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        return tfds.core.DatasetInfo(
            builder=self,
            description="Procedural shapes with captions; attributes as features.",
            disable_shuffling=True,  # record i is example i: the order is the spec
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(r, r, 3), encoding_format="png"),
                "caption": tfds.features.Text(),
                "shape": tfds.features.ClassLabel(names=list(S.SHAPES)),
                "colour": tfds.features.ClassLabel(names=list(S.COLOURS)),
                "background": tfds.features.ClassLabel(names=list(S.BACKGROUNDS)),
                "position": tfds.features.ClassLabel(names=list(S.POSITIONS)),
                "size": tfds.features.ClassLabel(names=list(S.SIZES)),
                "heldout": tfds.features.Scalar(dtype=np.bool_),
                "index": tfds.features.Scalar(dtype=np.int64),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        sizes = dict(self.builder_config.split_sizes)
        unknown = set(sizes) - set(S.SPLITS)
        if unknown:
            raise ValueError(f"shapes split_sizes names unknown splits {sorted(unknown)}; "
                             f"expected some of {S.SPLITS}")
        return {split: self._generate_examples(split, n) for split, n in sizes.items()}

    def _generate_examples(self, split: str, n: int):
        for i in range(n):
            ex = S.example(split, i, self.builder_config.resolution)
            ex["image"] = Image.fromarray(ex["image"])
            ex["index"] = i
            yield i, ex


def build_shapes(data_dir: str, resolution: int = 32,
                 split_sizes: dict[str, int] | None = None) -> str:
    """Write `shapes` at `resolution` under data_dir; returns the dataset directory.

    A non-default `split_sizes` gets its own config name, so builds never overwrite each
    other silently.
    """
    sizes = tuple((split_sizes or {"train": 20000, "test": 1000, "holdout": 1000}).items())
    S.check_request(resolution, dict(sizes))
    name = f"r{resolution}-" + "-".join(f"{k}{v}" for k, v in sizes)
    builder = Shapes(config=ShapesBuilderConfig(name=name, resolution=resolution,
                                                split_sizes=sizes),
                     data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return os.fspath(builder.data_path)


# ---------------------------------------------------------------------------------------
# image_folder
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
    """`folder`: images with `name.txt` caption sidecars, or a `metadata.jsonl` with
    {"file_name": ..., "text": ...} lines (the diffusers/HF fine-tuning layout)."""

    folder: str = ""


def _read_captions(folder: str, files: list[str]) -> dict[str, str]:
    meta = os.path.join(folder, "metadata.jsonl")
    captions: dict[str, str] = {}
    if os.path.exists(meta):
        try:
            with open(meta, "rb") as f:
                text = f.read().decode("utf-8")
        except UnicodeDecodeError as e:
            raise DatasetError(f"{meta} is not UTF-8 text (byte {e.start})") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                captions[row["file_name"]] = str(row["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DatasetError(f"{meta}:{lineno}: expected a JSON object with "
                                   f"'file_name' and 'text', got {line.strip()!r} ({e})")
        return captions
    for name in files:
        side = os.path.splitext(os.path.join(folder, name))[0] + ".txt"
        if os.path.exists(side):
            try:
                with open(side, encoding="utf-8") as f:
                    captions[name] = f.read().strip()
            except UnicodeDecodeError as e:
                raise DatasetError(f"caption file {side!r} is not UTF-8 text (byte {e.start})"
                                   ) from None
    return captions


def scan_image_folder(folder: str) -> tuple[list[tuple[str, str]], dict]:
    """(file, caption) pairs that can be used, and a report of what was skipped and why.

    Report keys: found, written, unreadable (list of names), missing_caption (list).
    Unreadable images (PIL cannot decode them) and images without a caption are skipped.
    """
    if not os.path.isdir(folder):
        raise DatasetError(f"image folder {folder!r} does not exist; expected a folder of "
                           "images with .txt captions or a metadata.jsonl")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    captions = _read_captions(folder, files)
    usable, unreadable, missing = [], [], []
    for name in files:
        try:
            with Image.open(os.path.join(folder, name)) as im:
                im.load()
        except Exception:  # noqa: BLE001 - any decode failure means: skip and report
            unreadable.append(name)
            continue
        if name not in captions:
            missing.append(name)
            continue
        usable.append((name, captions[name]))
    report = {"folder": folder, "found": len(files), "written": len(usable),
              "unreadable": unreadable, "missing_caption": missing}
    return usable, report


class ImageFolder(_LocalBuilder):
    """A folder of captioned images -> one `train` split (images kept at their size)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Captioned images from {self.builder_config.folder}",
            disable_shuffling=True,  # sorted file order; grain shuffles with a seed
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "caption": tfds.features.Text(),
                "file_name": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        usable, self.report = scan_image_folder(self.builder_config.folder)
        if not usable:
            raise DatasetError(f"image folder {self.builder_config.folder!r} has no usable "
                             f"image: {self.report}")
        return {"train": self._generate_examples(usable)}

    def _generate_examples(self, usable):
        for name, caption in usable:
            with Image.open(os.path.join(self.builder_config.folder, name)) as im:
                rgb = im.convert("RGB")
            yield name, {"image": rgb, "caption": caption, "file_name": name}


def build_image_folder(folder: str, data_dir: str, name: str = "default") -> tuple[str, dict]:
    """Write `folder` as array_record under data_dir; returns (dataset dir, build report).

    The report (also saved as `build_report.json` in the dataset dir) counts and names the
    unreadable images and the images without a caption, which were skipped.
    """
    builder = ImageFolder(config=ImageFolderConfig(name=name, folder=os.path.abspath(folder)),
                          data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    path = os.fspath(builder.data_path)
    report_path = os.path.join(path, "build_report.json")
    if hasattr(builder, "report"):
        with open(report_path, "w", encoding="utf-8") as f:
            json.dump(builder.report, f, indent=1)
    with open(report_path, encoding="utf-8") as f:  # an earlier build's report
        return path, json.load(f)


def load_source(dataset_dir: str, split: str):
    """Random-access source (len, __getitem__ -> dict of numpy) of a built dataset dir.

    Works for any tfds dataset written as array_record, whether or not its builder class
    is importable here (the features are read from the directory).
    """
    if not os.path.isdir(dataset_dir):
        raise DatasetError(f"dataset directory {dataset_dir!r} does not exist; build one "
                           "with `diffjax data shapes|image_folder --out DIR`")
    try:
        builder = tfds.builder_from_directory(dataset_dir)
    except Exception as e:  # noqa: BLE001 - tfds raises many kinds for a foreign folder
        raise DatasetError(f"{dataset_dir!r} is not a built dataset directory (no readable "
                           f"dataset_info.json: {str(e).splitlines()[0][:200] if str(e) else e!r}"
                           "); expected the versioned folder `diffjax data` prints") from None
    if split not in builder.info.splits:
        raise DatasetError(f"dataset {dataset_dir!r} has no split {split!r}; it has "
                         f"{sorted(builder.info.splits)}")
    return builder.as_data_source(split=split)


def open_source(dataset: str, split: str, data_dir: str | None = None):
    """A random-access source from a built directory or any installed tfds dataset name.

    `dataset` is a directory written by a builder here (or any tfds array_record dir), or a
    tfds name such as "mnist" / "coco_captions:1.0.0" already prepared as array_record in
    `data_dir`; the pipeline's image_key / caption_key then pick its features.
    """
    if os.path.isdir(dataset):
        return load_source(dataset, split)
    try:
        return tfds.data_source(dataset, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - tfds raises many kinds; name what was asked
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise DatasetError(f"cannot open dataset {dataset!r} split {split!r} (data_dir="
                           f"{data_dir!r}): not a built directory, and tfds says: {first}"
                           ) from None

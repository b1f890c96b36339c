"""`diffjax data`: build the `shapes` or `image_folder` dataset as array_record.

    diffjax data shapes --out data/ --resolution 32 --train 20000
    diffjax data image_folder path/to/images --out data/ --name mine

The request (resolution, split sizes, the output folder, the image folder) is checked
before tensorflow-datasets is imported or anything is written; a bad one is one line and
exit status 2 (`DatasetError`).
"""

from __future__ import annotations

import json
import os


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="data_kind", required=True)
    s = sub.add_parser("shapes", help="the procedural shapes dataset")
    s.add_argument("--out", required=True, help="tfds data_dir to write into")
    s.add_argument("--resolution", type=int, default=32, help="pixels per side (>= 16)")
    s.add_argument("--train", type=int, default=20000, help="examples in the train split")
    s.add_argument("--test", type=int, default=1000)
    s.add_argument("--holdout", type=int, default=1000,
                   help="examples with held-out (shape, colour|position) combinations")
    f = sub.add_parser("image_folder", help="images + .txt sidecars or metadata.jsonl")
    f.add_argument("folder")
    f.add_argument("--out", required=True, help="tfds data_dir to write into")
    f.add_argument("--name", default="default", help="config name (one per folder)")


def run(args) -> int:
    from diffjax.commands.preflight import check_output_dir
    from diffjax.data import shapes
    if args.data_kind == "shapes":
        sizes = {"train": args.train, "test": args.test, "holdout": args.holdout}
        shapes.check_request(args.resolution, sizes)
        sizes = {k: v for k, v in sizes.items() if v > 0}
    elif not os.path.isdir(args.folder):
        what = "is a file" if os.path.exists(args.folder) else "does not exist"
        raise shapes.DatasetError(f"image folder {args.folder!r} {what}; expected a folder of "
                                  "images with .txt captions or a metadata.jsonl")
    check_output_dir(args.out)
    from diffjax.data import builders
    if args.data_kind == "shapes":
        path = builders.build_shapes(args.out, args.resolution, sizes)
        print(f"wrote {path} ({', '.join(f'{k}: {v}' for k, v in sizes.items())})")
        return 0
    path, report = builders.build_image_folder(args.folder, args.out, args.name)
    print(f"wrote {path}")
    print(json.dumps(report, indent=1))
    skipped = len(report["unreadable"]) + len(report["missing_caption"])
    if skipped:
        print(f"skipped {skipped} of {report['found']} images: "
              f"{len(report['unreadable'])} unreadable, "
              f"{len(report['missing_caption'])} without a caption (named above)")
    return 0

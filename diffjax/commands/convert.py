"""`diffjax convert SOURCE DEST`: a diffusers folder <-> a diffjax orbax checkpoint.

The conversion itself is `diffjax.weights.convert`; this module only parses arguments and
prints what was written (`diffjax.weights.convert` imports jax only when it converts, so
`diffjax convert --help` stays light).
"""

from __future__ import annotations

import sys

from diffjax.weights.convert import FORMATS, convert
from diffjax.weights.io import WeightsError


def add_arguments(parser) -> None:
    parser.add_argument("source", help="diffusers-format folder, diffjax checkpoint, "
                                       "single-file checkpoint (.safetensors) or a preset "
                                       "name (random weights)")
    parser.add_argument("dest", help="where to write the converted model (must not exist "
                                     "unless --force)")
    parser.add_argument("--to", choices=FORMATS, default=None,
                        help="output format (default: the other format than the source's; "
                             "a preset becomes a diffjax checkpoint)")
    parser.add_argument("--seed", type=int, default=0, help="seed for a preset's random weights")
    parser.add_argument("--prediction-type", choices=("epsilon", "v_prediction"),
                        help="an SD 2.x single file's prediction type (not in its weights)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read a pickle-based .ckpt/.pt/.bin with the restricted "
                             "(tensors-only) unpickler")
    parser.add_argument("--force", action="store_true", help="replace an existing dest")


def run(args) -> int:
    try:
        written, counts = convert(args.source, args.dest, to=args.to, force=args.force,
                                  seed=args.seed, prediction_type=args.prediction_type,
                                  allow_pickle=args.allow_pickle)
    except WeightsError as e:
        print(f"diffjax convert: {e}", file=sys.stderr)
        return 2
    what = {"diffjax": "checkpoint", "diffusers": "folder", "single-file": "file"}[written]
    print(f"wrote {written} {what} {args.dest}")
    for name, n in counts.items():
        print(f"  {name:<13}{n:>15,} params")
    return 0

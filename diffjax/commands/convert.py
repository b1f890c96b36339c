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
    parser.add_argument("source", help="diffusers-format folder, diffjax checkpoint, or a "
                                       "preset name (random weights)")
    parser.add_argument("dest", help="where to write the converted model (must not exist "
                                     "unless --force)")
    parser.add_argument("--to", choices=FORMATS, default=None,
                        help="output format (default: the other format than the source's; "
                             "a preset becomes a diffjax checkpoint)")
    parser.add_argument("--seed", type=int, default=0, help="seed for a preset's random weights")
    parser.add_argument("--force", action="store_true", help="replace an existing dest")


def run(args) -> int:
    try:
        written, counts = convert(args.source, args.dest, to=args.to, force=args.force,
                                  seed=args.seed)
    except WeightsError as e:
        print(f"diffjax convert: {e}", file=sys.stderr)
        return 2
    print(f"wrote {written} {'checkpoint' if written == 'diffjax' else 'folder'} {args.dest}")
    for name, n in counts.items():
        print(f"  {name:<13}{n:>15,} params")
    return 0

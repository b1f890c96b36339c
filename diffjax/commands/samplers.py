"""`diffjax samplers`: the sampler catalogue (name, NFE for N steps, order, noise, reference)
and every sampler's options with their defaults (settable as `sampler.options.<name>`)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=20, help="N used in the NFE column")


def run(args) -> int:
    from diffjax.diffusion.samplers import catalogue_table
    print(catalogue_table(steps=args.steps))
    return 0

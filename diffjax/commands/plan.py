"""`diffjax plan --config CONFIG --topology v5e:2x2 [--topology ...]`: compile a sample or
UNet training job for TPU slices on this machine and size it (`diffjax.plan`).

Needs libtpu (`pip install 'diffjax[tpu]'`); runs on a CPU-only machine. Writes plan.json
and plan.md under --out (when given) and prints the Markdown table; progress goes to stderr
as each candidate compiles. Times, images/s and utilisation are the TPU compiler's
estimates, never measurements.
"""

from __future__ import annotations

import os
import sys

DEFAULT_CONFIG = "diffjax.configs.sample:model=sd15"


def _ints(text: str) -> tuple[int, ...]:
    from diffjax.spec import ConfigError
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ConfigError(f"--batch-sizes {text!r}: expected positive integers, e.g. 4,8,16")
    return values


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="a sample config (diffjax.configs.sample[:args]) or a UNet train "
                             "config (diffjax.configs.train.unet[:args]), a file or a run's "
                             f"config.json (default: {DEFAULT_CONFIG}); set dtype with "
                             "--config.dtype=bfloat16, steps with --config.sampler.steps=N")
    parser.add_argument("--topology", action="append", required=True,
                        help="a TPU slice as libtpu names it: v5e:2x2, v5p:2x2x1, v6e:2x2, "
                             "v4:2x2x1, ... (repeatable)")
    parser.add_argument("--batch-sizes", default="",
                        help="global batch sizes to try, e.g. 4,8,16 (default: 1..32 per "
                             "data shard, doubling, until one does not fit)")
    parser.add_argument("--mesh", action="append", default=None,
                        help="mesh kind data | fsdp | tensor, or sizes 'd,f,t' (repeatable; "
                             "default: data)")
    parser.add_argument("--largest", action="store_true",
                        help="find the largest batch that fits: after the sweep, keep "
                             "doubling until one does not fit, then bisect (a refusal "
                             "costs seconds, each fitting batch a full compile)")
    parser.add_argument("--attention", default="",
                        help="attention kernel for the job (default: the config's)")
    parser.add_argument("--out", default="", help="directory for plan.json and plan.md")


def run(args) -> int:
    from diffjax import tpu
    tpu.quiet_libtpu()            # before anything loads libtpu
    from diffjax import plan
    from diffjax.config import load_config
    from diffjax.outputs import atomic_write
    from diffjax.spec import ConfigError
    for t in args.topology:
        try:
            tpu.chip_of(t)
        except tpu.TopologyError as e:
            raise ConfigError(str(e)) from None
    if not tpu.libtpu_available():
        raise ConfigError("diffjax plan needs libtpu: pip install 'diffjax[tpu]' (jax's TPU "
                          "wheel at the pinned jax version)")
    config = load_config(args.config, args.config_overrides)
    spec = plan.PlanSpec(topologies=tuple(args.topology),
                         batch_sizes=_ints(args.batch_sizes) if args.batch_sizes else (),
                         meshes=tuple(args.mesh or ("data",)), attention=args.attention,
                         largest=args.largest)
    job = plan.job_from_config(config, spec.attention)
    for t in spec.topologies:
        try:
            tpu.topology_devices(t)
        except tpu.TopologyError as e:
            raise ConfigError(str(e)) from None
    def save(result):
        """plan.json and plan.md as they stand (after every candidate, and at the end)."""
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            atomic_write(os.path.join(args.out, "plan.json"), plan.to_json(result))
            atomic_write(os.path.join(args.out, "plan.md"), plan.markdown(result))
    result = plan.run_plan(job, spec, progress=lambda s: print(s, file=sys.stderr, flush=True),
                           on_row=save)
    save(result)
    print(plan.markdown(result))
    return 0

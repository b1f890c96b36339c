"""`diffjax bench --config diffjax.configs.bench.tiny --out DIR`: the benchmark's CLI face.

Resolves the config into a `BenchSpec`, runs `diffjax.bench.run_bench` and writes
results.json / results.md after every measured part (so a run killed by the device still
leaves its finished rows) plus the resolved config.json.
"""

from __future__ import annotations

import json
import os

DEFAULT_CONFIG = "diffjax.configs.bench.tiny"


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="packaged config (diffjax.configs.bench.tiny | "
                             "diffjax.configs.bench.sd15, [:args]), config file "
                             f"(path.py[:args]) or a run's config.json (default: {DEFAULT_CONFIG})")
    parser.add_argument("--out", required=True, help="directory for results.json and results.md")


def run(args) -> int:
    from diffjax.bench import BenchSpec, markdown, run_bench
    from diffjax.config import load_config, save_config
    from diffjax.spec import to_dataclass
    from diffjax.outputs import atomic_write
    config = load_config(args.config, args.config_overrides)
    spec = to_dataclass(config, BenchSpec)
    from diffjax.commands.preflight import check_output_dir
    check_output_dir(args.out)
    os.makedirs(args.out, exist_ok=True)
    save_config(config, args.out)

    def write(result):
        atomic_write(os.path.join(args.out, "results.json"), json.dumps(result, indent=2))
        atomic_write(os.path.join(args.out, "results.md"), markdown(result))

    result = run_bench(spec, on_result=write)
    write(result)
    print(markdown(result))
    return 0

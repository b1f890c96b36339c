"""`diffjax compare`: the sampler comparison grid (diffjax.studies.compare_samplers).

This module is the runner's command-line face: it resolves the config (a packaged study
such as `diffjax.configs.compare.mini_samplers`, a config file `path.py[:args]` or a
study's saved config.json, plus --config.key=value overrides) and hands it to the runner.
"""

from __future__ import annotations

import os
import sys

DEFAULT_CONFIG = "diffjax.configs.compare.gmm_convergence"


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="packaged config (diffjax.configs.compare.NAME[:args]), config "
                             "file (path.py[:args]) or a study's config.json "
                             f"(default: {DEFAULT_CONFIG})")
    parser.add_argument("--out", help="study directory (config.out); rerun to resume")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_config(args):
    from diffjax.config import apply_override, load_config
    config = load_config(args.config, getattr(args, "config_overrides", ()))
    if args.out is not None:
        apply_override(config, f"out={args.out}")
    return config


def run(args) -> int:
    from diffjax.spec import ConfigError
    from diffjax.studies import compare_samplers
    try:
        config = resolve_config(args)
        if not config.out:
            raise ConfigError("--out (config.out) is required")
        from diffjax.commands.preflight import check_output_dir
        check_output_dir(config.out)
        compare_samplers.run_study(config, config.out, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        if getattr(args, "debug", False):
            raise
        from diffjax.cli import one_line
        print(f"diffjax compare: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.join(config.out, 'table.md')}")
    return 0

"""`diffjax compare`: the sampler comparison grid (experiments/compare_samplers.py).

The runner lives with the experiments it produces; this module is its command-line face:
it resolves the config (a configs/experiments/*.py file or a study's saved config.json,
plus --config.key=value overrides) and hands it to the runner.
"""

from __future__ import annotations

import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "experiments", "gmm_convergence.py")
RUNNER = os.path.join(REPO, "experiments", "compare_samplers.py")


def load_runner():
    """The experiments/compare_samplers.py module (experiments/ is not a package)."""
    if not os.path.exists(RUNNER):
        raise FileNotFoundError(f"the comparison runner {RUNNER} is missing (diffjax compare "
                                "runs from a source checkout)")
    name = "diffjax_experiments_compare_samplers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, RUNNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="config file (path.py[:args]) or a study's config.json "
                             "(default: configs/experiments/gmm_convergence.py)")
    parser.add_argument("--out", help="study directory (config.out); rerun to resume")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_config(args):
    from diffjax.config import apply_override, load_config
    config = load_config(args.config, getattr(args, "config_overrides", ()))
    if args.out is not None:
        apply_override(config, f"out={args.out}")
    return config


def run(args) -> int:
    from diffjax.config import ConfigError
    runner = load_runner()
    try:
        config = resolve_config(args)
        if not config.out:
            raise ConfigError("--out (config.out) is required")
        runner.run_study(config, config.out, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"diffjax compare: {e}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.join(config.out, 'table.md')}")
    return 0

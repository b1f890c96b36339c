"""`diffjax train --config diffjax.configs.train.unet:... --workdir DIR`: train from a config.

A thin entry point around the importable `train_and_evaluate(config, workdir)` of the
trainer the config names (`config.trainer`: "unet" | "vae" | "clip"); rerunning with the
same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import importlib

# trainer name -> module with train_and_evaluate(config, workdir). Explicit, no registry.
TRAINERS: dict[str, str] = {
    "unet": "diffjax.train.unet_trainer",
    "vae": "diffjax.train.vae_trainer",
    "clip": "diffjax.train.clip_trainer",
}


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True,
                        help="training config: packaged (diffjax.configs.train.unet | vae | "
                             "clip, diffjax.configs.mini.*, [:args]), a file (path.py[:args]) "
                             "or a run's config.json; e.g. "
                             "diffjax.configs.train.unet:dataset=DIR")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics, config.json")


def get_trainer(config):
    """The train_and_evaluate function for `config.trainer` (default "unet")."""
    name = config.get("trainer", "unet") if hasattr(config, "get") else "unet"
    if name not in TRAINERS:
        raise ValueError(f"config.trainer {name!r} is not a trainer; valid: "
                         f"{', '.join(TRAINERS)}")
    return importlib.import_module(TRAINERS[name]).train_and_evaluate


def run(args) -> int:
    from diffjax.config import load_config
    config = load_config(args.config, args.config_overrides)
    state, history = get_trainer(config)(config, args.workdir)
    if history:
        print(f"trained to step {int(state.step)}; last loss {history[-1].get('loss')}")
    return 0

"""`diffjax train --config configs/train/unet.py:... --workdir DIR`: train from a config.

A thin entry point around the importable `train_and_evaluate(config, workdir)`; rerunning
with the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True,
                        help="training config, e.g. configs/train/unet.py:dataset=DIR")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics, config.json")


def run(args) -> int:
    from diffjax.config import load_config
    from diffjax.train.unet_trainer import train_and_evaluate
    config = load_config(args.config, args.config_overrides)
    state, history = train_and_evaluate(config, args.workdir)
    if history:
        print(f"trained to step {int(state.step)}; last loss {history[-1].get('loss')}")
    return 0

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
    from diffjax.spec import ConfigError
    name = config.get("trainer", "unet") if hasattr(config, "get") else "unet"
    if name not in TRAINERS:
        raise ConfigError(f"config.trainer {name!r} is not a trainer; valid: "
                          f"{', '.join(TRAINERS)}")
    return importlib.import_module(TRAINERS[name]).train_and_evaluate


def check_dataset(config) -> None:
    """The config names a dataset that exists (one line if not), before any model loads:
    a built directory (checked here without tensorflow-datasets), or a tfds name that tfds
    can open."""
    import os

    from diffjax.data.shapes import DatasetError
    data = config.get("data") if hasattr(config, "get") else None
    if data is None or "dataset" not in data:
        return                    # the trainer's own spec check names what is missing
    dataset = data.dataset
    if not isinstance(dataset, str) or not dataset:
        raise DatasetError("config.data.dataset is empty; expected a dataset directory built "
                           "by `diffjax data` (e.g. ...:dataset=data/shapes/r32-.../1.0.0) or "
                           "a prepared tfds name")
    looks_like_path = os.sep in dataset or dataset.startswith((".", "~"))
    if looks_like_path and not os.path.isdir(os.path.expanduser(dataset)):
        what = "is a file" if os.path.exists(dataset) else "does not exist"
        raise DatasetError(f"config.data.dataset {dataset!r} {what}; expected a dataset "
                           "directory built by `diffjax data shapes|image_folder --out DIR`")
    if looks_like_path and not os.path.exists(os.path.join(dataset, "dataset_info.json")):
        raise DatasetError(f"config.data.dataset {dataset!r} is not a built dataset directory "
                           "(no dataset_info.json); expected the versioned folder `diffjax "
                           "data` prints, e.g. .../shapes/r32-.../1.0.0")
    from diffjax.data import builders        # opens it as the trainer will (tfds)
    builders.open_source(os.path.expanduser(dataset), data.get("split", "train"),
                         data.get("data_dir", "") or None)


def run(args) -> int:
    from diffjax.commands.preflight import check_output_dir
    from diffjax.config import load_config
    config = load_config(args.config, args.config_overrides)
    train = get_trainer(config)
    check_output_dir(args.workdir, "--workdir")
    check_dataset(config)
    state, history = train(config, args.workdir)
    if history:
        print(f"trained to step {int(state.step)}; last loss {history[-1].get('loss')}")
    return 0

"""`diffjax info`: versions, backend, devices, and the mesh a config would build.

The first thing to paste into a bug report, and the quickest check that a TPU/GPU host sees
all its chips before a long job starts.
"""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("diffjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml_collections",
            "transformers", "safetensors", "numpy", "grain", "tensorflow-datasets")


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None,
                        help="a config whose mesh (config.mesh.shape) to resolve on these "
                             "devices: diffjax.configs.NAME[:args], path.py[:args] or a "
                             "config.json")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run(args) -> int:
    import jax

    config = None
    if args.config:  # load first: a bad config fails before anything is printed
        from diffjax.config import load_config
        config = load_config(args.config, args.config_overrides)

    print(f"python              {platform.python_version()} ({platform.machine()})")
    for name in PACKAGES:
        print(f"{name:<20}{_version(name)}")
    print(f"torch               {_version('torch')} (test reference only; never imported by diffjax)")
    print(f"backend             {jax.default_backend()}")
    print(f"processes           {jax.process_count()} (this is process {jax.process_index()})")
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    print(f"devices             {len(devices)} global, {jax.local_device_count()} local: "
          f"{', '.join(kinds)}")
    if config is not None:
        from diffjax.sharding import make_mesh
        if "mesh" not in config:
            from diffjax.spec import ConfigError
            raise ConfigError(f"config {args.config} has no mesh section; expected a config "
                              "with mesh.shape (e.g. diffjax.configs.sample)")
        mesh = make_mesh(tuple(config.mesh.shape))
        print(f"mesh                {dict(mesh.shape)}")
    return 0

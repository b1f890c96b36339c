"""`diffjax convert`: diffusers-format folder <-> diffjax orbax checkpoint of a whole model.

A diffusers folder is the exchange format (what the Hub and every other tool read); a diffjax
checkpoint is what a JAX job wants to load: one orbax item per network, restored straight
onto the shardings the job asks for (params are born sharded, never gathered on one host),
plus the model's configs as JSON so the checkpoint alone rebuilds the `Components`.

Checkpoint layout (one orbax `Composite` checkpoint, written to a temporary sibling and
renamed into place, so a crash never leaves a half-written checkpoint under the final name):

    DEST/config/         JSON: format, version, name, the three configs, the noise schedule
    DEST/text_encoder/   orbax StandardSave of the CLIP text params
    DEST/unet/           orbax StandardSave of the UNet params
    DEST/vae/            orbax StandardSave of the VAE params
    DEST/tokenizer/      the tokenizer files (absent: the packaged CLIP vocabulary)

Conversion never changes a number: params are stored in the dtype they were loaded in
(float32 from a diffusers folder), so folder -> checkpoint -> folder is bit-exact.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys

from diffjax.weights.io import WeightsError

FORMAT = "diffjax-components"
VERSION = 1
CONFIG_ITEM = "config"


def _items():
    """Network item name -> (Components config field, params field, config class).

    An explicit table (imported lazily: `diffjax --help` must not import jax) so save and
    restore walk the same networks in the same way.
    """
    from diffjax.models.clip import CLIPTextConfig
    from diffjax.models.unet import UNetConfig
    from diffjax.models.vae import VAEConfig
    return {
        "text_encoder": ("text_config", "text_params", CLIPTextConfig),
        "unet": ("unet_config", "unet_params", UNetConfig),
        "vae": ("vae_config", "vae_params", VAEConfig),
    }


# ------------------------------------------------------------------------------ configs
def _config_to_json(config) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(config).items()}


def _config_from_json(cls, d: dict, what: str):
    """JSON lists back to the tuples the frozen (hashable) config dataclasses need."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise WeightsError(f"{what}: unknown {cls.__name__} fields {unknown}; this checkpoint "
                           "was written by a different diffjax version")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def components_to_json(c) -> dict:
    """Everything about a `Components` except its params and tokenizer files."""
    from diffjax import __version__
    out = dict(format=FORMAT, version=VERSION, diffjax_version=__version__, name=c.name,
               scheduler=dict(c.scheduler), clip_skip=int(c.clip_skip))
    for config_field, _, _ in _items().values():
        out[config_field] = _config_to_json(getattr(c, config_field))
    return out


# ------------------------------------------------------------------------- checkpoints
def is_checkpoint(path: str) -> bool:
    """A directory written by `save_checkpoint` (an orbax checkpoint with a config item)."""
    return (os.path.isdir(os.path.join(path, CONFIG_ITEM))
            and os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")))


def save_checkpoint(c, path: str, force: bool = False) -> None:
    """Write `Components` as a diffjax orbax checkpoint at `path` (see module docstring).

    force: replace an existing `path`; without it an existing path is an error (a convert
    must never silently overwrite someone's model).
    """
    import orbax.checkpoint as ocp
    path = os.path.abspath(path)
    if os.path.exists(path) and not force:
        raise WeightsError(f"destination {path!r} already exists (use --force to replace it)")
    partial = path + ".partial"
    shutil.rmtree(partial, ignore_errors=True)   # a previous crashed attempt
    args = {name: ocp.args.StandardSave(getattr(c, params_field))
            for name, (_, params_field, _) in _items().items()}
    args[CONFIG_ITEM] = ocp.args.JsonSave(components_to_json(c))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
        ckpt.save(partial, ocp.args.Composite(**args))
    if c.tokenizer_dir is not None:
        shutil.copytree(c.tokenizer_dir, os.path.join(partial, "tokenizer"))
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(partial, path)


def read_checkpoint_config(path: str) -> dict:
    """The checkpoint's JSON item, checked for format and version."""
    import orbax.checkpoint as ocp
    if not is_checkpoint(path):
        raise WeightsError(f"{path!r} is not a diffjax checkpoint (no orbax "
                           f"{CONFIG_ITEM}/ item and _CHECKPOINT_METADATA)")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
        meta = ckpt.restore(path, ocp.args.Composite(
            **{CONFIG_ITEM: ocp.args.JsonRestore()}))[CONFIG_ITEM]
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsError(f"{path!r}: config item has format "
                           f"{meta.get('format') if isinstance(meta, dict) else meta!r}, "
                           f"expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise WeightsError(f"{path!r}: checkpoint format version {meta.get('version')!r}; "
                           f"this diffjax reads version {VERSION}")
    return meta


def _leaves_by_key(tree) -> dict[str, object]:
    """'a/b/kernel' -> leaf (anything with a .shape) of a param / abstract / metadata tree."""
    import jax
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(
                tree, is_leaf=lambda x: isinstance(getattr(x, "shape", None), tuple))}


def _check_stored_item(path: str, name: str, abstract, config) -> None:
    """Compare an item's stored array shapes with what its config needs, BEFORE restoring:
    orbax would fail on the first mismatch with a TensorStore dump; this names them all."""
    import orbax.checkpoint as ocp
    from etils import epath

    from diffjax.weights.io import check_state_dict
    item = os.path.join(path, name)
    if not os.path.isdir(item):
        raise WeightsError(f"{path!r}: checkpoint has no {name}/ item")
    stored = _leaves_by_key(ocp.StandardCheckpointHandler().metadata(epath.Path(item)))
    expected = {k: tuple(a.shape) for k, a in _leaves_by_key(abstract).items()}
    check_state_dict(expected, stored,
                     f"{name} params in {path!r} (stored config {config!r})")


def load_checkpoint(path: str, dtype: str | None = None, attention: str | None = None,
                    shardings: dict | None = None):
    """A diffjax checkpoint -> `Components`, each network's params restored in one go.

    dtype / attention: override the compute dtype and attention kernel stored in the configs
    (run-time choices, not properties of the weights); None keeps the stored ones.
    shardings: optional {item name ("text_encoder" | "unet" | "vae"): pytree of
    `jax.sharding.Sharding` matching that network's params}; params are restored directly
    onto them. Items not given land on the first local device.
    The expected shapes come from the stored configs (`jax.eval_shape`), so a checkpoint
    whose arrays do not fit its config fails naming the network and every bad array.
    """
    import flax.linen as nn
    import jax
    import orbax.checkpoint as ocp

    from diffjax.models.abstract import abstract_params
    from diffjax.weights.folder import Components
    meta = read_checkpoint_config(path)
    shardings = dict(shardings or {})
    unknown = sorted(set(shardings) - set(_items()))
    if unknown:
        raise WeightsError(f"shardings for unknown items {unknown}; items: {list(_items())}")
    overrides = {k: v for k, v in (("dtype", dtype), ("attention_impl", attention))
                 if v is not None}
    configs, targets = {}, {}
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    for name, (config_field, _, cls) in _items().items():
        if config_field not in meta:
            raise WeightsError(f"{path!r}: config item has no {config_field!r}")
        config = _config_from_json(cls, meta[config_field], f"{path!r} {config_field}")
        config = dataclasses.replace(config, **{k: v for k, v in overrides.items()
                                                if hasattr(config, k)})
        configs[name] = config
        abstract = nn.meta.unbox(abstract_params(config))
        _check_stored_item(path, name, abstract, config)
        item_shardings = shardings.get(name)
        if item_shardings is None:
            item_shardings = jax.tree.map(lambda _: default, abstract)
        targets[name] = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract, item_shardings)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
        restored = ckpt.restore(path, ocp.args.Composite(
            **{name: ocp.args.StandardRestore(t) for name, t in targets.items()}))
    tokenizer = os.path.join(path, "tokenizer")
    items = _items()
    return Components(
        name=meta.get("name") or os.path.basename(os.path.normpath(path)),
        **{items[n][0]: configs[n] for n in items},
        **{items[n][1]: restored[n] for n in items},
        tokenizer_dir=tokenizer if os.path.isdir(tokenizer) else None,
        scheduler=dict(meta["scheduler"]), clip_skip=int(meta.get("clip_skip", 0)))


# ------------------------------------------------------------------------ any source
def load_components(source: str, dtype: str = "float32", attention: str = "auto",
                    seed: int = 0):
    """A model from a packaged model's name ("mini": trained weights), a preset name (random
    weights, `seed`), a diffusers-format folder or a diffjax checkpoint; errors name what
    `source` was expected to be."""
    from diffjax.weights.folder import (PACKAGED_MODELS, PRESET_MODELS, load_sd_folder,
                                        packaged_model_dir, preset_components)
    if source in PACKAGED_MODELS and not os.path.exists(source):
        comps = load_sd_folder(packaged_model_dir(source), dtype, attention)
        comps.name = source
        return comps
    if source in PRESET_MODELS and not os.path.exists(source):
        return preset_components(source, seed, dtype, attention)
    if is_checkpoint(source):
        return load_checkpoint(source, dtype, attention)
    return load_sd_folder(source, dtype, attention)   # named errors for anything else


def _n_params(params) -> int:
    import jax
    import numpy as np
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def convert(source: str, dest: str, to: str | None = None, force: bool = False,
            seed: int = 0) -> tuple[str, dict[str, int]]:
    """Convert `source` (preset | diffusers folder | diffjax checkpoint) into `dest`.

    to: "diffjax" (orbax checkpoint) or "diffusers" (folder `from_pretrained` loads); None:
    the other format than the source's (a preset becomes a diffjax checkpoint).
    Returns the format written and each network's parameter count.
    """
    if to is None:
        to = "diffusers" if is_checkpoint(source) else "diffjax"
    if to not in ("diffjax", "diffusers"):
        raise WeightsError(f"unknown target format {to!r}; expected 'diffjax' or 'diffusers'")
    if os.path.abspath(source) == os.path.abspath(dest):
        raise WeightsError(f"source and destination are the same path {source!r}")
    if os.path.exists(dest) and not force:
        raise WeightsError(f"destination {dest!r} already exists (use --force to replace it)")
    c = load_components(source, seed=seed)
    if to == "diffjax":
        save_checkpoint(c, dest, force=force)
    else:
        from diffjax.weights.folder import export_sd_folder
        partial = os.path.abspath(dest) + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        export_sd_folder(c, partial)
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.replace(partial, dest)
    items = _items()
    return to, {name: _n_params(getattr(c, items[name][1])) for name in items}


# ----------------------------------------------------------------------------- command
def add_arguments(parser) -> None:
    parser.add_argument("source", help="diffusers-format folder, diffjax checkpoint, or a "
                                       "preset name (random weights)")
    parser.add_argument("dest", help="where to write the converted model (must not exist "
                                     "unless --force)")
    parser.add_argument("--to", choices=("diffjax", "diffusers"), default=None,
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

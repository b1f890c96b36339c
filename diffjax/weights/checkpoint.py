"""diffjax orbax checkpoints of a whole model (`Components`): save, read, restore.

A diffjax checkpoint is what a JAX job wants to load: one orbax item per network, restored
straight onto the shardings the job asks for (params are born sharded, never gathered on
one host), plus the model's configs as JSON so the checkpoint alone rebuilds the
`Components`. (Training runs' checkpoints are another thing: `diffjax.train.checkpoint`.)

Layout (one orbax `Composite` checkpoint, written to a temporary sibling and renamed into
place, so a crash never leaves a half-written checkpoint under the final name):

    DEST/config/         JSON: format, version, name, the three configs, the noise schedule
    DEST/text_encoder/   orbax StandardSave of the CLIP text params (absent: SDXL refiner)
    DEST/text_encoder_2/ SDXL's second (bigG) text tower, when the model has one
    DEST/unet/           orbax StandardSave of the UNet params
    DEST/vae/            orbax StandardSave of the VAE params
    DEST/tokenizer/      the tokenizer files (absent: the packaged CLIP vocabulary)
    DEST/tokenizer_2/    SDXL's second tokenizer (absent: the packaged one, padding with "!")

Params are stored in the dtype they were loaded in (float32 from a diffusers folder), so a
round trip through a checkpoint never changes a number.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from diffjax.weights.components import Components
from diffjax.weights.io import WeightsError

FORMAT = "diffjax-components"
VERSION = 1
CONFIG_ITEM = "config"


def networks():
    """Network item name -> (Components config field, params field, config class).

    An explicit table (imported lazily: `diffjax --help` must not import jax) so save and
    restore walk the same networks in the same way. A model has the items whose config is
    not None (`present`): SD1/SD2 lack text_encoder_2, the SDXL refiner text_encoder.
    """
    from diffjax.models.clip import CLIPTextConfig
    from diffjax.models.unet import UNetConfig
    from diffjax.models.vae import VAEConfig
    return {
        "text_encoder": ("text_config", "text_params", CLIPTextConfig),
        "unet": ("unet_config", "unet_params", UNetConfig),
        "vae": ("vae_config", "vae_params", VAEConfig),
        "text_encoder_2": ("text_config_2", "text_params_2", CLIPTextConfig),
    }


def present(c: Components) -> dict:
    """The rows of `networks()` that `c` has."""
    return {name: row for name, row in networks().items()
            if getattr(c, row[0]) is not None}


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


def components_to_json(c: Components) -> dict:
    """Everything about a `Components` except its params and tokenizer files."""
    from diffjax import __version__
    out = dict(format=FORMAT, version=VERSION, diffjax_version=__version__, name=c.name,
               scheduler=dict(c.scheduler), clip_skip=int(c.clip_skip),
               force_zeros_for_empty_prompt=bool(c.force_zeros_for_empty_prompt),
               requires_aesthetics_score=bool(c.requires_aesthetics_score))
    for config_field, _, _ in networks().values():
        config = getattr(c, config_field)
        out[config_field] = None if config is None else _config_to_json(config)
    return out


# ------------------------------------------------------------------------- checkpoints
def is_checkpoint(path: str) -> bool:
    """A directory written by `save_checkpoint` (an orbax checkpoint with a config item)."""
    return (os.path.isdir(os.path.join(path, CONFIG_ITEM))
            and os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")))


def save_checkpoint(c: Components, path: str, force: bool = False) -> None:
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
            for name, (_, params_field, _) in present(c).items()}
    args[CONFIG_ITEM] = ocp.args.JsonSave(components_to_json(c))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
        ckpt.save(partial, ocp.args.Composite(**args))
    for sub, folder in (("tokenizer", c.tokenizer_dir), ("tokenizer_2", c.tokenizer_2_dir)):
        if folder is not None:
            shutil.copytree(folder, os.path.join(partial, sub))
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
                    shardings: dict | None = None) -> Components:
    """A diffjax checkpoint -> `Components`, each network's params restored in one go.

    dtype / attention: override the compute dtype and attention kernel stored in the configs
    (run-time choices, not properties of the weights); None keeps the stored ones.
    shardings: optional {item name ("text_encoder" | "unet" | "vae"): pytree of
    `jax.sharding.Sharding` matching that network's params}; params are restored directly
    onto them. Items not given land on the first local device.
    The expected shapes come from the stored configs (`abstract_params`), so a checkpoint
    whose arrays do not fit its config fails naming the network and every bad array.
    """
    import flax.linen as nn
    import jax
    import orbax.checkpoint as ocp

    from diffjax.models.abstract import abstract_params
    meta = read_checkpoint_config(path)
    table = networks()
    shardings = dict(shardings or {})
    unknown = sorted(set(shardings) - set(table))
    if unknown:
        raise WeightsError(f"shardings for unknown items {unknown}; items: {list(table)}")
    overrides = {k: v for k, v in (("dtype", dtype), ("attention_impl", attention))
                 if v is not None}
    configs, targets = {}, {}
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    for name, (config_field, _, cls) in table.items():
        if config_field not in meta and name != "text_encoder_2":  # older: no second tower
            raise WeightsError(f"{path!r}: config item has no {config_field!r}")
        if meta.get(config_field) is None:
            configs[name] = None
            continue
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
    folder = lambda sub: (os.path.join(path, sub)  # noqa: E731
                          if os.path.isdir(os.path.join(path, sub)) else None)
    return Components(
        name=meta.get("name") or os.path.basename(os.path.normpath(path)),
        **{table[n][0]: configs[n] for n in table},
        **{table[n][1]: restored[n] if n in targets else None for n in table},
        tokenizer_dir=folder("tokenizer"), tokenizer_2_dir=folder("tokenizer_2"),
        scheduler=dict(meta["scheduler"]), clip_skip=int(meta.get("clip_skip", 0)),
        force_zeros_for_empty_prompt=bool(meta.get("force_zeros_for_empty_prompt", False)),
        requires_aesthetics_score=bool(meta.get("requires_aesthetics_score", False)))

"""The trainers' configs as frozen dataclasses: each trainer's one config path.

A training config (diffjax/configs/train/*.py, diffjax/configs/mini/*.py, or a run's saved
config.json) becomes a `UNetRun`, `VAERun` or `CLIPRun` with `run_spec(config, cls)` at the
top of the trainer's `train_and_evaluate`; nothing after that reads the ConfigDict. Every
default lives here, once: the config files build their sections from these classes with
`diffjax.spec.config_dict(cls, **choices)` and state only their choices, and a run's
config.json written before a field existed reads with the field's default.
"""

from __future__ import annotations

import dataclasses
import typing

from diffjax.spec import ConfigError, check_range, to_dataclass
from diffjax.train.state import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The examples a trainer reads (`data`)."""

    dataset: str                     # a built dataset directory or a tfds name
    batch_size: int                  # global: split over the mesh's data axes and processes
    split: str = "train"
    data_dir: str = ""               # tfds data_dir ("" = tfds' default)
    resolution: int = 32
    crop: typing.Literal["center", "random"] = "center"
    flip: bool = False               # off for `shapes`: "left"/"right" are in the captions
    caption_dropout: float = 0.0     # probability of an empty caption (UNet: for CFG)
    image_key: str = "image"
    caption_key: str = "caption"
    # CLIP trainer: the id rows it trains on (None: the text tower's positions, 77); see
    # clip_trainer.training_text_length for why shorter rows train the same tower.
    text_length: int | None = None

    def __post_init__(self):
        check_range("data.batch_size", self.batch_size, lo=1)
        check_range("data.resolution", self.resolution, lo=1)
        check_range("data.caption_dropout", self.caption_dropout, lo=0.0, hi=1.0)


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """Mesh axes ('data', 'fsdp', 'tensor'); one size may be -1 (the rest of the devices)."""

    shape: tuple[int, ...] = (-1, 1, 1)


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    """What every trainer's `train` section shares: length, checkpoints, EMA."""

    num_steps: int
    save_every: int = 500
    keep_checkpoints: int = 3
    ema_decay: float = 0.999

    def __post_init__(self):
        check_range("train.num_steps", self.num_steps, lo=0)
        check_range("train.save_every", self.save_every, lo=0)
        check_range("train.keep_checkpoints", self.keep_checkpoints, lo=1)
        check_range("train.ema_decay", self.ema_decay, lo=0.0, hi=1.0)


# In-distribution `shapes` captions: colours, shapes and backgrounds that differ per row
# (the UNet trainer's sample grid, `train.sample_prompts`, by default).
SHAPES_PROMPTS: tuple[str, ...] = (
    "a large red circle on a white background",
    "a large blue square on a white background",
    "a large green triangle on a black background",
    "a large yellow star on a gray background",
    "a large purple diamond on a white background",
    "a large orange cross on a black background",
    "a large blue circle on a black background",
    "a large red square on a gray background",
)


@dataclasses.dataclass(frozen=True)
class UNetTrainSpec(CheckpointSpec):
    """The UNet trainer's `train` section."""

    snr_gamma: float = 5.0           # min-SNR-gamma loss weighting; 0: uniform
    compute_dtype: typing.Literal["float32", "bfloat16"] = "float32"  # master weights f32
    clip_skip: int = -1              # text layer the UNet reads; -1: the model folder's own
    cache_latents: bool = False      # encode the set once (center crop, no flip only)
    sample_every: int = 0            # > 0: a sample grid PNG in workdir/samples every N steps
    sample_prompts: tuple[str, ...] = SHAPES_PROMPTS
    sample_seeds: tuple[int, ...] = (0, 1)
    sample_steps: int = 20
    sample_guidance: float = 3.0
    sample_params: typing.Literal["params", "ema_params"] = "params"
    progress: bool = True            # the tqdm bar

    def __post_init__(self):
        super().__post_init__()
        check_range("train.snr_gamma", self.snr_gamma, lo=0.0)
        check_range("train.clip_skip", self.clip_skip, lo=-1)
        check_range("train.sample_every", self.sample_every, lo=0)
        check_range("train.sample_steps", self.sample_steps, lo=1)
        if self.sample_every and not self.sample_prompts:
            raise ConfigError("train.sample_prompts is empty; the sample grid needs a prompt")


@dataclasses.dataclass(frozen=True)
class VAETrainSpec(CheckpointSpec):
    """The VAE trainer's `train` section."""

    kl_weight: float = 1e-6          # LDM's KL-f8 weight: the latent stays nearly deterministic
    recon_loss: typing.Literal["l1", "l2"] = "l1"
    decode_from: typing.Literal["sample", "mean"] = "sample"  # see vae_trainer.make_vae_step
    edge_weight: float = 0.0         # > 0: pixel errors weighted by 1 + w * edge_map
    train_only: typing.Literal["", "decoder"] = ""  # "decoder": encoder frozen

    def __post_init__(self):
        super().__post_init__()
        check_range("train.kl_weight", self.kl_weight, lo=0.0)
        check_range("train.edge_weight", self.edge_weight, lo=0.0)


@dataclasses.dataclass(frozen=True)
class UNetModelSpec:
    name: str                        # preset or diffusers-format folder (frozen CLIP + VAE)
    init_from: str = ""              # a finished UNet run whose EMA weights start this one


@dataclasses.dataclass(frozen=True)
class VAEModelSpec:
    name: str                        # a VAE preset
    init_from: str = ""              # a finished VAE run whose EMA weights start this one


@dataclasses.dataclass(frozen=True)
class CLIPModelSpec:
    text: str                        # CLIP text preset (gets the vision projection_dim)
    vision: str                      # CLIP vision preset


@dataclasses.dataclass(frozen=True)
class UNetRun:
    trainer: typing.Literal["unet"]
    model: UNetModelSpec
    data: DataSpec
    optimizer: OptimizerConfig
    train: UNetTrainSpec
    seed: int = 0
    mesh: MeshSpec = MeshSpec()


@dataclasses.dataclass(frozen=True)
class VAERun:
    trainer: typing.Literal["vae"]
    model: VAEModelSpec
    data: DataSpec
    optimizer: OptimizerConfig
    train: VAETrainSpec
    seed: int = 0
    mesh: MeshSpec = MeshSpec()


@dataclasses.dataclass(frozen=True)
class CLIPRun:
    trainer: typing.Literal["clip"]
    model: CLIPModelSpec
    data: DataSpec
    optimizer: OptimizerConfig
    train: CheckpointSpec
    seed: int = 0
    mesh: MeshSpec = MeshSpec()


def run_spec(config, cls):
    """The checked frozen spec of a training ConfigDict (a spec of `cls` passes through)."""
    return config if isinstance(config, cls) else to_dataclass(config, cls)


def spec_dict(spec) -> dict:
    """The resolved run as plain data: what config.json and the checkpoints record."""
    return dataclasses.asdict(spec)

"""CLIP towers as a metric: image/text embeddings, CLIP score, Fréchet features.

Why one class: CLIP score (Hessel et al. 2021: 100 * max(cos(image, text), 0)) and the
Fréchet distance of `diffjax compare` both read images through the same vision tower;
the mini model's CLIP (`diffjax/assets/mini`, trained on `shapes`) is the default, and
any CLIP folder with `text_encoder/` + `image_encoder/` (transformers format) works too.

Preprocessing follows the folder's `feature_extractor/preprocessor_config.json`
(image_mean/image_std on [0, 1] pixels, as transformers' CLIPImageProcessor) and resizes
to the tower's image_size (bicubic); without that file, OpenAI CLIP's mean/std.

A transformers CLIP folder (`CLIPModel.from_pretrained`'s: config.json with text_config and
vision_config, one model.safetensors, tokenizer files, preprocessor_config.json) loads with
`from_transformers_folder`; its images then go through transformers' CLIPImageProcessor
steps (`diffjax.metrics.clip_processor`: shortest-edge resize, centre crop, fused
rescale-normalise), which is what torchmetrics' CLIPScore feeds the model.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

# OpenAI CLIP's normalisation (transformers' CLIPImageProcessor defaults).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def read_normalization(folder: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from folder/feature_extractor/preprocessor_config.json, else OpenAI's."""
    path = os.path.join(folder, "feature_extractor", "preprocessor_config.json")
    if not os.path.exists(path):
        return OPENAI_MEAN, OPENAI_STD
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    return tuple(d.get("image_mean", OPENAI_MEAN)), tuple(d.get("image_std", OPENAI_STD))


def write_normalization(folder: str, mean, std, size: int) -> None:
    """Write the preprocessor_config.json that `read_normalization` (and transformers) read."""
    d = os.path.join(folder, "feature_extractor")
    os.makedirs(d, exist_ok=True)
    cfg = {"image_processor_type": "CLIPImageProcessor", "image_mean": list(mean),
           "image_std": list(std), "do_normalize": True, "do_resize": True,
           "size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size},
           "do_center_crop": True, "resample": 3, "do_rescale": True,
           "rescale_factor": 1 / 255}
    with open(os.path.join(d, "preprocessor_config.json.tmp"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    os.replace(os.path.join(d, "preprocessor_config.json.tmp"),
               os.path.join(d, "preprocessor_config.json"))


@dataclasses.dataclass
class CLIPFeatures:
    """Both towers of a CLIP, jitted once per batch shape; numpy in, numpy out."""

    text_config: object
    text_params: dict
    vision_config: object
    vision_params: dict
    tokenizer_dir: str | None
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    processor: object = None   # a clip_processor.CLIPProcessorConfig: transformers' steps

    def __post_init__(self):
        import jax

        from diffjax.models.clip import CLIPTextModel, CLIPVisionModel
        from diffjax.text import load_tokenizer
        if self.vision_config.projection_dim is None or self.text_config.projection_dim is None:
            raise ValueError("CLIP score needs both projections (text_projection and "
                             "visual_projection); this CLIP lacks one")
        if self.vision_config.projection_dim != self.text_config.projection_dim:
            raise ValueError(f"text projection_dim {self.text_config.projection_dim} != image "
                             f"projection_dim {self.vision_config.projection_dim}")
        text, vision = CLIPTextModel(self.text_config), CLIPVisionModel(self.vision_config)
        self._tokenizer = load_tokenizer(self.tokenizer_dir,
                                         self.text_config.max_position_embeddings)
        self._text = jax.jit(lambda p, ids: text.apply({"params": p}, ids).text_embeds)
        self._image = jax.jit(lambda p, x: (lambda o: (o.pooled_output, o.image_embeds))(
            vision.apply({"params": p}, x)))

    @classmethod
    def from_folder(cls, folder: str) -> "CLIPFeatures":
        """A folder with text_encoder/ (with projection), image_encoder/, tokenizer/."""
        from diffjax.weights.clip import load_text_encoder, load_vision_encoder
        from diffjax.weights.components import upcast_half
        for sub in ("text_encoder", "image_encoder"):
            if not os.path.isdir(os.path.join(folder, sub)):
                raise FileNotFoundError(f"CLIP folder {folder!r} has no {sub}/ (need "
                                        "text_encoder/ and image_encoder/)")
        tc, tp = load_text_encoder(os.path.join(folder, "text_encoder"))
        vc, vp = load_vision_encoder(os.path.join(folder, "image_encoder"))
        tok = os.path.join(folder, "tokenizer")
        mean, std = read_normalization(folder)
        return cls(tc, upcast_half(tp), vc, upcast_half(vp),
                   tok if os.path.isdir(tok) else None, mean, std)

    @classmethod
    def from_transformers_folder(cls, folder: str) -> "CLIPFeatures":
        """A transformers `CLIPModel` folder: config.json (text_config + vision_config),
        model.safetensors (both towers and projections), tokenizer files (vocab.json +
        merges.txt, here or in tokenizer/) and preprocessor_config.json."""
        from diffjax.metrics.clip_processor import CLIPProcessorConfig
        from diffjax.weights.clip import (clip_text_config_from_hf, clip_vision_config_from_hf,
                                          text_params_from_state_dict,
                                          vision_params_from_state_dict)
        from diffjax.weights.components import upcast_half
        from diffjax.weights.io import (WeightsError, find_weights_file, load_state_dict,
                                        read_config_json)
        d = read_config_json(folder, "CLIP model")
        if "text_config" not in d or "vision_config" not in d:
            raise WeightsError(f"{folder}/config.json is not a CLIPModel config (needs "
                               "text_config and vision_config)")
        sd = load_state_dict(find_weights_file(folder, stem="model"))
        for key in ("text_projection.weight", "visual_projection.weight"):
            if key not in sd:
                raise WeightsError(f"{folder}: no {key} (CLIP score needs both projections)")
        tc = dataclasses.replace(clip_text_config_from_hf(d["text_config"], True),
                                 projection_dim=sd["text_projection.weight"].shape[0])
        vc = dataclasses.replace(clip_vision_config_from_hf(d["vision_config"]),
                                 projection_dim=sd["visual_projection.weight"].shape[0])
        pick = lambda tower, proj: {k: v for k, v in sd.items()  # noqa: E731
                                    if k.startswith(tower) or k == proj}
        tp = text_params_from_state_dict(pick("text_model.", "text_projection.weight"), tc,
                                         f"CLIP text tower in {folder}")
        vp = vision_params_from_state_dict(pick("vision_model.", "visual_projection.weight"),
                                           vc, f"CLIP vision tower in {folder}")
        tok = next((p for p in (os.path.join(folder, "tokenizer"), folder)
                    if os.path.exists(os.path.join(p, "vocab.json"))), None)
        if tok is None:
            raise WeightsError(f"{folder}: no tokenizer (vocab.json + merges.txt)")
        proc = CLIPProcessorConfig.from_folder(folder) or CLIPProcessorConfig(
            vc.image_size, vc.image_size, vc.image_size)
        return cls(tc, upcast_half(tp), vc, upcast_half(vp), tok, proc.mean, proc.std, proc)

    @classmethod
    def from_open_clip(cls, checkpoint: str, model_cfg: dict, tokenizer_dir: str | None = None,
                       allow_pickle: bool = False) -> "CLIPFeatures":
        """An open_clip checkpoint and its model config (`diffjax.weights.open_clip`), images
        preprocessed as open_clip's (PIL bicubic shortest-edge resize in one call, centre
        crop, OpenAI mean/std), text with the CLIP vocabulary (packaged unless given)."""
        from diffjax.metrics.clip_processor import CLIPProcessorConfig
        from diffjax.weights.open_clip import load_open_clip
        tc, tp, vc, vp = load_open_clip(checkpoint, model_cfg, allow_pickle)
        s = vc.image_size
        proc = CLIPProcessorConfig(shortest_edge=s, crop_height=s, crop_width=s,
                                   resize_passes=1, crop_offset="round")
        return cls(tc, tp, vc, vp, tokenizer_dir, proc.mean, proc.std, proc)

    @classmethod
    def from_model(cls, name_or_folder: str = "mini") -> "CLIPFeatures":
        """The CLIP of a packaged model ("mini") or of a folder."""
        from diffjax.weights.components import PACKAGED_MODELS, packaged_model_dir
        if name_or_folder in PACKAGED_MODELS and not os.path.exists(name_or_folder):
            return cls.from_folder(packaged_model_dir(name_or_folder))
        return cls.from_folder(name_or_folder)

    def preprocess(self, images) -> np.ndarray:
        """uint8 [N, H, W, 3] (or float in [0, 1]) -> normalised [N, S, S, 3] float32."""
        from PIL import Image
        if self.processor is not None:
            from diffjax.metrics.clip_processor import preprocess
            return preprocess(images, self.processor)
        x = np.asarray(images)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected images [N, H, W, 3], got shape {x.shape}")
        if x.dtype != np.uint8:
            x = np.clip(np.rint(x.astype(np.float32) * 255), 0, 255).astype(np.uint8)
        s = self.vision_config.image_size
        if x.shape[1:3] != (s, s):
            x = np.stack([np.asarray(Image.fromarray(im).resize((s, s), Image.BICUBIC))
                          for im in x])
        x = x.astype(np.float32) / 255.0
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    @staticmethod
    def _batched(fn, params, x, batch: int):
        """fn over x in chunks of `batch` (the tail padded: one compiled shape); fn may
        return a tuple of arrays."""
        import jax
        outs = []
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            pad = batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
            outs.append(jax.tree.map(lambda a: np.asarray(a)[:batch - pad], fn(params, chunk)))
        return jax.tree.map(lambda *a: np.concatenate(a), *outs)

    def image_outputs(self, images, batch: int = 256):
        """(pooled post-LN features [N, D], projected embeddings [N, P]) of images."""
        return self._batched(self._image, self.vision_params, self.preprocess(images), batch)

    def image_embeds(self, images, batch: int = 256) -> np.ndarray:
        """Unit-norm projected image embeddings [N, P]."""
        e = self.image_outputs(images, batch)[1]
        return e / np.linalg.norm(e, axis=-1, keepdims=True)

    def text_embeds(self, captions, batch: int = 256) -> np.ndarray:
        """Unit-norm projected text embeddings [N, P]."""
        ids = np.asarray(self._tokenizer(list(captions)))
        e = self._batched(self._text, self.text_params, ids, batch)
        return e / np.linalg.norm(e, axis=-1, keepdims=True)

    @staticmethod
    def score_of_embeds(image_embeds, text_embeds) -> np.ndarray:
        """CLIP score 100 * max(cos, 0) of unit-norm embeddings [..., P] (broadcast): lets a
        caller that scores one image against several captions embed the image once."""
        return 100.0 * np.maximum(np.sum(image_embeds * text_embeds, -1), 0.0)

    def cosine_scores(self, images, captions, batch: int = 256) -> np.ndarray:
        """100 * cos(image, caption) per pair, not clamped [N]: torchmetrics' per-pair score,
        which `aggregate_clip_score` averages before clamping."""
        images, captions = list(images), list(captions)
        if len(images) != len(captions) or not images:
            raise ValueError(f"clip score needs as many images as captions (> 0), got "
                             f"{len(images)} and {len(captions)}")
        e_img = self._batched(self._image, self.vision_params, self.preprocess(images), batch)[1]
        e_img = e_img / np.linalg.norm(e_img, axis=-1, keepdims=True)
        return 100.0 * np.sum(e_img * self.text_embeds(captions, batch), -1)

    def clip_score(self, images, captions) -> np.ndarray:
        """Per-pair CLIP score, 100 * max(cos(image, caption), 0) [N] (Hessel et al.)."""
        images, captions = list(images), list(captions)
        if len(images) != len(captions) or not images:
            raise ValueError(f"clip_score needs as many images as captions (> 0), got "
                             f"{len(images)} and {len(captions)}")
        return self.score_of_embeds(self.image_embeds(np.stack(images)),
                                    self.text_embeds(captions))

    def frechet_features(self, images, batch: int = 256) -> np.ndarray:
        """The pooled (pre-projection) image features FID-style metrics compare [N, D]."""
        return self.image_outputs(images, batch)[0]


def aggregate_clip_score(cosine_scores) -> float:
    """torchmetrics' CLIPScore: max(mean over pairs of 100 cos, 0) (Hessel et al. clamp the
    pairs; torchmetrics clamps the mean, and published SD/MLPerf numbers use torchmetrics
    or the plain mean: the two agree whenever no pair has a negative cosine)."""
    s = np.asarray(cosine_scores, np.float64)
    if s.ndim != 1 or not len(s):
        raise ValueError(f"aggregate_clip_score needs [N > 0] scores, got shape {s.shape}")
    return float(max(s.mean(), 0.0))

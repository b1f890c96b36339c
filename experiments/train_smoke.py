"""A short CPU run on `shapes` with the tiny preset: VAE first, then the UNet on its latents.

    python experiments/train_smoke.py OUT_DIR [vae_steps] [unet_steps] [train_examples]

Why the VAE first: the UNet trainer freezes the VAE, and a random-init VAE decodes any
latent to noise, so a grid from it could not show whether colours follow the captions.
The text encoder stays the tiny preset's random init (its features still separate the
captions). Writes OUT_DIR/summary.json (losses at the start and end) and the grids.
"""

import dataclasses
import importlib
import json
import os
import shutil
import sys
import time

import numpy as np


def load(name, arg):
    """The packaged training config `diffjax.configs.train.NAME` with `arg`, unlocked."""
    return importlib.import_module(f"diffjax.configs.train.{name}").get_config(arg)


def mean_loss(hist, sl):
    return float(np.mean([h["loss"] for h in hist[sl]]))


def main(out, vae_steps=600, unet_steps=1500, n_train=4000):
    import jax

    from diffjax.data import builders
    from diffjax.train import unet_trainer, vae_trainer
    from diffjax.weights.components import preset_components
    from diffjax.weights.diffusers_folder import export_sd_folder
    work = os.path.join(out, "work")
    data = builders.build_shapes(os.path.join(work, "data"), 32, {"train": n_train})
    summary = {"train_examples": n_train}

    t0 = time.time()
    c = load("vae", f"steps={vae_steps},batch=16")
    c.data.dataset = data
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, vae_steps // 5)
    vs, vh = vae_trainer.train_and_evaluate(c, os.path.join(work, "vae"), progress=False)
    summary["vae"] = dict(steps=vae_steps, batch=16, seconds=round(time.time() - t0, 1),
                          loss_first20=mean_loss(vh, slice(0, 20)),
                          loss_last20=mean_loss(vh, slice(-20, None)),
                          recon_last20=float(np.mean([h["recon"] for h in vh[-20:]])))
    print(summary, flush=True)

    # The tiny SD with the trained VAE (params, not EMA: a short run) as a diffusers folder.
    comps = dataclasses.replace(preset_components("tiny", 0),
                                vae_params=jax.tree.map(np.asarray, vs.params))
    folder = os.path.join(work, "tiny_trained_vae")
    shutil.rmtree(folder, ignore_errors=True)
    export_sd_folder(comps, folder)

    t0 = time.time()
    c = load("unet", f"model={folder},steps={unet_steps},batch=16")
    c.data.dataset = data
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, unet_steps // 5)
    c.train.sample_every = unet_steps
    c.train.progress = False
    c.train.save_every = unet_steps
    _, uh = unet_trainer.train_and_evaluate(c, os.path.join(work, "unet"))
    summary["unet"] = dict(steps=unet_steps, batch=16, seconds=round(time.time() - t0, 1),
                           loss_first50=mean_loss(uh, slice(0, 50)),
                           loss_last50=mean_loss(uh, slice(-50, None)))
    grid = os.path.join(work, "unet", "samples", f"step_{unet_steps:07d}.png")
    shutil.copy(grid, os.path.join(out, "unet_grid.png"))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(summary, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))

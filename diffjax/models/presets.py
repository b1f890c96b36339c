"""Every model size in one place: frozen config dataclasses, looked up by name.

The config dataclasses are defined beside their modules (`clip.CLIPTextConfig`,
`unet.UNetConfig`, `vae.VAEConfig`); this file only holds the named instances, so a
reader finds every size of every network here.
"""

from __future__ import annotations

"""PyTorch checkpoints <-> diffjax params.

`io` reads and writes state dicts (safetensors without torch; `.bin` only where torch is
installed) and checks keys/shapes; one module per network maps its keys (`clip`, `unet`,
`vae`); `folder` loads and exports whole diffusers-format folders.
"""

"""Every checkpoint format -> params, and back.

`load.load(source)` is the one loader: packaged models, presets, diffjax checkpoints and
diffusers folders, each as a `components.Components`. Below it: `io` reads, writes and
checks PyTorch-style state dicts (safetensors without torch; `.bin` only where torch is
installed); `mapping` maps state-dict keys to param paths, one module per network (`clip`,
`unet`, `vae`) holds its rows and config translation; `diffusers_folder` reads and exports
whole diffusers-format folders; `checkpoint` saves and restores diffjax orbax checkpoints;
`convert` turns one format into the other.
"""

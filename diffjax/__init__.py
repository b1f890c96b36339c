"""diffjax: text-to-image latent diffusion research in JAX/Flax.

CLIP text encoder, conditional UNet and KL autoencoder as pure-functional Flax modules,
every sampler one jitted scan vmapped over per-image seeds, sharded with jax.sharding.
Importing diffjax never imports torch.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import diffjax` stays light (no jax/flax import until needed).
    if name == "load_pipeline":
        from diffjax.pipeline_loading import load_pipeline
        return load_pipeline
    raise AttributeError(f"module 'diffjax' has no attribute {name!r}")

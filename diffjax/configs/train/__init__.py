"""`diffjax train` configs for the UNet, VAE and CLIP trainers on `shapes`."""

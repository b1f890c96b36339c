"""`diffjax compare` studies: the exact GMM benchmark (the default) and diffjax-mini samplers."""

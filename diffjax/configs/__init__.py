"""The default configs that ship with the package, one module per config.

Each module has `get_config(arg=None)`; commands load them by module name,
`--config diffjax.configs.sample:steps=30` (`diffjax.config.load_config`), so that an
installed wheel runs every command without the source checkout. The top-level `configs/`
of the repository holds experiment and user configs (and re-exports these by path).
"""

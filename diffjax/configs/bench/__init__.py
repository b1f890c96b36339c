"""`diffjax bench` presets: the tiny smoke benchmark (the default) and SD1.5 size."""

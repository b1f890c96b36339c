"""Study runners behind `diffjax compare`: importable modules, so an installed wheel runs them."""

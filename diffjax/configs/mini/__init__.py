"""The three stages of the diffjax-mini recipe (tools/mini_recipe.py runs them in order)."""

"""Metrics: oracles, feature distances, CLIP score."""

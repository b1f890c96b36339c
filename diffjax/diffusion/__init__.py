"""Noise schedules, denoiser wrappers and the sampler library (one signature for all)."""

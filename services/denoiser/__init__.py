"""Denoiser service: the step loop of every active request, batched per step."""

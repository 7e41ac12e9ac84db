"""VAE service: images -> latent distribution, latents -> images."""

"""AR embed service: prompts -> image-token embeddings (autoregressive model), and the
embedding adapters that map them onto a diffusion decoder's text width."""

"""Text encoder service: prompts -> CLIP embeddings."""

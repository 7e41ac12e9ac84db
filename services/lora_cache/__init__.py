"""LoRA cache service: LoRA files -> host memory, shared with the node's denoisers."""

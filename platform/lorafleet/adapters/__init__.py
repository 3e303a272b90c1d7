"""LoRA adapters: validation, archives, content-addressed blobs, and their records."""

"""OpenAI's embeddings route (``/v1/embeddings``), served by workers running in pooling mode."""

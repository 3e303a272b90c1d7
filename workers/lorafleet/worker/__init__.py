"""The worker: supervises vLLM's OpenAI server for one base model and announces it to the gateways."""

"""The OpenAI-compatible routes (controller), their request shapes (schemas) and the worker relay."""

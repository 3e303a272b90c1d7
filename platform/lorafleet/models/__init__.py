"""Base model preparation."""

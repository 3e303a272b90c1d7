"""Helpers for tests and benchmarks: start real LoraFleet processes and wait for them."""

"""The `lorafleet` command line."""

"""Cross-cutting pieces: settings, errors, ids, logging."""

"""The audit log: one append-only row per change (recorder.py), read in OpenAI's shape (controller.py).

Nothing is imported here: the recorder is imported by the controllers it audits (the admin one among
them), and the read API's controller imports the admin guard."""

"""The ``x-ratelimit-*`` headers OpenAI's clients read, from the rate-limit state admission returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def rate_limit_headers(row: Mapping[str, Any]) -> dict[str, str]:
    """Headers for the limits this key has, from what ``lorafleet_admit`` returned."""
    headers: dict[str, str] = {}
    for dimension in ("requests", "tokens"):
        limit = row[f"{dimension}_limit"]
        if limit is None or row[f"{dimension}_remaining"] is None:
            continue
        headers[f"x-ratelimit-limit-{dimension}"] = str(limit)
        headers[f"x-ratelimit-remaining-{dimension}"] = str(min(limit, row[f"{dimension}_remaining"]))
        headers[f"x-ratelimit-reset-{dimension}"] = duration_text(row[f"{dimension}_reset_ms"])
    return headers


def duration_text(milliseconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    milliseconds = max(0, int(milliseconds))
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    minutes, rest = divmod(milliseconds, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{seconds}" if minutes else seconds

"""structlog to stdout: JSON lines in production, pretty on a terminal; context via contextvars.

No line carries a secret a URL holds (a one-time sign-in link's token, a ``token=`` query parameter):
:func:`redact_url` runs on every string field and every stdlib record.

Every line is bounded: any string field longer than :data:`MAX_FIELD_CHARS` (a traceback:
:data:`MAX_TRACEBACK_CHARS`) is clipped, and stdlib log records (uvicorn, asyncpg …) are clipped the
same way. A 1 MB upload whose archive declares a 512 MiB file name must not write a 512 MB log line.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import msgspec
import structlog

MAX_FIELD_CHARS = 2_000
MAX_TRACEBACK_CHARS = 16_000
# Anything msgspec cannot encode natively (an exception, a Path …) is logged as its str().
_encode = msgspec.json.Encoder(enc_hook=str).encode


# Secrets that travel in URLs: a query parameter whose name says it carries one (token=, secret=,
# api_key=, signature= …) and the one-time dashboard sign-in link's path segment. Any logged string
# that holds a URL has them replaced, so a one-time token never reaches a log line.
REDACTED = "[redacted]"
_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:[\w.\-\[\]]*?(?:token|secret|password|passwd|api[_\-]?key|apikey|signature|sig|auth|session|"
    r"code|credential)[\w.\-\[\]]*)=)[^&;#\s\"'<>]+")
_SECRET_PATH = re.compile(r"(/dashboard/login/)[^/?#\s\"'<>]+")


def redact_url(text: str) -> str:
    """``text`` with the secrets a URL may carry replaced by ``[redacted]``."""
    if "=" in text:
        text = _SECRET_QUERY.sub(rf"\1{REDACTED}", text)
    if "/login/" in text:
        text = _SECRET_PATH.sub(rf"\1{REDACTED}", text)
    return text


def redact_fields(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: no string field carries a URL's secret (see :func:`redact_url`)."""
    for name, value in event.items():
        if isinstance(value, str) and ("=" in value or "/login/" in value):
            event[name] = redact_url(value)
    return event


def clip(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} more characters]"


def bound_fields(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: no field may carry more than a bounded number of characters."""
    for name, value in event.items():
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            event[name] = clip(value, MAX_TRACEBACK_CHARS if name == "exception" else MAX_FIELD_CHARS)
    return event


def _traceback_formatter():
    """Tracebacks without local variables: those would include request headers, i.e. API keys."""
    try:
        import rich  # noqa: F401  (optional: structlog's pretty tracebacks use it when present)
    except ImportError:
        return structlog.dev.plain_traceback
    return structlog.dev.RichTracebackFormatter(show_locals=False)


def _render_json(event: dict[str, Any], **_: Any) -> bytes:
    return _encode(event)


class BoundedFormatter(logging.Formatter):
    """The stdlib's formatter, whose output (message and traceback) is clipped like structlog's."""

    def format(self, record: logging.LogRecord) -> str:
        return clip(redact_url(super().format(record)), MAX_TRACEBACK_CHARS)


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    numeric_level = getattr(logging, level.upper(), logging.INFO)
    json_lines = log_format == "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_fields,
        bound_fields,
        # msgspec renders a line several times faster than json.dumps; bytes go straight to stdout.
        structlog.processors.JSONRenderer(serializer=_render_json) if json_lines else structlog.dev.ConsoleRenderer(
            exception_formatter=_traceback_formatter()),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.BytesLoggerFactory(file=sys.stdout.buffer) if json_lines
        else structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(BoundedFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=numeric_level, handlers=[handler], force=True)

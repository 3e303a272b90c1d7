"""Secrets a URL carries are redacted from every log line: structlog fields and stdlib records alike."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from lorafleet.core.logging import BoundedFormatter, configure_logging, redact_url


@pytest.mark.parametrize(("logged", "expected"), [
    ("/dashboard/login/Xy_9-abc", "/dashboard/login/[redacted]"),
    ("GET /dashboard/login/Xy_9-abc?next=/ HTTP/1.1", "GET /dashboard/login/[redacted]?next=/ HTTP/1.1"),
    ("/callback?token=abc&page=2", "/callback?token=[redacted]&page=2"),
    ("https://h/p?a=1&api_key=sk_live_x#frag", "https://h/p?a=1&api_key=[redacted]#frag"),
    ("/p?access_token=1&client_secret=2&X-Amz-Signature=3", "/p?access_token=[redacted]&client_secret=[redacted]"
                                                            "&X-Amz-Signature=[redacted]"),
    ("/v1/models?limit=3&order=asc", "/v1/models?limit=3&order=asc"),
    ("no url here", "no url here"),
])
def test_secrets_in_urls_are_redacted(logged, expected):
    assert redact_url(logged) == expected


def test_every_structlog_field_and_stdlib_record_is_redacted(capsys):
    configure_logging("json", "info")
    try:
        structlog.get_logger("test").info("fetched", url="https://x/y?token=s3cr3t", note="see /dashboard/login/t0k3n")
        record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                                   '"GET /dashboard/login/t0k3n HTTP/1.1" 303', None, None)
        formatted = BoundedFormatter("%(message)s").format(record)
    finally:
        structlog.reset_defaults()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["url"] == "https://x/y?token=[redacted]" and line["note"] == "see /dashboard/login/[redacted]"
    assert "t0k3n" not in formatted and "/dashboard/login/[redacted]" in formatted

"""One usage-ledger row, and the one place its columns are named for the batch insert.

``insert_usage_rows`` (db/sql/ledger.sql) binds one array per column, in the order of
:data:`COLUMNS`; a unit test reads the statement and checks that its parameters and their SQL
types are exactly these, in this order, so a new field cannot silently bind to the wrong column.
"""

from __future__ import annotations

import datetime as dt

import msgspec


class LedgerRow(msgspec.Struct, kw_only=True, frozen=True):
    request_id: str
    tenant_id: str
    api_key_id: str
    base_model_id: str
    model: str                 # as the client named it
    endpoint: str              # chat.completions | completions
    outcome: str               # success | upstream_error | client_disconnect | unavailable
    http_status: int
    streamed: bool
    prompt_tokens: int
    completion_tokens: int
    worker_url: str | None
    started_at: dt.datetime
    finished_at: dt.datetime
    ttft_ms: int | None
    duration_ms: int
    adapter_id: str | None = None   # None: the base model (the one representation of "no adapter")
    cost_pico_usd: int = 0     # exact: never rounded per row (billing/pricing.py)
    price_id: int | None = None


# (column, SQL array type) in the order insert_usage_rows binds $1, $2, …
COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "text"), ("tenant_id", "text"), ("api_key_id", "text"), ("base_model_id", "text"),
    ("model", "text"), ("endpoint", "text"), ("outcome", "text"), ("http_status", "int"), ("streamed", "bool"),
    ("prompt_tokens", "bigint"), ("completion_tokens", "bigint"), ("worker_url", "text"),
    ("started_at", "timestamptz"), ("finished_at", "timestamptz"), ("ttft_ms", "int"), ("duration_ms", "int"),
    ("adapter_id", "text"), ("cost_pico_usd", "bigint"), ("price_id", "bigint"),
)


def column_arrays(rows: list[LedgerRow]) -> list[list[object]]:
    """The statement's parameters: one list per column, in :data:`COLUMNS` order."""
    return [[getattr(row, name) for row in rows] for name, _ in COLUMNS]

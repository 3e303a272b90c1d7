"""One usage-ledger row: its endpoint and outcome as enums, and its columns derived from its fields.

``insert_usage_rows`` (db/sql/ledger.sql) binds one array per column, in the order of the struct's
fields (:data:`COLUMNS`, derived from :class:`LedgerRow`, never written out twice); a unit test reads
the statement and checks that its parameters and their SQL types are exactly these, in this order,
and that :class:`Endpoint` and :class:`Outcome` are exactly what the ledger's CHECK constraints allow.
"""

from __future__ import annotations

import datetime as dt
import enum
import types
import typing

import msgspec


class Endpoint(enum.StrEnum):
    """What a ledger row was for: the API a client called."""

    CHAT_COMPLETIONS = "chat.completions"
    COMPLETIONS = "completions"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    FINE_TUNING = "fine_tuning"  # a fine-tuning job's trained tokens (prompt_tokens), one row per job


class Outcome(enum.StrEnum):
    """How an admitted request ended."""

    SUCCESS = "success"
    UPSTREAM_ERROR = "upstream_error"        # the engine refused it, or its worker failed it
    CLIENT_DISCONNECT = "client_disconnect"  # the client left first
    UNAVAILABLE = "unavailable"              # no worker could take it (nothing ran)
    CANCELLED = "cancelled"                  # a fine-tuning job the tenant cancelled: the steps trained are billed
    FAILED = "failed"                        # a fine-tuning job that failed: the steps trained before it are billed


class LedgerRow(msgspec.Struct, kw_only=True, frozen=True):
    request_id: str
    tenant_id: str
    api_key_id: str
    base_model_id: str
    model: str                 # as the client named it
    endpoint: Endpoint
    outcome: Outcome
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
    cached_prompt_tokens: int = 0  # of prompt_tokens: served from the engine's prefix cache
    batch_id: str | None = None    # a batch line's batch (priced at the batch discount)


def _sql_array_type(annotation: object) -> str:
    """The SQL type of the array a field binds as (``X | None`` binds as X; ints as bigint, which
    PostgreSQL casts to an int column on insert)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    for python_type, sql_type in ((bool, "bool"), (int, "bigint"), (str, "text"), (dt.datetime, "timestamptz")):
        if isinstance(annotation, type) and issubclass(annotation, python_type):
            return sql_type
    raise TypeError(f"no SQL array type for {annotation!r}")


# (column, SQL array type) in the order insert_usage_rows binds $1, $2, …: the struct's fields.
COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (field.name, _sql_array_type(field.type)) for field in msgspec.structs.fields(LedgerRow))


def column_arrays(rows: list[LedgerRow]) -> list[list[object]]:
    """The statement's parameters: one list per column, in :data:`COLUMNS` order."""
    return [[getattr(row, name) for row in rows] for name, _ in COLUMNS]

"""Query and path parameters shared by the API's routes, declared once (Litestar turns them into OpenAPI)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from litestar.params import QueryParameter
from lorafleet.core.errors import InvalidRequest

Limit = Annotated[int, QueryParameter(ge=1, le=100, description="Objects per page (1–100).")]
StartingAfter = Annotated[str | None, QueryParameter(min_length=1, max_length=64,
                                                     description="The id of the last object of the previous page.")]


def refuse_unknown_query(given: Iterable[str], known: Iterable[str]) -> None:
    """A 400 naming the first query parameter a filtering route does not know: a misspelt filter must not
    silently widen the answer (to every tenant, on the operator's routes)."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise InvalidRequest(f"unknown query parameter {unknown[0][:64]!r}", param=unknown[0][:64])

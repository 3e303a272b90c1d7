"""Query and path parameters shared by the API's routes, declared once (Litestar turns them into OpenAPI)."""

from __future__ import annotations

from typing import Annotated

from litestar.params import QueryParameter

Limit = Annotated[int, QueryParameter(ge=1, le=100, description="Objects per page (1–100).")]
StartingAfter = Annotated[str | None, QueryParameter(min_length=1, max_length=64,
                                                     description="The id of the last object of the previous page.")]

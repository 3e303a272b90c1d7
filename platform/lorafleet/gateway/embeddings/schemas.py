"""The embeddings request as clients send it (OpenAI's schema), and its answer for the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from lorafleet.core.types import ModelName
from lorafleet.gateway.openai.schemas import TokenId
from msgspec import Meta

# As a completion's prompt: one text, texts, one prompt as token ids, or prompts as token ids.
EmbeddingInput = Annotated[str, Meta(min_length=1)] | Annotated[list[str | TokenId | list[TokenId]], Meta(min_length=1)]


class EmbeddingRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    model: ModelName
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1, le=65536)] | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    # vLLM's: cut each input to its last n tokens instead of refusing it (-1: the model's maximum)
    truncate_prompt_tokens: Annotated[int, Meta(ge=-1)] | None = None

    @property
    def stream(self) -> bool:
        return False


class Embedding(msgspec.Struct, kw_only=True):
    index: int
    embedding: list[float] | str  # base64 of little-endian float32 with encoding_format "base64"
    object: Literal["embedding"] = "embedding"


class EmbeddingUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct, kw_only=True):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: Literal["list"] = "list"

"""Typed JSON request bodies: ``data: SomeStruct`` on a handler, decoded once, strictly, with the bad field's path.

:class:`StrictBody` is a Litestar DTO whose only job is to decode the raw body straight into the
handler's msgspec Struct (one pass, ``strict`` types: ``"5"`` is not a number) and to hand
Litestar the Struct's schema for OpenAPI. A failure is an :class:`InvalidRequest` whose ``param``
is the path of the field at fault (``messages[0].content``), as OpenAI's API reports it.

    @post("/v1/keys", dto=StrictBody[KeyCreate], return_dto=None)
    async def create_key(self, data: KeyCreate) -> ...
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import Any, ClassVar, TypeVar

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.dto import AbstractDTO, DTOConfig, DTOFieldDefinition
from litestar.typing import FieldDefinition
from lorafleet.core.errors import InvalidRequest

T = TypeVar("T")
_PATH = re.compile(r" - at `\$\.?(.*)`$")
_KEY_PATH = re.compile(r" - at `key` in `\$\.?(.*)`$")  # a mapping's key was invalid (logit_bias)
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`")
_MAX_MESSAGE = 300


def invalid(exc: msgspec.MsgspecError) -> InvalidRequest:
    """msgspec's error as OpenAI words it: the field's path in ``param``."""
    message = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return InvalidRequest(f"The request body is not valid JSON: {message[:_MAX_MESSAGE]}.")
    match = _PATH.search(message) or _KEY_PATH.search(message)
    path = match.group(1) if match else ""
    if match:
        message = message[: match.start()]
    if missing := _MISSING.match(message):
        # "Object missing required field `role` - at `$.messages[0]`" → param messages[0].role
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
        return InvalidRequest(f"Missing required parameter: '{path}'.", param=path)
    if unknown := _UNKNOWN.match(message):
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        return InvalidRequest(f"Unrecognized request argument supplied: '{path[:_MAX_MESSAGE]}'.", param=path[:_MAX_MESSAGE])
    if path:
        return InvalidRequest(f"Invalid value for '{path}': {message[:_MAX_MESSAGE]}", param=path)
    if message.startswith("Expected `object`"):
        return InvalidRequest(f"The request body must be a JSON object ({message[:_MAX_MESSAGE]}).")
    return InvalidRequest(f"Invalid request body: {message[:_MAX_MESSAGE]}")


def decode(body: bytes, struct: type[T]) -> T:
    """JSON bytes into ``struct``, strictly, with the same errors as a typed route body."""
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        return msgspec.json.decode(body, type=struct)
    except msgspec.MsgspecError as exc:
        raise invalid(exc) from None


def validate(value: Any, struct: type[T]) -> T:
    """Python values (a form, a query) into ``struct``, with the same errors as a body."""
    try:
        return msgspec.convert(value, struct)
    except msgspec.ValidationError as exc:
        raise invalid(exc) from None


class StrictBody(AbstractDTO[T]):
    """A DTO that is only a decoder: the body straight into the Struct, strictly, errors with their path."""

    config: ClassVar[DTOConfig] = DTOConfig()
    _decoders: ClassVar[dict[type, msgspec.json.Decoder]] = {}

    @classmethod
    def generate_field_definitions(cls, model_type: type[Any]) -> Generator[DTOFieldDefinition, None, None]:
        yield from ()  # no transfer model: the Struct itself is what the handler receives

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        return False

    @classmethod
    def create_for_field_definition(cls, field_definition: FieldDefinition, handler_id: str,
                                    backend_cls: Any = None) -> None:
        if field_definition.name == "data" and cls.model_type not in cls._decoders:
            cls._decoders[cls.model_type] = msgspec.json.Decoder(cls.model_type)

    @classmethod
    def create_openapi_schema(cls, field_definition: FieldDefinition, handler_id: str, schema_creator: Any) -> Any:
        return schema_creator.for_field_definition(FieldDefinition.from_annotation(cls.model_type))

    def decode_bytes(self, value: bytes) -> T:
        try:
            return self._decoders[self.model_type].decode(value)
        except msgspec.MsgspecError as exc:
            raise invalid(exc) from None
        except RecursionError:  # msgspec's decoder stops at the interpreter's recursion limit
            raise InvalidRequest("the JSON body is nested too deeply") from None

    def decode_builtins(self, value: dict[str, Any]) -> T:
        return validate(value, self.model_type)


class StrictStructSchema(StructSchemaPlugin):
    """OpenAPI for msgspec Structs that says what decoding does: a Struct that forbids unknown
    fields is ``additionalProperties: false`` (Litestar's own plugin leaves it open), so generated
    clients and fuzzers know an extra field is a 400."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Any:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        if getattr(field_definition.type_, "__struct_config__", None) and \
                field_definition.type_.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        return schema

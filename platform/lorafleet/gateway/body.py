"""Decode and validate JSON request bodies into msgspec Structs, with the bad field's path in ``param``."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from lorafleet.core.errors import InvalidRequest

T = TypeVar("T")
_PATH = re.compile(r" - at `\$\.?(.*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`")
_decode_any = msgspec.json.Decoder().decode


def decode_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        value = _decode_any(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return value


def validate(value: Any, struct: type[T]) -> T:
    try:
        return msgspec.convert(value, struct)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        path = match.group(1) if match else ""
        if match:
            message = message[: match.start()]
        missing = _MISSING.match(message)
        if missing:
            # "Object missing required field `role` - at `$.messages[0]`" → param messages[0].role
            path = f"{path}.{missing.group(1)}" if path else missing.group(1)
            message = f"Missing required parameter: '{path}'."
        elif unknown := _UNKNOWN.match(message):
            path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
            message = f"Unrecognized request argument supplied: '{path}'."
        elif path:
            message = f"Invalid value for '{path}': {message}"
        raise InvalidRequest(message, param=path or None) from None


def decode(body: bytes, struct: type[T]) -> T:
    return validate(decode_object(body), struct)

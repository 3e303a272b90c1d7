"""The one private Litestar API we use (body.py subclasses ``litestar._openapi…StructSchemaPlugin``, which
has no public equivalent): pinned here, so a Litestar upgrade that moves or changes it fails loudly."""

import msgspec
from litestar import Litestar, post
from litestar.params import JSONBody
from lorafleet.gateway.body import StrictBody, StrictStructSchema


class Closed(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class Open(msgspec.Struct):
    name: str


@post("/closed", dto=StrictBody[Closed], return_dto=None)
async def closed(data: JSONBody[Closed]) -> None:
    return None


@post("/open", dto=StrictBody[Open], return_dto=None)
async def open_(data: JSONBody[Open]) -> None:
    return None


def test_forbidding_unknown_fields_is_additional_properties_false_in_openapi():
    app = Litestar([closed, open_], plugins=[StrictStructSchema()])
    schemas = app.openapi_schema.to_schema()["components"]["schemas"]
    by_title = {name.rsplit("_", 1)[-1]: schema for name, schema in schemas.items()}
    assert by_title["Closed"]["additionalProperties"] is False
    assert "additionalProperties" not in by_title["Open"]
    assert by_title["Closed"]["required"] == ["name"]

"""An input file, line by line, before any line runs: every refusal names its line.

Each line is a JSON object ``{custom_id, method, url, body}``: ``custom_id`` present and unique in the
file, ``method`` POST, ``url`` the batch's endpoint, ``body`` a JSON object that decodes into the
synchronous route's own request type (the same strict schema, so a field the route refuses is refused
here, with the same message), not streamed, naming a model the tenant may call for that endpoint, and
passing the route's own checks before admission (gateway/preflight.py: fan-out, structured-output
budgets, and what the engine would refuse for that model — an output cap past its context, token ids
outside its vocabulary …), so a line the synchronous call would refuse never costs a worker call or a
ledger row. A file with any refused line fails as a whole (OpenAI's behaviour): nothing runs, nothing
is billed. Each valid line gets the most bytes its answer may have (answer_bound.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgspec
from lorafleet.core.errors import InvalidRequest, LoraFleetError
from lorafleet.core.settings import GatewaySettings
from lorafleet.gateway import preflight
from lorafleet.gateway.batches.answer_bound import LINE_WRAPPER, answer_bound
from lorafleet.gateway.batches.schemas import BatchError, InputLine
from lorafleet.gateway.body import decode
from lorafleet.gateway.embeddings.schemas import EmbeddingRequest
from lorafleet.gateway.fleet.catalog import BaseModel, ResolvedModel, require_task
from lorafleet.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest
from lorafleet.gateway.responses_api.schemas import ResponseCreateRequest

REQUEST_TYPES: dict[str, tuple[type[Any], str]] = {   # endpoint → (the route's body type, the model's task)
    "/v1/chat/completions": (ChatCompletionRequest, "generate"),
    "/v1/completions": (CompletionRequest, "generate"),
    "/v1/responses": (ResponseCreateRequest, "generate"),
    "/v1/embeddings": (EmbeddingRequest, "embed"),
}
RESPONSES = "/v1/responses"
LINE_OVERHEAD_BYTES = 64 * 1024  # a line's custom_id, method, url and JSON around its body
MAX_LISTED_ERRORS = 100  # a file with thousands of bad lines lists the first hundred (and says so)
YIELD_EVERY = 100        # lines between two yields to the event loop: the gateway keeps serving meanwhile
KEEP_EVERY = 1000        # valid lines handed on at once: a file is never held whole in memory

_decode_line = msgspec.json.Decoder(InputLine).decode


def _storable(text: str) -> str:
    """PostgreSQL text cannot hold NUL; a refusal quoting the file must still be stored."""
    return text.replace("\x00", "\\u0000")


@dataclass(frozen=True, slots=True)
class ValidLine:
    line: int
    custom_id: str
    base_model_id: str
    body: bytes
    answer_bound: int  # the most bytes its answer may have (answer_bound.py), enforced when it runs


@dataclass(frozen=True, slots=True)
class Limits:
    max_lines: int
    max_body_bytes: int
    max_answer_bytes: int


@dataclass(frozen=True, slots=True)
class Validated:
    count: int                  # valid lines (handed to ``keep``)
    errors: list[BatchError]    # the refusals (then what ``keep`` got is of no use)
    output_bytes: int           # the most the batch's output and error files can hold: each line's bound and wrapper
    model: str | None = None    # the model every line names (the Batch object's ``model``); None when they differ


def limits_of(settings: GatewaySettings) -> Limits:
    return Limits(max_lines=settings.batch_max_lines, max_body_bytes=settings.max_request_bytes,
                  max_answer_bytes=settings.batch_max_answer_bytes)


class Refusals:
    def __init__(self) -> None:
        self.errors: list[BatchError] = []
        self.count = 0
        self.stopped = False  # at MAX_LISTED_ERRORS: the rest of the file was not read

    def add(self, line: int | None, code: str, message: str, param: str | None = None) -> None:
        self.count += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            where = f"line {line}: " if line is not None else ""
            self.errors.append(BatchError(code=code, message=_storable(f"{where}{message}"), line=line,
                                          param=_storable(param) if param else None))

    def listed(self) -> list[BatchError]:
        if self.stopped:
            return [*self.errors, BatchError(code="too_many_errors", message=f"validation stopped after "
                                             f"{MAX_LISTED_ERRORS} refused lines; fix them and upload the file again")]
        return self.errors


class TooLong:
    """A line longer than any request may be: refused by its length, never read whole."""

    def __init__(self, length: int) -> None:
        self.length = length


def read_lines(handle: BinaryIO, max_line_bytes: int) -> Iterator[bytes | TooLong]:
    """The file's lines, each read at most ``max_line_bytes`` + 1 bytes at a time: a 200 MB line is
    skipped in pieces, never held in memory."""
    while line := handle.readline(max_line_bytes + 1):
        if len(line) <= max_line_bytes or line.endswith(b"\n"):
            yield line
            continue
        length = len(line)
        while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
            length += len(rest)
        yield TooLong(length + len(rest))


def line_request(body: bytes, request_type: type[Any]) -> tuple[Any, preflight.ResponsesInput | None]:
    """A line's body as its route decodes and checks it before the model is known (a LoraFleetError, with
    ``param`` inside the body, when the route would refuse it)."""
    request = decode(body, request_type)
    if getattr(request, "stream", False):
        raise InvalidRequest("stream: true is not supported in a batch", param="stream")
    return request, preflight.before_model(request)


def output_bound_of_file(handle: BinaryIO, endpoint: str, widest: BaseModel | None, settings: GatewaySettings) -> int:
    """The most bytes a batch of this file can write into its output and error files, as far as it can be
    known before its models are resolved: each line bounded as for the widest model that serves the
    endpoint (its largest context and hidden size). A line any model's route would refuse counts nothing: a
    file with such a line fails validation and writes no file. Blocking: run it off the event loop."""
    if widest is None:
        return 0  # no model serves the endpoint: every line is refused
    limits = limits_of(settings)
    request_type, task = REQUEST_TYPES[endpoint]
    resolved = ResolvedModel(base=widest, adapter_id=None)
    total = 0
    requests = 0
    for raw in read_lines(handle, limits.max_body_bytes + LINE_OVERHEAD_BYTES):
        if isinstance(raw, TooLong) or not raw.strip():
            continue
        requests += 1
        if requests > limits.max_lines:
            break  # the file fails validation
        try:
            body = bytes(_decode_line(raw).body)
            request, read = line_request(body, request_type)
            prepared = preflight.with_model(request, len(body), read, resolved, settings)
        except (LoraFleetError, msgspec.MsgspecError, RecursionError):
            continue
        total += answer_bound(prepared, widest, len(body), limits.max_answer_bytes,
                              repeats_request=endpoint == RESPONSES) + LINE_WRAPPER
    return total


async def validate_lines(lines: Iterable[bytes | TooLong], endpoint: str, limits: Limits, settings: GatewaySettings,
                         resolve: Callable[[str], Awaitable[ResolvedModel]],
                         keep: Callable[[list[ValidLine]], Awaitable[None]]) -> Validated:
    """The file's lines (``resolve``: a model name → the tenant's model, raising its 404): the valid ones
    are handed to ``keep`` in chunks while no line has been refused. It yields to the event loop every
    few lines, so the gateway running it keeps serving, and stops once it has as many refusals as it lists."""
    request_type, task = REQUEST_TYPES[endpoint]
    refusals = Refusals()
    chunk: list[ValidLine] = []
    kept = 0
    output_bytes = 0
    seen: set[str] = set()
    models: dict[str, ResolvedModel | LoraFleetError] = {}
    named: set[str] = set()  # the models the lines name, as named
    requests = 0
    for number, raw in enumerate(lines, start=1):
        if number % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        if len(refusals.errors) >= MAX_LISTED_ERRORS:
            refusals.stopped = True
            break
        if isinstance(raw, TooLong):
            refusals.add(number, "request_too_large", f"the line is {raw.length} bytes, more than a request may "
                                                      f"have ({limits.max_body_bytes} bytes of body)")
            requests += 1
            continue
        if not raw.strip():
            if number > limits.max_lines * 2:  # blank lines are no requests, but they are not free to read
                refusals.add(None, "too_many_lines", f"the file has more than {limits.max_lines * 2} lines")
                break
            continue  # a blank line (an editor's trailing newline) is no request; line numbers still count it
        requests += 1
        if requests > limits.max_lines:
            refusals.add(None, "too_many_lines", f"the file has more than {limits.max_lines} lines, the limit "
                                                 "of one batch; split it")
            break
        try:
            item = _decode_line(raw)
        except msgspec.ValidationError as exc:
            refusals.add(number, "invalid_request", f"not a request line ({str(exc)[:200]}); each line is "
                                                    '{"custom_id", "method", "url", "body"}')
            continue
        except msgspec.DecodeError:
            refusals.add(number, "invalid_json_line", "not valid JSON")
            continue
        except RecursionError:
            refusals.add(number, "invalid_json_line", "the JSON is nested too deeply")
            continue
        if "\x00" in item.custom_id:
            refusals.add(number, "invalid_custom_id", "custom_id may not contain NUL (\\u0000) characters", "custom_id")
            continue
        if item.custom_id in seen:
            refusals.add(number, "duplicate_custom_id", f"custom_id {item.custom_id[:100]!r} was already used "
                                                        "by an earlier line", "custom_id")
            continue
        seen.add(item.custom_id)
        if item.method != "POST":
            refusals.add(number, "invalid_method", f"method {item.method[:20]!r} is not POST", "method")
            continue
        if item.url != endpoint:
            refusals.add(number, "invalid_url", f"url {item.url[:100]!r} is not this batch's endpoint {endpoint!r}",
                         "url")
            continue
        body = bytes(item.body)
        if len(body) > limits.max_body_bytes:
            refusals.add(number, "request_too_large", f"the body is {len(body)} bytes, more than the "
                                                      f"{limits.max_body_bytes} a request may have", "body")
            continue
        try:
            request, read = line_request(body, request_type)
        except LoraFleetError as error:
            refusals.add(number, error.code or "invalid_request", error.message,
                         f"body.{error.param}" if error.param else "body")
            continue
        except RecursionError:
            refusals.add(number, "invalid_request", "the body is nested too deeply", "body")
            continue
        named.add(request.model)
        model = models.get(request.model)
        if model is None:
            try:
                model = await resolve(request.model)
                require_task(model, task, request.model)
            except LoraFleetError as error:
                model = error
            models[request.model] = model
        if isinstance(model, LoraFleetError):
            refusals.add(number, "model_not_found" if model.status_code == 404 else (model.code or "invalid_model"),
                         model.message, "body.model")
            continue
        try:  # what the synchronous route checks before admission, for this model
            prepared = preflight.with_model(request, len(body), read, model, settings)
        except LoraFleetError as error:
            refusals.add(number, error.code or "invalid_request", error.message,
                         f"body.{error.param}" if error.param else "body")
            continue
        if refusals.count:
            continue  # a refused file keeps nothing: only its refusals are still of use
        bound = answer_bound(prepared, model.base, len(body), limits.max_answer_bytes,
                             repeats_request=endpoint == RESPONSES)
        output_bytes += bound + LINE_WRAPPER
        chunk.append(ValidLine(number, item.custom_id, model.base.id, body, bound))
        if len(chunk) >= KEEP_EVERY:
            await keep(chunk)
            kept += len(chunk)
            chunk = []
    if requests == 0:
        refusals.add(None, "empty_file", "the input file has no lines")
    if chunk and not refusals.count:
        await keep(chunk)
        kept += len(chunk)
    return Validated(kept, refusals.listed(), output_bytes, next(iter(named)) if len(named) == 1 else None)

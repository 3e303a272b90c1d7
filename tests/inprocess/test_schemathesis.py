"""Schemathesis drives every operation of /openapi/openapi.json over real HTTP, with valid credentials.

Each operation gets schema-valid requests (positive) and schema-invalid ones (negative), a fixed
number of examples of each, derandomized: every run sends the same requests. Every answer must be
no 5xx, a documented status, a body and headers matching that status's schema, a documented
content type; an invalid request must be refused with a 4xx. Findings are collected across all
operations and reported together, each with a curl line that reproduces it.

Tenant routes run with an all-scope key of a fresh tenant, /admin routes with the admin token. A
path id is sometimes a real object (an adapter, a key, an invoice, a tenant) and a completion's
model sometimes a real model, so the 200 answers are checked too, not only the 404s.

Bounded here (LORAFLEET_FUZZ_EXAMPLES, default 8 per operation and mode); ``make fuzz`` runs 500.
LORAFLEET_FUZZ_SEED=n replaces the fixed derandomized sequence with seed n, to explore further.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from lorafleet.core.ids import random_token
from lorafleet.tenancy import TenancyService
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import TenantKey, close_this_month, give_weights, insert_adapter, wait_rows

EXAMPLES = int(os.environ.get("LORAFLEET_FUZZ_EXAMPLES", "8"))
SEED = int(os.environ["LORAFLEET_FUZZ_SEED"]) if os.environ.get("LORAFLEET_FUZZ_SEED") else None
STUB_MODEL = "stub-model"  # the in-process tier's base model (conftest)

# Every answer of every operation. Not `positive_data_acceptance` (schema-valid requests must be
# accepted): the gateway refuses some on grounds a JSON Schema cannot state (an expiry in the past, a
# range whose end is before its start, a credit of 0, files that are no adapter, 1e3 for an integer),
# and those 400s are the documented answer, not a bug.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]

# 5xx answers that are an operation's documented purpose, by operationId.
DOCUMENTED_5XX = {
    # A readiness probe answers 503 when it is not ready: with workers=n it needs n ready workers,
    # and the in-process tier has two.
    "ready": {503},
}

@dataclass
class Finding:
    operation: str
    code: str
    title: str
    message: str
    status: int | None
    body: str
    curl: str

    def __str__(self) -> str:
        return (f"{self.operation}: {self.code} {self.title} [{self.status}]\n    {self.message[:400]}\n"
                f"    body: {self.body[:300]}\n    {self.curl[:600]}")


@dataclass
class Run:
    base_url: str
    examples: Counter = field(default_factory=Counter)       # (operation, mode) → examples sent
    findings: dict[tuple[str, str, int | None], Finding] = field(default_factory=dict)
    seconds: Counter = field(default_factory=Counter)        # operation → time spent on it
    statuses: dict[str, Counter] = field(default_factory=dict)  # operation → status → answers
    session: requests.Session = field(default_factory=requests.Session)

    def record(self, finding: Finding) -> None:
        self.findings.setdefault((finding.operation, finding.code, finding.status), finding)


@dataclass
class Target:
    """What one group of operations is called with: credentials and the real objects to name."""

    headers: dict[str, str]
    path_parameters: dict[str, str]   # parameter name → a real id
    models: list[str] = field(default_factory=list)
    # operationId → its own real ids (a delete gets an object of its own, so the reads keep theirs)
    own_parameters: dict[str, dict[str, str]] = field(default_factory=dict)


def _operation_id(operation: Any) -> str:
    return operation.definition.raw.get("operationId", operation.label)


def _check(run: Run, case: Any, headers: dict[str, str], mode: GenerationMode) -> None:
    operation_id = _operation_id(case.operation)
    label = case.operation.label
    try:
        response = case.call(base_url=run.base_url, session=run.session, headers=headers, timeout=30)
    except requests.RequestException as exc:
        run.record(Finding(label, "network", "no answer", repr(exc), None, "", case.as_curl_command(headers=headers)))
        return
    run.statuses.setdefault(label, Counter())[response.status_code] += 1
    try:
        case.validate_response(response, checks=NEGATIVE_CHECKS if mode is GenerationMode.NEGATIVE else CHECKS,
                               headers=headers, transport_kwargs={"base_url": run.base_url, "headers": headers})
    except FailureGroup as group:
        for failure in group.exceptions:
            code = getattr(failure, "code", "ST9xx")
            status = response.status_code
            if code == "ST101" and status in DOCUMENTED_5XX.get(operation_id, ()):
                continue
            run.record(Finding(label, code, failure.title, failure.message, status, response.text,
                               case.as_curl_command(headers=headers)))


def _fuzz(run: Run, operation: Any, mode: GenerationMode, target: Target) -> None:
    """``EXAMPLES`` cases of one operation in one mode; findings go into ``run``."""
    label = operation.label
    strategy = operation.as_strategy(generation_mode=mode)
    names = {p.name for p in operation.path_parameters}
    real = {name: value for name, value in {**target.path_parameters,
                                            **target.own_parameters.get(_operation_id(operation), {})}.items()
            if name in names}
    if real and mode is GenerationMode.POSITIVE:
        strategy = st.one_of(strategy, operation.as_strategy(generation_mode=mode, path_parameters=real))
    body_schema = (operation.definition.raw.get("requestBody", {}).get("content", {}).get("application/json", {})
                   .get("schema", {}).get("$ref", ""))
    takes_model = body_schema.endswith(("ChatCompletionRequest", "CompletionRequest"))
    models = st.sampled_from([None, *target.models]) if takes_model and mode is GenerationMode.POSITIVE else st.none()

    @given(case=strategy, model=models)
    @settings(max_examples=EXAMPLES, derandomize=SEED is None, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)
    def examples(case: Any, model: str | None) -> None:
        if model is not None and isinstance(case.body, dict):
            case.body["model"] = model  # a model that exists, so the 200 answers are checked too
        run.examples[(label, mode.value)] += 1
        _check(run, case, target.headers, mode)

    (examples if SEED is None else seed(SEED)(examples))()


def _negatable(operation: Any) -> bool:
    """Whether a request to it can be schema-invalid at all: a body, a query or header parameter, a
    constrained path parameter (any string is a valid plain string path parameter)."""
    raw = operation.definition.raw
    if raw.get("requestBody"):
        return True
    for parameter in raw.get("parameters", []):
        if parameter.get("in") != "path" or set(parameter.get("schema", {})) - {"type", "description"}:
            return True
    return False


def _fuzz_all(schema: Any, run: Run, tenant: Target, operator: Target) -> None:
    operations = [result.ok() for result in schema.get_all_operations()]
    # Tenant routes first: the operator's PATCHes then cannot change the tenant under test midway.
    ordered = sorted(operations, key=lambda op: op.path.startswith("/admin"))
    for operation in ordered:
        target = operator if operation.path.startswith("/admin") else tenant
        started = time.perf_counter()
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if _negatable(operation) else (
            GenerationMode.POSITIVE,)
        for mode in modes:
            _fuzz(run, operation, mode, target)
        run.seconds[operation.label] += time.perf_counter() - started


async def _document(url: str) -> dict:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/openapi/openapi.json")
    assert response.status_code == 200
    return response.json()


async def _seed_tenant(platform, tenant: TenantKey, db) -> Target:
    """The tenant's real objects: an adapter, a spare key, usage and an invoice."""
    adapter_name = "fuzz-adapter"
    adapter_id = await insert_adapter(db, tenant.tenant_id, platform.base_model_id, adapter_name)
    await give_weights(platform, db, adapter_id)  # its archive can be downloaded
    spare = await TenancyService(db).create_key(tenant.tenant_id, name="spare", scopes=["inference"])
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        for model in (STUB_MODEL, adapter_name):
            answer = await http.post("/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 2})
            assert answer.status_code == 200, answer.text
    await wait_rows(db, tenant.tenant_id, 2)
    invoice_id = await close_this_month(db, tenant.tenant_id)
    # A chat completion after the invoice: usage of both endpoints, some of it not yet billed.
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        assert (await http.post("/v1/chat/completions", json={
            "model": adapter_name, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})).status_code == 200
    await wait_rows(db, tenant.tenant_id, 3)
    doomed = await insert_adapter(db, tenant.tenant_id, platform.base_model_id, "fuzz-doomed-adapter")
    await insert_adapter(db, tenant.tenant_id, platform.base_model_id, "fuzz-doomed")
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        files = [(await http.post("/v1/files", files={"file": ("t.jsonl", b"{}\n")}, data={"purpose": "fine-tune"}))
                 .json()["id"] for _ in range(2)]
        job = (await http.post("/v1/fine_tuning/jobs", json={"model": STUB_MODEL, "training_file": files[0]})).json()
    return Target(headers=tenant.headers, models=[STUB_MODEL, adapter_name],
                  path_parameters={"adapter_id": adapter_id, "key_id": spare.id, "invoice_id": invoice_id,
                                   "model_id": adapter_name, "base_model": STUB_MODEL, "file_id": files[0],
                                   "fine_tuning_job_id": job["id"]},
                  own_parameters={"deleteModel": {"model_id": "fuzz-doomed"}, "deleteFile": {"file_id": files[1]},
                                  "deleteAdapter": {"adapter_id": doomed}})


async def _seed_operator(platform, db, invoice_id: str) -> Target:
    """Another tenant for the operator's routes to change, with a key and an adapter."""
    service = TenancyService(db)
    other = await service.create_tenant(f"fuzz-ops-{random_token(6)}")
    key = await service.create_key(other.id, scopes=["inference"])
    adapter_id = await insert_adapter(db, other.id, platform.base_model_id, "pinned-one")
    return Target(headers=platform.admin_headers,
                  path_parameters={"tenant_id": other.id, "key_id": key.id, "adapter_id": adapter_id,
                                   "invoice_id": invoice_id})


async def test_every_operation_holds_up_to_schemathesis(platform, tenant, db, capsys):
    document = await _document(platform.url)
    schema = schemathesis.openapi.from_dict(document)
    tenant_target = await _seed_tenant(platform, tenant, db)
    operator_target = await _seed_operator(platform, db, tenant_target.path_parameters["invoice_id"])
    run = Run(platform.url)
    await asyncio.to_thread(_fuzz_all, schema, run, tenant_target, operator_target)  # the server runs on this loop

    operations = [f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item]
    with capsys.disabled():
        total = sum(run.examples.values())
        print(f"\nschemathesis {schemathesis.__version__}: {total} requests over {len(operations)} operations "
              f"({EXAMPLES} examples per operation and mode)")
        for operation in operations:
            print(f"  {operation:48} positive {run.examples[(operation, 'positive')]:4}"
                  f"  negative {run.examples[(operation, 'negative')]:4}  {run.seconds[operation]:5.1f} s  "
                  + " ".join(f"{status}×{n}" for status, n in sorted(run.statuses.get(operation, {}).items())))
    never = [operation for operation in operations if not run.examples[(operation, "positive")]]
    assert not never, f"operations schemathesis never called: {never}"
    assert not run.findings, f"{len(run.findings)} findings:\n" + "\n".join(str(f) for f in run.findings.values())


async def test_request_bodies_say_unknown_fields_are_refused(platform):
    """Every JSON body is decoded strictly (an unknown field is a 400): the document says so, so the
    fuzzer above sends bodies that can succeed, and generated clients know."""
    document = await _document(platform.url)
    components = document["components"]["schemas"]
    bodies = [operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
              for item in document["paths"].values() for operation in item.values()
              if "application/json" in operation.get("requestBody", {}).get("content", {})]
    assert len(bodies) >= 8
    assert [name for name in bodies if components[name].get("additionalProperties") is not False] == []


# A valid body for each operation that takes one, so a request gets past body validation to its lookups.
MINIMAL_BODIES: dict[str, dict[str, Any]] = {
    "createChatCompletion": {"model": STUB_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
    "createCompletion": {"model": STUB_MODEL, "prompt": "x", "max_tokens": 1},
    "createResponse": {"model": STUB_MODEL, "input": "x", "max_output_tokens": 1},
    "createEmbedding": {"model": STUB_MODEL, "input": "x"},
    "createKey": {}, "adminCreateKey": {}, "adminCreateTenant": {"name": "n"}, "adminUpdateTenant": {},
    "adminGrantCredit": {"amount_micro_usd": 1}, "adminUpdateKeyLimits": {},
    "createFineTuningJob": {"model": STUB_MODEL, "training_file": "file-x"},
    "setAdapterAlias": {"versions": [{"version": 1}]},
    "createBatch": {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    "createWebhookEndpoint": {"url": "https://unreachable.invalid/x", "name": "n", "event_types": ["batch.failed"]},
    "updateWebhookEndpoint": {"name": "n"}, "rotateWebhookSecret": {},
    "testWebhookEndpoint": {"event_type": "batch.failed"},
    "createProject": {"name": "n"}, "updateProject": {"name": "n"},
    "adminSetPrice": {"base_model": STUB_MODEL, "prompt_micro_usd_per_mtok": 0, "completion_micro_usd_per_mtok": 0,
                      "effective_at": "2999-01-01T00:00:00Z"},
}
NUL = "a\x00b"


async def test_what_the_database_cannot_hold_is_refused_not_a_500(platform, tenant):
    """Values PostgreSQL refuses — a NUL (U+0000) in text, an integer past its column — are the request's
    fault: 4xx, never 5xx. `make fuzz` found both; this sends them to every path and query parameter of
    every operation (NUL, and each documented maximum) and to the body fields that are stored."""
    document = await _document(platform.url)
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for template, item in document["paths"].items():
        for method, operation in item.items():
            body = operation.get("requestBody", {}).get("content", {})
            if "application/json" in body:
                assert operation["operationId"] in MINIMAL_BODIES, f"add a valid body for {operation['operationId']}"
            json_body = MINIMAL_BODIES.get(operation["operationId"])
            parameters = [p for p in operation.get("parameters", []) if p["in"] in ("path", "query")]
            for parameter in parameters:
                values = [NUL] + ([str(parameter["schema"]["maximum"])] if "maximum" in parameter["schema"] else [])
                for value in values:
                    path = template
                    query = {}
                    for other in parameters:
                        chosen = value if other is parameter else "x"
                        if other["in"] == "path":
                            path = path.replace("{" + other["name"] + "}", quote(chosen, safe=""))
                        elif other is parameter:
                            query[other["name"]] = chosen
                    cases.append((method.upper(), path, {"params": query, "json": json_body}))
    tenant_id, key_id = tenant.tenant_id, tenant.key_id
    cases += [("POST", "/admin/tenants", {"json": {"name": NUL}}), ("POST", "/v1/keys", {"json": {"name": NUL}}),
              ("POST", f"/admin/tenants/{tenant_id}/keys", {"json": {"name": NUL}}),
              ("POST", f"/admin/tenants/{tenant_id}/credits", {"json": {"amount_micro_usd": 1, "reason": NUL}}),
              ("POST", "/admin/prices", {"json": {**MINIMAL_BODIES["adminSetPrice"], "base_model": NUL}}),
              ("POST", "/v1/chat/completions", {"json": {**MINIMAL_BODIES["createChatCompletion"], "model": NUL}}),
              ("POST", "/v1/webhook_endpoints", {"json": {**MINIMAL_BODIES["createWebhookEndpoint"], "name": NUL}}),
              ("POST", "/v1/organization/projects", {"json": {"name": NUL}}),
              ("POST", "/v1/webhook_endpoints", {"json": {**MINIMAL_BODIES["createWebhookEndpoint"],
                                                          "url": "https://unreachable.invalid/" + NUL}}),
              ("POST", "/v1/responses", {"json": {**MINIMAL_BODIES["createResponse"], "input": NUL,
                                                  "instructions": NUL, "metadata": {NUL: NUL}}}),
              ("PATCH", f"/admin/keys/{key_id}", {"json": {"tokens_per_minute": 2**31 - 1,
                                                          "requests_per_minute": 10**7}})]
    async with httpx.AsyncClient(base_url=platform.url, timeout=30) as http:
        for method, path, kwargs in cases:
            headers = platform.admin_headers if path.startswith("/admin") else tenant.headers
            answer = await http.request(method, path, headers=headers, **{k: v for k, v in kwargs.items() if v})
            assert answer.status_code < 500 or (path.startswith("/readyz") and answer.status_code == 503), (
                method, path, kwargs, answer.status_code, answer.text[:300])
            assert answer.status_code < 400 or set(answer.json()) == {"error"}, (method, path, answer.text[:200])
    assert len(cases) > 40


async def test_text_answers_name_their_charset_once(platform, tenant):
    """Litestar appends "; charset=utf-8" to every text/* type: a handler that named it too sent it twice
    (found by the content-type check on /v1/usage?format=csv)."""
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        answers = [await http.get("/v1/usage", params={"format": "csv"}), await http.get("/metrics"),
                   await http.get("/dashboard/login")]
    for answer in answers:
        assert answer.status_code == 200, answer.request.url
        assert answer.headers["content-type"].count("charset") == 1, (answer.request.url, answer.headers["content-type"])

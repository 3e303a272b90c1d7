"""Object-level authorization and the scope matrix, route by route, the dashboard included.

``ROUTES`` classifies every route the app mounts: who may call it (an API key, the admin token, a
dashboard session, the operator's session), the scope it needs, and every place where it names a
tenant's object (a path id, a query filter, a model name in the body, a cursor, a cookie).
``EXEMPT`` lists, with the reason, the routes that need no credentials. A route in neither fails
test_every_route_is_classified, so a new route cannot skip the checks below:

- BOLA: tenant B naming tenant A's real objects gets exactly what it gets for objects that never
  existed — same status, same error code, same message with the id substituted — and A's objects
  are untouched afterwards;
- scopes: on each key and dashboard route, a key (or the session of a key) lacking the route's
  scope gets 403 naming it — the key holding every other scope, and each single other scope —
  while a key holding only that scope does not get 403;
- the operator API: no key, a tenant's key, a wrong token → 401, whatever the body.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import pytest
from lorafleet.app import create_app
from lorafleet.core import ids
from lorafleet.core.ids import random_token
from lorafleet.core.settings import GatewaySettings, load_settings
from lorafleet.db import queries
from lorafleet.tenancy import TenancyService
from lorafleet.tenancy.keys import ALL_SCOPES, generate_secret

from tests.helpers import TenantKey, close_this_month, dashboard, eventually, give_weights, insert_adapter, wait_rows

STUB_MODEL = "stub-model"  # the in-process tier's base model (conftest)
NEW_KEY_COOKIE = "lf_new_key"  # the dashboard's just-created-key cookie (pages.py)
END = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=2)
START = END - dt.timedelta(days=2)
USAGE_RANGE = {"start": START.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": END.strftime("%Y-%m-%dT%H:%M:%SZ")}

Kind = Literal["adapter_id", "adapter_name", "qualified_model", "key_id", "invoice_id", "cursor_adapter",
               "cursor_key", "cursor_invoice", "idempotency_key", "response_id", "file_id", "job_id", "cursor_file",
               "cursor_job", "batch_id", "cursor_batch", "batch_file_id", "adapter_version", "checkpoint_id",
               "cursor_audit",
               "webhook_id", "cursor_webhook", "delivery_id", "project_id", "cursor_project"]


@dataclass(frozen=True)
class Slot:
    """A place where a route names a tenant's object: ``name`` in the request, holding a ``kind`` of object."""

    name: str
    kind: Kind


@dataclass(frozen=True)
class Route:
    guard: Literal["key", "admin", "session", "operator_session"]
    scope: str | None = None            # the scope a key or session needs (None: signing in is enough)
    slots: tuple[Slot, ...] = ()
    # What to send besides the path (httpx keyword arguments), from the values of the request's
    # names: its slots, "csrf" for dashboard forms, path parameters the route takes.
    request: Callable[[dict[str, str]], dict[str, Any]] = lambda _: {}


def _chat(v: dict[str, str]) -> dict[str, Any]:
    return {"json": {"model": v.get("model", STUB_MODEL), "messages": [{"role": "user", "content": "hi"}],
                     "max_tokens": 2}}


def _completion(v: dict[str, str]) -> dict[str, Any]:
    return {"json": {"model": v.get("model", STUB_MODEL), "prompt": "hi", "max_tokens": 2}}


def _embedding(v: dict[str, str]) -> dict[str, Any]:
    return {"json": {"model": v.get("model", STUB_MODEL), "input": "hi"}}


def _response(v: dict[str, str]) -> dict[str, Any]:
    body = {"model": v.get("model", STUB_MODEL), "input": "hi", "max_output_tokens": 2}
    if "previous_response_id" in v:
        body["previous_response_id"] = v["previous_response_id"]
    return {"json": body}


def _usage(v: dict[str, str]) -> dict[str, Any]:
    return {"params": {**USAGE_RANGE, "group_by": "key,model,adapter",
                       **{name: v[name] for name in ("api_key_id", "adapter") if name in v}}}


def _cursor(v: dict[str, str]) -> dict[str, Any]:
    return {"params": {"starting_after": v["starting_after"]} if "starting_after" in v else {}}


def _new_key(v: dict[str, str]) -> dict[str, Any]:
    return {"json": {"name": "matrix"}, "headers": {"Idempotency-Key": v["idempotency_key"]} if "idempotency_key" in v
            else {}}


def _upload(v: dict[str, str]) -> dict[str, Any]:
    # No name: refused (400) before the upload is inspected in a child process, which costs ~0.5 s.
    return {"files": [("file", ("adapter_config.json", b"{}"))]}


def _file_upload(v: dict[str, str]) -> dict[str, Any]:
    return {"files": [("file", ("train.jsonl", b"{}\n"))], "data": {"purpose": "fine-tune"}}


def _after(v: dict[str, str]) -> dict[str, Any]:
    return {"params": {"after": v["after"]} if "after" in v else {}}


def _audit_page(v: dict[str, str]) -> dict[str, Any]:
    return {"params": {name: v[name] for name in ("after", "before") if name in v}}


def _job(v: dict[str, str]) -> dict[str, Any]:
    return {"json": {"model": STUB_MODEL, "training_file": v.get("training_file", "file-none")}}


def _batch(v: dict[str, str]) -> dict[str, Any]:
    return {"json": {"input_file_id": v.get("input_file_id", "file-none"), "endpoint": "/v1/chat/completions",
                     "completion_window": "24h"}}


def _form(v: dict[str, str]) -> dict[str, Any]:
    return {"data": {"csrf": v["csrf"]}}


def _dashboard_upload(v: dict[str, str]) -> dict[str, Any]:
    return {**_upload(v), "headers": {"x-csrf-token": v["csrf"]}}


def _dashboard_file_upload(v: dict[str, str]) -> dict[str, Any]:
    return {**_file_upload(v), "headers": {"x-csrf-token": v["csrf"]}}


def _dashboard_job(v: dict[str, str]) -> dict[str, Any]:
    return {"data": {"csrf": v["csrf"], "model": STUB_MODEL, "training_file": v.get("training_file", "file-none")}}


def _just_created(v: dict[str, str]) -> dict[str, Any]:
    # The one page that shows a new secret finds the key by the id in this cookie (and checks the
    # secret's prefix against it: the BOLA test sends the other tenant's real secret).
    return {"cookie": f"{v['created']}:{v.get('secret') or generate_secret()}"} if "created" in v else {}


def _json(body: dict[str, Any]) -> Callable[[dict[str, str]], dict[str, Any]]:
    return lambda _: {"json": body}


ADAPTER_ID, ADAPTER_NAME, KEY_ID, INVOICE_ID = (Slot("adapter_id", "adapter_id"), Slot("model_id", "adapter_name"),
                                                Slot("key_id", "key_id"), Slot("invoice_id", "invoice_id"))
MODEL_SLOTS = (Slot("model", "adapter_name"), Slot("model", "qualified_model"))
RESPONSE_ID = (Slot("response_id", "response_id"),)
FILE_ID, JOB_ID = (Slot("file_id", "file_id"),), (Slot("fine_tuning_job_id", "job_id"),)
BATCH_ID = (Slot("batch_id", "batch_id"),)
ADAPTER_REF = (ADAPTER_ID, Slot("adapter_id", "adapter_name"), Slot("adapter_id", "adapter_version"))
ALIAS_NAME = (Slot("adapter_name", "adapter_name"),)
CHECKPOINT = (Slot("fine_tuning_job_id", "job_id"), Slot("checkpoint_id", "checkpoint_id"))
# Path parameters a route takes that name nothing of a tenant's by themselves (used when a test gives none).
PATH_DEFAULTS = {"alias": "prod", "adapter_name": "no-such-adapter", "checkpoint_id": "ftckpt-none",
                 "fine_tuning_job_id": "ftjob-none"}
WEBHOOK_ID = (Slot("webhook_endpoint_id", "webhook_id"),)
PROJECT_ID = (Slot("project_id", "project_id"),)
USAGE_SLOTS = (Slot("api_key_id", "key_id"), Slot("adapter", "adapter_id"), Slot("adapter", "adapter_name"))

ROUTES: dict[str, Route] = {
    # ---- the OpenAI API ---------------------------------------------------------------------
    "POST /v1/chat/completions": Route("key", "inference", MODEL_SLOTS, _chat),
    "POST /v1/completions": Route("key", "inference", MODEL_SLOTS, _completion),
    "GET /v1/models": Route("key", "inference"),
    "POST /v1/embeddings": Route("key", "inference", MODEL_SLOTS, _embedding),
    "POST /v1/responses": Route("key", "inference", (*MODEL_SLOTS, Slot("previous_response_id", "response_id")),
                                _response),
    "GET /v1/responses/{response_id}": Route("key", "inference", RESPONSE_ID),
    "GET /v1/responses/{response_id}/input_items": Route("key", "inference", RESPONSE_ID),
    "DELETE /v1/responses/{response_id}": Route("key", "inference", RESPONSE_ID),
    "GET /v1/models/{model_id}": Route("key", "inference", (ADAPTER_NAME, Slot("model_id", "qualified_model"))),
    "DELETE /v1/models/{model_id}": Route("key", "adapters:write", (ADAPTER_NAME, Slot("model_id", "qualified_model"))),
    "POST /v1/files": Route("key", "adapters:write", (), _file_upload),
    "GET /v1/files": Route("key", "adapters:read", (Slot("after", "cursor_file"),), _after),
    "GET /v1/files/{file_id}": Route("key", "adapters:read", FILE_ID),
    "GET /v1/files/{file_id}/content": Route("key", "adapters:read", FILE_ID),
    "DELETE /v1/files/{file_id}": Route("key", "adapters:write", FILE_ID),
    "POST /v1/fine_tuning/jobs": Route("key", "adapters:write", (Slot("training_file", "file_id"),), _job),
    "GET /v1/fine_tuning/jobs": Route("key", "adapters:read", (Slot("after", "cursor_job"),), _after),
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}": Route("key", "adapters:read", JOB_ID),
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel": Route("key", "adapters:write", JOB_ID),
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/pause": Route("key", "adapters:write", JOB_ID),
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/resume": Route("key", "adapters:write", JOB_ID),
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/events": Route("key", "adapters:read", JOB_ID),
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": Route("key", "adapters:read", JOB_ID),
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints/{checkpoint_id}/content": Route(
        "key", "adapters:read", CHECKPOINT),
    "POST /v1/batches": Route("key", "inference", (Slot("input_file_id", "batch_file_id"),), _batch),
    "GET /v1/batches": Route("key", "inference", (Slot("after", "cursor_batch"),), _after),
    "GET /v1/batches/{batch_id}": Route("key", "inference", BATCH_ID),
    "POST /v1/batches/{batch_id}/cancel": Route("key", "inference", BATCH_ID),
    # ---- the tenant's own objects -----------------------------------------------------------
    "GET /v1/keys": Route("key", "keys:read", (Slot("starting_after", "cursor_key"),), _cursor),
    "POST /v1/keys": Route("key", "keys:write", (Slot("idempotency_key", "idempotency_key"),), _new_key),
    "DELETE /v1/keys/{key_id}": Route("key", "keys:write", (KEY_ID,)),
    "GET /v1/adapters": Route("key", "adapters:read", (Slot("starting_after", "cursor_adapter"),), _cursor),
    "POST /v1/adapters": Route("key", "adapters:write", (), _upload),
    "GET /v1/adapters/{adapter_id}": Route("key", "adapters:read", (ADAPTER_ID,)),
    "DELETE /v1/adapters/{adapter_id}": Route("key", "adapters:write", (ADAPTER_ID,)),
    "GET /v1/adapters/{adapter_id}/content": Route("key", "adapters:read", ADAPTER_REF),
    "GET /v1/adapters/{adapter_name}/aliases": Route("key", "adapters:read", ALIAS_NAME),
    "GET /v1/adapters/{adapter_name}/aliases/{alias}": Route("key", "adapters:read", ALIAS_NAME),
    "PUT /v1/adapters/{adapter_name}/aliases/{alias}": Route("key", "adapters:write", ALIAS_NAME,
                                                             _json({"versions": [{"version": 1}]})),
    "DELETE /v1/adapters/{adapter_name}/aliases/{alias}": Route("key", "adapters:write", ALIAS_NAME),
    "POST /v1/adapters/{adapter_name}/aliases/{alias}/rollback": Route("key", "adapters:write", ALIAS_NAME),
    "GET /v1/usage": Route("key", "usage:read", USAGE_SLOTS, _usage),
    "GET /v1/balance": Route("key", "billing:read"),
    "GET /v1/invoices": Route("key", "billing:read", (Slot("starting_after", "cursor_invoice"),), _cursor),
    "GET /v1/invoices/{invoice_id}": Route("key", "billing:read", (INVOICE_ID,)),
    "POST /v1/webhook_endpoints": Route("key", "webhooks:write", (), _json(
        {"url": "https://hooks.example.com/in", "name": "matrix", "event_types": ["batch.completed"]})),
    "GET /v1/webhook_endpoints": Route("key", "webhooks:read", (Slot("after", "cursor_webhook"),), _after),
    "GET /v1/webhook_endpoints/{webhook_endpoint_id}": Route("key", "webhooks:read", WEBHOOK_ID),
    "POST /v1/webhook_endpoints/{webhook_endpoint_id}": Route("key", "webhooks:write", WEBHOOK_ID,
                                                               _json({"name": "renamed"})),
    "DELETE /v1/webhook_endpoints/{webhook_endpoint_id}": Route("key", "webhooks:write", WEBHOOK_ID),
    "POST /v1/webhook_endpoints/{webhook_endpoint_id}/rotate_secret": Route("key", "webhooks:write", WEBHOOK_ID,
                                                                             _json({})),
    "POST /v1/webhook_endpoints/{webhook_endpoint_id}/test": Route("key", "webhooks:write", WEBHOOK_ID, _json(
        {"event_type": "batch.completed"})),
    "GET /v1/webhook_endpoints/{webhook_endpoint_id}/deliveries": Route("key", "webhooks:read", WEBHOOK_ID),
    "POST /v1/webhook_endpoints/{webhook_endpoint_id}/deliveries/{delivery_id}/replay": Route(
        "key", "webhooks:write", (*WEBHOOK_ID, Slot("delivery_id", "delivery_id"))),
    "GET /v1/webhook_event_types": Route("key", "webhooks:read"),
    "POST /v1/organization/projects": Route("key", "organization:admin", (), _json({"name": "matrix"})),
    "GET /v1/organization/projects": Route("key", "organization:admin", (Slot("after", "cursor_project"),), _after),
    "GET /v1/organization/projects/{project_id}": Route("key", "organization:admin", PROJECT_ID),
    "POST /v1/organization/projects/{project_id}": Route("key", "organization:admin", PROJECT_ID,
                                                         _json({"name": "renamed"})),
    "POST /v1/organization/projects/{project_id}/archive": Route("key", "organization:admin", PROJECT_ID),
    "GET /v1/organization/audit_logs": Route("key", "audit_logs:read", (Slot("after", "cursor_audit"),
                                                                        Slot("before", "cursor_audit")), _audit_page),
    # ---- the operator (any tenant's objects, by design) -------------------------------------
    "GET /admin/tenants": Route("admin"),
    "POST /admin/tenants": Route("admin", request=_json({"name": "matrix"})),
    "GET /admin/tenants/{tenant_id}": Route("admin"),
    "PATCH /admin/tenants/{tenant_id}": Route("admin", request=_json({})),
    "POST /admin/tenants/{tenant_id}/keys": Route("admin", request=_json({"scopes": ["inference"]})),
    "POST /admin/tenants/{tenant_id}/credits": Route("admin", request=_json({"amount_micro_usd": 1})),
    "PATCH /admin/keys/{key_id}": Route("admin", request=_json({})),
    "GET /admin/prices": Route("admin"),
    "POST /admin/prices": Route("admin", request=_json({"base_model": "no-such-model", "prompt_micro_usd_per_mtok": 0,
                                                        "completion_micro_usd_per_mtok": 0})),
    "GET /admin/invoices/{invoice_id}": Route("admin"),
    "GET /admin/audit_logs": Route("admin"),
    "GET /admin/workers": Route("admin"),
    "GET /admin/adapters/stats": Route("admin"),
    "POST /admin/adapters/{adapter_id}/pin": Route("admin"),
    "DELETE /admin/adapters/{adapter_id}/pin": Route("admin"),
    # ---- the dashboard (a session acts with exactly its key's scopes) -----------------------
    "GET /dashboard": Route("session"),
    "GET /dashboard/usage": Route("session", "usage:read", USAGE_SLOTS, _usage),
    "GET /dashboard/keys": Route("session", "keys:read"),
    "POST /dashboard/keys": Route("session", "keys:write", (), lambda v: {"data": {"csrf": v["csrf"], "name": "m"}}),
    "GET /dashboard/keys/new": Route("session", "keys:read", (Slot("created", "key_id"),), _just_created),
    "POST /dashboard/keys/{key_id}/revoke": Route("session", "keys:write", (KEY_ID,), _form),
    "GET /dashboard/adapters": Route("session", "adapters:read"),
    "POST /dashboard/adapters/upload": Route("session", "adapters:write", (), _dashboard_upload),
    "POST /dashboard/adapters/{adapter_id}/delete": Route("session", "adapters:write", (ADAPTER_ID,), _form),
    "POST /dashboard/adapters/{adapter_name}/aliases/{alias}/rollback": Route("session", "adapters:write", ALIAS_NAME,
                                                                              _form),
    "GET /dashboard/fine-tuning": Route("session", "adapters:read"),
    "POST /dashboard/fine-tuning": Route("session", "adapters:write", (Slot("training_file", "file_id"),),
                                         _dashboard_job),
    "POST /dashboard/fine-tuning/files": Route("session", "adapters:write", (), _dashboard_file_upload),
    "GET /dashboard/fine-tuning/{fine_tuning_job_id}": Route("session", "adapters:read", JOB_ID),
    "POST /dashboard/fine-tuning/{fine_tuning_job_id}/cancel": Route("session", "adapters:write", JOB_ID, _form),
    "GET /dashboard/batches": Route("session", "inference"),
    "GET /dashboard/batches/{batch_id}": Route("session", "inference", BATCH_ID),
    "GET /dashboard/batches/{batch_id}/output": Route("session", "inference", BATCH_ID),
    "GET /dashboard/batches/{batch_id}/errors": Route("session", "inference", BATCH_ID),
    "POST /dashboard/batches/{batch_id}/cancel": Route("session", "inference", BATCH_ID, _form),
    "GET /dashboard/invoices": Route("session", "billing:read"),
    "GET /dashboard/audit": Route("session", "audit_logs:read", (Slot("after", "cursor_audit"),), _after),
    "GET /dashboard/invoices/{invoice_id}": Route("session", "billing:read", (INVOICE_ID,)),
    "GET /dashboard/admin": Route("operator_session"),
}

# Routes that take no credentials, and why that is right.
EXEMPT = {
    # Probes: an orchestrator calls them without credentials; they carry no tenant data.
    "GET /livez": "liveness probe", "GET /healthz": "liveness probe (older name)", "GET /readyz": "readiness probe",
    # Fleet-wide numbers, no tenant's name or adapter: open, or behind LORAFLEET_METRICS_TOKEN when set
    # (base models are shared by every tenant, so naming one is no object of anyone's).
    "GET /metrics": "Prometheus metrics", "GET /autoscaling": "autoscaling signals",
    "GET /autoscaling/{base_model}": "one base model's autoscaling signals",
    # The API's description is public.
    "GET /openapi": "OpenAPI", "GET /openapi/openapi.json": "OpenAPI", "GET /openapi/swagger": "OpenAPI",
    "GET /openapi/{path}": "OpenAPI renderers", "GET /openapi/oauth2-redirect.html": "OpenAPI",
    "GET /openapi/assets/{file_path}": "Swagger UI's packaged script, styles and icon",
    # The dashboard's stylesheet and script.
    "GET /dashboard/static/{file_path}": "static files",
    # Signing in and out: the key, the admin token or the link's token is the credential itself.
    "GET /dashboard/login": "sign-in form", "POST /dashboard/login": "sign-in with an API key",
    "GET /dashboard/login/{token}": "one-time sign-in link", "GET /dashboard/admin/login": "operator sign-in form",
    "POST /dashboard/admin/login": "operator sign-in", "POST /dashboard/logout": "ends the cookie's own session",
}


def _app_handlers() -> dict[str, object]:
    """Every mounted "METHOD /path" and its route handler."""
    app = create_app(load_settings(GatewaySettings, {"LORAFLEET_DATABASE_URL": "postgresql://unused/unused",
                                    "LORAFLEET_ADMIN_TOKEN": "unused", "LORAFLEET_INTERNAL_TOKEN": "unused"}))
    handlers = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            for method in getattr(handler, "http_methods", set()) - {"OPTIONS", "HEAD"}:
                handlers[f"{method} {route.path_format}"] = handler
    return handlers


def _app_routes() -> set[str]:
    return set(_app_handlers())


def test_every_key_route_declares_the_scope_its_guard_checks():
    """The scope is the route's own (``opt=scope(...)``), checked by a guard before the body is read."""
    handlers = _app_handlers()
    for name, route in ROUTES.items():
        if route.guard == "key":
            assert handlers[name].opt.get("scope") == route.scope, name


def test_every_route_is_classified():
    mounted = _app_routes()
    unclassified = sorted(mounted - ROUTES.keys() - EXEMPT.keys())
    assert not unclassified, f"add these routes to ROUTES (or, with a reason, to EXEMPT): {unclassified}"
    gone = sorted((ROUTES.keys() | EXEMPT.keys()) - mounted)
    assert not gone, f"these classified routes no longer exist: {gone}"
    assert not ROUTES.keys() & EXEMPT.keys()
    for name, route in ROUTES.items():
        assert route.scope is None or route.scope in ALL_SCOPES, name
        assert route.guard in ("key", "session") or route.scope is None, name


# ---- two tenants ---------------------------------------------------------------------------------


@dataclass
class Tenant:
    """A tenant with an all-scope key and real objects of every kind a route can name."""

    key: TenantKey
    adapter_id: str
    adapter_name: str
    invoice_id: str
    idempotency_key: str
    response_id: str
    file_id: str
    job_id: str
    batch_id: str
    batch_file_id: str
    checkpoint_id: str
    audit_id: str = ""  # one of its audit events
    webhook_id: str = ""  # one of its webhook endpoints
    delivery_id: str = ""  # one of that endpoint's deliveries
    project_id: str = ""  # a project of its own besides the default one
    keys: dict[str, TenantKey] = field(default_factory=dict)  # more keys, by label

    def value(self, kind: Kind) -> str:
        return {"adapter_id": self.adapter_id, "adapter_name": self.adapter_name,
                "qualified_model": f"{STUB_MODEL}:{self.adapter_name}", "key_id": self.key.key_id,
                "invoice_id": self.invoice_id, "cursor_adapter": self.adapter_id, "cursor_key": self.key.key_id,
                "cursor_invoice": self.invoice_id, "idempotency_key": self.idempotency_key,
                "response_id": self.response_id, "file_id": self.file_id, "job_id": self.job_id,
                "cursor_file": self.file_id, "cursor_job": self.job_id, "batch_id": self.batch_id,
                "cursor_batch": self.batch_id, "batch_file_id": self.batch_file_id,
                "adapter_version": f"{self.adapter_name}@v1", "checkpoint_id": self.checkpoint_id,
                "cursor_audit": self.audit_id, "webhook_id": self.webhook_id, "cursor_webhook": self.webhook_id,
                "delivery_id": self.delivery_id, "project_id": self.project_id,
                "cursor_project": self.project_id}[kind]


def _missing(kind: Kind, theirs: str) -> str:
    """An object of this kind that never existed, spelled like ``theirs`` (same length, same place in
    an ordering of ids: a cursor sorts right after theirs), so the answers can be compared verbatim."""
    if kind.startswith("cursor_"):
        return theirs + "0"
    if kind in ("adapter_name", "qualified_model"):
        return theirs[:-6] + random_token(6)
    if kind == "adapter_version":
        return theirs[:-9] + random_token(6) + "@v1"
    if kind == "idempotency_key":
        return str(uuid.uuid4())
    if "-" in theirs:  # OpenAI's spelling: file-…, ftjob-…
        return ids.new_id(theirs.split("-", 1)[0], "-")
    return ids.new_id(theirs.split("_", 1)[0])


async def _tenant(platform, db, label: str) -> Tenant:
    """A tenant with an adapter, usage through its key and the adapter, an invoice, a used idempotency key."""
    service = TenancyService(db)
    created = await service.create_tenant(f"{label}-{random_token(6)}")
    key = await service.create_key(created.id, name=label)
    owner = TenantKey(created.id, key.id, key.secret)
    adapter_name = f"{label}-adapter-{random_token(6)}"
    adapter_id = await insert_adapter(db, created.id, platform.base_model_id, adapter_name)
    await give_weights(platform, db, adapter_id)  # its archive can be downloaded
    idempotency_key = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=platform.url, headers=owner.headers, timeout=30) as http:
        for model in (STUB_MODEL, adapter_name):
            answer = await http.post("/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 2})
            assert answer.status_code == 200, answer.text
        made = await http.post("/v1/keys", json={"name": "spare", "scopes": ["inference"]},
                               headers={"Idempotency-Key": idempotency_key})
        assert made.status_code == 201, made.text
        project = await http.post("/v1/organization/projects", json={"name": f"{label} project"})
        assert project.status_code == 200, project.text
        # An endpoint no one answers at (so its delivery of the batch's end stays in the log, retried).
        hook = await http.post("/v1/webhook_endpoints", json={"url": "https://unreachable.invalid/in", "name": label,
                                                              "event_types": ["batch.completed"]})
        assert hook.status_code == 200, hook.text
        stored = await http.post("/v1/responses", json={"model": adapter_name, "input": "x", "max_output_tokens": 2})
        assert stored.status_code == 200, stored.text
        file = await http.post("/v1/files", files={"file": ("t.jsonl", b"{}\n")}, data={"purpose": "fine-tune"})
        assert file.status_code == 200, file.text
        job = await http.post("/v1/fine_tuning/jobs", json={"model": STUB_MODEL, "training_file": file.json()["id"]})
        assert job.status_code == 200, job.text
        checkpoint_id = await _checkpoint(platform, db, created.id, job.json()["id"], label)
        alias = await http.put(f"/v1/adapters/{adapter_name}/aliases/prod", json={"versions": [{"version": 1}]})
        assert alias.status_code == 200, alias.text
        # Two lines: one answered, one whose answer (the stubs answer 2,000 tokens whatever is asked) is more
        # than its bound from max_tokens 1 allows, so the batch has an output file and an error file.
        lines = [{"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": STUB_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": tokens}}
                 for custom_id, tokens in (("a", 2000), ("b", 1))]
        batch_file = await http.post("/v1/files", files={"file": ("b.jsonl", "\n".join(map(json.dumps, lines)))},
                                     data={"purpose": "batch"})
        assert batch_file.status_code == 200, batch_file.text
        for worker in platform.workers:
            worker.behaviour.chunks = 2000
        try:
            batch = await http.post("/v1/batches", json={"input_file_id": batch_file.json()["id"],
                                                         "endpoint": "/v1/chat/completions", "completion_window": "24h"})
            assert batch.status_code == 200, batch.text
            done = await eventually(lambda: http.get(f"/v1/batches/{batch.json()['id']}"),
                                    lambda answer: answer.json()["status"] == "completed", what="the batch done")
        finally:
            for worker in platform.workers:
                worker.behaviour.chunks = 8
        assert done.json()["output_file_id"] and done.json()["error_file_id"], done.text
    await wait_rows(db, created.id, 4)
    audit_id = await db.fetchval("SELECT id FROM audit_log WHERE tenant_id = $1 ORDER BY seq LIMIT 1", created.id)
    delivery_id = await db.fetchval("SELECT id FROM webhook_deliveries WHERE endpoint_id = $1", hook.json()["id"])
    assert delivery_id, "the batch's end made no delivery"
    assert audit_id, "the tenant's changes left no audit event"
    return Tenant(owner, adapter_id, adapter_name, await close_this_month(db, created.id), idempotency_key,
                  stored.json()["id"], file.json()["id"], job.json()["id"], batch.json()["id"], batch_file.json()["id"],
                  checkpoint_id, audit_id, hook.json()["id"], delivery_id, project.json()["id"])


async def _checkpoint(platform, db, tenant_id: str, job_id: str, label: str) -> str:
    """A checkpoint of the job, registered as a servable adapter as the trainer does (finetune/runner.py)."""
    checkpoint_id = ids.fine_tuning_checkpoint_id()
    name = f"ft:{STUB_MODEL}:{label}:{job_id}:ckpt-step-1"
    await db.execute(queries.insert_fine_tuning_checkpoint, checkpoint_id, job_id, 1, {"step": 1}, name, "0" * 64, 1)
    adapter_id = await insert_adapter(db, tenant_id, platform.base_model_id, f"{job_id}-step-1")
    await db.execute("UPDATE adapters SET fine_tuned_model = $2 WHERE id = $1", adapter_id, name)
    await give_weights(platform, db, adapter_id)
    return checkpoint_id


async def _state(db, tenant: Tenant) -> tuple:
    """What B must never change of A: its key's revocation, its adapter's status, its invoice, its responses."""
    return (await db.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", tenant.key.key_id),
            await db.fetchval("SELECT status FROM adapters WHERE id = $1", tenant.adapter_id),
            await db.fetchval("SELECT total_micro_usd FROM invoices WHERE id = $1", tenant.invoice_id),
            await db.fetchval("SELECT count(*) FROM api_keys WHERE tenant_id = $1", tenant.key.tenant_id),
            await db.fetchval("SELECT count(*) FROM responses WHERE tenant_id = $1", tenant.key.tenant_id),
            await db.fetchval("SELECT status FROM files WHERE id = $1", tenant.file_id),
            await db.fetchval("SELECT status FROM fine_tuning_jobs WHERE id = $1", tenant.job_id),
            await db.fetchval("SELECT count(*) FROM fine_tuning_jobs WHERE tenant_id = $1", tenant.key.tenant_id),
            await db.fetchval("SELECT count(*) FROM batches WHERE tenant_id = $1", tenant.key.tenant_id),
            await db.fetchval("SELECT cancelling_at FROM batches WHERE id = $1", tenant.batch_id),
            await db.fetchval("SELECT targets::text FROM adapter_aliases WHERE tenant_id = $1 AND name = $2",
                              tenant.key.tenant_id, tenant.adapter_name),
            await db.fetchval("SELECT count(*) FROM adapter_alias_history WHERE tenant_id = $1", tenant.key.tenant_id))


def _call(name: str, route: Route, values: dict[str, str]) -> tuple[str, str, dict[str, Any]]:
    method, template = name.split(" ", 1)
    values = {**PATH_DEFAULTS, **values}
    path_values = {key: value for key, value in values.items() if "{" + key + "}" in template}
    # A route naming two objects (a webhook endpoint's delivery): the one the call does not vary is "none".
    return method, template.format_map(collections.defaultdict(lambda: "none", path_values)), route.request(values)


async def _send(http: httpx.AsyncClient, name: str, route: Route, values: dict[str, str]) -> httpx.Response:
    method, path, kwargs = _call(name, route, values)
    cookie = kwargs.pop("cookie", None)
    if cookie is not None:
        http.cookies.set(NEW_KEY_COOKIE, cookie)
    try:
        return await http.request(method, path, **kwargs)
    finally:
        if cookie is not None:
            http.cookies.delete(NEW_KEY_COOKIE)


def _same_answer(name: str, slot: Slot, theirs: httpx.Response, missing: httpx.Response, their_value: str,
                 missing_value: str) -> None:
    where = f"{name} with another tenant's {slot.kind} in {slot.name}"
    assert theirs.status_code == missing.status_code, (where, theirs.status_code, missing.status_code,
                                                      theirs.text[:300])
    assert theirs.headers.get("content-type") == missing.headers.get("content-type"), where
    if slot.kind == "idempotency_key":
        # A creation: the other tenant's key gets no replay of its result, just a new key of its own.
        assert theirs.status_code == 201 and "idempotent-replayed" not in theirs.headers, where
        return
    expected = missing.text.replace(missing_value, their_value)
    if theirs.headers.get("content-type", "").startswith("application/json"):
        assert theirs.json() == json.loads(expected), where
    else:
        assert theirs.text == expected, where
    if "{" + slot.name + "}" in name or slot.name == "model":
        assert theirs.status_code == 404, (where, theirs.text[:300])


async def test_another_tenants_objects_are_answered_like_missing_ones(platform, db):
    theirs, mine = await _tenant(platform, db, "alice"), await _tenant(platform, db, "bob")
    before = await _state(db, theirs)
    checked = 0
    async with httpx.AsyncClient(base_url=platform.url, headers=mine.key.headers, timeout=30) as api, \
            dashboard(platform.url, mine.key.secret) as (session, csrf):
        for name, route in ROUTES.items():
            if route.guard not in ("key", "session"):
                continue
            http = api if route.guard == "key" else session
            for slot in route.slots:
                their_value = theirs.value(slot.kind)
                missing_value = _missing(slot.kind, their_value)
                answers = [await _send(http, name, route,
                                       {"csrf": csrf, "secret": theirs.key.secret, slot.name: value})
                           for value in (their_value, missing_value)]
                _same_answer(name, slot, *answers, their_value, missing_value)
                checked += 1
    assert checked == sum(len(route.slots) for route in ROUTES.values() if route.guard in ("key", "session"))
    assert await _state(db, theirs) == before, "another tenant's key, adapter or invoice changed"


# Reads that show none of the caller's ids either: the overview (totals and charts), a page that shows a
# key only right after its creation, the base model, a response's input items (the caller's own text).
SHOWS_NO_OBJECT = {"GET /dashboard", "GET /dashboard/keys/new", "GET /v1/models/{model_id}",
                   "GET /v1/responses/{response_id}/input_items", "GET /v1/files/{file_id}/content",
                   "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
                   "GET /dashboard/batches/{batch_id}/output", "GET /dashboard/batches/{batch_id}/errors",
                   "GET /v1/webhook_event_types"}


async def test_lists_never_show_another_tenants_objects(platform, db):
    theirs, mine = await _tenant(platform, db, "alice"), await _tenant(platform, db, "bob")
    secrets_of_theirs = (theirs.key.tenant_id, theirs.key.key_id, theirs.adapter_id, theirs.adapter_name,
                         theirs.invoice_id, theirs.response_id, theirs.file_id, theirs.job_id, theirs.batch_id,
                         theirs.webhook_id, theirs.delivery_id, theirs.project_id)
    secrets_of_mine = (mine.key.tenant_id, mine.key.key_id, mine.adapter_id, mine.adapter_name, mine.invoice_id,
                       mine.response_id, mine.file_id, mine.job_id, mine.batch_id, mine.webhook_id, mine.delivery_id,
                       mine.project_id)
    async with httpx.AsyncClient(base_url=platform.url, headers=mine.key.headers, timeout=30) as api, \
            dashboard(platform.url, mine.key.secret) as (session, csrf):
        for name, route in ROUTES.items():
            if route.guard not in ("key", "session") or not name.startswith("GET"):
                continue
            http = api if route.guard == "key" else session
            values = {"csrf": csrf, "model_id": STUB_MODEL, "adapter_id": mine.adapter_id, "key_id": mine.key.key_id,
                      "adapter_name": mine.adapter_name, "checkpoint_id": mine.checkpoint_id,
                      "invoice_id": mine.invoice_id, "response_id": mine.response_id, "file_id": mine.file_id,
                      "fine_tuning_job_id": mine.job_id, "batch_id": mine.batch_id,
                      "webhook_endpoint_id": mine.webhook_id, "project_id": mine.project_id}
            answer = await _send(http, name, route, values)
            assert answer.status_code == 200, (name, answer.status_code, answer.text[:300])
            assert not [s for s in secrets_of_theirs if s in answer.text], name
            if name not in SHOWS_NO_OBJECT:  # so a page that shows nothing at all cannot pass for a safe one
                assert [s for s in secrets_of_mine if s in answer.text], f"{name} shows none of the caller's objects"


# ---- scopes -----------------------------------------------------------------------------------


async def _keys_for_scopes(db, tenant_id: str, extra: tuple[str, ...] = ()) -> dict[str, tuple[TenantKey, set[str]]]:
    """Per scope s: "only:s" holds s alone, "all-but:s" every other scope (and ``extra`` always)."""
    service = TenancyService(db)
    keys = {}
    for scope in ALL_SCOPES:
        if scope in extra:
            continue
        for label, scopes in ((f"only:{scope}", {scope, *extra}), (f"all-but:{scope}", set(ALL_SCOPES) - {scope})):
            key = await service.create_key(tenant_id, name=label, scopes=sorted(scopes))
            keys[label] = (TenantKey(tenant_id, key.id, key.secret), scopes)
    return keys


def _refused_for_scope(answer: httpx.Response, scope: str) -> bool:
    if answer.status_code != 403:
        return False
    if answer.headers.get("content-type", "").startswith("application/json"):
        error = answer.json()["error"]
        return error["type"] == "permission_error" and scope in error["message"]
    return f"lacks the &#39;{scope}&#39; scope" in answer.text  # the dashboard's page says which


async def test_every_scope_on_every_api_route(platform, db):
    owner = await _tenant(platform, db, "scopes")
    keys = await _keys_for_scopes(db, owner.key.tenant_id)
    # A key to revoke that even the key holding only keys:write may revoke (it holds no more).
    target = await TenancyService(db).create_key(owner.key.tenant_id, scopes=["keys:write"])
    values = {"key_id": target.id, "adapter_id": ids.new_id("adp"), "invoice_id": owner.invoice_id,
              "model_id": STUB_MODEL, "response_id": ids.new_id("resp"), "file_id": ids.file_id(),
              "fine_tuning_job_id": ids.fine_tuning_job_id(), "batch_id": ids.batch_id(),
              "webhook_endpoint_id": ids.new_id("we"), "delivery_id": ids.new_id("whd"),
              "project_id": ids.new_id("proj")}
    routes = {name: route for name, route in ROUTES.items() if route.guard == "key"}
    for label, (key, scopes) in keys.items():
        async with httpx.AsyncClient(base_url=platform.url, headers=key.headers, timeout=30) as http:
            for name, route in routes.items():
                answer = await _send(http, name, route, values)
                if route.scope in scopes:
                    # Not refused, and not failed either: a 5xx is no answer at all.
                    assert answer.status_code != 403 and answer.status_code < 500, (name, label, answer.text[:300])
                else:
                    assert _refused_for_scope(answer, route.scope), (name, label, answer.status_code,
                                                                    answer.text[:300])
    async with httpx.AsyncClient(base_url=platform.url, timeout=30) as anonymous:
        for name, route in routes.items():
            answer = await _send(anonymous, name, route, values)
            assert answer.status_code == 401 and answer.json()["error"]["type"] == "authentication_error", name


async def test_every_scope_on_every_dashboard_page(platform, db):
    owner = await _tenant(platform, db, "pages")
    keys = await _keys_for_scopes(db, owner.key.tenant_id, extra=("dashboard",))
    target = await TenancyService(db).create_key(owner.key.tenant_id, scopes=["keys:write"])
    pages = {name: route for name, route in ROUTES.items() if route.guard in ("session", "operator_session")}
    for label, (key, scopes) in keys.items():
        async with dashboard(platform.url, key.secret) as (http, csrf):
            for name, route in pages.items():
                values = {"csrf": csrf, "key_id": target.id, "adapter_id": ids.new_id("adp"),
                          "invoice_id": owner.invoice_id, "fine_tuning_job_id": ids.fine_tuning_job_id(),
                          "batch_id": ids.batch_id()}
                answer = await _send(http, name, route, values)
                if route.guard == "operator_session":
                    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/admin/login", name
                elif route.scope is None or route.scope in scopes:
                    # Not refused, and not failed either: a 5xx is no answer at all.
                    assert answer.status_code != 403 and answer.status_code < 500, (name, label, answer.text[-500:])
                    if answer.status_code == 200 and name.startswith("GET"):
                        assert answer.headers["content-type"] == "text/html; charset=utf-8", name
                else:
                    assert _refused_for_scope(answer, route.scope), (name, label, answer.status_code,
                                                                    answer.text[-500:])
    async with httpx.AsyncClient(base_url=platform.url, timeout=30) as anonymous:
        for name, route in pages.items():
            answer = await _send(anonymous, name, route, {"csrf": "x", "key_id": "key_x", "adapter_id": "adp_x",
                                                          "invoice_id": "in_x", "fine_tuning_job_id": "ftjob-x",
                                                          "batch_id": "batch_x"})
            assert answer.status_code == 303 and answer.headers["location"].endswith("/login"), name


# ---- the operator API ---------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["valid", "malformed"])
async def test_the_operator_api_answers_only_the_admin_token(platform, db, body):
    owner = await _tenant(platform, db, "operator")
    values = {"tenant_id": owner.key.tenant_id, "key_id": owner.key.key_id, "invoice_id": owner.invoice_id,
              "adapter_id": owner.adapter_id}
    credentials = {"no key": {}, "a tenant's all-scope key": owner.key.headers,
                   "a wrong token": {"Authorization": f"Bearer {random_token(32)}"},
                   "the token's prefix": {"Authorization": f"Bearer {platform.admin_token[:-1]}"}}
    for name, route in ROUTES.items():
        if route.guard != "admin":
            continue
        method, path, kwargs = _call(name, route, values)
        if body == "malformed" and "json" in kwargs:
            kwargs = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
        async with httpx.AsyncClient(base_url=platform.url, timeout=30) as http:
            for who, headers in credentials.items():
                answer = await http.request(method, path, **{**kwargs, "headers": {**kwargs.get("headers", {}),
                                                                                  **headers}})
                assert answer.status_code == 401, (name, who, body, answer.status_code, answer.text[:300])
                assert answer.json()["error"]["type"] == "authentication_error", (name, who)
            admitted = await http.request(method, path, **{**kwargs, "headers": {**kwargs.get("headers", {}),
                                                                                **platform.admin_headers}})
            assert admitted.status_code != 401, (name, admitted.text[:300])
            assert admitted.status_code < 500, (name, admitted.text[:300])


# ---- the audit log: every change leaves exactly one row, with its actor ----------------------------

# Every route that is not a GET, and what it records when it succeeds (None: not a change the log
# records — inference, whose record is the ledger). A route missing here fails the test below.
AUDIT_EVENTS: dict[str, str | None] = {
    "POST /v1/chat/completions": None, "POST /v1/completions": None, "POST /v1/embeddings": None,
    "POST /v1/responses": None,
    "DELETE /v1/responses/{response_id}": "response.deleted",
    "DELETE /v1/models/{model_id}": "model.deleted",
    "POST /v1/files": "file.created", "DELETE /v1/files/{file_id}": "file.deleted",
    "POST /v1/fine_tuning/jobs": "fine_tuning.job.created",
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel": "fine_tuning.job.cancelled",
    "POST /v1/batches": "batch.created", "POST /v1/batches/{batch_id}/cancel": "batch.cancelled",
    "POST /v1/keys": "api_key.created", "DELETE /v1/keys/{key_id}": "api_key.deleted",
    "POST /v1/adapters": "adapter.created", "DELETE /v1/adapters/{adapter_id}": "adapter.deleted",
    "POST /admin/tenants": "organization.created", "PATCH /admin/tenants/{tenant_id}": "organization.updated",
    "POST /admin/tenants/{tenant_id}/keys": "api_key.created",
    "POST /admin/tenants/{tenant_id}/credits": "credit.granted",
    "PATCH /admin/keys/{key_id}": "rate_limit.updated", "POST /admin/prices": "price.created",
    "POST /admin/adapters/{adapter_id}/pin": "adapter.pinned",
    "DELETE /admin/adapters/{adapter_id}/pin": "adapter.unpinned",
    "POST /dashboard/keys": "api_key.created", "POST /dashboard/keys/{key_id}/revoke": "api_key.deleted",
    "POST /dashboard/adapters/upload": "adapter.created",
    "POST /dashboard/adapters/{adapter_id}/delete": "adapter.deleted",
    "POST /dashboard/fine-tuning": "fine_tuning.job.created",
    "POST /dashboard/fine-tuning/files": "file.created",
    "POST /dashboard/fine-tuning/{fine_tuning_job_id}/cancel": "fine_tuning.job.cancelled",
    "POST /dashboard/batches/{batch_id}/cancel": "batch.cancelled",
    "POST /v1/webhook_endpoints": "webhook_endpoint.created",
    "POST /v1/organization/projects": "project.created",
    "POST /v1/organization/projects/{project_id}": "project.updated",
    "POST /v1/organization/projects/{project_id}/archive": "project.archived",
    "POST /v1/webhook_endpoints/{webhook_endpoint_id}": "webhook_endpoint.updated",
    "DELETE /v1/webhook_endpoints/{webhook_endpoint_id}": "webhook_endpoint.deleted",
    "POST /v1/webhook_endpoints/{webhook_endpoint_id}/rotate_secret": "webhook_endpoint.secret_rotated",
    "POST /v1/webhook_endpoints/{webhook_endpoint_id}/test": "webhook_endpoint.tested",
    "POST /v1/webhook_endpoints/{webhook_endpoint_id}/deliveries/{delivery_id}/replay": "webhook_delivery.replayed",
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/pause": "fine_tuning.job.paused",
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/resume": "fine_tuning.job.resumed",
    "PUT /v1/adapters/{adapter_name}/aliases/{alias}": "adapter_alias.updated",
    "DELETE /v1/adapters/{adapter_name}/aliases/{alias}": "adapter_alias.deleted",
    "POST /v1/adapters/{adapter_name}/aliases/{alias}/rollback": "adapter_alias.rolled_back",
    "POST /dashboard/adapters/{adapter_name}/aliases/{alias}/rollback": "adapter_alias.rolled_back",
}
HOLD = "audit-walk-hold"  # a batch line holding this text waits at the stub worker, so its batch can be cancelled


def test_every_change_route_is_in_the_audit_walk():
    changes = {name for name in ROUTES if not name.startswith("GET ")}
    assert changes == AUDIT_EVENTS.keys(), sorted(changes ^ AUDIT_EVENTS.keys())
    handlers = _app_handlers()
    for name, event in AUDIT_EVENTS.items():
        assert handlers[name].opt.get("audit") == (event or False), name  # what the recorder keys on


async def _adapter_upload(db, tmp_path, label: str) -> tuple[str, list[tuple[str, tuple[str, bytes]]]]:
    """A valid PEFT adapter for a base model of its own (so the upload passes validation): (base, files)."""
    import msgspec
    from lorafleet.db import queries

    from tests.adapter_factory import TINY, lora_config, write_adapter

    base = f"audit-tiny-{random_token(6)}"
    await db.execute(queries.upsert_base_model, ids.base_model_id(), base, 2048, msgspec.to_builtins(TINY), 16,
                     "generate")
    folder = write_adapter(tmp_path / label, config=lora_config(8, ["q_proj", "v_proj"], base=base))
    return base, [("file", (path.name, path.read_bytes())) for path in sorted(folder.iterdir())]


async def _prepared(name: str, api: httpx.AsyncClient, platform, db, owner: Tenant, tmp_path) -> dict[str, Any]:
    """The values and request with which ``name`` succeeds on fresh objects of ``owner``'s."""
    tenant_id = owner.key.tenant_id

    async def file(purpose: str = "fine-tune", content: bytes = b"{}\n") -> str:
        made = await api.post("/v1/files", files={"file": ("t.jsonl", content)}, data={"purpose": purpose})
        assert made.status_code == 200, made.text
        return made.json()["id"]

    async def free_job_slots() -> None:  # a tenant may have only a few open jobs: cancel the earlier ones
        for open_job in (await api.get("/v1/fine_tuning/jobs", params={"limit": 100})).json()["data"]:
            if open_job["status"] in ("validating_files", "queued", "running"):
                cancelled = await api.post(f"/v1/fine_tuning/jobs/{open_job['id']}/cancel")
                assert cancelled.status_code == 200, cancelled.text

    async def job() -> str:
        await free_job_slots()
        made = await api.post("/v1/fine_tuning/jobs", json={"model": STUB_MODEL, "training_file": await file()})
        assert made.status_code == 200, made.text
        return made.json()["id"]

    async def batch() -> str:
        line = {"custom_id": "held", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": STUB_MODEL, "messages": [{"role": "user", "content": HOLD}], "max_tokens": 2}}
        made = await api.post("/v1/batches", json={"input_file_id": await file("batch", json.dumps(line).encode()),
                                                   "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        assert made.status_code == 200, made.text
        return made.json()["id"]

    async def adapter() -> str:
        return await insert_adapter(db, tenant_id, platform.base_model_id, f"audit-{random_token(8)}")

    async def key() -> str:
        made = await api.post("/v1/keys", json={"name": "to-revoke", "scopes": ["inference"]})
        assert made.status_code == 201, made.text
        return made.json()["id"]

    async def stored_response() -> str:
        made = await api.post("/v1/responses", json={"model": STUB_MODEL, "input": "x", "max_output_tokens": 2})
        assert made.status_code == 200, made.text
        return made.json()["id"]

    async def endpoint() -> str:  # at a stub worker: the sample of /test gets an answer (whatever its status)
        made = await api.post("/v1/webhook_endpoints", json={"url": platform.workers[0].url + "/hook", "name": "walk",
                                                             "event_types": ["batch.failed"]})
        assert made.status_code == 200, made.text
        return made.json()["id"]

    async def project() -> str:
        made = await api.post("/v1/organization/projects", json={"name": "walk"})
        assert made.status_code == 200, made.text
        return made.json()["id"]

    async def aliased(moves: int) -> str:  # an adapter whose `prod` alias was set `moves` times
        name = f"audit-{random_token(8)}"
        await insert_adapter(db, tenant_id, platform.base_model_id, name)
        for _ in range(moves):
            moved = await api.put(f"/v1/adapters/{name}/aliases/prod", json={"versions": [{"version": 1}]})
            assert moved.status_code == 200, moved.text
        return name

    async def queued_job() -> str:  # no trainer runs here: its validation is taken as done
        job_id = await job()
        await db.execute("UPDATE fine_tuning_jobs SET status = 'queued' WHERE id = $1", job_id)
        return job_id

    match name:
        case "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/pause":
            return {"values": {"fine_tuning_job_id": await queued_job()}}
        case "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/resume":
            paused = await queued_job()
            answer = await api.post(f"/v1/fine_tuning/jobs/{paused}/pause")
            assert answer.status_code == 200, answer.text
            return {"values": {"fine_tuning_job_id": paused}}
        case "PUT /v1/adapters/{adapter_name}/aliases/{alias}":
            return {"values": {"adapter_name": await aliased(0), "alias": "prod"}}
        case "DELETE /v1/adapters/{adapter_name}/aliases/{alias}":
            return {"values": {"adapter_name": await aliased(1), "alias": "prod"}}
        case name if name.endswith("/aliases/{alias}/rollback"):
            return {"values": {"adapter_name": await aliased(2), "alias": "prod"}}
        case "POST /v1/organization/projects/{project_id}" | "POST /v1/organization/projects/{project_id}/archive":
            return {"values": {"project_id": await project()}}
        case "POST /v1/webhook_endpoints/{webhook_endpoint_id}/deliveries/{delivery_id}/replay":
            return {"values": {"webhook_endpoint_id": owner.webhook_id, "delivery_id": owner.delivery_id}}
        case name if "{webhook_endpoint_id}" in name:
            return {"values": {"webhook_endpoint_id": await endpoint()}}
        case "DELETE /v1/responses/{response_id}":
            return {"values": {"response_id": await stored_response()}}
        case "DELETE /v1/models/{model_id}":
            adapter_id = await adapter()
            return {"values": {"model_id": await db.fetchval("SELECT name FROM adapters WHERE id = $1", adapter_id)}}
        case "DELETE /v1/files/{file_id}":
            return {"values": {"file_id": await file()}}
        case "POST /v1/fine_tuning/jobs" | "POST /dashboard/fine-tuning":
            await free_job_slots()
            return {"values": {"training_file": await file()}}
        case "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel" | \
                "POST /dashboard/fine-tuning/{fine_tuning_job_id}/cancel":
            return {"values": {"fine_tuning_job_id": await job()}}
        case "POST /v1/batches":
            return {"values": {"input_file_id": await file("batch", json.dumps({
                "custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": STUB_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}}).encode())}}
        case "POST /v1/batches/{batch_id}/cancel" | "POST /dashboard/batches/{batch_id}/cancel":
            return {"values": {"batch_id": await batch()}}
        case "DELETE /v1/keys/{key_id}" | "POST /dashboard/keys/{key_id}/revoke" | "PATCH /admin/keys/{key_id}":
            return {"values": {"key_id": await key()}}
        case "DELETE /v1/adapters/{adapter_id}" | "POST /dashboard/adapters/{adapter_id}/delete" | \
                "POST /admin/adapters/{adapter_id}/pin" | "DELETE /admin/adapters/{adapter_id}/pin":
            return {"values": {"adapter_id": await adapter()}}
        case "POST /v1/adapters" | "POST /dashboard/adapters/upload":
            base, files = await _adapter_upload(db, tmp_path, random_token(6))
            request = {"files": files, "data": {"name": f"up-{random_token(6)}", "base_model": base}}
            return {"values": {}, "request": request}
        case "POST /admin/tenants/{tenant_id}/keys":
            return {"values": {"tenant_id": tenant_id}, "request": {"json": {"scopes": ["inference"]}}}
        case "PATCH /admin/tenants/{tenant_id}" | "POST /admin/tenants/{tenant_id}/credits":
            return {"values": {"tenant_id": tenant_id}}
        case "POST /admin/prices":
            from lorafleet.db import queries

            base = f"audit-priced-{random_token(6)}"
            await db.execute(queries.upsert_base_model, ids.base_model_id(), base, 2048, {}, 16, "generate")
            return {"values": {}, "request": {"json": {"base_model": base, "prompt_micro_usd_per_mtok": 1,
                                                       "completion_micro_usd_per_mtok": 2}}}
    return {"values": {}}


async def test_every_change_leaves_exactly_one_audit_row_with_its_actor(platform, db, tmp_path):
    """Each route of the matrix that changes something, called so it succeeds: exactly one audit row, with
    the request's id, the event type, the actor (the key, the dashboard session of a key, the operator)
    and the tenant; inference leaves none; no secret a change handed out is anywhere in the table."""
    owner = await _tenant(platform, db, "audited")
    secrets_handed_out = [owner.key.secret]
    for worker in platform.workers:
        worker.behaviour.hold_marker = HOLD
        worker.behaviour.release.clear()
    try:
        async with httpx.AsyncClient(base_url=platform.url, headers=owner.key.headers, timeout=60) as api, \
                httpx.AsyncClient(base_url=platform.url, headers=platform.admin_headers, timeout=60) as operator, \
                dashboard(platform.url, owner.key.secret) as (session, csrf):
            for name, event in AUDIT_EVENTS.items():
                route = ROUTES[name]
                prepared = await _prepared(name, api, platform, db, owner, tmp_path)
                values = {"csrf": csrf, **prepared["values"]}
                method, path, kwargs = _call(name, route, values)
                if "request" in prepared:
                    kwargs = prepared["request"]
                if route.guard == "session" and "files" in kwargs:
                    kwargs = {**kwargs, "headers": {"x-csrf-token": csrf}}
                if name == "POST /dashboard/keys":
                    kwargs = {"data": {"csrf": csrf, "name": "from-the-dashboard"}}
                http = {"key": api, "admin": operator, "session": session}[route.guard]
                answer = await http.request(method, path, **kwargs)
                if event is None:  # inference (the embeddings route refuses the stub's generative model: either way)
                    assert await db.fetch("SELECT 1 FROM audit_log WHERE request_id = $1",
                                          answer.headers["x-request-id"]) == [], name
                    continue
                assert answer.status_code < 400, (name, answer.status_code, answer.text[:300])
                if answer.headers.get("content-type", "").startswith("application/json"):
                    for field_name in ("secret", "signing_secret"):
                        secret = answer.json().get(field_name) if isinstance(answer.json(), dict) else None
                        if secret:
                            secrets_handed_out.append(secret)
                if name == "POST /dashboard/keys":
                    secrets_handed_out.append(http.cookies.get(NEW_KEY_COOKIE, path="/dashboard/keys/new") or "")
                rows = await db.fetch("SELECT * FROM audit_log WHERE request_id = $1", answer.headers["x-request-id"])
                assert len(rows) == 1, (name, rows)
                row = rows[0]
                assert row["type"] == event and row["status"] == answer.status_code, (name, dict(row))
                expected_actor = {"key": ("api_key", owner.key.key_id, None),
                                  "admin": ("operator", "operator", None),
                                  "session": ("session", row["actor_id"], owner.key.key_id)}[route.guard]
                assert (row["actor_kind"], row["actor_id"], row["actor_key_id"]) == expected_actor, (name, dict(row))
                assert row["actor_id"], name
                expected_tenant = None if name in ("POST /admin/prices",) else \
                    answer.json()["id"] if name == "POST /admin/tenants" else tenant_id_of(owner)
                assert row["tenant_id"] == expected_tenant, (name, dict(row))
                # The object a path names last is the one changed (a delivery of an endpoint: the delivery).
                in_path = [values[label] for label in re.findall(r"{(\w+)}", name)][::-1]
                if answer.headers.get("content-type", "").startswith("application/json") and "id" in answer.json() \
                        and event.endswith((".created", ".granted")):
                    assert row["resource_id"] == str(answer.json()["id"]), (name, dict(row))
                elif "{alias}" in name:  # an alias is named with its adapter
                    assert row["resource_id"] == f"{values['adapter_name']}@{values['alias']}", (name, dict(row))
                elif in_path:
                    assert row["resource_id"] == in_path[0], (name, dict(row))
                else:  # a dashboard form's redirect: the object it made
                    assert row["resource_id"].startswith(("key_", "ftjob-")), (name, dict(row))
                assert row["ip_address"] == "127.0.0.1" and row["user_agent"].startswith("python-httpx"), name
    finally:
        for worker in platform.workers:
            worker.behaviour.hold_marker = None
            worker.behaviour.release.set()
    table = "\n".join(str(dict(row)) for row in await db.fetch("SELECT * FROM audit_log"))
    leaked = [secret for secret in secrets_handed_out if secret and secret.split(":")[-1] in table]
    assert not leaked, "a secret is in the audit log"


def tenant_id_of(tenant: Tenant) -> str:
    return tenant.key.tenant_id


async def test_refused_operator_calls_are_recorded_and_refused_tenant_calls_are_not(platform, db):
    owner = await _tenant(platform, db, "refused")
    async with httpx.AsyncClient(base_url=platform.url, timeout=30) as http:
        wrong = await http.post(f"/admin/tenants/{owner.key.tenant_id}/credits", json={"amount_micro_usd": 1},
                                headers={"Authorization": f"Bearer {random_token(32)}", "User-Agent": "probe/1"})
        listing = await http.get("/admin/audit_logs", headers=owner.key.headers)  # a tenant's key: not the token
        limited = await TenancyService(db).create_key(owner.key.tenant_id, scopes=["inference"])
        no_scope = await http.post("/v1/keys", json={"name": "x"}, headers={"Authorization": f"Bearer {limited.secret}"})
    assert wrong.status_code == listing.status_code == 401 and no_scope.status_code == 403
    for answer, path in ((wrong, f"/admin/tenants/{owner.key.tenant_id}/credits"), (listing, "/admin/audit_logs")):
        rows = await db.fetch("SELECT * FROM audit_log WHERE request_id = $1", answer.headers["x-request-id"])
        assert len(rows) == 1, rows
        assert (rows[0]["type"], rows[0]["actor_kind"], rows[0]["tenant_id"], rows[0]["status"]) == \
            ("admin.authorization_failed", "anonymous", None, 401), dict(rows[0])
        assert rows[0]["details"]["path"] == path
    assert await db.fetch("SELECT 1 FROM audit_log WHERE request_id = $1", no_scope.headers["x-request-id"]) == []
    assert await db.fetchval("SELECT count(*) FROM credit_grants WHERE tenant_id = $1", owner.key.tenant_id) == 0

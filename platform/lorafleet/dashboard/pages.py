"""The dashboard under ``/dashboard``: server-rendered pages over the same services as the API.

Every number on a page comes from the functions the API uses (``usage_report``, balances,
invoices), so the dashboard and ``/v1/usage`` can never disagree. Pages never show another
tenant's data: every query takes the session's tenant id.
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec
from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import FromPath
from litestar.response import Redirect, Stream
from lorafleet.billing.accounts import AccountService
from lorafleet.billing.invoices import get_invoice, list_invoices
from lorafleet.billing.overview import (
    adapter_activity,
    key_last_used,
    month_start,
    tenant_overview,
)
from lorafleet.billing.usage import parse_query, parse_time, usage_csv, usage_report
from lorafleet.core.errors import InvalidRequest, LoraFleetError, NotFound, PermissionDenied, RateLimited
from lorafleet.dashboard.charts import loss_curve, stacked_bars, usd
from lorafleet.dashboard.sessions import (
    COOKIE,
    SESSION_SECONDS,
    DashboardSession,
    close_session,
    find_session,
    open_session,
    use_login_link,
)
from lorafleet.finetune.jobs import OPEN_STATUSES, JobCreate
from lorafleet.gateway.adapters.operations import delete_adapter, upload_adapter
from lorafleet.gateway.audit.recorder import audited
from lorafleet.gateway.audit.service import list_events
from lorafleet.gateway.auth import verify_admin_token
from lorafleet.gateway.context import context_of
from lorafleet.gateway.dependencies import AppServices, Context, client_address
from lorafleet.gateway.files.controller import file_stream, receive_file
from lorafleet.gateway.fleet.catalog import ResolvedModel, require_task
from lorafleet.gateway.fleet.views import worker_views
from lorafleet.gateway.services import Services
from lorafleet.tenancy.keys import ALL_SCOPES, display_prefix
from lorafleet.tenancy.service import TenancyService

_TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                         autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)
_TEMPLATES.filters["usd"] = usd
_TEMPLATES.filters["num"] = lambda n: f"{n:,}" if n is not None else "—"
_TEMPLATES.filters["when"] = lambda t: t.strftime("%Y-%m-%d %H:%M UTC") if t else "never"
_TEMPLATES.filters["day"] = lambda t: t.strftime("%Y-%m-%d") if t else "never"
_TEMPLATES.filters["stamp"] = lambda s: dt.datetime.fromtimestamp(s, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if s else "—"
# A date-time picker's value has no offset; the usage form labels its fields UTC.
_PICKER_VALUE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?")


def _picker_to_rfc3339(value: str) -> str:
    """What a datetime-local field sends, as the RFC 3339 time /v1/usage takes; anything else as it came."""
    if not _PICKER_VALUE.fullmatch(value):
        return value
    return value + ("Z" if value.count(":") == 2 else ":00Z")


def _rfc3339_to_picker(value: str | None) -> str:
    """The other way, to show a chosen time in the picker (which wants YYYY-MM-DDTHH:MM)."""
    try:
        return parse_time(value, "time").strftime("%Y-%m-%dT%H:%M") if value else ""
    except LoraFleetError:
        return ""


_TEMPLATES.filters["picker"] = _rfc3339_to_picker
LOGIN_CSRF_COOKIE = "lf_login_csrf"
NEW_KEY_COOKIE = "lf_new_key"  # the just-created secret, for the one page that shows it


class NotSignedIn(Exception):
    """No valid session: the page sends the browser to the sign-in form."""


class CsrfRejected(Exception):
    pass


def render(template: str, status: int = 200, **context: Any) -> Response[str]:
    html = _TEMPLATES.get_template(template).render(**context)
    # Litestar appends "; charset=utf-8" to text/* types itself (given here too, it was sent twice).
    return Response(html, status_code=status, media_type="text/html",
                    headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                             "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'"})


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


async def _session(request: Request, services: Services, *, operator: bool = False) -> DashboardSession:
    session = await find_session(services.pool, request.cookies.get(COOKIE))
    if session is None or session.operator != operator:
        raise NotSignedIn()
    context = context_of(request.scope)  # who acts, for the audit log
    context.session_id, context.operator = session.token_hash.hex()[:16], session.operator
    context.tenant_id, context.key_id = session.tenant_id, session.key_id
    return session


async def _form(request: Request, session: DashboardSession) -> dict[str, Any]:
    form = await request.form()
    if not session.csrf_ok(form.get("csrf") or request.headers.get("x-csrf-token")):
        raise CsrfRejected()
    return dict(form)


def _signed_in(request: Request, token: FromPath[str], target: str) -> Response[Any]:
    response = Redirect(target, status_code=303)
    response.set_cookie(Cookie(key=COOKIE, value=token, path="/dashboard", httponly=True, samesite="lax",
                               secure=_secure(request), max_age=SESSION_SECONDS))
    return response


def _actor_label(actor: dict[str, Any]) -> str:
    match actor["type"]:
        case "api_key":
            return f"key {actor['api_key']['id']}"
        case "session":
            return f"dashboard ({actor['session']['api_key_id'] or 'sign-in link'})"
        case "operator":
            return "the operator"
    return "anonymous"


def _page(session: DashboardSession, active: str, **context: Any) -> dict[str, Any]:
    return {"session": session, "active": active, "csrf": session.csrf_token, **context}


def _not_signed_in(request: Request, _: NotSignedIn) -> Response[Any]:
    operator = request.url.path.startswith("/dashboard/admin")
    return Redirect("/dashboard/admin/login" if operator else "/dashboard/login", status_code=303)


def _csrf_rejected(_: Request, __: CsrfRejected) -> Response[str]:
    return render("error.html", status=403, title="Form expired",
                  message="This form's security token is missing or stale. Reload the page and try again.")


def _lorafleet_error(_: Request, exc: LoraFleetError) -> Response[str]:
    return render("error.html", status=exc.status_code, title="Something is not right", message=exc.message)


async def _batch_file(request: Request, services: Services, batch_id: str, kind: str) -> Stream:
    """A batch's output or error file, as a download (404: another tenant's batch, or no such file yet)."""
    session = await _session(request, services)
    session.require("inference")
    batch = await services.batches.get(session.tenant_id, batch_id)
    file_id = batch.output_file_id if kind == "output" else batch.error_file_id
    if file_id is None:
        raise NotFound(f"batch {batch.id} has no {kind} file", param="batch_id")
    return await file_stream(services, session.tenant_id, file_id, filename=f"{batch.id}.{kind}.jsonl")


class DashboardController(Controller):
    path = "/dashboard"
    include_in_schema = False
    exception_handlers = {NotSignedIn: _not_signed_in, CsrfRejected: _csrf_rejected, LoraFleetError: _lorafleet_error}

    # ---- signing in and out ---------------------------------------------------------------

    @get("/login")
    async def login_form(self, request: Request) -> Response[str]:
        return _login_page(request, None)

    @post("/login", opt=audited(False))  # signing in changes nothing administered; the session is the actor after
    async def login(self, request: Request, services: AppServices) -> Response[Any]:
        form = await request.form()
        if not _login_csrf_ok(request, form.get("csrf")):
            return _login_page(request, "The sign-in form expired; please try again.", status=403)
        try:
            principal = await services.auth.authenticate(f"Bearer {(form.get('api_key') or '').strip()}",
                                                         client_address(request))
        except RateLimited:
            return _login_page(request, "Too many failed sign-ins from this address; wait a minute.", status=429)
        except LoraFleetError:
            return _login_page(request, "That API key is not valid, or it was revoked.", status=401)
        if "dashboard" not in principal.scopes:
            return _login_page(request, "That API key lacks the dashboard scope.", status=403)
        token = await open_session(services.pool, principal.tenant_id, principal.key_id)
        return _signed_in(request, token, "/dashboard")

    @get("/login/{token:str}")
    async def login_link(self, token: FromPath[str], request: Request, services: AppServices) -> Response[Any]:
        tenant_id = await use_login_link(services.pool, token)
        if tenant_id is None:
            return _login_page(request, "That sign-in link has expired or was already used.", status=401)
        return _signed_in(request, await open_session(services.pool, tenant_id, None), "/dashboard")

    @post("/logout", opt=audited(False))
    async def logout(self, request: Request, services: AppServices) -> Response[Any]:
        session = await find_session(services.pool, request.cookies.get(COOKIE))
        if session is not None:
            await _form(request, session)
            await close_session(services.pool, session)
        response = Redirect("/dashboard/admin/login" if session and session.operator else "/dashboard/login",
                            status_code=303)
        response.delete_cookie(COOKIE, path="/dashboard")
        return response

    # ---- tenant pages ---------------------------------------------------------------------

    @get("/")
    async def overview(self, request: Request, services: AppServices) -> Response[str]:
        session = await _session(request, services)
        now = dt.datetime.now(dt.UTC)
        # Each part shows only what the signed-in key may read.
        balance = (await AccountService(services.pool, services.settings.currency).balance(session.tenant_id)
                   if session.can("billing:read") else None)
        overview = await tenant_overview(services.pool, session.tenant_id, now) if session.can("usage:read") else None
        chart = (stacked_bars(overview.days, overview.daily_cost, "Daily cost, last 30 days, by model and adapter")
                 if overview else "")
        return render("overview.html", **_page(session, "overview", balance=balance, overview=overview, chart=chart))

    @get("/usage")
    async def usage(self, request: Request, services: AppServices) -> Response[str]:
        session = await _session(request, services)
        session.require("usage:read")
        params = {k: v for k, v in request.query_params.items() if v and k != "format"}
        params.setdefault("bucket", "day")
        for field in ("start", "end"):
            if field in params:
                params[field] = _picker_to_rfc3339(params[field])
        try:
            query = parse_query(params, dt.datetime.now(dt.UTC))
        except LoraFleetError as exc:
            return render("usage.html", status=400, **_page(session, "usage", error=exc.message, report=None,
                                                            params=params, chart="", csv_link=""))
        report = await usage_report(services.pool, session.tenant_id, query, services.settings.currency)
        if request.query_params.get("format") == "csv":
            return Response(usage_csv(report), media_type="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="usage.csv"'})
        buckets = sorted({row.bucket_start for row in report.data})
        by: dict[str, dict[dt.date, int]] = {}
        for row in report.data:
            label = row.adapter or row.model or row.api_key_id or "all"
            by.setdefault(label, {})
            by[label][row.bucket_start] = by[label].get(row.bucket_start, 0) + row.cost_micro_usd
        chart = stacked_bars(buckets, by, "Cost per bucket") if buckets else ""
        return render("usage.html", **_page(session, "usage", error=None, report=report, params=params, chart=chart,
                                             csv_link="/dashboard/usage?" + urlencode({**params, "format": "csv"})))

    @get("/keys")
    async def keys(self, request: Request, services: AppServices) -> Response[str]:
        session = await _session(request, services)
        session.require("keys:read")
        return await _keys_page(session, services)

    @post("/keys", opt=audited("api_key.created"))
    async def create_key(self, request: Request, services: AppServices) -> Response[str]:
        session = await _session(request, services)
        form = await _form(request, session)
        session.require("keys:write")
        # No box ticked: the signed-in key's own scopes, never more (the same rule as POST /v1/keys).
        scopes = [s for s in ALL_SCOPES if form.get(f"scope_{s}")] or None
        try:
            created = await TenancyService(services.pool).create_key(session.tenant_id, name=(form.get("name") or "")[:200],
                                                                     scopes=scopes, authority=session.authority)
        except LoraFleetError as exc:
            return await _keys_page(session, services, error=exc.message, status=400)
        # Post/redirect/get, so reloading the page cannot create a second key. The secret rides to the
        # one page that shows it in a short-lived cookie only that page reads, and that page clears it.
        context_of(request.scope).audit_resource = created.id
        response: Response[Any] = Redirect("/dashboard/keys/new", status_code=303)
        response.set_cookie(Cookie(key=NEW_KEY_COOKIE, value=f"{created.id}:{created.secret}", path="/dashboard/keys/new",
                                   httponly=True, samesite="strict", secure=_secure(request), max_age=300))
        return response

    @get("/keys/new")
    async def new_key(self, request: Request, services: AppServices) -> Response[str]:
        session = await _session(request, services)
        session.require("keys:read")
        key_id, _, secret = (request.cookies.get(NEW_KEY_COOKIE) or "").partition(":")
        keys = await TenancyService(services.pool).all_keys(session.tenant_id)
        created = next((k for k in keys if k.id == key_id and secret and display_prefix(secret) == k.display_prefix),
                       None)
        response = await _keys_page(session, services, keys=keys,
                                    created={"id": created.id, "name": created.name, "secret": secret} if created else None)
        response.delete_cookie(NEW_KEY_COOKIE, path="/dashboard/keys/new")
        return response

    @post("/keys/{key_id:str}/revoke", opt=audited("api_key.deleted"))
    async def revoke_key(self, key_id: FromPath[str], request: Request, services: AppServices) -> Response[Any]:
        session = await _session(request, services)
        await _form(request, session)
        session.require("keys:write")
        await TenancyService(services.pool).revoke_key(key_id, tenant_id=session.tenant_id, authority=session.authority)
        return Redirect("/dashboard/keys", status_code=303)

    @get("/adapters")
    async def adapters(self, request: Request, services: AppServices) -> Response[str]:
        session = await _session(request, services)
        session.require("adapters:read")
        adapters = await services.adapters.list_all(session.tenant_id)
        activity = await adapter_activity(services.pool, session.tenant_id, month_start(dt.datetime.now(dt.UTC)))
        served = sorted({w.base_model_name for w in services.registry.workers()})  # what a worker can serve
        aliases = await services.aliases.list_all(session.tenant_id)
        day = await services.adapters.version_stats(dt.datetime.now(dt.UTC) - dt.timedelta(hours=24),
                                                    tenant_id=session.tenant_id, limit=100_000)
        return render("adapters.html", **_page(session, "adapters", adapters=adapters, activity=activity,
                                                aliases=aliases, day={s.adapter_id: s for s in day},
                                                base_models=served,
                                                max_upload=services.settings.max_upload_bytes))

    @post("/adapters/{adapter_name:str}/aliases/{alias:str}/rollback", opt=audited("adapter_alias.rolled_back"))
    async def rollback_alias(self, adapter_name: FromPath[str], alias: FromPath[str], request: Request,
                             services: AppServices) -> Response[Any]:
        """The alias back where it was before its latest move (as POST /v1/adapters/{name}/aliases/{alias}/rollback)."""
        session = await _session(request, services)
        await _form(request, session)
        session.require("adapters:write")
        await services.aliases.rollback(session.tenant_id, adapter_name, alias, key_id=session.key_id)
        services.catalog.forget_adapter(session.tenant_id, adapter_name)
        return Redirect("/dashboard/adapters", status_code=303)

    @post("/adapters/{adapter_id:str}/delete", opt=audited("adapter.deleted"))
    async def delete_adapter(self, adapter_id: FromPath[str], request: Request, context: Context, services: AppServices) -> Response[Any]:
        session = await _session(request, services)
        await _form(request, session)
        session.require("adapters:write")
        await delete_adapter(context, services, session.tenant_id, adapter_id)
        return Redirect("/dashboard/adapters", status_code=303)

    @get("/fine-tuning")
    async def fine_tuning(self, request: Request, services: AppServices) -> Response[str]:
        session = await _session(request, services)
        session.require("adapters:read")  # as the API: fine-tuning jobs make adapters
        return await _fine_tuning_page(session, services)

    @post("/fine-tuning", opt=audited("fine_tuning.job.created"))
    async def create_fine_tuning_job(self, request: Request, services: AppServices) -> Response[Any]:
        """The page's "start a job" form: one of the tenant's ``fine-tune`` files on a served base model."""
        session = await _session(request, services)
        form = await _form(request, session)
        session.require("adapters:write")
        if session.key_id is None:  # a job is billed to the key that started it
            raise PermissionDenied("Sign in with an API key to start a fine-tuning job (a sign-in link acts "
                                   "for no key, and a job's training is billed to a key).")
        body: dict[str, Any] = {"model": form.get("model") or "", "training_file": form.get("training_file") or ""}
        if form.get("suffix"):
            body["suffix"] = form["suffix"]
        epochs = (form.get("n_epochs") or "auto").strip()
        if epochs != "auto":
            # ASCII digits only, and few: str.isdigit() accepts "²" (int() then raises) and int() refuses
            # past 4,300 digits; anything else goes to msgspec as text and is refused naming n_epochs.
            body["method"] = {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": int(epochs) if re.fullmatch(r"[0-9]{1,9}", epochs) else epochs[:40]}}}
        try:
            data = msgspec.convert(body, JobCreate)
        except msgspec.ValidationError as exc:
            where = re.search(r"at `\$\.([\w.\[\]]+)`", str(exc))
            param = where[1].replace("method.supervised.hyperparameters.", "") if where else None
            raise InvalidRequest(f"{param or 'the form'}: {str(exc).split(' - at ')[0]}", param=param) from None
        base = services.catalog.base(data.model)
        require_task(ResolvedModel(base, None), "generate", data.model)
        job = await services.fine_tuning.create(session.tenant_id, session.key_id, base.id, data)
        context_of(request.scope).audit_resource = job.id
        return Redirect(f"/dashboard/fine-tuning/{job.id}", status_code=303)

    @get("/fine-tuning/{fine_tuning_job_id:str}")
    async def fine_tuning_job(self, fine_tuning_job_id: FromPath[str], request: Request, services: AppServices
                              ) -> Response[str]:
        job_id = fine_tuning_job_id
        session = await _session(request, services)
        session.require("adapters:read")
        job = await services.fine_tuning.get(session.tenant_id, job_id)  # another tenant's: 404, like a missing one
        events = (await services.fine_tuning.events(session.tenant_id, job_id, after=None, limit=100)).data
        def series(name: str) -> list[tuple[int, float]]:
            return sorted((event.data["step"], float(event.data[name])) for event in events
                          if event.type == "metrics" and event.data and "step" in event.data
                          and event.data.get(name) is not None)

        valid = series("valid_loss")
        title = f"Training{' and validation' if valid else ''} loss of {job.id} by step"
        return render("fine_tuning_job.html", **_page(
            session, "fine-tuning", job=job, events=events, curve=loss_curve(series("train_loss"), title, valid),
            cancellable=job.status in OPEN_STATUSES))

    @post("/fine-tuning/{fine_tuning_job_id:str}/cancel", opt=audited("fine_tuning.job.cancelled"))
    async def cancel_fine_tuning_job(self, fine_tuning_job_id: FromPath[str], request: Request, services: AppServices
                                     ) -> Response[Any]:
        job_id = fine_tuning_job_id
        session = await _session(request, services)
        await _form(request, session)
        session.require("adapters:write")
        await services.fine_tuning.cancel(session.tenant_id, job_id)
        return Redirect(f"/dashboard/fine-tuning/{job_id}", status_code=303)

    @get("/batches")
    async def batches(self, request: Request, services: AppServices) -> Response[str]:
        session = await _session(request, services)
        session.require("inference")  # as the API
        batches = (await services.batches.list(session.tenant_id, after=None, limit=100)).data
        return render("batches.html", **_page(session, "batches", batches=batches))

    @get("/batches/{batch_id:str}")
    async def batch(self, batch_id: FromPath[str], request: Request, services: AppServices) -> Response[str]:
        session = await _session(request, services)
        session.require("inference")
        batch = await services.batches.get(session.tenant_id, batch_id)  # another tenant's: 404, like a missing one
        return render("batch.html", **_page(session, "batches", batch=batch,
                                            cancellable=batch.status in ("validating", "in_progress")))

    @get("/batches/{batch_id:str}/output")
    async def batch_output(self, batch_id: FromPath[str], request: Request, services: AppServices) -> Stream:
        return await _batch_file(request, services, batch_id, "output")

    @get("/batches/{batch_id:str}/errors")
    async def batch_errors(self, batch_id: FromPath[str], request: Request, services: AppServices) -> Stream:
        return await _batch_file(request, services, batch_id, "errors")

    @post("/batches/{batch_id:str}/cancel", opt=audited("batch.cancelled"))
    async def cancel_batch(self, batch_id: FromPath[str], request: Request, services: AppServices) -> Response[Any]:
        session = await _session(request, services)
        await _form(request, session)
        session.require("inference")
        await services.batches.cancel(session.tenant_id, batch_id)
        if services.dispatcher is not None:
            services.dispatcher.poke()
        return Redirect(f"/dashboard/batches/{batch_id}", status_code=303)

    @get("/audit")
    async def audit(self, request: Request, services: AppServices) -> Response[str]:
        session = await _session(request, services)
        session.require("audit_logs:read")
        after = request.query_params.get("after") or None
        page = await list_events(services.pool, tenant_id=session.tenant_id, after=after[:64] if after else None,
                                 before=None, event_types=None, actor_ids=None, resource_ids=None, since=None,
                                 until=None, limit=50)
        events = [{"when": dt.datetime.fromtimestamp(e["effective_at"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
                   "type": e["type"], "object": e[e["type"]]["id"], "ip_address": e["ip_address"],
                   "request_id": e["request_id"], "actor": _actor_label(e["actor"])} for e in page.data]
        return render("audit.html", **_page(session, "audit", events=events,
                                             next_after=page.last_id if page.has_more else None))

    @get("/invoices")
    async def invoices(self, request: Request, services: AppServices) -> Response[str]:
        session = await _session(request, services)
        session.require("billing:read")
        return render("invoices.html", **_page(session, "invoices",
                                                invoices=(await list_invoices(services.pool, session.tenant_id, limit=100)).data))

    @get("/invoices/{invoice_id:str}")
    async def invoice(self, invoice_id: FromPath[str], request: Request, services: AppServices) -> Response[str]:
        session = await _session(request, services)
        session.require("billing:read")
        found = await get_invoice(services.pool, invoice_id, session.tenant_id)
        return render("invoice.html", **_page(session, "invoices", invoice=found))

    # ---- operator view --------------------------------------------------------------------

    @get("/admin/login")
    async def admin_login_form(self, request: Request) -> Response[str]:
        return _login_page(request, None, operator=True)

    @post("/admin/login", opt=audited(False))
    async def admin_login(self, request: Request, services: AppServices) -> Response[Any]:
        form = await request.form()
        if not _login_csrf_ok(request, form.get("csrf")):
            return _login_page(request, "The sign-in form expired; please try again.", status=403, operator=True)
        try:
            verify_admin_token(services.settings.admin_token, services.auth.throttle,
                               f"Bearer {(form.get('admin_token') or '').strip()}", client_address(request))
        except RateLimited:
            return _login_page(request, "Too many failed sign-ins from this address; wait a minute.", status=429,
                               operator=True)
        except LoraFleetError:
            return _login_page(request, "That admin token is not right.", status=401, operator=True)
        return _signed_in(request, await open_session(services.pool, None, None), "/dashboard/admin")

    @get("/admin")
    async def operator(self, request: Request, services: AppServices) -> Response[str]:
        session = await _session(request, services, operator=True)
        accounts = AccountService(services.pool, services.settings.currency)
        workers = await worker_views(services.registry.workers(), services.adapters)
        return render("admin.html", **_page(session, "admin", tenants=await accounts.balances(), workers=workers.data,
                                             prices=await accounts.list_prices()))


class DashboardFileUploadController(Controller):
    """The fine-tuning page's training-file upload (XHR with upload progress, then "start a job" from it):
    mounted with the files API, where uploads get the files' body limit; purpose ``fine-tune`` only."""

    path = "/dashboard/fine-tuning/files"
    include_in_schema = False
    exception_handlers = {NotSignedIn: _not_signed_in, CsrfRejected: _csrf_rejected}

    @post("/", opt=audited("file.created"))
    async def upload_training_file(self, request: Request, services: AppServices) -> Response[Any]:
        session = await _session(request, services)
        if not session.csrf_ok(request.headers.get("x-csrf-token")):
            raise CsrfRejected()
        try:
            session.require("adapters:write")
            file = await receive_file(request, services, session.tenant_id, purposes=("fine-tune",))
        except LoraFleetError as exc:
            return Response(exc.envelope(), status_code=exc.status_code)
        return Response({"id": file.id, "filename": file.filename, "bytes": file.bytes}, status_code=201)


class DashboardUploadController(Controller):
    """The adapter upload from the dashboard: mounted where uploads get their larger body limit."""

    path = "/dashboard/adapters/upload"
    include_in_schema = False
    exception_handlers = {NotSignedIn: _not_signed_in, CsrfRejected: _csrf_rejected}

    @post("/", opt=audited("adapter.created"))
    async def upload_adapter(self, request: Request, context: Context, services: AppServices) -> Response[Any]:
        session = await _session(request, services)
        if not session.csrf_ok(request.headers.get("x-csrf-token")):
            raise CsrfRejected()
        try:
            session.require("adapters:write")
            adapter = await upload_adapter(request, context, services, session.tenant_id)
        except LoraFleetError as exc:
            return Response(exc.envelope(), status_code=exc.status_code)
        return Response({"id": adapter.id, "name": adapter.name}, status_code=201)


async def _fine_tuning_page(session: DashboardSession, services: Services) -> Response[str]:
    jobs = (await services.fine_tuning.list(session.tenant_id, after=None, limit=100)).data
    files = [f for f in (await services.files.list(session.tenant_id, purpose="fine-tune", limit=100)).data]
    served = sorted({w.base_model_name for w in services.registry.workers()} |
                    {job.model for job in jobs})  # what a trainer can train: served base models
    return render("fine_tuning.html", **_page(session, "fine-tuning", jobs=jobs, files=files, base_models=served,
                                               max_file=services.settings.max_file_bytes))


async def _keys_page(session: DashboardSession, services: Services, *, created: Any = None, error: str | None = None,
                     status: int = 200, keys: list[Any] | None = None) -> Response[str]:
    if keys is None:
        keys = await TenancyService(services.pool).all_keys(session.tenant_id)
    last_used = await key_last_used(services.pool, session.tenant_id)
    grantable = [scope for scope in ALL_SCOPES if session.can(scope)]
    return render("keys.html", status=status, **_page(session, "keys", keys=keys, last_used=last_used, created=created,
                                                      error=error, scopes=grantable))


def _login_page(request: Request, error: str | None, status: int = 200, operator: bool = False) -> Response[str]:
    """The sign-in form, with a double-submit token: the form's hidden field must match its cookie."""
    token = secrets.token_urlsafe(24)
    response = render("login.html", status=status, error=error, csrf=token, operator=operator)
    response.set_cookie(Cookie(key=LOGIN_CSRF_COOKIE, value=token, path="/dashboard", httponly=True, samesite="strict",
                               secure=_secure(request), max_age=3600))
    return response


def _login_csrf_ok(request: Request, presented: str | None) -> bool:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    return bool(expected and presented) and hmac.compare_digest(expected.encode(), presented.encode())

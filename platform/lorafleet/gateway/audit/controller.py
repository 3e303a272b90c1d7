"""``GET /v1/organization/audit_logs`` (the tenant's own events, for a key with ``audit_logs:read``) and
``GET /admin/audit_logs`` (every tenant's, and the fleet's own, for the operator)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from litestar import Controller, Request, get
from litestar.params import QueryParameter
from lorafleet.core.errors import InvalidRequest
from lorafleet.gateway.admin.controller import require_admin
from lorafleet.gateway.audit.recorder import AUDIT_REFUSALS
from lorafleet.gateway.audit.service import AuditLogPage, list_events
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, AppServices, Caller, scope
from lorafleet.gateway.error_specs import ADMIN_TOKEN, API_KEY, error_responses
from lorafleet.gateway.openapi import ADMIN_SECURITY, TENANT_SECURITY
from lorafleet.gateway.params import refuse_unknown_query

Cursor = Annotated[str | None, QueryParameter(min_length=1, max_length=64, description="An event id (a cursor).")]


def _ids(name: str, brackets: bool) -> object:
    """A list filter as the SDK sends it (``name[]=a&name[]=b``) or plainly repeated (``name=a&name=b``)."""
    return Annotated[list[str] | None, QueryParameter(name=f"{name}[]" if brackets else name, max_items=50,
                                                      description="Repeat the parameter for several.")]


TYPES, TYPES_ = _ids("event_types", True), _ids("event_types", False)
ACTORS, ACTORS_ = _ids("actor_ids", True), _ids("actor_ids", False)
RESOURCES, RESOURCES_ = _ids("resource_ids", True), _ids("resource_ids", False)
EMAILS, EMAILS_ = _ids("actor_emails", True), _ids("actor_emails", False)
PROJECTS, PROJECTS_ = _ids("project_ids", True), _ids("project_ids", False)
GT, GTE, LT, LTE = (Annotated[int | None, QueryParameter(name=f"effective_at[{op}]", ge=1, le=253_402_300_000,
                                                      description=f"Only events with effective_at {op} (Unix seconds).")]
                    for op in ("gt", "gte", "lt", "lte"))
_LISTS = ("event_types", "actor_ids", "resource_ids")
_COMMON = ("limit", "after", "before", *_LISTS, *(f"{name}[]" for name in _LISTS),
           *(f"effective_at[{op}]" for op in ("gt", "gte", "lt", "lte")))
# Every query parameter each list knows (a misspelt filter is a 400, not a wider answer).
TENANT_FILTERS = (*_COMMON, "actor_emails", "actor_emails[]", "project_ids", "project_ids[]", "tenant_only")
# The operator's list takes the bracketed spelling only (one name per filter; no SDK sends the plain one).
OPERATOR_FILTERS = ("limit", "after", "before", "tenant_id", *(f"{name}[]" for name in _LISTS),
                    *(f"effective_at[{op}]" for op in ("gt", "gte", "lt", "lte")))
AuditLimit = Annotated[int, QueryParameter(ge=1, le=100, description="Events per page (1–100, default 20).")]


def _window(gt: int | None, gte: int | None, lt: int | None, lte: int | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    def at(seconds: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    since = at(gte) if gte is not None else at(gt + 1) if gt is not None else None
    until = at(lte) if lte is not None else at(lt - 1) if lt is not None else None
    return since, until


def _check(bracketed: list[str] | None, plain: list[str] | None, param: str) -> list[str] | None:
    ids = [*(bracketed or ()), *(plain or ())]
    for value in ids:
        if not 1 <= len(value) <= 128:
            raise InvalidRequest(f"Each value of {param} must be 1 to 128 characters.", param=param)
    return ids or None


def _unsupported(actor_emails: list[str] | None, project_ids: list[str] | None, tenant_only: bool | None) -> None:
    for param, given in (("actor_emails", actor_emails), ("project_ids", project_ids), ("tenant_only", tenant_only)):
        if given:
            why = {"actor_emails": "this platform's actors are API keys, dashboard sessions and the operator, "
                                   "none of which has an email",
                   "project_ids": "projects are not available yet: every event belongs to the organization",
                   "tenant_only": "there are no tenant-scoped events beyond the organization's own"}[param]
            raise InvalidRequest(f"{param} is not supported: {why}.", param=param, code="unsupported_parameter")


class AuditLogsController(Controller):
    path = "/v1/organization/audit_logs"
    tags = ["Audit log"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @get("/", operation_id="listAuditLogs", responses=error_responses(400, *API_KEY), opt=scope("audit_logs:read"),
         summary="Changes made in this organization, newest first (OpenAI's audit log list, filters and cursor).")
    async def list_audit_logs(
            self, request: Request, services: AppServices, principal: Caller, limit: AuditLimit = 20, after: Cursor = None,
            before: Cursor = None, event_types: TYPES = None, event_types_: TYPES_ = None, actor_ids: ACTORS = None,
            actor_ids_: ACTORS_ = None, resource_ids: RESOURCES = None, resource_ids_: RESOURCES_ = None,
            actor_emails: EMAILS = None, actor_emails_: EMAILS_ = None, project_ids: PROJECTS = None,
            project_ids_: PROJECTS_ = None,
            tenant_only: Annotated[bool | None, QueryParameter(description="Not supported yet: 400 if true.")] = None,
            gt: GT = None,
            gte: GTE = None,
            lt: LT = None,
            lte: LTE = None,
    ) -> AuditLogPage:
        refuse_unknown_query(request.query_params, TENANT_FILTERS)
        _unsupported(actor_emails or actor_emails_, project_ids or project_ids_, tenant_only)
        since, until = _window(gt, gte, lt, lte)
        return await list_events(services.pool, tenant_id=principal.tenant_id, after=after, before=before,
                                 event_types=_check(event_types, event_types_, "event_types"),
                                 actor_ids=_check(actor_ids, actor_ids_, "actor_ids"),
                                 resource_ids=_check(resource_ids, resource_ids_, "resource_ids"), since=since, until=until,
                                 limit=limit)


class OperatorAuditLogsController(Controller):
    path = "/admin/audit_logs"
    tags = ["Admin"]
    security = ADMIN_SECURITY
    guards = [require_admin]
    opt = {AUDIT_REFUSALS: True}

    @get("/", operation_id="adminListAuditLogs", responses=error_responses(400, *ADMIN_TOKEN),
         summary="Every tenant's audit events and the operator's own, newest first; tenant_id narrows to one.")
    async def list_all(
            self, request: Request, services: AppServices, limit: AuditLimit = 20, after: Cursor = None, before: Cursor = None,
            tenant_id: Annotated[str | None, QueryParameter(min_length=1, max_length=64)] = None,
            event_types: TYPES = None, actor_ids: ACTORS = None, resource_ids: RESOURCES = None,
            gt: GT = None,
            gte: GTE = None,
            lt: LT = None,
            lte: LTE = None,
    ) -> AuditLogPage:
        refuse_unknown_query(request.query_params, OPERATOR_FILTERS)
        since, until = _window(gt, gte, lt, lte)
        return await list_events(services.pool, tenant_id=tenant_id, after=after, before=before,
                                 event_types=_check(event_types, None, "event_types"),
                                 actor_ids=_check(actor_ids, None, "actor_ids"),
                                 resource_ids=_check(resource_ids, None, "resource_ids"), since=since, until=until,
                                 limit=limit)

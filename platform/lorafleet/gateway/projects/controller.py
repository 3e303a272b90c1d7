"""``/v1/organization/projects``: ``client.admin.organization.projects.create/list/retrieve/update/archive``.

Who may call it: a key with the ``organization:admin`` scope (the notion of OpenAI's Admin API key;
migration 0024 gives it to every key that could already manage the tenant's keys). Another tenant's
project is a 404 like a missing one. Fields OpenAI has and we do not (``geography``, ``residency``,
``external_key_id``) answer 400 ``unsupported_parameter``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import asyncpg
import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, JSONBody
from lorafleet.core import ids
from lorafleet.core.errors import Conflict, InvalidRequest, NotFound
from lorafleet.db import queries
from lorafleet.gateway.body import StrictBody
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, AppServices, Caller, scope
from lorafleet.gateway.error_specs import API_KEY, error_responses
from lorafleet.gateway.openapi import TENANT_SECURITY
from lorafleet.gateway.params import Limit, StartingAfter
from msgspec import Meta

MAX_PROJECTS = 100  # live projects per organization (409 beyond)
ProjectName = Annotated[str, Meta(min_length=1, max_length=200)]
_UNSUPPORTED = ("geography", "residency", "external_key_id")


class ProjectCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: ProjectName
    geography: str | None = None
    residency: dict | None = None
    external_key_id: str | None = None


class ProjectUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: ProjectName | None = None
    geography: str | None = None
    external_key_id: str | None = None


class ProjectView(msgspec.Struct, kw_only=True):
    id: str
    name: str
    created_at: int
    archived_at: int | None
    status: Literal["active", "archived"]
    is_default: bool  # ours: the project that owns what existed before projects, never archived
    object: Literal["organization.project"] = "organization.project"


class ProjectPage(msgspec.Struct, kw_only=True):
    data: list[ProjectView]
    has_more: bool
    first_id: str | None
    last_id: str | None
    object: Literal["list"] = "list"


def _view(row: asyncpg.Record) -> ProjectView:
    archived = row["archived_at"]
    return ProjectView(id=row["id"], name=row["name"], created_at=int(row["created_at"].timestamp()),
                       archived_at=int(archived.timestamp()) if archived else None,
                       status="archived" if archived else "active", is_default=row["is_default"])


def _refuse_unsupported(data: ProjectCreate | ProjectUpdate) -> None:
    for name in _UNSUPPORTED:
        if getattr(data, name, None) is not None:
            raise InvalidRequest(f"{name} is not supported: this platform has one region and no external keys.",
                                 param=name, code="unsupported_parameter")


def _missing(project_id: str) -> NotFound:
    return NotFound(f"No project {project_id!r}.", param="project_id")




class ProjectsController(Controller):
    path = "/v1/organization/projects"
    tags = ["Projects"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @post("/", operation_id="createProject", status_code=200, dto=StrictBody[ProjectCreate], return_dto=None,
          responses=error_responses(400, 409, 413, *API_KEY),
          opt=scope("organization:admin", audit="project.created"), summary="Create a project in this organization.")
    async def create(self, data: JSONBody[ProjectCreate], services: AppServices, principal: Caller) -> ProjectView:
        _refuse_unsupported(data)
        async with services.pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext('projects:' || $1))", principal.tenant_id)
            if await connection.fetchval(queries.count_projects, principal.tenant_id) >= MAX_PROJECTS:
                raise Conflict(f"this organization already has {MAX_PROJECTS} active projects, its limit; "
                               "archive one.", code="too_many_projects")
            row = await connection.fetchrow(queries.insert_project, ids.new_id("proj"), principal.tenant_id, data.name)
        return _view(row)

    @get("/", operation_id="listProjects", responses=error_responses(400, *API_KEY), opt=scope("organization:admin"),
         summary="This organization's projects, oldest first (archived ones with include_archived=true).")
    async def list_projects(self, services: AppServices, principal: Caller, limit: Limit = 20,
                            after: StartingAfter = None, include_archived: bool = False) -> ProjectPage:
        if after is not None and await services.pool.fetchrow(queries.get_project, after, principal.tenant_id) is None:
            rows = []  # not one of this organization's projects: no cursor at all
        else:
            rows = await services.pool.fetch(queries.list_projects, principal.tenant_id, after, include_archived,
                                             limit + 1)
        data = [_view(row) for row in rows[:limit]]
        return ProjectPage(data=data, has_more=len(rows) > limit, first_id=data[0].id if data else None,
                           last_id=data[-1].id if data else None)

    @get("/{project_id:str}", operation_id="getProject", responses=error_responses(400, 404, *API_KEY),
         opt=scope("organization:admin"), summary="One project.")
    async def retrieve(self, project_id: FromPath[str], services: AppServices, principal: Caller) -> ProjectView:
        row = await services.pool.fetchrow(queries.get_project, project_id, principal.tenant_id)
        if row is None:
            raise _missing(project_id)
        return _view(row)

    @post("/{project_id:str}", operation_id="updateProject", status_code=200, dto=StrictBody[ProjectUpdate],
          return_dto=None, responses=error_responses(400, 404, 413, *API_KEY),
          opt=scope("organization:admin", audit="project.updated"), summary="Rename a project (not an archived one).")
    async def update(self, project_id: FromPath[str], data: JSONBody[ProjectUpdate], services: AppServices,
                     principal: Caller) -> ProjectView:
        _refuse_unsupported(data)
        row = await services.pool.fetchrow(queries.get_project, project_id, principal.tenant_id)
        if row is None:
            raise _missing(project_id)
        if data.name is None:
            return _view(row)
        if row["archived_at"] is not None:
            raise InvalidRequest("An archived project cannot be renamed.", param="project_id",
                                 code="project_archived")
        return _view(await services.pool.fetchrow(queries.rename_project, project_id, principal.tenant_id, data.name))

    @post("/{project_id:str}/archive", operation_id="archiveProject", status_code=200,
          responses=error_responses(400, 404, *API_KEY), opt=scope("organization:admin", audit="project.archived"),
          summary="Archive a project (not the default one).")
    async def archive(self, project_id: FromPath[str], services: AppServices, principal: Caller) -> ProjectView:
        row = await services.pool.fetchrow(queries.archive_project, project_id, principal.tenant_id)
        if row is None:
            if await services.pool.fetchrow(queries.get_project, project_id, principal.tenant_id) is None:
                raise _missing(project_id)
            raise InvalidRequest("The default project cannot be archived: it owns what has no other project.",
                                 param="project_id", code="default_project")
        return _view(row)

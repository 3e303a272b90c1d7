"""Projects, the data model and the admin API first: ``client.admin.organization.projects`` with the official
SDK. Every tenant has a default project that owns its keys and what they make; keys and objects of other
projects (and project-scoped 404s) come next (docs/projects.md)."""

from __future__ import annotations

import httpx
import openai
import pytest
from lorafleet.tenancy import TenancyService

from tests.helpers import TenantKey


def _admin(url: str, key: TenantKey) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", admin_api_key=key.secret, max_retries=0)


async def test_an_admin_key_creates_renames_lists_and_archives_projects(platform, tenant, other_tenant):
    projects = _admin(platform.url, tenant).admin.organization.projects
    first = await projects.create(name="research")
    second = await projects.create(name="production")
    assert (first.object, first.status, first.archived_at, first.name) == ("organization.project", "active", None,
                                                                          "research")
    listed = [p async for p in projects.list(limit=1)]  # follows the cursor
    assert [p.name for p in listed] == ["Default project", "research", "production"]
    assert listed[0].model_extra["is_default"] is True
    renamed = await projects.update(first.id, name="research-2")
    assert (await projects.retrieve(first.id)).name == renamed.name == "research-2"
    archived = await projects.archive(second.id)
    assert archived.status == "archived" and archived.archived_at
    assert [p.id async for p in projects.list()] == [listed[0].id, first.id]
    assert second.id in [p.id async for p in projects.list(include_archived=True)]
    with pytest.raises(openai.BadRequestError) as refused:
        await projects.archive(listed[0].id)
    assert refused.value.body["code"] == "default_project"
    with pytest.raises(openai.BadRequestError) as refused:
        await projects.update(second.id, name="again")
    assert refused.value.body["code"] == "project_archived"
    with pytest.raises(openai.BadRequestError) as refused:
        await projects.create(name="eu", geography="EU")
    assert (refused.value.body["param"], refused.value.body["code"]) == ("geography", "unsupported_parameter")
    theirs = await _admin(platform.url, other_tenant).admin.organization.projects.create(name="theirs")
    with pytest.raises(openai.NotFoundError):
        await projects.retrieve(theirs.id)
    with pytest.raises(openai.NotFoundError):
        await projects.archive(theirs.id)
    audit = [e.type async for e in _admin(platform.url, tenant).admin.organization.audit_logs.list(
        event_types=["project.created", "project.updated", "project.archived"])]
    assert audit == ["project.archived", "project.updated", "project.created", "project.created"]


async def test_a_key_without_organization_admin_is_refused(platform, tenant, db):
    plain = await TenancyService(db).create_key(tenant.tenant_id, scopes=["inference", "keys:write"])
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await _admin(platform.url, TenantKey(tenant.tenant_id, plain.id, plain.secret)
                     ).admin.organization.projects.list()
    assert "organization:admin" in denied.value.body["message"]


async def test_the_default_project_owns_the_tenants_keys_and_what_they_make(platform, tenant, db):
    default = await db.fetchval("SELECT id FROM projects WHERE tenant_id = $1 AND is_default", tenant.tenant_id)
    assert default and await db.fetchval("SELECT count(*) FROM projects WHERE tenant_id = $1", tenant.tenant_id) == 1
    assert await db.fetchval("SELECT project_id FROM api_keys WHERE id = $1", tenant.key_id) == default
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        file = await http.post("/v1/files", files={"file": ("t.jsonl", b"{}\n")}, data={"purpose": "fine-tune"})
        key = await http.post("/v1/keys", json={"name": "more", "scopes": ["inference"]})
    assert await db.fetchval("SELECT project_id FROM files WHERE id = $1", file.json()["id"]) == default
    assert await db.fetchval("SELECT project_id FROM api_keys WHERE id = $1", key.json()["id"]) == default

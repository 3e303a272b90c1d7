"""Adapter versions and aliases (issue 32, parts 1 and 2): ``name@v<n>``, ``name@alias`` with weighted
versions, sticky callers, atomic moves under load, rollback; the stub workers show which version each
request reached (the ``model`` they were asked for is the version's ``adp_`` id)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import math
import tarfile
import uuid
from collections import Counter
from pathlib import Path

import httpx
import msgspec
import pytest
from lorafleet.core import ids
from lorafleet.db import queries

from tests.adapter_factory import TINY, lora_config, write_adapter
from tests.helpers import ledger_row
from tests.inprocess.conftest import STUB_MODEL


async def _version(db, tenant_id: str, base_model_id: str, name: str, version: int) -> str:
    """A ready row for version ``version`` of ``name`` on the stub model (no weights: the stubs load none)."""
    adapter_id = ids.new_id("adp")
    sha256 = "0" * 64
    await db.execute("INSERT INTO blobs (sha256, size_bytes) VALUES ($1, 1) ON CONFLICT DO NOTHING", sha256)
    await db.execute(
        "INSERT INTO adapters (id, tenant_id, name, base_model_id, rank, lora_alpha, target_modules, config, sha256, "
        "size_bytes, status, version) VALUES ($1, $2, $3, $4, 8, 16, $5, $6, $7, 1, 'ready', $8)",
        adapter_id, tenant_id, name, base_model_id, ["q_proj"], {"r": 8}, sha256, version)
    return adapter_id


@pytest.fixture
async def two_versions(platform, db, tenant) -> tuple[str, str, str]:
    name = f"ver-{uuid.uuid4().hex[:6]}"
    v1 = await _version(db, tenant.tenant_id, platform.base_model_id, name, 1)
    v2 = await _version(db, tenant.tenant_id, platform.base_model_id, name, 2)
    return name, v1, v2


def _served(platform, marker: str) -> str:
    """The adapter id the stub workers were asked for by the request whose prompt is ``marker``."""
    found = [body["model"] for worker in platform.workers for body in worker.behaviour.received
             if body.get("prompt") == marker]
    assert len(found) == 1, (marker, found)
    return found[0]


async def _complete(http: httpx.AsyncClient, model: str, marker: str, **extra) -> httpx.Response:
    headers = extra.pop("headers", {})
    return await http.post("/v1/completions", json={"model": model, "prompt": marker, "max_tokens": 2, **extra},
                           headers=headers)


async def test_a_name_resolves_to_its_latest_version_and_name_at_v_to_exactly_that_one(platform, tenant, two_versions):
    name, v1, v2 = two_versions
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        for model, expected in ((name, v2), (f"{name}@v1", v1), (f"{name}@v2", v2), (f"{STUB_MODEL}:{name}@v1", v1),
                                (f"{name}@latest", v2)):
            marker = uuid.uuid4().hex
            answer = await _complete(http, model, marker)
            assert answer.status_code == 200, (model, answer.text)
            assert _served(platform, marker) == expected, model
            assert answer.headers["x-lorafleet-adapter-id"] == expected
            assert answer.headers["x-lorafleet-adapter-version"] == ("1" if expected == v1 else "2")
        for model in (f"{name}@v3", f"{name}@", f"{name}@V1", f"{name}@nope", f"other-base:{name}@v1"):
            missing = await _complete(http, model, uuid.uuid4().hex)
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found", (model, missing.text)
        chat = await http.post("/v1/chat/completions", json={"model": f"{name}@v1", "max_tokens": 2,
                                                             "messages": [{"role": "user", "content": "x"}]})
        assert chat.status_code == 200 and chat.headers["x-lorafleet-adapter-version"] == "1"
        response = await http.post("/v1/responses", json={"model": f"{name}@v1", "input": "x", "max_output_tokens": 2})
        assert response.status_code == 200 and response.headers["x-lorafleet-adapter-id"] == v1
        base = await _complete(http, STUB_MODEL, uuid.uuid4().hex)
        assert "x-lorafleet-adapter-id" not in base.headers
        listed = {m["id"] for m in (await http.get("/v1/models")).json()["data"]}
        assert {name, f"{name}@v1", f"{name}@v2"} <= listed
        assert (await http.get(f"/v1/models/{name}@v1")).json()["id"] == f"{name}@v1"


async def test_a_90_10_alias_splits_200_requests_within_4_sigma(platform, tenant, two_versions):
    name, v1, v2 = two_versions
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        made = await http.put(f"/v1/adapters/{name}/aliases/canary",
                              json={"versions": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]})
        assert made.status_code == 200, made.text
        assert [(t["version"], t["weight"]) for t in made.json()["targets"]] == [(1, 90), (2, 10)]
        markers = [uuid.uuid4().hex for _ in range(200)]
        semaphore = asyncio.Semaphore(16)

        async def one(marker: str) -> httpx.Response:
            async with semaphore:
                return await _complete(http, f"{name}@canary", marker)

        answers = await asyncio.gather(*(one(marker) for marker in markers))
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers if a.status_code != 200][:3]
    counts = Counter(_served(platform, marker) for marker in markers)
    assert set(counts) <= {v1, v2}
    # v2's count is Binomial(200, 0.1): mean 20, sigma sqrt(200 * 0.1 * 0.9) = 4.24; 4 sigma: 3..37.
    mean, sigma = 20, math.sqrt(200 * 0.1 * 0.9)
    assert mean - 4 * sigma <= counts[v2] <= mean + 4 * sigma, counts


async def test_a_sticky_key_keeps_one_caller_on_one_version(platform, tenant, two_versions):
    name, v1, v2 = two_versions
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        made = await http.put(f"/v1/adapters/{name}/aliases/ab",
                              json={"versions": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]})
        assert made.status_code == 200, made.text
        seen: dict[str, set[str]] = {}
        for caller in range(24):
            for _ in range(4):
                marker = uuid.uuid4().hex
                if caller % 2:
                    answer = await _complete(http, f"{name}@ab", marker, user=f"user-{caller}")
                else:
                    answer = await _complete(http, f"{name}@ab", marker,
                                             headers={"X-LoraFleet-Sticky-Key": f"user-{caller}"})
                assert answer.status_code == 200, answer.text
                seen.setdefault(f"user-{caller}", set()).add(_served(platform, marker))
    assert all(len(versions) == 1 for versions in seen.values()), seen
    # 24 callers at 50/50: all on one version has probability 2 * 2**-24.
    assert set().union(*seen.values()) == {v1, v2}


async def test_moving_an_alias_under_load_fails_no_request_and_each_row_names_the_version_served(
        platform, db, tenant, two_versions):
    name, v1, v2 = two_versions
    for worker in platform.workers:
        worker.behaviour.delay_seconds = 0.02  # requests overlap the moves
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        assert (await http.put(f"/v1/adapters/{name}/aliases/prod", json={"versions": [{"version": 1}]})).status_code == 200
        markers = [uuid.uuid4().hex for _ in range(120)]
        semaphore = asyncio.Semaphore(12)

        async def one(marker: str) -> httpx.Response:
            async with semaphore:
                return await _complete(http, f"{name}@prod", marker)

        async def move() -> list[int]:
            statuses = []
            for turn in range(12):
                body = {"versions": [{"version": 2 - turn % 2}]} if turn % 3 else \
                    {"versions": [{"version": 1, "weight": 1}, {"version": 2, "weight": 1}]}
                statuses.append((await http.put(f"/v1/adapters/{name}/aliases/prod", json=body)).status_code)
                await asyncio.sleep(0)
            return statuses

        *answers, moves = await asyncio.gather(*(one(marker) for marker in markers), move())
    assert moves == [200] * 12
    assert [a.status_code for a in answers] == [200] * len(markers), [a.text for a in answers if a.status_code != 200][:3]
    served = Counter()
    for marker, answer in zip(markers, answers, strict=True):
        row = await ledger_row(db, answer.headers["x-request-id"])
        assert row["adapter_id"] == _served(platform, marker), marker
        served[row["adapter_id"]] += 1
    assert set(served) == {v1, v2}, served  # the moves were seen while requests ran


async def test_rollback_restores_the_previous_target_and_a_second_rollback_undoes_it(platform, tenant, two_versions):
    name, v1, v2 = two_versions
    alias = f"/v1/adapters/{name}/aliases/prod"
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        assert (await http.put(alias, json={"versions": [{"version": 1}]})).status_code == 200
        first = await _complete(http, f"{name}@prod", marker := uuid.uuid4().hex)
        assert first.status_code == 200 and _served(platform, marker) == v1
        assert (await http.put(alias, json={"versions": [{"version": 2}]})).status_code == 200
        assert (await _complete(http, f"{name}@prod", marker := uuid.uuid4().hex)).status_code == 200
        assert _served(platform, marker) == v2
        rolled = await http.post(f"{alias}/rollback")
        assert rolled.status_code == 200, rolled.text
        assert [t["version"] for t in rolled.json()["targets"]] == [1]
        assert (await _complete(http, f"{name}@prod", marker := uuid.uuid4().hex)).status_code == 200
        assert _served(platform, marker) == v1
        detail = (await http.get(alias)).json()
        assert [move["action"] for move in detail["history"]] == ["rollback", "set", "set"]
        again = await http.post(f"{alias}/rollback")
        assert [t["version"] for t in again.json()["targets"]] == [2]
        listed = (await http.get(f"/v1/adapters/{name}/aliases")).json()
        assert [(a["alias"], a["model"]) for a in listed["data"]] == [("prod", f"{name}@prod")]
        # A version an alias sends traffic to cannot be deleted out from under it.
        by_alias = await http.delete(f"/v1/models/{name}@prod")
        assert by_alias.status_code == 400 and by_alias.json()["error"]["code"] == "alias_not_deletable", by_alias.text
        refused = await http.delete(f"/v1/adapters/{v2}")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "adapter_version_in_use", refused.text
        assert (await http.delete(alias)).status_code == 200
        assert (await http.delete(f"/v1/adapters/{v2}")).status_code == 200
        # Back to v1 through the deleted alias's history? v2 is gone, and a rollback says so.
        gone = await http.post(f"{alias}/rollback")
        assert gone.status_code == 400 and gone.json()["error"]["code"] == "nothing_to_roll_back", gone.text
        fresh = f"/v1/adapters/{name}/aliases/fresh"
        assert (await http.put(fresh, json={"versions": [{"version": 1}]})).status_code == 200
        none = await http.post(f"{fresh}/rollback")
        assert none.status_code == 400 and none.json()["error"]["code"] == "nothing_to_roll_back", none.text


async def test_the_latest_alias_steers_the_bare_name(platform, tenant, two_versions):
    name, v1, v2 = two_versions
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        assert (await http.put(f"/v1/adapters/{name}/aliases/latest", json={"versions": [{"version": 1}]})).status_code == 200
        assert (await _complete(http, name, marker := uuid.uuid4().hex)).status_code == 200
        assert _served(platform, marker) == v1
        assert (await http.delete(f"/v1/adapters/{name}/aliases/latest")).status_code == 200
        assert (await _complete(http, name, marker := uuid.uuid4().hex)).status_code == 200
        assert _served(platform, marker) == v2


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), [
    ("aliases/prod", {"versions": [{"version": 9}]}, 400, "versions[0].version", "version_not_found"),
    ("aliases/prod", {"versions": [{"version": 1}, {"version": 1}]}, 400, "versions", None),
    ("aliases/prod", {"versions": [{"version": 1, "weight": 0}]}, 400, "versions[0].weight", None),
    ("aliases/prod", {"versions": []}, 400, "versions", None),
    ("aliases/prod", {"versions": [{"version": 1}], "shadow": 5}, 400, None, None),
    ("aliases/v2", {"versions": [{"version": 1}]}, 400, "alias", None),
    ("aliases/Prod", {"versions": [{"version": 1}]}, 400, "alias", None),
    ("aliases/prod", {"versions": [{"version": 1, "weight": 1}] * 10 + [{"version": 2}] * 2000}, 413, None, None),
])
async def test_bad_alias_requests_get_a_precise_4xx(platform, tenant, two_versions, path, body, status, param, code):
    name, _, _ = two_versions
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        answer = await http.put(f"/v1/adapters/{name}/{path}", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error


async def test_aliases_of_a_name_the_caller_does_not_have_are_404(platform, tenant):
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        for answer in (await http.put("/v1/adapters/nobody/aliases/prod", json={"versions": [{"version": 1}]}),
                       await http.get("/v1/adapters/nobody/aliases"),
                       await http.get("/v1/adapters/nobody/aliases/prod"),
                       await http.post("/v1/adapters/nobody/aliases/prod/rollback")):
            assert answer.status_code == 404, answer.text


# ---- uploads add versions; the weights come back out ---------------------------------------------


@pytest.fixture
async def tiny_base(db) -> str:
    base = f"ver-tiny-{uuid.uuid4().hex[:6]}"
    await db.execute(queries.upsert_base_model, ids.base_model_id(), base, 2048, msgspec.to_builtins(TINY), 16,
                     "generate")
    return base


async def _upload(http: httpx.AsyncClient, name: str, base: str, folder: Path) -> httpx.Response:
    files = [("file", (path.name, path.read_bytes())) for path in sorted(folder.iterdir())]
    return await http.post("/v1/adapters", data={"name": name, "base_model": base}, files=files)


async def test_uploading_under_an_existing_name_adds_a_version_whose_archive_holds_the_uploaded_weights(
        platform, tenant, other_tenant, tiny_base, tmp_path):
    name = f"up-{uuid.uuid4().hex[:6]}"
    folders = [write_adapter(tmp_path / f"v{seed}", seed=seed, config=lora_config(8, ["q_proj", "v_proj"], base=tiny_base))
               for seed in (1, 2)]
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=60) as http:
        first, second = [await _upload(http, name, tiny_base, folder) for folder in folders]
        assert first.status_code == second.status_code == 201, (first.text, second.text)
        assert (first.json()["version"], second.json()["version"]) == (1, 2)
        assert first.json()["id"] != second.json()["id"]
        refused = await _upload(http, f"{name}@v3", tiny_base, folders[0])
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "name", refused.text
        listed = [(a["name"], a["version"]) for a in (await http.get("/v1/adapters")).json()["data"]]
        assert sorted(listed) == [(name, 1), (name, 2)]
        for reference, folder, version in ((f"{name}@v1", folders[0], 1), (second.json()["id"], folders[1], 2),
                                           (name, folders[1], 2)):
            download = await http.get(f"/v1/adapters/{reference}/content")
            assert download.status_code == 200, download.text
            body = download.content
            assert download.headers["x-lorafleet-sha256"] == hashlib.sha256(body).hexdigest()
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
            weights = (folder / "adapter_model.safetensors").read_bytes()
            assert members[f"{name}-v{version}/adapter_model.safetensors"] == weights
            assert download.headers["x-lorafleet-weights-sha256"] == hashlib.sha256(weights).hexdigest()
            config = json.loads(members[f"{name}-v{version}/adapter_config.json"])
            uploaded = json.loads((folder / "adapter_config.json").read_text())
            assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
            assert {k: config[k] for k in ("r", "lora_alpha", "base_model_name_or_path")} == \
                {k: uploaded[k] for k in ("r", "lora_alpha", "base_model_name_or_path")}
            assert sorted(config["target_modules"]) == sorted(uploaded["target_modules"])
            again = await http.get(f"/v1/adapters/{reference}/content")
            assert again.content == body  # the same bytes each time: the hash is the archive's, not the moment's
        alias = await http.put(f"/v1/adapters/{name}/aliases/prod", json={"versions": [{"version": 1}]})
        assert alias.status_code == 200
        by_alias = await http.get(f"/v1/adapters/{name}@prod/content")
        assert by_alias.status_code == 400 and by_alias.json()["error"]["code"] == "alias_not_a_version", by_alias.text
    async with httpx.AsyncClient(base_url=platform.url, headers=other_tenant.headers, timeout=60) as http:
        for reference in (f"{name}@v1", second.json()["id"], name):
            theirs = await http.get(f"/v1/adapters/{reference}/content")
            assert theirs.status_code == 404 and theirs.json()["error"]["param"] == "adapter_id", theirs.text


async def test_the_dashboard_shows_versions_and_aliases_and_rolls_an_alias_back(platform, tenant, two_versions):
    from tests.helpers import dashboard

    name, _, _ = two_versions
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        for version in (1, 2):
            moved = await http.put(f"/v1/adapters/{name}/aliases/prod", json={"versions": [{"version": version}]})
            assert moved.status_code == 200
        async with dashboard(platform.url, tenant.secret) as (session, csrf):
            page = await session.get("/dashboard/adapters")
            assert page.status_code == 200
            assert f"{name}@v1" in page.text and f"{name}@v2" in page.text and f"{name}@prod" in page.text
            rolled = await session.post(f"/dashboard/adapters/{name}/aliases/prod/rollback", data={"csrf": csrf})
            assert rolled.status_code == 303, rolled.text
            forged = await session.post(f"/dashboard/adapters/{name}/aliases/prod/rollback", data={"csrf": "forged"})
            assert forged.status_code == 403
        alias = (await http.get(f"/v1/adapters/{name}/aliases/prod")).json()
        assert [t["version"] for t in alias["targets"]] == [1]
        assert alias["history"][0]["action"] == "rollback"


async def test_per_version_numbers_equal_the_ledgers_counts(platform, db, tenant, two_versions):
    from tests.helpers import wait_rows

    name, v1, v2 = two_versions
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        for model, times in ((f"{name}@v1", 5), (f"{name}@v2", 3)):
            for _ in range(times):
                assert (await _complete(http, model, uuid.uuid4().hex)).status_code == 200
        for worker in platform.workers:
            worker.behaviour.fail_next = 10  # every attempt fails: one request that ends in an upstream error
        failed = await _complete(http, f"{name}@v2", uuid.uuid4().hex)
        assert failed.status_code >= 500, failed.text
        for worker in platform.workers:
            worker.behaviour.fail_next = 0
    await wait_rows(db, tenant.tenant_id, 9)
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.admin_headers, timeout=30) as admin:
        answer = await admin.get("/admin/adapters/stats", params={"tenant_id": tenant.tenant_id, "name": name})
        assert answer.status_code == 200, answer.text
        bad = await admin.get("/admin/adapters/stats", params={"hours": 0})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "hours", bad.text
        misspelt = await admin.get("/admin/adapters/stats", params={"tenant": tenant.tenant_id})
        assert misspelt.status_code == 400 and misspelt.json()["error"]["param"] == "tenant", misspelt.text
    stats = {row["version"]: row for row in answer.json()["data"]}
    assert (stats[1]["requests"], stats[1]["errors"], stats[2]["requests"], stats[2]["errors"]) == (5, 0, 4, 1)
    for version, adapter_id in ((1, v1), (2, v2)):
        ledger = await db.fetchrow(
            "SELECT count(*) AS requests, sum(completion_tokens) AS completion, sum(prompt_tokens) AS prompt, "
            "percentile_disc(0.5) WITHIN GROUP (ORDER BY ttft_ms) AS p50, "
            "percentile_disc(0.95) WITHIN GROUP (ORDER BY ttft_ms) AS p95 FROM usage_ledger WHERE adapter_id = $1",
            adapter_id)
        row = stats[version]
        assert (row["requests"], row["completion_tokens"], row["prompt_tokens"], row["ttft_ms_p50"], row["ttft_ms_p95"]) \
            == (ledger["requests"], ledger["completion"], ledger["prompt"], ledger["p50"], ledger["p95"]), version
        assert row["ttft_ms_p50"] is not None

"""Throttles that cannot be turned against others (issue 21, finding 4).

A gateway of the test's own with the failed-sign-in throttle on (60 a minute, after a burst of as
many), reached through the loopback proxy it trusts, so ``X-Forwarded-For`` is the client address.
"""

from __future__ import annotations

import httpx
from lorafleet.core.ids import random_token
from lorafleet.tenancy.keys import generate_secret

from tests.helpers import TenantKey


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def _fresh_key(db) -> TenantKey:
    from lorafleet.tenancy import TenancyService

    service = TenancyService(db)
    created = await service.create_tenant(f"throttle-{random_token(6)}")
    key = await service.create_key(created.id)
    return TenantKey(created.id, key.id, key.secret)


async def _throttled_gateway(start_gateway):
    return await start_gateway(AUTH_FAILURES_PER_MINUTE="60")


async def test_made_up_keys_from_one_address_lock_out_neither_the_operator_nor_a_tenant(start_gateway, platform, db):
    gateway = await _throttled_gateway(start_gateway)
    address = {"X-Forwarded-For": "10.9.9.9"}
    made_up = ["sk_live_" + random_token(20), "not-a-key", generate_secret()[:-1] + "!", "sk_test_" + "A" * 43]
    async with httpx.AsyncClient(base_url=gateway.url, headers=address) as http:
        statuses = [(await http.get("/v1/models", headers=_auth(made_up[i % len(made_up)]))).status_code
                    for i in range(65)]
        assert set(statuses) == {401}, "refused as malformed, never throttled"
        admin = await http.get("/admin/tenants", headers=platform.admin_headers)
        assert admin.status_code == 200, admin.text
        key = await _fresh_key(db)
        tenant = await http.get("/v1/models", headers=key.headers)
        assert tenant.status_code == 200, tenant.text


async def test_well_formed_wrong_keys_are_throttled_but_a_valid_key_from_that_address_is_served(start_gateway,
                                                                                               platform, db):
    gateway = await _throttled_gateway(start_gateway)
    key = await _fresh_key(db)
    async with httpx.AsyncClient(base_url=gateway.url, headers={"X-Forwarded-For": "10.9.9.10"}) as http:
        statuses = [(await http.get("/v1/models", headers=_auth(generate_secret()))).status_code for _ in range(80)]
        assert statuses[0] == 401 and statuses[-1] == 429
        limited = await http.get("/v1/models", headers=_auth(generate_secret()))
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error"]["code"] == "too_many_failed_attempts"
        served = await http.get("/v1/models", headers=key.headers)
        assert served.status_code == 200, "a key that exists is served from the throttled address"
        assert (await http.get("/admin/tenants", headers=platform.admin_headers)).status_code == 200, \
            "API-key failures do not lock the operator out"
        again = await http.get("/v1/models", headers=_auth(generate_secret()))
        assert again.status_code == 429, "serving a valid key does not lift the throttle for unknown ones"


async def test_admin_token_guessing_is_throttled_in_a_bucket_of_its_own(start_gateway, platform, db):
    gateway = await _throttled_gateway(start_gateway)
    key = await _fresh_key(db)
    async with httpx.AsyncClient(base_url=gateway.url, headers={"X-Forwarded-For": "10.9.9.11"}) as http:
        statuses = [(await http.get("/admin/tenants", headers=_auth(f"guess-{i}"))).status_code for i in range(70)]
        assert statuses[0] == 401 and statuses[-1] == 429
        assert (await http.get("/admin/tenants", headers=platform.admin_headers)).status_code == 429, \
            "a throttled guesser is not told which guess is right"
        assert (await http.get("/v1/models", headers=key.headers)).status_code == 200
        assert (await http.get("/v1/models", headers=_auth(generate_secret()))).status_code == 401, \
            "admin failures do not count against the address's API keys"
    async with httpx.AsyncClient(base_url=gateway.url, headers={"X-Forwarded-For": "10.9.9.12"}) as operator:
        assert (await operator.get("/admin/tenants", headers=platform.admin_headers)).status_code == 200

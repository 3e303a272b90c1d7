"""One-time tokens never reach a log line (issue 21, finding 7): the dashboard's sign-in link is
logged with its token redacted, and so is any secret a logged URL carries."""

from __future__ import annotations

import httpx
from lorafleet.dashboard.sessions import create_login_link
from structlog.testing import capture_logs


async def test_a_sign_in_links_token_is_never_logged(platform, tenant, db):
    token = await create_login_link(db, tenant.tenant_id)
    spent = await create_login_link(db, tenant.tenant_id)
    async with httpx.AsyncClient(base_url=platform.url, timeout=30) as http:
        await http.get(f"/dashboard/login/{spent}")
        with capture_logs() as logs:
            signed_in = await http.get(f"/dashboard/login/{token}")
            refused = await http.get(f"/dashboard/login/{spent}")  # used already: 401, logged too
            query = await http.get(f"/dashboard/login/x?token={token}")
    assert signed_in.status_code == 303 and refused.status_code == 401 and query.status_code == 401
    lines = [event for event in logs if event.get("event") == "request"]
    assert len(lines) == 3, logs
    assert all(line["path"] == "/dashboard/login/[redacted]" for line in lines), lines
    everything = repr(logs)
    assert token not in everything and spent not in everything

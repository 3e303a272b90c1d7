"""The money path: ledger rows/s, admission cost, /v1/usage latency at a million rows.

Its own database on the local PostgreSQL; no engine needed (a gateway only, ready on /healthz).

1. Ledger write rate: a million usage rows for one tenant (10 keys, 2 base models, 20 adapters,
   spread over the last 365 days, priced), recorded through the gateway's real write path
   (``LedgerWriter``: one statement per batch inserts, settles reservations, updates the hourly
   and daily rollups and the account). Reported as rows/s, with the rollup row counts.
2. Admission: ``lorafleet_admit`` (rate limit + concurrency cap + budget reservation) for a
   metered key, one call at a time and 32 at a time, microseconds per request as the gateway
   sees it (round trip included); then the ledger rows that settle those reservations.
3. ``GET /v1/usage`` on a running gateway for a year of daily data (ungrouped, and grouped by
   key, model and adapter) and a month of hourly data: p50/p99 over sequential requests.
4. Every dashboard page for the same tenant, signed in through the sign-in form.

    .venv/bin/python benchmarks/money.py [--rows 1000000] [--queries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
from lorafleet.billing.ledger_row import LedgerRow
from lorafleet.billing.pricing import Price, cost_pico_usd
from lorafleet.core import ids
from lorafleet.db import create_pool, queries
from lorafleet.db.migrate import migrate
from lorafleet.devtools.bench import publish
from lorafleet.devtools.database import DatabaseFactory, server_dsn
from lorafleet.devtools.services import platform_env, start_gateway
from lorafleet.gateway.metering.writer import LedgerWriter
from lorafleet.tenancy import TenancyService


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def seed(pool: asyncpg.Pool) -> dict:
    tenancy = TenancyService(pool)
    tenant = await tenancy.create_tenant("bench-money")
    keys = [await tenancy.create_key(tenant.id, name=f"k{i}") for i in range(10)]
    models, prices, adapters = [], {}, []
    for name in ("bench-base-a", "bench-base-b"):
        model = await pool.fetchrow(queries.upsert_base_model, ids.base_model_id(), name, 4096, {}, 16)
        models.append(model["id"])
        row = await pool.fetchrow(queries.insert_price, model["id"], 150_000, 600_000, 50_000,
                                  dt.datetime.now(dt.UTC) - dt.timedelta(days=400))
        prices[model["id"]] = Price(row["id"], model["id"], 150_000, 600_000, 50_000, row["effective_at"])
    for index in range(20):
        adapter_id = f"adp_bench{index:02d}"
        await pool.execute(
            "INSERT INTO adapters (id, tenant_id, name, base_model_id, rank, lora_alpha, target_modules, config, sha256,"
            " size_bytes, status) VALUES ($1, $2, $3, $4, 8, 16, '{q_proj}', '{}', $5, 1, 'ready')",
            adapter_id, tenant.id, f"adapter-{index}", models[index % 2], "0" * 64)
        adapters.append((adapter_id, models[index % 2]))
    return {"tenant": tenant.id, "keys": keys, "models": models, "prices": prices, "adapters": adapters}


def make_rows(world: dict, count: int, now: dt.datetime, spread: dt.timedelta) -> list[LedgerRow]:
    rng = random.Random(7)
    rows = []
    for _ in range(count):
        started = now - dt.timedelta(seconds=rng.randrange(int(spread.total_seconds())))
        adapter_id, model = rng.choice(world["adapters"]) if rng.random() < 0.7 else (None, rng.choice(world["models"]))
        prompt, completion = rng.randrange(10, 2000), rng.randrange(1, 500)
        price = world["prices"][model]
        rows.append(LedgerRow(
            request_id=ids.request_id(), tenant_id=world["tenant"], api_key_id=rng.choice(world["keys"]).id,
            base_model_id=model, model="bench", endpoint="chat.completions", outcome="success", http_status=200,
            streamed=True, prompt_tokens=prompt, completion_tokens=completion, worker_url=None, started_at=started,
            finished_at=started, ttft_ms=40, duration_ms=900, adapter_id=adapter_id,
            cost_pico_usd=cost_pico_usd(price, prompt, completion, adapter=adapter_id is not None), price_id=price.id))
    return rows


async def ledger_rate(pool: asyncpg.Pool, rows: list[LedgerRow]) -> float:
    writer = LedgerWriter(pool)
    writer.start()
    started = time.perf_counter()
    step = 50_000
    for offset in range(0, len(rows), step):
        for row in rows[offset:offset + step]:
            writer.record(row)
        await writer.drain()  # keep the queue bounded the way a busy gateway's would be
        done = offset + step
        print(f"  ledger: {min(done, len(rows)):>9,} rows  {min(done, len(rows)) / (time.perf_counter() - started):>8,.0f} rows/s",
              flush=True)
    await writer.close()
    return len(rows) / (time.perf_counter() - started)


async def admission(pool: asyncpg.Pool, world: dict, calls: int) -> dict:
    key = world["keys"][0]
    await pool.execute("UPDATE tenant_accounts SET monthly_spend_limit_micro_usd = 10^15 WHERE tenant_id = $1",
                       world["tenant"])
    await pool.execute("UPDATE api_keys SET requests_per_minute = 10000000, tokens_per_minute = 2000000000 WHERE id = $1",
                       key.id)
    results: dict = {}
    admitted = []
    # Both commit modes, alternating rounds (LORAFLEET_ADMISSION_SYNCHRONOUS_COMMIT; off is the default).
    for commit_mode in ("off", "on", "off", "on"):
        for concurrency in (1, 32):
            latencies: list[float] = []

            async def one() -> None:
                request_id = ids.request_id()
                begin = time.perf_counter()
                row = await pool.fetchrow(queries.admit_request, request_id, world["tenant"], key.id, "gw_bench",
                                          4_000, 600, commit_mode)  # noqa: B023 - awaited in this iteration
                latencies.append(time.perf_counter() - begin)  # noqa: B023
                assert row["verdict"] == "admitted", row["verdict"]
                admitted.append(request_id)

            started = time.perf_counter()
            for _ in range(calls // concurrency // 2):
                await asyncio.gather(*(one() for _ in range(concurrency)))
            wall = time.perf_counter() - started
            result = results.setdefault((commit_mode, concurrency), {"latencies": [], "wall": 0.0})
            result["latencies"] += latencies
            result["wall"] += wall
    for (commit_mode, concurrency), result in results.items():
        latencies = result.pop("latencies")
        result.update(p50_us=pct(latencies, 0.5) * 1e6, p99_us=pct(latencies, 0.99) * 1e6,
                      per_s=len(latencies) / result.pop("wall"))
        print(f"  admission, synchronous_commit={commit_mode}, {concurrency:>2} at a time: p50 {result['p50_us']:.0f} µs, "
              f"p99 {result['p99_us']:.0f} µs, {result['per_s']:,.0f}/s", flush=True)
    # Settle every reservation through the ledger, as the requests' rows would.
    now = dt.datetime.now(dt.UTC)
    writer = LedgerWriter(pool)
    writer.start()
    for request_id in admitted:
        writer.record(LedgerRow(request_id=request_id, tenant_id=world["tenant"], api_key_id=key.id,
                               base_model_id=world["models"][0], model="bench", endpoint="completions",
                               outcome="success", http_status=200, streamed=False, prompt_tokens=10,
                               completion_tokens=10, worker_url=None, started_at=now, finished_at=now, ttft_ms=1,
                               duration_ms=1, cost_pico_usd=8_000_000, price_id=world["prices"][world["models"][0]].id))
    await writer.close()
    left = await pool.fetchrow("SELECT reserved_micro_usd, in_flight FROM tenant_accounts WHERE tenant_id = $1",
                               world["tenant"])
    results["settled_clean"] = left["reserved_micro_usd"] == 0 and left["in_flight"] == 0
    return results


async def usage_latency(url: str, secret: str, queries_per_case: int) -> dict:
    now = dt.datetime.now(dt.UTC)
    cases = {
        "year, daily, ungrouped": {"bucket": "day", "start": (now - dt.timedelta(days=365)).isoformat()},
        "year, daily, by key+model+adapter": {"bucket": "day", "start": (now - dt.timedelta(days=365)).isoformat(),
                                              "group_by": "key,model,adapter"},
        "31 days, hourly, by adapter": {"bucket": "hour", "start": (now - dt.timedelta(days=31)).isoformat(),
                                        "group_by": "adapter"},
    }
    results = {}
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=60) as http:
        for name, params in cases.items():
            await http.get("/v1/usage", params=params)  # warm the plan and the cache
            latencies, rows = [], 0
            for _ in range(queries_per_case):
                begin = time.perf_counter()
                response = await http.get("/v1/usage", params=params)
                latencies.append(time.perf_counter() - begin)
                assert response.status_code == 200, response.text
                rows = len(response.json()["data"])
            results[name] = {"p50_ms": pct(latencies, 0.5) * 1e3, "p99_ms": pct(latencies, 0.99) * 1e3,
                             "mean_ms": statistics.fmean(latencies) * 1e3, "rows": rows}
            print(f"  /v1/usage {name}: p50 {results[name]['p50_ms']:.1f} ms, p99 {results[name]['p99_ms']:.1f} ms "
                  f"({rows} rows)", flush=True)
    return results


async def dashboard_latency(url: str, secret: str, requests_per_page: int) -> dict:
    """Server time of each dashboard page for the tenant with the million rows (client-side, loopback)."""
    import re

    pages = ["/dashboard", "/dashboard/usage", "/dashboard/usage?bucket=hour&group_by=adapter", "/dashboard/keys",
             "/dashboard/adapters", "/dashboard/invoices"]
    results = {}
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        form = await http.get("/dashboard/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        signed_in = await http.post("/dashboard/login", data={"csrf": token, "api_key": secret})
        assert signed_in.status_code == 303, signed_in.text
        for page in pages:
            await http.get(page)
            latencies = []
            for _ in range(requests_per_page):
                begin = time.perf_counter()
                response = await http.get(page)
                latencies.append(time.perf_counter() - begin)
                assert response.status_code == 200, (page, response.status_code)
            results[page] = {"p50_ms": pct(latencies, 0.5) * 1e3, "p99_ms": pct(latencies, 0.99) * 1e3}
            print(f"  {page}: p50 {results[page]['p50_ms']:.1f} ms, p99 {results[page]['p99_ms']:.1f} ms", flush=True)
    return results


async def round_trip_us(pool: asyncpg.Pool, calls: int = 2000) -> float:
    """p50 of a bare ``SELECT 1`` through the pool: how fast this machine's loopback and PostgreSQL are right now
    (it varied 4× between sessions on the shared benchmark box), to read the other numbers against."""
    latencies = []
    for _ in range(calls):
        begin = time.perf_counter()
        await pool.fetchval("SELECT 1")
        latencies.append(time.perf_counter() - begin)
    return pct(latencies, 0.5) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--live-rows", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--admissions", type=int, default=3200)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="lorafleet-bench-money-"))
    databases = DatabaseFactory(await server_dsn(workdir / "pgdata"))
    dsn = await databases.create("lorafleet_bench_money")
    await migrate(dsn)
    pool = await create_pool(dsn, max_size=10)
    gateway = None
    try:
        world = await seed(pool)
        calibration = await round_trip_us(pool)
        print(f"calibration: SELECT 1 round trip p50 {calibration:.0f} µs", flush=True)
        print(f"generating {args.live_rows:,} rows of live traffic (the last 10 minutes) …", flush=True)
        rows = make_rows(world, args.live_rows, dt.datetime.now(dt.UTC), dt.timedelta(minutes=10))
        print("1a. ledger write path, live traffic", flush=True)
        live_rate = await ledger_rate(pool, rows)
        print(f"generating {args.rows:,} rows spread over a year …", flush=True)
        rows = make_rows(world, args.rows, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), dt.timedelta(days=365))
        print("1b. ledger write path, a year of backfill (nearly every row opens its own hourly rollup row)", flush=True)
        rate = await ledger_rate(pool, rows)
        del rows
        await pool.execute("VACUUM ANALYZE")  # what autovacuum does to a loaded database; the numbers below assume it
        hourly = await pool.fetchval("SELECT count(*) FROM usage_hourly")
        daily = await pool.fetchval("SELECT count(*) FROM usage_daily")
        total = await pool.fetchrow("SELECT count(*) AS n, sum(cost_pico_usd) AS cost FROM usage_ledger")
        rollup_cost = await pool.fetchval("SELECT sum(cost_pico_usd) FROM usage_daily")
        print(f"  {rate:,.0f} rows/s; rollups: {hourly:,} hourly rows, {daily:,} daily rows; "
              f"ledger cost {total['cost']:,} = rollup cost {rollup_cost:,}: {total['cost'] == rollup_cost}", flush=True)

        print("2. admission", flush=True)
        admitted = await admission(pool, world, args.admissions)

        print("3. /v1/usage through a gateway", flush=True)
        env = platform_env(dsn, workdir, workdir)
        gateway = await asyncio.to_thread(start_gateway, env, workdir, "/healthz")
        usage = await usage_latency(gateway.url, world["keys"][1].secret, args.queries)
        print("4. dashboard pages", flush=True)
        pages = await dashboard_latency(gateway.url, world["keys"][1].secret, max(20, args.queries // 4))
    finally:
        if gateway is not None:
            gateway.stop()
        await pool.close()
        await databases.drop_all()

    report = [
        "# Money path", "",
        f"`.venv/bin/python benchmarks/money.py --rows {args.rows} --live-rows {args.live_rows} --queries {args.queries} --admissions {args.admissions}`"
        f" — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {_cores()} cores, Python {platform.python_version()}.",
        "", "| measure | value |", "|---|---|",
        f"| calibration: a bare `SELECT 1` through the pool, p50 (machine speed at the time of this run) | {calibration:.0f} µs |",
        f"| ledger rows/s, one `LedgerWriter` (insert + settle + hourly/daily rollups + account, one statement per batch), live traffic ({args.live_rows:,} rows in the last 10 min) | {live_rate:,.0f} |",
        f"| same, a year of backfill ({args.rows:,} rows; nearly every row opens its own hourly rollup row) | {rate:,.0f} |",
        f"| rollup rows after {args.rows:,} ledger rows (hourly / daily) | {hourly:,} / {daily:,} |",
        f"| ledger total cost = rollup total cost | {total['cost'] == rollup_cost} ({total['cost']:,} pico-USD, exact) |",
        *(f"| admission (reservation + rate limits), synchronous_commit={mode}{' (default)' if mode == 'off' else ''}, "
          f"{n} at a time: p50 / p99 (throughput) | {admitted[mode, n]['p50_us']:.0f} µs / "
          f"{admitted[mode, n]['p99_us']:.0f} µs ({admitted[mode, n]['per_s']:,.0f}/s) |"
          for mode in ("off", "on") for n in (1, 32)),
        f"| reservations all settled by their ledger rows | {admitted['settled_clean']} |",
    ]
    for name, result in usage.items():
        report.append(f"| `/v1/usage` {name}, {result['rows']} rows: p50 / p99 | {result['p50_ms']:.1f} ms / {result['p99_ms']:.1f} ms |")
    for page, result in pages.items():
        report.append(f"| dashboard `{page}`: p50 / p99 | {result['p50_ms']:.1f} ms / {result['p99_ms']:.1f} ms |")
    report += ["", "The tenant has 10 keys, 2 base models and 20 adapters, so a year of daily data is 80k rollup rows; "
               "the ledger then holds the live rows, the year and the admission rows. ", "Admission is measured from the gateway's side of the connection (round trip to PostgreSQL on "
               "loopback included); unmetered tenants (no limits of any kind) skip it. `/v1/usage` latency is "
               "measured by an HTTP client on loopback, so it includes the gateway's auth and HTTP handling.", ""]
    publish("money", "\n".join(report))


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    asyncio.run(main())

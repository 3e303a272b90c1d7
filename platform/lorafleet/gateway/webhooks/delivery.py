"""Webhook delivery: a loop in every gateway that leases due deliveries (so several gateways share
them and none is sent twice at once), signs and sends each, and records the attempt.

Receivers are untrusted. At send time, after DNS, an address that is not public (private, loopback,
link-local — the cloud metadata service at 169.254.169.254 —, multicast, reserved, unspecified) is
refused unless ``LORAFLEET_WEBHOOK_ALLOW_PRIVATE``; the connection goes to the very addresses that
were checked (the guard is the connector's resolver), so a name that resolves differently the second
time cannot slip through. Redirects are not followed (a 3xx is a failed attempt), one attempt takes
at most ``webhook_timeout_seconds``, and at most ``MAX_ANSWER_BYTES`` of the answer are read.

At least once: a delivery is retried on any failure with the same ``webhook-id`` (the event's id)
on a schedule of about three days; a gateway that dies mid-send leaves a lease that expires, and
another gateway (or itself, restarted) sends it again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import msgspec
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from lorafleet.core.tasks import stop_task
from lorafleet.db import DATABASE_UNAVAILABLE, queries
from lorafleet.gateway.webhooks import signing

log = structlog.get_logger("lorafleet.webhooks")

MAX_ANSWER_BYTES = 64 * 1024
LEASE_SECONDS = 60.0
BATCH = 20
# Retry delays as multiples of webhook_retry_base_seconds (5 s: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h,
# 20 h, 24 h ≈ 3 days; the attempt after the last delay is the last).
RETRY_FACTORS = (1, 60, 360, 1440, 3600, 7200, 10080, 14400, 17280)


class AddressRefused(Exception):
    """The receiver's address is not public (and private ones are not allowed)."""


def refused_reason(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for test, why in ((ip.is_loopback, "loopback"), (ip.is_link_local, "link-local"), (ip.is_private, "private"),
                      (ip.is_multicast, "multicast"), (ip.is_reserved, "reserved"),
                      (ip.is_unspecified, "unspecified")):
        if test:
            return why
    return None if ip.is_global else "not public"


class GuardedResolver(AbstractResolver):
    """DNS for deliveries: every address a name resolves to must be public (else the delivery is refused)."""

    def __init__(self, allow_private: bool) -> None:
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        results: list[ResolveResult] = []
        for fam, _, proto, _, address in infos:
            why = None if self._allow_private else refused_reason(address[0])
            if why is not None:
                raise AddressRefused(f"{host} resolves to a {why} address ({address[0]})")
            results.append({"hostname": host, "host": address[0], "port": address[1], "family": fam,
                            "proto": proto, "flags": socket.AI_NUMERICHOST})
        return results

    async def close(self) -> None:
        return None


def check_literal(url: str, allow_private: bool) -> None:
    """A URL whose host is an IP address never reaches the resolver: checked here."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return
    why = None if allow_private else refused_reason(host)
    if why is not None:
        raise AddressRefused(f"{host} is a {why} address")


def event_body(event_id: str, event_type: str, created_at: dt.datetime, data: dict[str, Any]) -> bytes:
    """The payload, in OpenAI's webhook event shape (``client.webhooks.unwrap`` parses it)."""
    return msgspec.json.encode({"id": event_id, "object": "event", "type": event_type,
                                "created_at": int(created_at.timestamp()), "data": data})


class WebhookSender:
    """One signed POST, with the guards; the outcome as (status code or None, error or None, ms)."""

    def __init__(self, allow_private: bool, timeout_seconds: float) -> None:
        self._allow_private = allow_private
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._allow_private), use_dns_cache=False,
                                             limit=100, force_close=True)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def send(self, url: str, secrets_: list[str], webhook_id: str, body: bytes
                   ) -> tuple[int | None, str | None, int]:
        started = time.perf_counter()
        try:
            check_literal(url, self._allow_private)
            headers = signing.headers(secrets_, webhook_id, int(time.time()), body)
            async with self._client().post(url, data=body, headers=headers, allow_redirects=False,
                                           timeout=self._timeout) as answer:
                await answer.content.read(MAX_ANSWER_BYTES)  # at most this much; the rest is dropped with the connection
                status = answer.status
            error = None if 200 <= status < 300 else f"answered {status}"
            return status, error, int((time.perf_counter() - started) * 1000)
        except AddressRefused as exc:
            return None, f"refused: {exc}", int((time.perf_counter() - started) * 1000)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {str(exc)[:200]}", int((time.perf_counter() - started) * 1000)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None  # a deliverer started again opens a new one


class WebhookDeliverer:
    """The delivery loop of one gateway."""

    def __init__(self, pool: asyncpg.Pool, gateway_id: str, sender: WebhookSender, *, poll_seconds: float,
                 retry_base_seconds: float) -> None:
        self._pool = pool
        self._gateway_id = gateway_id
        self._sender = sender
        self._poll = poll_seconds
        self._retry_base = retry_base_seconds
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-deliverer")

    def poke(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        await stop_task(self._task)
        await self._sender.close()

    async def _run(self) -> None:
        while True:
            try:
                while await self.deliver_due():
                    pass
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("webhook_round_failed", error=type(exc).__name__)
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll)
            except TimeoutError:
                pass
            self._wake.clear()

    async def deliver_due(self) -> int:
        """Send what is due now (one leased batch); how many were sent."""
        claimed = await self._pool.fetch(queries.claim_webhook_deliveries, self._gateway_id, LEASE_SECONDS, BATCH)
        await asyncio.gather(*(self._deliver(row) for row in claimed))
        return len(claimed)

    async def _deliver(self, claimed: asyncpg.Record) -> None:
        parts = await self._pool.fetchrow(queries.delivery_parts, claimed["event_id"], claimed["endpoint_id"])
        attempt = claimed["attempts"] + 1
        if parts["endpoint_deleted"]:
            status, error, elapsed = None, "endpoint deleted", 0
        else:
            valid = [parts["secret"]] + ([parts["previous_secret"]] if parts["previous_valid"] else [])
            body = event_body(parts["event_id"], parts["type"], parts["created_at"], parts["data"])
            status, error, elapsed = await self._sender.send(parts["url"], valid, parts["event_id"], body)
        if error is None:
            outcome, retry_at = "delivered", None
        elif parts["endpoint_deleted"] or attempt > len(RETRY_FACTORS):
            outcome, retry_at = "failed", None
        else:
            outcome = "pending"
            retry_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._retry_base * RETRY_FACTORS[attempt - 1])
        await self._pool.execute(queries.record_webhook_attempt, claimed["id"], self._gateway_id, attempt, status,
                                 error, elapsed, outcome, retry_at)
        log.info("webhook_attempt", delivery_id=claimed["id"], event_id=parts["event_id"], attempt=attempt,
                 status_code=status, outcome=outcome, error=error)

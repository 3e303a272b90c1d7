"""Held-request bookkeeping (gateway/fleet/holding.py) against a counting stand-in for the pool."""

from __future__ import annotations

import asyncio

import pytest
from lorafleet.core.errors import ClientDisconnected, RateLimited, ServiceUnavailable
from lorafleet.db import queries
from lorafleet.gateway.fleet.holding import HeldRequests, HoldLimits


class CountingPool:
    def __init__(self) -> None:
        self.wakes: list[str] = []
        self.published: list[dict[str, int]] = []

    async def execute(self, sql, *args, timeout=None):
        await asyncio.sleep(0.01)  # a round trip
        if sql == queries.request_wake:
            self.wakes.append(args[0])
        elif sql == queries.set_gateway_held:
            self.published.append(args[1])


class NoWorkers:
    def __init__(self) -> None:
        self.ready = asyncio.Event()

    def routable(self, base_model_id, adapter_id):
        return ["worker"] if self.ready.is_set() else []

    async def wait_changed(self, timeout):
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            pass


def _holds(limits: HoldLimits = HoldLimits(), timeout: float = 30.0) -> tuple[HeldRequests, CountingPool, NoWorkers]:
    pool, registry = CountingPool(), NoWorkers()
    return HeldRequests(pool, registry, timeout=timeout, limits=limits, gateway_id="gw_1"), pool, registry


async def test_a_burst_of_holds_wakes_each_model_once_and_publishes_a_few_times():
    holds, pool, registry = _holds()
    waiting = [asyncio.create_task(holds.reserve("bm_a", f"ten_{i % 7}", 100).until_ready(None)) for i in range(100)]
    waiting.append(asyncio.create_task(holds.reserve("bm_b", "ten_1", 100).until_ready(None)))
    await asyncio.sleep(0.05)
    assert holds.by_model == {"bm_a": 100, "bm_b": 1}
    registry.ready.set()
    assert await asyncio.gather(*waiting) == [["worker"]] * 101
    await asyncio.sleep(0.05)
    assert sorted(pool.wakes) == ["bm_a", "bm_b"], "one wake request per model, not per request"
    assert 1 <= len(pool.published) <= 4 and pool.published[-1] == {}, pool.published
    assert (holds.count, holds.bytes, dict(holds.by_model)) == (0, 0, {})
    await holds.close()


@pytest.mark.parametrize(("limits", "refusal"), [
    (HoldLimits(tenant_max_requests=2), RateLimited),
    (HoldLimits(tenant_max_bytes=250), RateLimited),
    (HoldLimits(max_requests=2), ServiceUnavailable),
    (HoldLimits(max_bytes=250), ServiceUnavailable),
])
async def test_caps_refuse_the_hold_that_does_not_fit_and_a_release_makes_room(limits, refusal):
    holds, _, _ = _holds(limits)
    tenant_cap = refusal is RateLimited
    first, second = holds.reserve("bm_a", "ten_1", 100), holds.reserve("bm_a", "ten_1", 100)
    with pytest.raises(refusal) as refused:
        holds.reserve("bm_a", "ten_1", 100)
    assert refused.value.headers["Retry-After"]
    assert refused.value.code == ("too_many_held_requests" if tenant_cap else "hold_capacity_exhausted")
    if tenant_cap:
        holds.reserve("bm_a", "ten_2", 100).release()  # another tenant's own caps
    first.release()
    first.release()  # once only
    assert holds.count == 1 and holds.bytes == 100
    holds.reserve("bm_a", "ten_1", 100)
    second.release()
    await holds.close()


async def test_a_client_that_leaves_ends_its_hold_and_a_hold_that_waits_too_long_gets_503():
    holds, _, _ = _holds(timeout=0.2)
    gone = asyncio.Event()
    hold = holds.reserve("bm_a", "ten_1", 100)
    task = asyncio.create_task(hold.until_ready(None, gone.wait()))
    await asyncio.sleep(0.02)
    gone.set()
    with pytest.raises(ClientDisconnected):
        await task
    assert holds.count == 0 and not holds.by_model
    with pytest.raises(ServiceUnavailable) as timed_out:
        await holds.reserve("bm_a", "ten_1", 100).until_ready(None)
    assert timed_out.value.code == "no_worker_ready" and holds.count == 0
    await holds.close()

"""Failed sign-ins per client address: after a burst of failures, answer 429 without a lookup.

A key's checksum is public (CRC-32), so well-formed random keys still cost a database query each;
this caps what one address can make the gateway do. GCRA per address: each failure moves the
address's "theoretical arrival time" forward by ``60 / per_minute`` seconds; once it runs more than
a minute ahead of now, the address is refused until it falls back within the window. Per gateway
process and bounded in memory (least recently failing addresses are forgotten first). Behind a
proxy, the address is the one uvicorn derives from X-Forwarded-For for trusted proxies only
(``LORAFLEET_FORWARDED_ALLOW_IPS``).

Buckets keep one credential's failures from locking out another: API keys (and the dashboard's
key sign-in) count in ``KEYS``, the operator's admin token in ``ADMIN``, each bounded on its own.
Only failures that cost something count: a malformed key or one whose checksum fails is refused
without a lookup (auth.py), so it costs an attacker nothing and costs the address nothing either.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from lorafleet.core.errors import RateLimited

WINDOW_SECONDS = 60.0


KEYS = "keys"
ADMIN = "admin"


class FailureThrottle:
    def __init__(self, per_minute: int, max_addresses: int = 100_000) -> None:
        self._interval = WINDOW_SECONDS / per_minute if per_minute > 0 else 0.0
        self._max = max_addresses
        # bucket → address → theoretical arrival time (monotonic)
        self._tat: dict[str, OrderedDict[str, float]] = {KEYS: OrderedDict(), ADMIN: OrderedDict()}

    def failed(self, address: str, bucket: str = KEYS) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        tats = self._tat[bucket]
        tats[address] = max(tats.get(address, now), now) + self._interval
        tats.move_to_end(address)
        while len(tats) > self._max:
            tats.popitem(last=False)

    def retry_after(self, address: str, bucket: str = KEYS) -> float:
        """Seconds until ``address`` may try again; 0 when it may now."""
        tat = self._tat[bucket].get(address)
        if tat is None:
            return 0.0
        return max(0.0, tat - time.monotonic() - WINDOW_SECONDS)

    def throttled(self, address: str, bucket: str = KEYS) -> bool:
        return self.retry_after(address, bucket) > 0

    def check(self, address: str, bucket: str = KEYS) -> None:
        wait = self.retry_after(address, bucket)
        if wait > 0:
            raise RateLimited("Too many failed authentication attempts from this address; retry later.",
                              code="too_many_failed_attempts", headers={"Retry-After": str(math.ceil(wait))})

"""Failed sign-ins per client address: after a burst of failures, answer 429 without a lookup.

A key's checksum is public (CRC-32), so well-formed random keys still cost a database query each;
this caps what one address can make the gateway do. GCRA per address: each failure moves the
address's "theoretical arrival time" forward by ``60 / per_minute`` seconds; once it runs more than
a minute ahead of now, the address is refused until it falls back within the window. Per gateway
process and bounded in memory (least recently failing addresses are forgotten first). Behind a
proxy, the address is the one uvicorn derives from X-Forwarded-For for trusted proxies only
(``LORAFLEET_FORWARDED_ALLOW_IPS``).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from lorafleet.core.errors import RateLimited

WINDOW_SECONDS = 60.0


class FailureThrottle:
    def __init__(self, per_minute: int, max_addresses: int = 100_000) -> None:
        self._interval = WINDOW_SECONDS / per_minute if per_minute > 0 else 0.0
        self._max = max_addresses
        self._tat: OrderedDict[str, float] = OrderedDict()  # address → theoretical arrival time (monotonic)

    def failed(self, address: str) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        self._tat[address] = max(self._tat.get(address, now), now) + self._interval
        self._tat.move_to_end(address)
        while len(self._tat) > self._max:
            self._tat.popitem(last=False)

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 when it may now."""
        tat = self._tat.get(address)
        if tat is None:
            return 0.0
        return max(0.0, tat - time.monotonic() - WINDOW_SECONDS)

    def check(self, address: str) -> None:
        wait = self.retry_after(address)
        if wait > 0:
            raise RateLimited("Too many failed authentication attempts from this address; retry later.",
                              code="too_many_failed_attempts", headers={"Retry-After": str(math.ceil(wait))})

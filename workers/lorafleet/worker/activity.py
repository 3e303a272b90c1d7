"""What the engine is doing, as its front door sees it: requests in flight and when the last one ended.

One instance per API server process (:data:`ACTIVITY`), written by the guard on every generation
request and read by the worker's state route: the supervisor's idle timer (scale to zero) and the
drain on SIGTERM both need "is anyone being served, and since when has nobody been".
"""

from __future__ import annotations

import time


class Activity:
    def __init__(self) -> None:
        self.in_flight = 0
        self.served = 0
        self.last_change = time.monotonic()

    def idle_seconds(self) -> float:
        """Seconds since the last generation request ended; 0 while one is running."""
        return 0.0 if self.in_flight else time.monotonic() - self.last_change

    async def track(self, app, scope, receive, send) -> None:
        self.in_flight += 1
        self.last_change = time.monotonic()
        try:
            await app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.served += 1
            self.last_change = time.monotonic()


ACTIVITY = Activity()

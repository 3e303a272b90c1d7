"""File downloads (``GET /v1/files/{id}/content``, the dashboard's batch files): streamed from the blob
store as they are read, a bounded number at a time, and cut when the reader stops reading. File uploads
take slots of their own the same way (gateway/files/controller.py).

- **Streamed**: the blob is read in :data:`CHUNK_BYTES` pieces (a local file's handle, or S3's response
  body) and each piece is sent before the next is read: a download holds one piece and the server's
  write buffer, never a copy of the file.
- **Bounded**: each gateway serves at most ``LORAFLEET_MAX_DOWNLOADS`` downloads at once (503
  ``download_capacity_exhausted`` beyond) and at most ``LORAFLEET_TENANT_MAX_DOWNLOADS`` of one tenant
  (429 ``rate_limit_exceeded``), both with ``Retry-After``; a slot is taken before the blob is opened and
  given back however the response ends.
- **Stalls are cut**: a piece the client does not take within ``LORAFLEET_DOWNLOAD_STALL_SECONDS`` (the
  server's send waits on the socket's back-pressure) ends the response: the connection is dropped (not
  closed: a close would keep the socket and its unsent bytes until the reader takes them) and the slot
  freed, so a reader that stops reading cannot hold a slot, a blob handle, a socket or a buffer for long.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any, BinaryIO

import structlog
from litestar import Request
from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import HTTPResponseBodyEvent, Receive, Scope, Send
from lorafleet.core.errors import RateLimited, ServiceUnavailable
from lorafleet.gateway.context import context_of

log = structlog.get_logger("lorafleet.downloads")

CHUNK_BYTES = 64 * 1024
RETRY_AFTER_SECONDS = 5


class TransferSlot:
    """One transfer's place in its gateway's and its tenant's count; released once, however it ends."""

    def __init__(self, slots: TransferSlots, tenant_id: str) -> None:
        self._slots = slots
        self._tenant_id = tenant_id
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self._tenant_id)


class TransferSlots:
    """Transfers (downloads, or uploads) in flight in this gateway process, in all and per tenant."""

    def __init__(self, *, max_transfers: int, tenant_max_transfers: int, noun: str = "downloads") -> None:
        self.max_transfers = max_transfers
        self.tenant_max_transfers = tenant_max_transfers
        self.count = 0
        self._per_tenant: Counter[str] = Counter()
        self._noun = noun

    def acquire(self, tenant_id: str) -> TransferSlot:
        """A slot, or the refusal naming which bound is full (nothing is taken then)."""
        held = self._per_tenant[tenant_id]
        if held >= self.tenant_max_transfers:
            raise RateLimited(f"this account has {held} {self._noun} in progress through this gateway, its limit; "
                              "retry when one has finished", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if self.count >= self.max_transfers:
            raise ServiceUnavailable(f"this gateway serves as many {self._noun} as it may; retry shortly",
                                     code=f"{self._noun[:-1]}_capacity_exhausted",
                                     headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        self._per_tenant[tenant_id] = held + 1
        self.count += 1
        return TransferSlot(self, tenant_id)

    def held_by(self, tenant_id: str) -> int:
        return self._per_tenant[tenant_id]

    def _release(self, tenant_id: str) -> None:
        self.count -= 1
        self._per_tenant[tenant_id] -= 1
        if self._per_tenant[tenant_id] <= 0:
            del self._per_tenant[tenant_id]


class ReaderStalled(Exception):
    """The client took no bytes for the stall timeout: the response ends here, the connection is closed."""


async def _pieces(reader: BinaryIO) -> Any:
    while piece := await asyncio.to_thread(reader.read, CHUNK_BYTES):
        yield piece


class _ASGIDownload(ASGIStreamingResponse):
    __slots__ = ("_reader", "_slot", "_stall_seconds")

    def __init__(self, *, reader: BinaryIO, slot: TransferSlot, stall_seconds: float, **kwargs: Any) -> None:
        super().__init__(iterator=_pieces(reader), **kwargs)
        self._reader = reader
        self._slot = slot
        self._stall_seconds = stall_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* ReaderStalled:  # (from within the response's task group)
            # Closing would wait, holding the unsent bytes and the socket, until the reader takes them:
            # drop the connection instead. Nothing more can be sent either way.
            abort = context_of(scope).abort_connection
            if abort is not None:
                abort()
        finally:
            self._slot.release()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._reader.close)

    async def _stream(self, send: Send) -> None:
        sent = 0
        async for piece in self.iterator:
            event: HTTPResponseBodyEvent = {"type": "http.response.body", "body": piece, "more_body": True}
            try:
                # The server's send waits while the client's socket takes nothing (back-pressure).
                await asyncio.wait_for(send(event), self._stall_seconds)
            except TimeoutError:
                log.warning("download_stalled", sent_bytes=sent, stall_seconds=self._stall_seconds)
                raise ReaderStalled from None  # the server closes the connection: nothing more is sent
            sent += len(piece)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class Download(Stream):
    """A blob's bytes as a streamed response that holds ``slot`` until it ends (and closes ``reader``)."""

    def __init__(self, reader: BinaryIO, slot: TransferSlot, *, stall_seconds: float, headers: dict[str, str]) -> None:
        super().__init__((), media_type="application/octet-stream", headers=headers)
        self._reader = reader
        self._slot = slot
        self._stall_seconds = stall_seconds

    def to_asgi_response(self, app: Any, request: Request, *, background: Any = None, cookies: Any = None,
                         encoded_headers: Any = None, headers: dict[str, str] | None = None,
                         is_head_response: bool = False, media_type: Any = None, status_code: int | None = None,
                         type_encoders: Any = None) -> ASGIStreamingResponse:
        """As :meth:`Stream.to_asgi_response`, with the slot, the reader and the stall timeout."""
        return _ASGIDownload(
            reader=self._reader, slot=self._slot, stall_seconds=self._stall_seconds,
            background=self.background or background, content_length=0,
            cookies=self.cookies if cookies is None else [*self.cookies, *cookies],
            encoded_headers=encoded_headers, encoding=self.encoding,
            headers={**headers, **self.headers} if headers is not None else self.headers,
            is_head_response=is_head_response, media_type=self.media_type, status_code=self.status_code or status_code)

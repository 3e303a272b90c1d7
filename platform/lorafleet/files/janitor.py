"""Expired files leave: every sweep deletes the files past their ``expires_after`` (blob, row and the
room they took in the tenant's quota). Reads already hide them from the moment they expire
(files.sql filters on ``expires_at``); this gives the storage back. Started by the gateway's
RetentionJanitor (gateway/janitor.py); idempotent, so every gateway may run it at once."""

from __future__ import annotations

import structlog
from lorafleet.files.service import FileService

log = structlog.get_logger("lorafleet.janitor")

BATCH = 500  # files per transaction: one sweep never holds many row locks for long


class ExpiredFiles:
    def __init__(self, files: FileService, *, batch: int = BATCH) -> None:
        self._files = files
        self._batch = batch

    async def sweep(self) -> int:
        """Deletes every file expired by now, a batch at a time; how many."""
        total = 0
        while True:
            deleted = await self._files.delete_expired(self._batch)
            total += deleted
            if deleted < self._batch:
                break
        if total:
            log.info("expired_files_deleted", files=total)
        return total

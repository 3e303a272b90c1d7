"""What each tenant keeps, per kind of stored object (stored responses; the files API's files next),
under a quota of bytes and objects.

The usage counters live in ``tenant_storage`` (migrations/0013): an object is charged in the
transaction that stores it (:meth:`TenantStorage.charge`, which refuses past the quota, so
concurrent writers cannot pass it together) and given back in the one that deletes it. Before a
request that would store something runs, :meth:`TenantStorage.check_room` refuses it with a 409
when the tenant is already full, so a full account is not billed for work whose result cannot be kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import asyncpg
from lorafleet.core.errors import Conflict, InvalidRequest
from lorafleet.db import queries

Kind = Literal["responses", "files"]
QUOTA_EXCEEDED = "storage_quota_exceeded"
OBJECT_TOO_LARGE = "stored_object_too_large"


@dataclass(frozen=True, slots=True)
class StorageQuota:
    max_bytes: int       # all of a tenant's objects of the kind together
    max_objects: int
    max_object_bytes: int  # one object


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int
    objects: int


class TenantStorage:
    def __init__(self, pool: asyncpg.Pool, kind: Kind, quota: StorageQuota, *, noun: str) -> None:
        self._pool = pool
        self.kind = kind
        self.quota = quota
        self._noun = noun  # how errors name the objects: "stored responses"

    async def usage(self, tenant_id: str) -> Usage:
        row = await self._pool.fetchrow(queries.tenant_storage_usage, tenant_id, self.kind)
        return Usage(row["bytes"], row["objects"]) if row else Usage(0, 0)

    async def check_room(self, tenant_id: str, object_bytes: int, *, param: str | None = None) -> None:
        """Refuse, before anything runs, an object known to be too large or a tenant already out of room
        for one of ``object_bytes`` (more may be added later: :meth:`charge` has the last word)."""
        quota = self.quota
        if object_bytes > quota.max_object_bytes:
            raise InvalidRequest(f"this would store {object_bytes} bytes, more than the {quota.max_object_bytes} one "
                                 f"of this account's {self._noun} may hold", param=param, code=OBJECT_TOO_LARGE)
        used = await self.usage(tenant_id)
        if used.objects + 1 > quota.max_objects or used.bytes + object_bytes > quota.max_bytes:
            raise Conflict(f"this account's {self._noun} are at their quota ({used.objects} of {quota.max_objects}, "
                           f"{used.bytes} of {quota.max_bytes} bytes); delete some first", param=param,
                           code=QUOTA_EXCEEDED)

    async def charge(self, connection: asyncpg.Connection, tenant_id: str, object_bytes: int, *,
                     within_quota: bool = True) -> bool:
        """Take room for one object in ``connection``'s transaction; False (nothing taken) past the quota.
        ``within_quota`` False: counted but never refused (what the platform itself writes for the tenant,
        such as a batch's output, which a full quota must not lose)."""
        quota = self.quota
        if within_quota and object_bytes > quota.max_object_bytes:
            return False
        unlimited = 2**62
        row = await connection.fetchrow(queries.charge_tenant_storage, tenant_id, self.kind, object_bytes,
                                        quota.max_bytes if within_quota else unlimited,
                                        quota.max_objects if within_quota else unlimited)
        return row is not None

    async def reserve(self, connection: asyncpg.Connection, tenant_id: str, object_bytes: int, objects: int) -> bool:
        """Hold room for objects to be stored later (a batch's output files), in ``connection``'s transaction,
        within the tenant's whole quota (one object's own limit does not apply: they are not stored yet);
        False (nothing taken) past it. Given back with :meth:`refund`."""
        quota = self.quota
        row = await connection.fetchrow(queries.reserve_tenant_storage, tenant_id, self.kind, object_bytes, objects,
                                        quota.max_bytes, quota.max_objects)
        return row is not None

    async def refund(self, connection: asyncpg.Connection | asyncpg.Pool, tenant_id: str, object_bytes: int,
                     objects: int = 1) -> None:
        await connection.execute(queries.refund_tenant_storage, tenant_id, self.kind, object_bytes, objects)

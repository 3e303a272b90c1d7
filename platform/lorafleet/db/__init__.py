"""PostgreSQL access: pool, named SQL queries, migrations, embedded server."""

from lorafleet.db.pool import DATABASE_UNAVAILABLE, create_pool
from lorafleet.db.queries import queries

__all__ = ["DATABASE_UNAVAILABLE", "create_pool", "queries"]


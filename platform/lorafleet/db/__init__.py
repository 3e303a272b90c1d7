"""PostgreSQL access: pool, named SQL queries, migrations, embedded server."""

from lorafleet.db.pool import DATABASE_UNAVAILABLE, create_pool, is_unavailable
from lorafleet.db.queries import queries

__all__ = ["DATABASE_UNAVAILABLE", "create_pool", "is_unavailable", "queries"]

"""PostgreSQL access: pool, named SQL queries, migrations, embedded server."""

from lorafleet.db.pool import create_pool
from lorafleet.db.queries import queries

__all__ = ["create_pool", "queries"]

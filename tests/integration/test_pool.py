"""The gateway's connection pool: what a pooled query costs on the wire."""

from lorafleet.db import create_pool


async def test_a_pooled_query_is_one_statement_and_no_reset_round_trip(database_url):
    pool = await create_pool(database_url, max_size=1)
    try:
        sent: list[str] = []
        async with pool.acquire() as connection:
            connection.add_query_logger(lambda record: sent.append(record.query))
        assert await pool.fetchval("SELECT 1") == 1
        assert await pool.fetchval("SELECT 2") == 2
        # asyncpg's default release would also send "SELECT pg_advisory_unlock_all(); CLOSE ALL; ..."
        assert sent == ["SELECT 1", "SELECT 2"]
    finally:
        await pool.close()

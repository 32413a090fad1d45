"""The serve process's connections: an async pool running named queries, errors mapped to ours.

::

    db = Database(dsn)
    await db.open()
    rows = await db.fetch("web_queue_overview")
    async with db.transaction() as conn:
        await db.fetch("job_insert", params, conn=conn)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import psycopg_pool

from pgqueue.connection import connect_options, describe, has_rows
from pgqueue.errors import DatabaseUnavailable, PgQueueError, from_psycopg
from pgqueue.queries import q

Row = tuple[Any, ...]


class Database:
    """A small async pool for the web process. Every statement comes from ``sql/queries`` by name."""

    def __init__(self, dsn: str, *, max_size: int = 8) -> None:
        self.dsn = dsn
        self._pool = _pool(dsn, "pgqueue-web", 1, max_size)
        # Reads from outside a transaction the main pool holds open (see ``fetch_outside``). A pool of its own:
        # a request that holds a connection of the main pool and waits for one of these can never wait for
        # itself, however many requests do so at once.
        self._side = _pool(dsn, "pgqueue-web-side", 0, 2)

    async def open(self) -> None:
        await self._pool.open()
        await self._side.open()

    async def close(self) -> None:
        await self._side.close()
        await self._pool.close()

    @asynccontextmanager
    async def connection(self, *, side: bool = False) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled autocommit connection."""
        try:
            async with (self._side if side else self._pool).connection() as conn:
                yield conn
        except psycopg_pool.PoolTimeout as err:
            raise DatabaseUnavailable(f"no connection to PostgreSQL at {describe(self.dsn)} within 10 s") from err

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection inside one transaction: committed if the block ends normally."""
        async with self.connection() as conn:
            try:
                async with conn.transaction():
                    yield conn
            except PgQueueError:
                raise
            except psycopg.Error as err:
                raise from_psycopg(err) from err

    async def fetch(self, name: str, params: dict[str, Any] | None = None,
                    conn: psycopg.AsyncConnection[Any] | None = None) -> list[Row]:
        """Run named query ``name`` (on ``conn`` if given) and return its rows."""
        if conn is not None:
            return await run(conn, name, params)
        async with self.connection() as pooled:
            return await run(pooled, name, params)

    async def fetch_outside(self, name: str, params: dict[str, Any] | None = None) -> list[Row]:
        """Run named query ``name`` on a connection of its own, for a request inside ``transaction()`` that
        needs to see what other sessions see (committed rows only)."""
        async with self.connection(side=True) as side:
            return await run(side, name, params)

    async def scalar(self, name: str, params: dict[str, Any] | None = None) -> Any:
        rows = await self.fetch(name, params)
        return rows[0][0] if rows else None


async def run(conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any] | None = None) -> list[Row]:
    try:
        cur = await conn.execute(q(name), params or {})
        return await cur.fetchall() if has_rows(cur) else []
    except psycopg.Error as err:
        raise from_psycopg(err) from err


def _pool(dsn: str, name: str, min_size: int, max_size: int
          ) -> psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    return psycopg_pool.AsyncConnectionPool(dsn, min_size=min_size, max_size=max_size, timeout=10, open=False,
                                            name=name, kwargs={"autocommit": True, **connect_options(dsn)})

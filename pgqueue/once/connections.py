"""Connections for handlers' own transactions and for idempotent blocks, kept apart from the worker's own.

A worker owns one ``HandlerConnections``: a sync pool for ``def`` handlers (they run in threads) and an async
pool for ``async def`` ones, each opened on first use, so a worker whose handlers never ask for a connection
never opens one. Transactional handlers and idempotent blocks hold a connection for as long as they run, which
is why these pools are separate from the claim, heartbeat and completion connections: a busy handler can never
starve the heartbeat. An App has one too, for ``app.idempotent`` and ``app.once`` outside workers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager, contextmanager
from typing import Any, Protocol

import psycopg
import psycopg_pool

from pgqueue.connection import connect_options, describe
from pgqueue.errors import ConfigurationError, DatabaseUnavailable

# How long a handler waits for a free connection before its attempt fails (and is retried).
CHECKOUT_TIMEOUT = 30.0


class ConnectionSource(Protocol):
    """Where handlers and idempotent blocks get a connection (they open their own transactions on it)."""

    def sync(self) -> AbstractContextManager[psycopg.Connection[Any]]: ...

    def async_(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...


class HandlerConnections:
    """Two lazily opened pools (sync and async) of at most ``max_size`` autocommit connections each."""

    def __init__(self, dsn: str, max_size: int, name: str = "pgqueue-handlers") -> None:
        self._dsn = dsn
        self._max_size = max_size
        self._name = name
        self._lock = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._apool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._apool_loop: asyncio.AbstractEventLoop | None = None

    def _sync_pool(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
        with self._lock:
            if self._pool is None:
                self._pool = psycopg_pool.ConnectionPool(
                    self._dsn, min_size=0, max_size=self._max_size, timeout=CHECKOUT_TIMEOUT, open=True,
                    name=self._name, kwargs={"autocommit": True, **connect_options(self._dsn)},
                )
            return self._pool

    async def _async_pool(self) -> psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        loop = asyncio.get_running_loop()
        if self._apool is None or self._apool_loop is not loop:
            pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] = psycopg_pool.AsyncConnectionPool(
                self._dsn, min_size=0, max_size=self._max_size, timeout=CHECKOUT_TIMEOUT, open=False,
                name=f"{self._name}-async", kwargs={"autocommit": True, **connect_options(self._dsn)},
            )
            await pool.open()
            self._apool, self._apool_loop = pool, loop
        return self._apool

    @contextmanager
    def sync(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for the calling thread, back to the pool (rolled back if need be) at the end."""
        try:
            with self._sync_pool().connection() as conn:
                yield conn
        except psycopg_pool.PoolTimeout as err:
            raise self._timeout() from err

    @asynccontextmanager
    async def async_(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for the running event loop."""
        try:
            async with (await self._async_pool()).connection() as conn:
                yield conn
        except psycopg_pool.PoolTimeout as err:
            raise self._timeout() from err

    def _timeout(self) -> DatabaseUnavailable:
        return DatabaseUnavailable(f"no free handler connection to {describe(self._dsn)} within "
                                   f"{CHECKOUT_TIMEOUT:.0f} s (at most {self._max_size} are opened)")

    async def aclose(self) -> None:
        """Close both pools; call from the loop that used the async one."""
        apool, self._apool = self._apool, None
        if apool is not None:
            await apool.close()
        self.close()

    def close(self) -> None:
        """Close both pools (the async one too, if its loop is not running)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        apool, loop, self._apool = self._apool, self._apool_loop, None
        if apool is not None and loop is not None and not loop.is_closed():
            if loop.is_running():
                loop.call_soon_threadsafe(lambda: loop.create_task(apool.close()))
            else:
                loop.run_until_complete(apool.close())


class GivenConnection:
    """A source that hands out one caller's sync connection: ``testing.run_jobs(conn=...)`` runs transactional
    handlers inside the test's own transaction (as savepoints), so a rollback undoes them too."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @contextmanager
    def sync(self) -> Iterator[psycopg.Connection[Any]]:
        yield self._conn

    def async_(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        raise ConfigurationError("an async handler cannot use a sync connection given to run_jobs(conn=...); "
                                 "run it without conn=")

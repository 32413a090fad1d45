"""Where PostgreSQL comes from, and connecting to it with errors a user can act on.

``resolve_dsn``: ``--dsn`` / ``App(dsn=...)``, else ``PGQUEUE_DSN``, else the embedded server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from pgqueue import embedded
from pgqueue.errors import ConfigurationError, DatabaseUnavailable, first_line, from_psycopg
from pgqueue.queries import q

log = logging.getLogger("pgqueue")

# Dead peers are noticed in seconds, not after the kernel's two hours: a LISTEN connection that silently lost
# its server must be replaced, or the worker would sleep through every notification.
_CONNECT_OPTIONS: dict[str, Any] = {
    "application_name": "pgqueue",
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN to use: the one given, else ``$PGQUEUE_DSN``, else the embedded server (started if needed)."""
    if dsn:
        return dsn
    env = os.environ.get("PGQUEUE_DSN", "").strip()
    if env:
        return env
    return embedded.ensure_running()


def describe(dsn: str) -> str:
    """A DSN as a user may see it in an error: host, port and database, never the password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as err:
        raise ConfigurationError(f"the DSN is not valid: {first_line(err)}") from err
    host = parts.get("host") or os.environ.get("PGHOST") or "localhost"
    port = parts.get("port") or "5432"
    name = parts.get("dbname") or parts.get("user") or "postgres"
    return f"{host}:{port}/{name}"


def has_rows(cur: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> bool:
    """Whether the statement just run returned rows (a SELECT or RETURNING), to fetch them. Cheaper than
    ``cur.description``, which builds a Column per result column on every call (15 µs for four columns)."""
    result = cur.pgresult
    return result is not None and result.status == pq.ExecStatus.TUPLES_OK


def connect_options(dsn: str) -> dict[str, Any]:
    """Our defaults for options the DSN does not set itself."""
    given = conninfo_to_dict(dsn)
    return {k: v for k, v in _CONNECT_OPTIONS.items() if k not in given}


def _unavailable(dsn: str, err: Exception) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"cannot connect to PostgreSQL at {describe(dsn)}: {first_line(err)}; "
        "check --dsn / PGQUEUE_DSN and that the server is running"
    )


def connect(dsn: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A new connection, or DatabaseUnavailable / ConfigurationError with a message a user can act on."""
    describe(dsn)  # a malformed DSN is a configuration error, not an outage
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **connect_options(dsn))
    except psycopg.OperationalError as err:
        raise _unavailable(dsn, err) from err


async def connect_async(dsn: str, *, autocommit: bool = True) -> psycopg.AsyncConnection[Any]:
    describe(dsn)
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit, **connect_options(dsn))
    except psycopg.OperationalError as err:
        raise _unavailable(dsn, err) from err


class DedicatedConnection:
    """One async connection kept for one job (claiming, completing, heartbeats, listening).

    It connects on first use and again after a failure, so a worker rides out a database restart without
    being restarted itself. Failures come out as pgqueue errors; the caller decides when to try again.
    """

    def __init__(self, dsn: str, role: str) -> None:
        self._dsn = dsn
        self._role = role
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            await self.close()
            self._conn = await connect_async(self._dsn)
            log.debug("%s connection opened", self._role)
        return self._conn

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The connection, for one use at a time. A failure comes out as a pgqueue error; one that broke the
        connection (or lost the server) also drops it, so the next use connects afresh."""
        async with self._lock:
            conn = await self.get()
            try:
                yield conn
            except psycopg.Error as err:
                if conn.broken or isinstance(err, psycopg.OperationalError):
                    await self.close()
                raise from_psycopg(err) from err

    async def fetch(self, query: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement (autocommit) and return its rows."""
        async with self._using() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall() if has_rows(cur) else []

    async def fetch_locked(self, lock_key: int, query: str, params: dict[str, Any] | None = None
                           ) -> list[tuple[Any, ...]] | None:
        """Run ``query`` in a transaction holding advisory lock ``lock_key``; None if another holds it."""
        async with self._using() as conn, conn.transaction():
            cur = await conn.execute(q("maintenance_try_lock"), {"key": lock_key})
            row = await cur.fetchone()
            if not row or not row[0]:
                return None
            cur = await conn.execute(query, params)
            return await cur.fetchall() if has_rows(cur) else []

    async def run_session_locked(self, lock_key: int, statement: str) -> bool:
        """Run ``statement`` outside any transaction (VACUUM cannot run in one) while holding session advisory
        lock ``lock_key``; False if another session holds it. A session that dies frees its lock."""
        async with self._using() as conn:
            cur = await conn.execute(q("session_try_lock"), {"key": lock_key})
            row = await cur.fetchone()
            if not row or not row[0]:
                return False
            try:
                await conn.execute(statement)
            finally:
                if not conn.broken:
                    await conn.execute(q("session_unlock"), {"key": lock_key})
            return True

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

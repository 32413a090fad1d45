"""What a handler's ``ctx`` offers for effectively-once work (mixed into ``pgqueue.Context``).

::

    @app.task(transactional=True)
    def ship(ctx: pgqueue.Context, order_id: int) -> None:
        ctx.conn.execute("UPDATE orders SET shipped = true WHERE id = %s", (order_id,))   # exactly once
        ctx.publish("orders.shipped", {"order": order_id}, key=f"order:{order_id}")      # commits with it
        with ctx.idempotent(f"label:{order_id}") as once:                                # outside: once per key
            if once.needed:
                once.result = carrier.create_label(order_id, idempotency_key=once.key)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from pgqueue.errors import ConfigurationError
from pgqueue.once import outbox
from pgqueue.once.connections import ConnectionSource
from pgqueue.once.conversation import run, run_async
from pgqueue.once.idempotency import Once

if TYPE_CHECKING:
    from pgqueue.app import App


class HandlerEffects:
    """``ctx.conn`` / ``ctx.aconn``, ``ctx.publish`` / ``ctx.publish_async`` and ``ctx.idempotent``."""

    if TYPE_CHECKING:
        app: App
        job_id: int
        task: str

    _tx_conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None
    _connections: ConnectionSource | None = None

    @contextmanager
    def _transaction(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> Iterator[None]:
        """Bind the handler's transaction for the length of the handler call."""
        self._tx_conn = conn
        try:
            yield
        finally:
            self._tx_conn = None

    def _no_connection(self, wanted: str) -> ConfigurationError:
        conn = self._tx_conn
        if isinstance(conn, psycopg.AsyncConnection) and wanted == "conn":
            return ConfigurationError(f"task {self.task} is async: use ctx.aconn (and ctx.publish_async)")
        if isinstance(conn, psycopg.Connection) and wanted == "aconn":
            return ConfigurationError(f"task {self.task} is not async: use ctx.conn (and ctx.publish)")
        task = self.app.tasks.get(self.task)
        if task is not None and not getattr(task, "transactional", False):
            return ConfigurationError(f"ctx.{wanted} needs a transactional task: declare task {self.task} with "
                                      "@app.task(transactional=True)")
        return ConfigurationError(f"ctx.{wanted} is only usable while the handler of job {self.job_id} runs")

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The transaction of a transactional ``def`` handler: its writes commit iff the job succeeds."""
        conn = self._tx_conn
        if isinstance(conn, psycopg.Connection):
            return conn
        raise self._no_connection("conn")

    @property
    def aconn(self) -> psycopg.AsyncConnection[Any]:
        """The transaction of a transactional ``async def`` handler."""
        conn = self._tx_conn
        if isinstance(conn, psycopg.AsyncConnection):
            return conn
        raise self._no_connection("aconn")

    def publish(self, topic: str, payload: Any, *, key: str | None = None, url: str | None = None
                ) -> outbox.Published:
        """Write an outbox message in the handler's transaction: it is delivered iff the job's attempt commits.

        ``key``: messages of one key are delivered in order; ``url``: an HTTP(S) destination of its own.
        """
        params = outbox.publish_params(topic, payload, key, url, self.app.max_payload_bytes)
        return run(self.conn, outbox.publish(params))

    async def publish_async(self, topic: str, payload: Any, *, key: str | None = None, url: str | None = None
                            ) -> outbox.Published:
        """``publish`` for ``async def`` transactional handlers."""
        params = outbox.publish_params(topic, payload, key, url, self.app.max_payload_bytes)
        return await run_async(self.aconn, outbox.publish(params))

    def idempotent(self, key: str, *, ttl: timedelta | None = None, wait: bool | float = True) -> Once:
        """Run a block once per ``key`` (``with``, or ``async with`` in async handlers); see ``pgqueue.Once``.

        ``ttl``: how long the stored result is kept (default ``app.idempotency_ttl``, one day). ``wait``: a
        concurrent run of the same key is waited for (True), for at most so many seconds, or not at all (False),
        after which ``IdempotencyConflict`` is raised (and the job retried later).
        """
        source = self._connections or self.app._effects_connections()
        return Once(source, key, ttl=self.app.idempotency_ttl if ttl is None else ttl, wait=wait, job_id=self.job_id)

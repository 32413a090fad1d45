"""LISTEN/NOTIFY: wake idle workers within milliseconds of an enqueue's commit.

Enqueues notify channel ``pgqueue_jobs`` with the queue name as payload (one notification per statement and
queue, folded further by PostgreSQL within a transaction). The listener keeps a connection of its own; when
that connection drops (server restart, ``pg_terminate_backend``, network loss noticed by keepalives) it
reconnects with backoff and wakes the worker once, since notifications sent meanwhile were lost. Until then
the worker's slow safety poll keeps jobs moving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

from pgqueue.connection import connect_async
from pgqueue.errors import PgQueueError
from pgqueue.queries import q

log = logging.getLogger("pgqueue.notifier")

CHANNEL = "pgqueue_jobs"
CONTROL_CHANNEL = "pgqueue_control"


class Notifier:
    def __init__(self, dsn: str, on_notify: Callable[[str, str | None], None]) -> None:
        """``on_notify(channel, payload)`` is called per notification, and (CHANNEL, None) after (re)connecting.

        Channels: ``pgqueue_jobs`` (payload: a queue with new work) and ``pgqueue_control`` (``cancel:<job id>``,
        ``queues:<name>`` when a queue's settings change).
        """
        self._dsn = dsn
        self._on_notify = on_notify
        self.listening = asyncio.Event()
        self.reconnects = 0

    async def run(self) -> None:
        delay = 0.05
        while True:
            conn = None
            try:
                conn = await connect_async(self._dsn)
                await conn.execute(q("notify_listen"))
                if self.listening.is_set() is False and self.reconnects:
                    log.info("listening again after a lost connection")
                self.listening.set()
                delay = 0.05
                self._on_notify(CHANNEL, None)  # anything enqueued while we were not listening
                async for notification in conn.notifies():
                    self._on_notify(notification.channel, notification.payload)
            except (psycopg.Error, PgQueueError) as err:
                if self.listening.is_set():
                    log.warning("LISTEN connection lost (%s); falling back to polling until it is back", err)
                self.listening.clear()
                self.reconnects += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()

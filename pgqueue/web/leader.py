"""Duties one serve process does at a time: evaluate alert rules (publishing their changes to the outbox, which
the relay delivers), sample queue depth.

Leadership is a session-level advisory lock held on a connection of its own. Whoever holds it leads; if that
process dies or its connection drops, PostgreSQL releases the lock and another serve process takes it at its
next try (within ``retry`` seconds). Every duty is also safe to run twice (the alert record is taken under a
row lock and published with it), so a leader that lost its lock without knowing yet does
no harm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import psycopg

from pgqueue.connection import connect_async
from pgqueue.errors import PgQueueError
from pgqueue.queries import q
from pgqueue.web import alerts
from pgqueue.web.access import Settings
from pgqueue.web.database import Database

if TYPE_CHECKING:
    from pgqueue.app import App

log = logging.getLogger("pgqueue.web.leader")

# 'pgqu' + 0x57 ('W'): the serve leader's advisory lock.
LOCK_SERVE_LEADER = 0x70677175_00000057


class Leader:
    def __init__(self, settings: Settings, db: Database, app: App, *, retry: float = 5.0, period: float = 1.0
                 ) -> None:
        self._settings = settings
        self._db = db
        self._app = app
        self._retry = retry
        self._period = period
        self.leading = asyncio.Event()
        self.evaluations = 0
        self.samples = 0

    async def run(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        due = {"sample": 0.0, "alerts": 0.0, "prune": 0.0}
        try:
            while True:
                try:
                    if conn is None or conn.closed or conn.broken:
                        self.leading.clear()
                        conn = await connect_async(self._settings.dsn)
                    if not self.leading.is_set():
                        row = await (await conn.execute(q("leader_try_lock"), {"key": LOCK_SERVE_LEADER})).fetchone()
                        if row and row[0]:
                            self.leading.set()
                            log.info("this serve process leads: alerts, depth samples")
                    else:
                        await conn.execute(q("web_now"))  # the lock lives as long as this connection: check it
                    if self.leading.is_set():
                        await self.duties(due)
                except (psycopg.Error, PgQueueError, OSError) as err:
                    log.warning("leader duties failed, will retry: %s", err)
                    self.leading.clear()
                    if conn is not None:
                        with contextlib.suppress(psycopg.Error):
                            await conn.close()
                    conn = None
                await asyncio.sleep(self._period if self.leading.is_set() else self._retry)
        finally:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    await conn.close()

    async def duties(self, due: dict[str, float]) -> None:
        settings, now = self._settings, time.monotonic()
        if now >= due["sample"]:
            await self._db.fetch("web_depth_sample")
            self.samples += 1
            due["sample"] = now + settings.sample_interval
        if now >= due["alerts"]:
            await alerts.evaluate(self._db, self._app)
            self.evaluations += 1
            due["alerts"] = now + settings.alert_interval
        if now >= due["prune"]:
            await self._db.fetch("web_depth_prune", {"older_than": settings.sample_retention})
            due["prune"] = now + 3600

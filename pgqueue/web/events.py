"""Live updates: LISTEN for job notifications, re-read cheap aggregates, push them to browsers (server-sent
events), batched so a flood of events never floods a browser.

The core notifies ``pgqueue_jobs`` on enqueue and requeue only; completions send nothing (a NOTIFY per
completion would serialise commits server-wide). So the hub re-reads on each notification, on each change made
through this process's API, and on a ``tick`` (1 s), and pushes at most once per ``push_interval`` (250 ms):
a burst of 100,000 notifications costs a browser four snapshots a second. Nothing is read while no browser
listens. Each subscriber holds only the latest snapshot: a slow browser skips snapshots, it never queues them.

::

    hub = Hub(db, dsn, overview)
    asyncio.create_task(hub.run())
    async for frame in hub.stream():   # "event: snapshot\\ndata: {...}\\n\\n"
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from pgqueue.errors import PgQueueError
from pgqueue.notifier import Notifier
from pgqueue.web.database import Database
from pgqueue.web.queues import Overview
from pgqueue.web.workers import list_workers

log = logging.getLogger("pgqueue.web.events")

KEEPALIVE = 15.0


class Hub:
    def __init__(self, db: Database, dsn: str, overview: Overview, *, push_interval: float = 0.25,
                 tick: float = 1.0) -> None:
        self._db = db
        self._dsn = dsn
        self._overview = overview
        self._push_interval = push_interval
        self._tick = tick
        self._dirty = asyncio.Event()
        self._subscribers: set[asyncio.Queue[str]] = set()
        self.notifications = 0
        self.pushes = 0
        self.closed = asyncio.Event()
        self.notifier = Notifier(dsn, self._on_notify)

    def _on_notify(self, _channel: str, _payload: str | None) -> None:
        self.notifications += 1
        self._dirty.set()

    def poke(self) -> None:
        """Something changed (a write through the API): push a fresh snapshot soon."""
        self._dirty.set()

    def close(self) -> None:
        """End every stream now (the server is shutting down), so no browser holds the shutdown up."""
        self.closed.set()
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            queue.put_nowait("")

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def snapshot(self) -> dict[str, Any]:
        queues = await self._overview.read()
        workers = await list_workers(self._db)
        firing = [r[1] for r in await self._db.fetch("alert_rule_list") if r[8]]
        now = await self._db.scalar("web_now")
        return {"at": now.isoformat(), "queues": [q.model_dump(mode="json") for q in queues],
                "workers": [w.model_dump(mode="json") for w in workers], "alerts_firing": firing}

    async def run(self) -> None:
        """Listen, tick and push until cancelled."""
        tasks = [asyncio.create_task(self.notifier.run(), name="pgqueue-web-listen"),
                 asyncio.create_task(self._ticker(), name="pgqueue-web-tick")]
        try:
            await self._pusher()
        finally:
            self.closed.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            self._dirty.set()

    async def _pusher(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not self._subscribers:
                continue
            started = time.monotonic()
            try:
                frame = "event: snapshot\ndata: " + json.dumps(await self.snapshot()) + "\n\n"
            except PgQueueError as err:
                log.warning("could not read the live snapshot: %s", err)
                frame = "event: problem\ndata: " + json.dumps({"message": str(err)}) + "\n\n"
            for queue in list(self._subscribers):
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # drop the snapshot this subscriber has not taken yet
                queue.put_nowait(frame)
            self.pushes += 1
            await asyncio.sleep(max(0.0, self._push_interval - (time.monotonic() - started)))

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent-event frames for one browser: a snapshot at once, then one per change, keep-alives."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        self._subscribers.add(queue)
        self._dirty.set()
        try:
            yield "retry: 2000\n\n"
            while not self.closed.is_set():
                try:
                    frame = await asyncio.wait_for(queue.get(), timeout=KEEPALIVE)
                except asyncio.TimeoutError:
                    frame = ": keep-alive\n\n"
                if not frame:
                    return
                yield frame
        finally:
            self._subscribers.discard(queue)

"""Load for the chaos suite: bulk enqueues through pgqueue's own statements, and a steady producer thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from pgqueue.errors import PgQueueError
from pgqueue.queries import q


def enqueue_many(conn: psycopg.Connection[Any], task: str, kwargs: Sequence[dict[str, Any]], *,
                 queue: str = "default", max_attempts: int = 100, priority: int = 0,
                 run_at: datetime | None = None) -> list[int]:
    """Enqueue one job of ``task`` per kwargs dict in one statement (the App's enqueue_many statement)."""
    n = len(kwargs)
    params = {"queue": [queue] * n, "task": [task] * n, "args": ["[]"] * n,
              "kwargs": [json.dumps(k, separators=(",", ":")) for k in kwargs], "priority": [priority] * n,
              "run_at": [run_at] * n, "delay": [None] * n, "max_attempts": [max_attempts] * n, "group_key": [None] * n,
              "batch_id": [None] * n}
    return sorted(int(row[0]) for row in conn.execute(q("job_insert_many"), params).fetchall())


def enqueue_batched(dsn: str, task: str, kwargs: Sequence[dict[str, Any]], batch: int = 5000,
                    **options: Any) -> list[int]:
    ids: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, len(kwargs), batch):
            ids += enqueue_many(conn, task, kwargs[start:start + batch], **options)
    return ids


class Producer:
    """Enqueues one job every ``interval`` seconds on a thread, through ``pgqueue.enqueue`` (the SQL API).

    Only ids whose INSERT returned (acknowledged, committed) are kept in ``acknowledged``; an enqueue that
    failed (the database went away) is retried after a pause, as a client would.
    """

    def __init__(self, dsn: str, task: str, kwargs: dict[str, Any], interval: float, queue: str = "default") -> None:
        self._dsn = dsn
        self._args = json.dumps(kwargs)
        self._task = task
        self._queue = queue
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="chaos-producer", daemon=True)
        self.acknowledged: list[int] = []
        self.failures = 0

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _produce(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=2)
                row = conn.execute("SELECT pgqueue.enqueue(%s, %s::json, queue => %s)",
                                   (self._task, self._args, self._queue)).fetchone()
                assert row is not None
                self.acknowledged.append(int(row[0]))
            except (psycopg.Error, PgQueueError):
                self.failures += 1
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.1)
                continue
            self._stop.wait(self._interval)
        if conn is not None:
            conn.close()

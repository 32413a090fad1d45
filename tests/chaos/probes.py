"""What the chaos suite measures with: the database clock, job counts, and a watch on lock holding."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

# The longest any backend other than the watcher has held a lock on a pgqueue relation in a still-open
# transaction (locks are released only at transaction end, so the transaction's age is how long it held them),
# and the longest any backend has waited for a lock.
LOCK_SAMPLE = """
SELECT coalesce(max(extract(epoch FROM now() - a.xact_start)) FILTER (WHERE l.granted), 0)::float8,
       coalesce(max(extract(epoch FROM now() - a.state_change)) FILTER (WHERE NOT l.granted), 0)::float8
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.relation IN (SELECT c.oid FROM pg_class c WHERE c.relnamespace = 'pgqueue'::regnamespace)
  AND l.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL %s
"""


def db_now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Jobs by state, live and finished."""
    rows = conn.execute("SELECT state, count(*) FROM pgqueue.jobs GROUP BY 1 UNION ALL "
                        "SELECT state, count(*) FROM pgqueue.finished_jobs GROUP BY 1").fetchall()
    return {state: int(n) for state, n in rows}


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition"
               ) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class LockWatch:
    """Samples lock holding on pgqueue's relations every ``interval`` seconds on a thread of its own.

    ``held``: the longest a transaction held such a lock; ``waited``: the longest a backend waited for one.
    ``exclude_idle``: leave out sessions idle in a transaction (a scenario's own deliberate long transaction).
    """

    def __init__(self, dsn: str, interval: float = 0.05, exclude_idle: bool = False) -> None:
        self._dsn = dsn
        self._interval = interval
        self._query = LOCK_SAMPLE % ("AND a.state <> 'idle in transaction'" if exclude_idle else "")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chaos-lockwatch", daemon=True)
        self.held = 0.0
        self.waited = 0.0
        self.samples = 0

    def __enter__(self) -> LockWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(self._query).fetchone()
                if row:
                    self.held = max(self.held, float(row[0]))
                    self.waited = max(self.waited, float(row[1]))
                self.samples += 1
                self._stop.wait(self._interval)

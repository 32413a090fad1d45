"""Lease renewal on an OS thread of its own, with a synchronous connection of its own.

Why not on the worker's event loop: sync handlers run in threads, and CPU-bound ones hold the GIL. An asyncio
round trip needs the GIL many times (the selector wakes, the task steps, the socket is read and written), and
each time it waits its turn behind every busy handler thread; ten CPU-bound handlers delayed heartbeats past a
one-second lease, and live jobs were reclaimed (chaos scenario 3). A blocking ``execute`` on a thread needs
the GIL about twice per round trip. The switch interval is also lowered (``SWITCH_INTERVAL``) while a renewer
runs, so a thread waiting for the GIL gets it in about a millisecond rather than five.

What stays on the loop: deciding what the renewal means (a job not renewed was lost, a cancellation was
requested, the worker row was forgotten), through ``on_beat``. The loop also proves it is alive (``alive``):
a renewer whose loop has not been seen for ``stall_limit`` seconds stops renewing, so a worker wedged by a
handler that blocks its loop loses its jobs to other workers, as it did when heartbeats ran on the loop.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgqueue.connection import connect, has_rows
from pgqueue.errors import PgQueueError, from_psycopg
from pgqueue.queries import q

log = logging.getLogger("pgqueue.worker")

# Seconds between GIL hand-overs while a renewer runs (Python's default is 0.005): a heartbeat waiting behind
# CPU-bound handler threads gets the GIL this much sooner, at a cost of a little switching overhead for them.
SWITCH_INTERVAL = 0.001
# Renewers running in this process (tests may run several workers in one), and the interval before the first.
_switch_lock = threading.Lock()
_switch_users = 0
_switch_before = 0.005


def _shorten_switch_interval() -> None:
    global _switch_users, _switch_before
    with _switch_lock:
        if _switch_users == 0:
            _switch_before = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_before, SWITCH_INTERVAL))
        _switch_users += 1


def _restore_switch_interval() -> None:
    global _switch_users
    with _switch_lock:
        _switch_users -= 1
        if _switch_users == 0:
            sys.setswitchinterval(_switch_before)


@dataclass
class Beat:
    """One renewal: the jobs the loop ran when it was sent (``sent``) and what the database answered."""

    sent: set[int]
    held: set[int] = field(default_factory=set)  # of ``sent``, those the database still shows as ours
    registered: bool = True
    cancel_requested: list[int] = field(default_factory=list)


class LeaseRenewer:
    """Runs ``job_heartbeat`` every ``interval`` seconds and flushes progress every ``progress_every`` between.

    ``params()`` is called on the renewer's thread and returns the statement's parameters plus ``sent``, the
    ids whose renewal the loop will check (it must only read the worker's state); ``on_beat(beat)`` gets
    each answer, also on the renewer's thread (hand it to the loop with ``call_soon_threadsafe``).
    ``progress()`` returns changed progress, or None when there is none.
    """

    def __init__(self, dsn: str, interval: float, stall_limit: float, progress_every: float,
                 params: Callable[[], tuple[dict[str, Any], set[int]]],
                 progress: Callable[[], dict[str, Any] | None],
                 on_beat: Callable[[Beat], object]) -> None:
        self._dsn = dsn
        self._interval = interval
        self._stall_limit = stall_limit
        self._progress_every = progress_every
        self._params = params
        self._progress = progress
        self._on_beat = on_beat
        self._stop = threading.Event()
        self._alive_at = time.monotonic()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="pgqueue-heartbeat", daemon=True)
        self._started = False

    def start(self) -> None:
        _shorten_switch_interval()
        self._started = True
        self._thread.start()

    def alive(self) -> None:
        """The loop ran just now (called from the loop)."""
        self._alive_at = time.monotonic()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and wait for the thread; blocks, so call it off the loop. A statement still running after a
        second (waiting for a lock, or for a server that went away) is cancelled."""
        self._stop.set()
        self._thread.join(1.0)
        conn = self._conn
        if self._thread.is_alive() and conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.cancel()
            self._thread.join(timeout)
        if self._started:
            self._started = False
            _restore_switch_interval()

    def _run(self) -> None:
        next_beat = time.monotonic() + self._interval
        try:
            while not self._stop.wait(max(0.0, min(self._progress_every, next_beat - time.monotonic()))):
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self._interval
                    self._beat()
                else:
                    changed = self._progress()
                    if changed is not None:
                        self._fetch("job_progress_update", changed, "progress update")
        finally:
            if self._conn is not None:
                self._conn.close()

    def _beat(self) -> None:
        stalled = time.monotonic() - self._alive_at
        if stalled > self._stall_limit:
            log.error("the worker's event loop has not run for %.1f s (a handler blocking it?): leases are no "
                      "longer renewed, so other workers can take its jobs", stalled)
            return
        params, sent = self._params()
        rows = self._fetch("job_heartbeat", params, "heartbeat")
        if rows is None or self._stop.is_set():
            return
        held, registered, cancel_requested = rows[0]
        self._on_beat(Beat(sent, set(held), bool(registered), list(cancel_requested)))

    def _fetch(self, name: str, params: dict[str, Any], what: str) -> list[tuple[Any, ...]] | None:
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = connect(self._dsn)
            cur = self._conn.execute(q(name), params)
            return cur.fetchall() if has_rows(cur) else []
        except (psycopg.Error, PgQueueError) as err:
            error = from_psycopg(err) if isinstance(err, psycopg.Error) else err
            log.warning("%s failed: %s", what, error)
            if self._conn is not None and (self._conn.broken or isinstance(err, psycopg.OperationalError)):
                self._conn.close()
                self._conn = None
            return None

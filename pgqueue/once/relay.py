"""The relay: delivers outbox messages to their sinks, at least once, in order per key.

Run it as ``pgqueue relay MODULE:APP`` or inside workers (``pgqueue work MODULE:APP --relay``). Any number may
run; they elect a leader with a session advisory lock (``relay_try_lead``) and only the leader polls and
delivers, the others stand by and take over within ``poll_interval`` of its connection closing.

Correctness does not rest on the election. A delivery starts with a claim (``outbox_claim``): the oldest
pending message of its key, due, locked with SKIP LOCKED, its attempt counted and its ``available_at`` moved a
lease ahead. While the lease runs nobody claims that message or any later one of its key; when the delivery
ends the message is marked delivered (or failed, with a backoff, then dead). A relay that dies mid-delivery
marks nothing: the lease runs out, the message is claimed and delivered again with the same delivery id. So:

- every message is delivered at least once, unless it fails ``max_attempts`` times (then it is ``dead``, listed
  by ``pgqueue outbox list --state dead`` and put back by ``pgqueue outbox replay``);
- messages of one key are delivered one at a time, in id order; a duplicate (a redelivery after a crash) may
  follow its original, but no message is first delivered before an earlier one of its key was delivered;
- deliveries of different keys run concurrently (``concurrency`` at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from pgqueue.connection import DedicatedConnection, connect_async
from pgqueue.errors import DeliveryFailed, PgQueueError, ValidationError
from pgqueue.once.outbox import Message
from pgqueue.once.sinks import NotifySink
from pgqueue.queries import q
from pgqueue.retry import Backoff

if TYPE_CHECKING:
    from pgqueue.app import App

log = logging.getLogger("pgqueue.relay")

# Session advisory lock of the relay leader ('pgqu' + 'rlay'); housekeeping's transaction lock ('pgqu' + 'rhk').
LEADER_LOCK = 0x70677175_726C6179
HOUSEKEEPING_LOCK = 0x70677175_72686B00
PRUNE_SLICE = 5000


@dataclass
class RelayConfig:
    """How a relay runs. Times in seconds.

    ``lease``: how long a claimed message is the relay's before another may claim it again (a sink must
    answer well within it); ``poll_interval``: the standby's election retry and the leader's safety poll;
    ``max_attempts``, ``retry_base``, ``retry_cap``: failures back off as jobs do, then the message is dead;
    ``retention``: how long delivered messages are kept.
    """

    concurrency: int = 16
    lease: float = 60.0
    poll_interval: float = 5.0
    max_attempts: int = 15
    retry_base: float = 1.0
    retry_cap: float = 900.0
    retention: timedelta = timedelta(days=7)
    housekeeping_interval: float = 300.0
    drain_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValidationError(f"relay concurrency must be at least 1, got {self.concurrency}")
        for name in ("lease", "poll_interval", "retry_base", "retry_cap", "housekeeping_interval"):
            if not getattr(self, name) > 0:
                raise ValidationError(f"relay {name} must be positive, got {getattr(self, name)}")
        if self.max_attempts < 1:
            raise ValidationError(f"relay max_attempts must be at least 1, got {self.max_attempts}")
        if self.drain_timeout < 0:
            raise ValidationError(f"relay drain_timeout must not be negative, got {self.drain_timeout}")


@dataclass
class RelayStats:
    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    elections_won: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Relay:
    """Delivers ``app``'s outbox: ``await Relay(app, RelayConfig(...)).run()`` until ``stop()``."""

    def __init__(self, app: App, config: RelayConfig | None = None) -> None:
        self.app = app
        self.config = config or RelayConfig()
        self.stats = RelayStats()
        self.leading = asyncio.Event()
        self._backoff = Backoff(base=self.config.retry_base, cap=self.config.retry_cap)
        self._stopping: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._in_flight: dict[asyncio.Task[None], Message] = {}

    def stop(self) -> None:
        """Stop delivering: in-flight deliveries get ``drain_timeout`` seconds, the rest are handed back."""
        if self._stopping is not None:
            self._stopping.set()
        if self._wake is not None:
            self._wake.set()

    async def run(self, stopping: asyncio.Event | None = None) -> None:
        """Stand for election, deliver while leading, until ``stopping`` is set (or ``stop()``)."""
        self._stopping = stopping or asyncio.Event()
        self._wake = asyncio.Event()
        delay = 0.05
        while not self._stopping.is_set():
            lock_conn: psycopg.AsyncConnection[Any] | None = None
            try:
                lock_conn = await connect_async(self.app.dsn)
                if await self._elect(lock_conn):
                    delay = 0.05
                    await self._lead(lock_conn)
            except (psycopg.Error, PgQueueError) as err:
                log.warning("relay lost its database connection (%s); retrying in %.2fs", err, delay)
                await self._pause(delay)
                delay = min(delay * 2, 5.0)
            finally:
                self.leading.clear()
                if lock_conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await lock_conn.close()

    async def _pause(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _elect(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Wait until this relay holds the leader lock (True), or is stopped (False)."""
        assert self._stopping is not None
        while not self._stopping.is_set():
            cur = await conn.execute(q("relay_try_lead"), {"key": LEADER_LOCK})
            row = await cur.fetchone()
            if row and row[0]:
                self.stats.elections_won += 1
                log.info("relay leads: delivering the outbox")
                return True
            await self._pause(self.config.poll_interval)
        return False

    # -- leading ---------------------------------------------------------------------------------------------

    async def _lead(self, lock_conn: psycopg.AsyncConnection[Any]) -> None:
        assert self._stopping is not None and self._wake is not None
        await lock_conn.execute(q("relay_listen"))
        watcher = asyncio.create_task(self._watch(lock_conn), name="pgqueue-relay-listen")
        work = DedicatedConnection(self.app.dsn, "relay")
        self.leading.set()
        housekeeping_due = time.monotonic()
        try:
            while not self._stopping.is_set() and not watcher.done():
                self._wake.clear()
                free = self.config.concurrency - len(self._in_flight)
                claimed = 0
                if free > 0:
                    rows = await work.fetch(q("outbox_claim"), {"limit": free, "lease": self.config.lease})
                    claimed = len(rows)
                    for row in rows:
                        self._start(work, Message.from_claim(row))
                if time.monotonic() >= housekeeping_due:
                    await self._housekeep(work)
                    housekeeping_due = time.monotonic() + self.config.housekeeping_interval
                if free > 0 and claimed == free:
                    continue  # there may be more waiting
                await self._sleep(work, watcher)
        finally:
            try:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                await self._drain(work)
            finally:
                await work.close()  # even when cancelled while draining: never leave the connection open
        if watcher.done() and not watcher.cancelled() and watcher.exception() is not None:
            raise watcher.exception()  # type: ignore[misc]

    async def _watch(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Wake the leader on every outbox notification; ends (raising) when the leader's connection is lost."""
        assert self._wake is not None
        async for _ in conn.notifies():
            self._wake.set()

    async def _sleep(self, work: DedicatedConnection, watcher: asyncio.Task[None]) -> None:
        """Until woken (a notification, a delivery done, stop) or the next message falls due."""
        assert self._wake is not None
        timeout = self.config.poll_interval
        rows = await work.fetch(q("outbox_next_due_in"))
        next_due = rows[0][0] if rows else None
        if next_due is not None:
            timeout = max(0.005, min(timeout, next_due))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({woken, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            await asyncio.gather(woken, return_exceptions=True)

    def _start(self, work: DedicatedConnection, message: Message) -> None:
        self.stats.claimed += 1
        task = asyncio.create_task(self._deliver(work, message), name=f"pgqueue-relay-{message.id}")
        self._in_flight[task] = message
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        if self._wake is not None:
            self._wake.set()

    async def _deliver(self, work: DedicatedConnection, message: Message) -> None:
        sink = self.app.sinks.route(message)
        try:
            if sink is None:
                raise DeliveryFailed(f"no sink takes topic {message.topic!r}; register one with app.sink(...)")
            if isinstance(sink, NotifySink):
                await work.fetch(q("outbox_deliver_notify"), {"id": message.id, "channel": sink.channel,
                                                              "body": sink.body(message)})
                self.stats.delivered += 1
                return
            await asyncio.wait_for(sink.deliver(message), timeout=self.config.lease)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            await self._failed(work, message, err)
            return
        await self._delivered(work, message)

    async def _delivered(self, work: DedicatedConnection, message: Message) -> None:
        delay = 0.05
        for _ in range(5):
            try:
                await work.fetch(q("outbox_mark_delivered"), {"id": message.id})
                self.stats.delivered += 1
                return
            except PgQueueError as err:
                log.warning("message %s was delivered but could not be marked (%s); retrying", message.id, err)
                await asyncio.sleep(delay)
                delay *= 2
        log.error("message %s was delivered but not marked; it will be delivered again after its lease",
                  message.id)

    async def _failed(self, work: DedicatedConnection, message: Message, err: BaseException) -> None:
        self.stats.failed += 1
        reason = f"{type(err).__name__}: {err}"[:2000]
        params = {"id": message.id, "attempt": message.attempt, "max_attempts": self.config.max_attempts,
                  "delay": self._backoff.delay(message.attempt), "error": reason}
        try:
            rows = await work.fetch(q("outbox_mark_failed"), params)
        except PgQueueError as db_err:
            log.warning("could not record the failure of message %s (%s); it is retried after its lease",
                        message.id, db_err)
            return
        if rows and rows[0][0] == "dead":
            self.stats.dead += 1
            log.error("message %s (%s) is dead after %d attempts: %s", message.id, message.topic, message.attempt,
                      reason)
        else:
            log.info("message %s (%s) attempt %d failed, retrying in %.2fs: %s", message.id, message.topic,
                     message.attempt, params["delay"], reason)

    async def _drain(self, work: DedicatedConnection) -> None:
        """Give in-flight deliveries ``drain_timeout`` seconds, then cancel them and hand their messages back."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=self.config.drain_timeout)
        unfinished = dict(self._in_flight)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        if unfinished:
            messages = list(unfinished.values())
            params = {"ids": [m.id for m in messages], "attempts": [m.attempt for m in messages]}
            try:
                await work.fetch(q("outbox_release"), params)
            except PgQueueError as err:
                log.warning("could not hand back %d messages (%s); they are retried after their lease",
                            len(messages), err)

    async def _housekeep(self, work: DedicatedConnection) -> None:
        """Forget delivered messages past retention, and expired idempotency and enqueue keys."""
        plans = [("outbox_prune", {"older_than": self.config.retention.total_seconds()}),
                 ("idempotency_prune", {}), ("enqueue_key_prune", {})]
        try:
            for name, params in plans:
                while True:
                    rows = await work.fetch_locked(HOUSEKEEPING_LOCK, q(name), {**params, "limit": PRUNE_SLICE})
                    if not rows or int(rows[0][0]) < PRUNE_SLICE:
                        break
        except PgQueueError as err:
            log.warning("relay housekeeping failed, will retry: %s", err)

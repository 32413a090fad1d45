"""Maintenance sweeps that every worker runs: promote due jobs, reclaim expired leases, forget dead workers,
prune old finished jobs, vacuum the live table once claims have left enough dead rows in it.

There is no leader to elect. Each sweep runs in a transaction that first takes a sweep-specific advisory lock
with ``pg_try_advisory_xact_lock``: one worker does a sweep while the others skip it, and if that worker dies
its lock goes with its transaction, so the next tick anywhere picks the sweep up. Every sweep is idempotent
and uses SKIP LOCKED, so even a stale worker running one twice changes nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from pgqueue.connection import DedicatedConnection
from pgqueue.errors import PgQueueError
from pgqueue.periodic import due_ticks, plan
from pgqueue.queries import q

log = logging.getLogger("pgqueue.maintenance")

# Advisory lock keys, one per sweep ('pgqu' + a sweep code).
LOCK_PROMOTE = 0x70677175_00000001
LOCK_REAP = 0x70677175_00000002
LOCK_WORKERS = 0x70677175_00000003
LOCK_PRUNE = 0x70677175_00000004
LOCK_CRON = 0x70677175_00000005
LOCK_AGING = 0x70677175_00000006
LOCK_VACUUM = 0x70677175_00000007

SWEEP_LIMIT = 1000

# The live-table vacuum is due once this share of the live rows, on top of vacuum_after, has died since the
# last one (autovacuum's formula: a fixed threshold plus a scale factor). A deep backlog makes each vacuum
# cost more (it reads every index), so it waits for proportionally more dead rows.
VACUUM_SCALE = 0.05
_UNSEEN = object()  # the live table's last vacuum time, before the first look


@dataclass
class MaintenanceConfig:
    promote_interval: float = 1.0
    reap_interval: float = 10.0
    stale_worker_after: float = 300.0
    workers_interval: float = 60.0
    retention: timedelta | None = timedelta(days=7)
    dead_retention: timedelta | None = None
    prune_interval: float = 600.0
    schedules: list[str] = field(default_factory=list)  # names of the app's @app.periodic schedules
    cron_interval: float = 1.0
    aging_interval: float = 5.0
    vacuum_after: int = 20_000  # dead row versions in pgqueue.jobs that make a vacuum due; 0: never
    vacuum_interval: float = 0.5


class Maintenance:
    def __init__(self, conn: DedicatedConnection, config: MaintenanceConfig) -> None:
        self._conn = conn
        self._config = config
        self.reclaimed = 0
        self.promoted = 0
        self.vacuums = 0
        self._vacuum_allowed: bool | None = None
        self._dead_baseline = 0
        self._last_vacuum_seen: object = _UNSEEN

    async def promote(self) -> float:
        """Queue due scheduled jobs; returns seconds until the next one is due (capped by the interval)."""
        while True:
            rows = await self._conn.fetch_locked(LOCK_PROMOTE, q("job_promote_due"), {"limit": SWEEP_LIMIT})
            moved = sum(int(r[1]) for r in rows or ())
            self.promoted += moved
            if moved < SWEEP_LIMIT:
                break
        rows = await self._conn.fetch(q("job_next_scheduled_in"))
        next_in = rows[0][0] if rows else None
        interval = self._config.promote_interval
        return interval if next_in is None else max(0.005, min(interval, next_in))

    async def reap(self) -> int:
        """Reclaim running jobs whose lease expired. Returns how many were requeued or buried."""
        total = 0
        while True:
            rows = await self._conn.fetch_locked(LOCK_REAP, q("job_reap_expired"), {"limit": SWEEP_LIMIT})
            if not rows:
                break
            requeued, dead, _ = rows[0]
            count = int(requeued) + int(dead)
            if count:
                log.warning("reclaimed %d jobs whose lease expired (%d requeued, %d dead)", count, requeued, dead)
            total += count
            if count < SWEEP_LIMIT:
                break
        self.reclaimed += total
        return total

    async def tick_schedules(self) -> int:
        """Enqueue the due ticks of every schedule; returns how many jobs that made."""
        rows = await self._conn.fetch_locked(LOCK_CRON, q("schedule_due"), {"code_names": self._config.schedules})
        made = 0
        for name, cron, zone, missed, max_catchup, last_tick, now in rows or ():
            ticks = due_ticks(cron, zone, last_tick, now, max_catchup)
            if not ticks:
                continue
            chosen = plan(missed, ticks, now)
            created = await self._conn.fetch(q("schedule_tick_enqueue"), {
                "name": name, "new_last": ticks[-1], "expected_last": last_tick, "ticks": chosen})
            made += len(created)
        return made

    async def age_priorities(self) -> None:
        await self._conn.fetch_locked(LOCK_AGING, q("queue_priority_aging"))

    async def forget_stale_workers(self) -> None:
        """Forget dead workers; also drop rate-limit starts and cron tick rows nothing needs any more."""
        await self._conn.fetch_locked(LOCK_WORKERS, q("worker_prune_stale"),
                                      {"stale_after": self._config.stale_worker_after})
        await self._conn.fetch(q("rate_starts_prune"))
        await self._conn.fetch(q("schedule_ticks_prune"))

    async def prune(self) -> int:
        """Apply the retention settings: finished jobs older than them are deleted, a slice at a time."""
        total = 0
        plans = [(self._config.retention, ["succeeded", "cancelled"]), (self._config.dead_retention, ["dead"])]
        for age, states in plans:
            if age is None:
                continue
            while True:
                params = {"older_than": age.total_seconds(), "states": states, "limit": 5000}
                rows = await self._conn.fetch_locked(LOCK_PRUNE, q("job_prune"), params)
                deleted = int(rows[0][0]) if rows else 0
                total += deleted
                if deleted < 5000:
                    break
        return total

    async def vacuum(self) -> bool:
        """Vacuum pgqueue.jobs if enough row versions died since the last vacuum (why: live_table_vacuum).
        Returns whether this worker vacuumed."""
        if not self._config.vacuum_after or self._vacuum_allowed is False:
            return False
        dead, live, manual_before = await self._dead_rows()
        if dead - self._dead_baseline < self._config.vacuum_after + VACUUM_SCALE * live:
            return False
        if self._vacuum_allowed is None:
            rows = await self._conn.fetch(q("live_table_may_vacuum"))
            self._vacuum_allowed = bool(rows and rows[0][0])
            if not self._vacuum_allowed:
                log.info("this login may not VACUUM pgqueue.jobs (only its owner may); leaving it to autovacuum")
                return False
        started = time.monotonic()
        if not await self._conn.run_session_locked(LOCK_VACUUM, q("live_table_vacuum")):
            return False  # another worker is at it
        # Dead rows are counted afresh from here even if SKIP_LOCKED skipped the table (another vacuum, an index
        # build holds it): retrying at every check would only fill the server's log with "skipping" warnings.
        _, _, manual_after = await self._dead_rows(after_own_vacuum=True)
        if manual_after == manual_before:
            log.debug("VACUUM skipped pgqueue.jobs: another session holds a lock that conflicts with it")
            return False
        self.vacuums += 1
        log.debug("vacuumed pgqueue.jobs in %.3f s; %d dead row versions remain", time.monotonic() - started,
                  self._dead_baseline)
        return True

    async def _dead_rows(self, *, after_own_vacuum: bool = False) -> tuple[int, int, int]:
        """Dead and live row versions of pgqueue.jobs, and how many manual vacuums it has had, keeping the
        baseline that dead is counted from.

        Dead rows a vacuum could not remove (an old snapshot still sees them) stay counted, so the count is
        taken from what the latest vacuum left: otherwise every check would start another vacuum that cannot
        help. When anyone (another worker, autovacuum) has vacuumed since the last look, the count now is
        that baseline. The first look only notes the time: rows already dead when the worker starts count.
        """
        rows = await self._conn.fetch(q("live_table_dead"))
        dead, live, last, manual = (int(rows[0][0]), int(rows[0][1]), rows[0][2], int(rows[0][3])) if rows \
            else (0, 0, None, 0)
        vacuumed = self._last_vacuum_seen is not _UNSEEN and last != self._last_vacuum_seen
        self._dead_baseline = dead if vacuumed or after_own_vacuum else min(self._dead_baseline, dead)
        self._last_vacuum_seen = last
        return dead, live, manual

    async def run(self, stopping: asyncio.Event) -> None:
        """Run every sweep on its own cadence until ``stopping`` is set."""
        cfg = self._config
        # (sweep, interval, first run): promotion runs every loop; these on their own cadence.
        sweeps: list[tuple[Callable[[], Awaitable[object]], float, float]] = [
            (self.reap, cfg.reap_interval, 0.0),
            (self.forget_stale_workers, cfg.workers_interval, 0.0),
            (self.prune, cfg.prune_interval, cfg.prune_interval / 10),
            (self.tick_schedules, cfg.cron_interval, 0.0),
            (self.age_priorities, cfg.aging_interval, 0.0),
            (self.vacuum, cfg.vacuum_interval, cfg.vacuum_interval),
        ]
        start = time.monotonic()
        due = [start + first for _, _, first in sweeps]
        while not stopping.is_set():
            sleep_for = cfg.promote_interval
            try:
                sleep_for = await self.promote()
                for i, (sweep, interval, _) in enumerate(sweeps):
                    if time.monotonic() >= due[i]:
                        await sweep()
                        due[i] = time.monotonic() + interval
            except PgQueueError as err:
                log.warning("maintenance sweep failed, will retry: %s", err)
                sleep_for = min(cfg.promote_interval * 2, 5.0)
            sleep_for = min(sleep_for, max(0.005, min(due) - time.monotonic()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=sleep_for)

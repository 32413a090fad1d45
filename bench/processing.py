"""Driving worker processes the same way for every Python system: a backlog in, jobs/s and CPU out.

The driver enqueues a backlog of no-op jobs, starts ``procs`` worker processes and counts the handler calls in
shared memory (no extra database load). The clock runs from the first handler call to the moment the
database shows the backlog gone (or to ``max_seconds`` for the slow systems, counting what ran by then).
Worker CPU is read by each worker from its own first handler call to the end; PostgreSQL's from /proc.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from measure import ServerCpu, log, now, own_cpu, peak_rss_mb, throughput_result
from psycopg import sql

# Spawned, not forked: a child starts clean (no inherited connections or event loop), as a real worker does.
CTX = mp.get_context("spawn")


@dataclass
class Shared:
    """What the parent and its worker processes share: per-process counters, clocks and readings."""

    counts: Any  # Array('q'): handler calls per process
    firsts: Any  # Array('d'): when each process ran its first handler
    cpus: Any  # Array('d'): worker CPU seconds, written by each process at the end
    peaks: Any  # Array('d'): peak RSS MiB
    stop: Any  # Event: the parent says stop
    stamps: Any  # Array('d'): handler start time per job sequence number (latency runs)
    early_rss: Any  # Array('d'): RSS MiB early in the run (memory runs), to compare with the peak

    @classmethod
    def make(cls, procs: int, stamps: int = 1) -> Shared:
        return cls(CTX.Array("q", procs, lock=False), CTX.Array("d", procs, lock=False),
                   CTX.Array("d", procs, lock=False), CTX.Array("d", procs, lock=False), CTX.Event(),
                   CTX.Array("d", max(stamps, 1), lock=False), CTX.Array("d", procs, lock=False))


class Probe:
    """Lives in a worker process; the handler calls ``tick()`` (or ``started(seq)``)."""

    def __init__(self, shared: Shared, slot: int) -> None:
        self.shared = shared
        self.slot = slot
        self.cpu_start = 0.0
        self.count = 0

    def tick(self) -> None:
        if self.count == 0:
            self.shared.firsts[self.slot] = now()
            self.cpu_start = own_cpu()
        self.count += 1
        self.shared.counts[self.slot] = self.count

    def started(self, seq: int) -> None:
        self.shared.stamps[seq] = now()
        self.tick()

    def finish(self) -> None:
        self.shared.cpus[self.slot] = own_cpu() - self.cpu_start if self.count else 0.0
        self.shared.peaks[self.slot] = peak_rss_mb()


WorkerTarget = Callable[[str, Shared, int, dict[str, Any]], None]


def measure_processing(dsn: str, *, procs: int, expected: int, max_seconds: float, target: WorkerTarget,
                       remaining: Callable[[], int], options: dict[str, Any] | None = None,
                       worker_dsn: str | None = None) -> dict[str, Any]:
    """Run ``procs`` processes of ``target(dsn, shared, slot, options)`` over a backlog of ``expected`` jobs.

    ``worker_dsn`` (default ``dsn``) is what the workers connect to: the round-trip pass points it at the
    counting relay, while the driver's own bookkeeping goes straight to the server.
    """
    shared = Shared.make(procs)
    server = ServerCpu(dsn)
    server.start()
    children = [CTX.Process(target=target, args=(worker_dsn or dsn, shared, slot, options or {}), daemon=True)
                for slot in range(procs)]
    for child in children:
        child.start()
    deadline = time.monotonic() + max_seconds + 60  # generous: start-up is not measured
    while sum(shared.counts) == 0:
        if time.monotonic() > deadline or not any(c.is_alive() for c in children):
            _stop(children, shared)
            raise RuntimeError("the workers ran no job")
        time.sleep(0.002)
    first = min(t for t in shared.firsts if t > 0)
    limit = first + max_seconds
    while sum(shared.counts) < expected and now() < limit:
        if not any(c.is_alive() for c in children):
            raise RuntimeError("the workers died")
        time.sleep(0.002)
    handled = sum(shared.counts)
    if handled >= expected:
        # Every handler ran: the clock stops when the database has recorded every completion.
        while remaining() > 0 and now() < limit + 30:
            time.sleep(0.005)
        end, jobs = now(), expected
    else:
        end, jobs = now(), handled
    pg_cpu = server.stop()
    _stop(children, shared)
    worker_cpu = sum(shared.cpus)
    log(f"bench: {jobs} jobs in {end - first:.2f}s with {procs} process(es)")
    return throughput_result(jobs, end - first, worker_cpu, pg_cpu, procs=procs,
                             worker_peak_rss_mb=max(shared.peaks), worker_early_rss_mb=max(shared.early_rss),
                             drained=handled >= expected)


def _stop(children: list[Any], shared: Shared) -> None:
    shared.stop.set()
    for child in children:
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join()


def measure_latency(dsn: str, *, samples: int, gap: float, target: WorkerTarget,
                    enqueue_one: Callable[[int], None], options: dict[str, Any] | None = None
                    ) -> list[float]:
    """Milliseconds from each enqueue's commit (seen by the producer) to its handler's start.

    One worker process sits idle; the producer enqueues job ``seq`` (one transaction), notes the time its
    commit returned, and waits ``gap`` seconds so the worker is idle again before the next one.
    """
    shared = Shared.make(1, stamps=samples + 1)
    child = CTX.Process(target=target, args=(dsn, shared, 0, options or {}), daemon=True)
    child.start()
    try:
        # Warm-up job 0: the worker is connected and listening once it has run.
        enqueue_one(0)
        deadline = time.monotonic() + 60
        while shared.stamps[0] == 0:
            if time.monotonic() > deadline or not child.is_alive():
                raise RuntimeError("the worker never ran the warm-up job")
            time.sleep(0.01)
        time.sleep(gap)
        committed = [0.0] * (samples + 1)
        for seq in range(1, samples + 1):
            enqueue_one(seq)
            committed[seq] = now()
            wait_until = time.monotonic() + 10
            while shared.stamps[seq] == 0 and time.monotonic() < wait_until:
                time.sleep(0.001)
            time.sleep(gap)
        return [(shared.stamps[s] - committed[s]) * 1000 for s in range(1, samples + 1) if shared.stamps[s]]
    finally:
        _stop([child], shared)


def measure_backlog(dsn: str, *, jobs: int, runs: int, reset: Callable[[], None],
                    fill_small: Callable[[int], None], fill_backlog: Callable[[], None],
                    count: Callable[[], int], target: WorkerTarget, live_table: str,
                    options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Jobs/s of a worker taking ``jobs`` jobs off a deep backlog, as a ratio to taking them off a queue that
    holds only them. The backlog is slow to build, so it is built once, between small-queue runs before and
    after it (the machine's drift over those minutes falls on both sides); the same number of runs takes slices
    off it. Before each timed run the system's ``live_table`` is vacuumed (what the slice before it left dead is
    not what is measured: autovacuum is off on some servers) and a checkpoint writes out what the load left."""
    def timed(remaining: Callable[[], int]) -> float:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(*live_table.split("."))))
            conn.execute("CHECKPOINT")
        return float(measure_processing(dsn, procs=1, expected=jobs, max_seconds=120, target=target,
                                        remaining=remaining, options=options)["value"])

    def small_runs() -> list[float]:
        rates = []
        for _ in range(runs):
            reset()
            fill_small(jobs)
            rates.append(timed(count))
        return rates

    small, big = small_runs(), []
    reset()
    started = time.monotonic()
    fill_backlog()
    log(f"bench: backlog built in {time.monotonic() - started:.0f}s")
    for _ in range(runs):
        base = count()
        big.append(timed(lambda base=base: max(0, count() - (base - jobs))))  # type: ignore[misc]
    small += small_runs()
    reset()
    small_rate, big_rate = sorted(small)[len(small) // 2], sorted(big)[len(big) // 2]
    return {"value": big_rate / small_rate, "empty_queue_jobs_s": small_rate, "backlog_jobs_s": big_rate,
            "small_runs": small, "backlog_runs": big}

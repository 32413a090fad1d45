"""Scenario 18: half an hour of steady load; worker memory and connection counts stay flat."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from tests.chaos.harness import Run, scenario
from tests.chaos.load import enqueue_many
from tests.chaos.probes import scalar, wait_until
from tests.chaos.scenarios.workers import lease_args

CONNECTIONS = ("SELECT count(*) FROM pg_stat_activity "
               "WHERE datname = current_database() AND application_name = 'pgqueue'")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def feed(db: psycopg.Connection[Any], per_second: int, seconds: float) -> int:
    """Enqueue ``per_second`` jobs a second for ``seconds`` (sync, async and a few failing); returns how many."""
    sent, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        tick = time.monotonic()
        batch = max(1, per_second // 10)
        enqueue_many(db, "chaos.work", [{"ms": 2}] * (batch // 2))
        enqueue_many(db, "chaos.work_async", [{"ms": 2}] * (batch - batch // 2 - 1))
        enqueue_many(db, "chaos.raise", [{}], max_attempts=2)
        sent += batch
        time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    return sent


@scenario(18, "soak", quick=None, full={"minutes": 30, "per_second": 300, "workers": 3})
def soak(run: Run, minutes: float, per_second: int, workers: int) -> None:
    """Steady load for ``minutes``; worker RSS and connections sampled every 10 s, compared after a warm-up."""
    dsn = run.database()
    fleet = run.fleet(dsn, *lease_args(10.0, 2.0, poll=2.0, concurrency=10))
    procs = fleet.start(workers)
    samples: list[tuple[float, list[int], int]] = []
    with psycopg.connect(dsn, autocommit=True) as db:
        wait_until(lambda: scalar(db, "SELECT count(*) FROM pgqueue.workers") == workers, 30, what="workers")
        started, sent = time.monotonic(), 0
        while time.monotonic() - started < minutes * 60:
            sent += feed(db, per_second, 10.0)
            samples.append((time.monotonic() - started, [rss_kib(p.pid) for p in procs], int(scalar(db, CONNECTIONS))))
        wait_until(lambda: scalar(db, "SELECT count(*) FROM pgqueue.jobs WHERE state <> 'scheduled'") == 0, 120,
                   what="the backlog to drain")
        done = int(scalar(db, "SELECT count(*) FROM pgqueue.finished_jobs WHERE state = 'succeeded'"))
    alive = all(p.poll() is None for p in procs)
    fleet.stop_all()
    warm = [s for s in samples if s[0] >= minutes * 60 * 0.2]  # after a warm-up of a fifth of the run
    first, last = warm[0], warm[-1]
    growth = max((b - a) / a for a, b in zip(first[1], last[1], strict=True))
    run.figure("duration", minutes, "min")
    run.figure("jobs enqueued", sent)
    run.figure("jobs succeeded", done)
    run.figure("worker RSS after warm-up / at the end", f"{max(first[1]) // 1024} / {max(last[1]) // 1024}", "MiB")
    run.check("worker RSS growth after warm-up", round(growth * 100, 1), "<=", 10.0, "%")
    run.check("connection count change after warm-up", max(s[2] for s in warm) - min(s[2] for s in warm), "==", 0)
    run.figure("connections (workers)", last[2])
    run.check("workers alive throughout", alive, "==", True)

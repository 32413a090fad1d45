"""Flow control across several worker processes: cron ticks exactly once (with a worker killed mid-way),
concurrency and rate limits held by the database whatever the number of workers."""

from __future__ import annotations

import itertools
import signal
import time
from datetime import timedelta
from typing import Any

import psycopg

from pgqueue import App, Schedule
from tests.acceptance.apps import hold
from tests.acceptance.conftest import Workers
from tests.conftest import wait_for


def intervals(db: psycopg.Connection[Any], task: str) -> list[tuple[Any, Any]]:
    return db.execute("SELECT started_at, finished_at FROM pgqueue.finished_jobs WHERE task = %s AND state = "
                      "'succeeded'", (task,)).fetchall()


def peak_overlap(spans: list[tuple[Any, Any]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_cron_ticks_exactly_once_across_processes_and_a_killed_worker(app: App, workers: Workers,
                                                                      db: psycopg.Connection[Any]) -> None:
    app.add_schedule(Schedule(name="every-second", cron="* * * * * *", task="t.tick", missed="all"))
    procs = [workers.start("--concurrency", "4") for _ in range(3)]
    wait_for(lambda: (db.execute("SELECT count(*) FROM pgqueue.schedule_ticks").fetchone() or [0])[0] >= 3,
             timeout=20, message="the first ticks")
    procs[0].send_signal(signal.SIGKILL)  # whoever led, the others carry on
    time.sleep(4)
    procs[1].send_signal(signal.SIGSTOP)  # a paused worker wakes up later believing it may still tick
    time.sleep(2)
    procs[1].send_signal(signal.SIGCONT)
    time.sleep(2)
    app.pause_schedule("every-second")
    workers.stop_all()
    ticks = [row[0] for row in db.execute("SELECT tick FROM pgqueue.schedule_ticks ORDER BY tick").fetchall()]
    assert len(ticks) >= 8
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ticks)), ticks  # no gap
    jobs = db.execute("SELECT (SELECT count(*) FROM pgqueue.jobs WHERE task = 't.tick') + "
                      "(SELECT count(*) FROM pgqueue.finished_jobs WHERE task = 't.tick')").fetchone()
    assert jobs == (len(ticks),)  # one job per tick, none twice


def test_concurrency_limit_across_processes(app: App, workers: Workers, db: psycopg.Connection[Any]) -> None:
    hold.app._dsn = app.dsn
    app.configure_queue("default", concurrency=3)
    hold.enqueue_many([[0.2] for _ in range(18)])
    for _ in range(3):
        workers.start("--concurrency", "5")
    wait_for(lambda: len(intervals(db, "t.hold")) == 18, timeout=60)
    workers.stop_all()
    assert peak_overlap(intervals(db, "t.hold")) == 3


def test_rate_limit_across_processes(app: App, workers: Workers, db: psycopg.Connection[Any]) -> None:
    hold.app._dsn = app.dsn
    app.configure_queue("default", rate=(8, 1.0))
    hold.enqueue_many([[0.0] for _ in range(30)])
    for _ in range(3):
        workers.start("--concurrency", "10")
    wait_for(lambda: len(intervals(db, "t.hold")) == 30, timeout=60)
    workers.stop_all()
    starts = sorted(s for s, _ in intervals(db, "t.hold"))
    worst = max(sum(1 for t in starts[i:] if t - s < timedelta(seconds=1)) for i, s in enumerate(starts))
    assert worst <= 8, worst
    assert starts[-1] - starts[0] >= timedelta(seconds=3)

"""Real worker processes, real signals: draining, SIGKILL recovery, graceful shutdown."""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

import psycopg

from pgqueue import App, JobState
from pgqueue.queries import q
from pgqueue.worker import GC_YOUNG_THRESHOLD
from tests.acceptance.apps import collector, record, sleep
from tests.acceptance.conftest import Workers
from tests.conftest import wait_for


def finished(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM pgqueue.finished_jobs").fetchone()
    return int(row[0]) if row else 0


def running_on(db: psycopg.Connection[Any]) -> dict[Any, int]:
    rows = db.execute("SELECT worker_id, count(*) FROM pgqueue.jobs WHERE state = 'running' GROUP BY 1").fetchall()
    return dict(rows)


def test_four_processes_drain_10000_jobs_each_exactly_once(app: App, workers: Workers,
                                                           db: psycopg.Connection[Any]) -> None:
    record.app._dsn = app.dsn
    jobs = record.enqueue_many([[i] for i in range(10_000)])
    for i in range(4):  # two at the default claim size, two holding jobs ahead with bigger claims
        workers.start("--concurrency", "10", *(["--prefetch", "20", "--claim-batch", "15"] if i % 2 else []))
    wait_for(lambda: finished(db) == 10_000, timeout=180, interval=0.2, message="10,000 jobs to finish")
    workers.stop_all()
    assert all(p.returncode == 0 for p in workers.procs), workers.output()
    runs = Counter(line.split()[0] for line in workers.runs())
    assert len(runs) == 10_000 and set(runs.values()) == {1}  # every job ran, none twice
    assert {str(j.id) for j in jobs} == set(runs)
    row = db.execute("SELECT count(*) FILTER (WHERE state = 'succeeded' AND attempt = 1), count(DISTINCT worker_id) "
                     "FROM pgqueue.finished_jobs").fetchone()
    assert row is not None and row[0] == 10_000 and row[1] >= 2  # the work was shared


def test_sigkilled_workers_jobs_run_again_after_the_lease(app: App, workers: Workers,
                                                          db: psycopg.Connection[Any]) -> None:
    lease, heartbeat = 2.0, 0.5
    sleep.app._dsn = app.dsn
    jobs = sleep.enqueue_many([[1.0] for _ in range(6)])
    victim = workers.start("--concurrency", "10", "--lease", str(lease), "--heartbeat", str(heartbeat))
    wait_for(lambda: sum(running_on(db).values()) == 6, message="the victim to hold all 6 jobs")
    (victim_id,) = running_on(db)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = db.execute("SELECT now()").fetchone()
    assert killed_at is not None
    workers.start("--concurrency", "10", "--lease", str(lease), "--heartbeat", str(heartbeat))
    wait_for(lambda: finished(db) == 6, timeout=30, message="the rescued jobs to finish")
    for job in jobs:
        done = app.job(job.id)
        assert done.state is JobState.SUCCEEDED and done.attempt == 2
        assert [(e.kind, e.worker_id) for e in done.errors] == [("lease_expired", victim_id)]
        # Reclaimed within lease + heartbeat + reaper sweep (the sweep runs every heartbeat), plus slack.
        assert (done.errors[0].failed_at - killed_at[0]).total_seconds() < lease + 2 * heartbeat + 1.0
    # The killed worker's late completion (simulated) is rejected.
    late = db.execute(q("job_complete_many"), {"ids": [j.id for j in jobs], "attempts": [1] * 6,
                                               "results": ['"late"'] * 6, "worker_id": victim_id}).fetchall()
    assert late == [] and all(app.job(j.id).result == 1.0 for j in jobs)


def test_the_worker_process_sets_its_garbage_collector_up(app: App, workers: Workers) -> None:
    """`pgqueue work` freezes what start-up made and spaces young collections out (see
    prepare_worker_process); the test process itself keeps Python's defaults."""
    collector.app._dsn = app.dsn
    job = collector.enqueue()
    workers.start("--concurrency", "1")
    wait_for(lambda: app.job(job.id).state is JobState.SUCCEEDED, message="the job to run")
    threshold, frozen = app.job(job.id).result
    assert threshold == GC_YOUNG_THRESHOLD and frozen > 1000, (threshold, frozen)
    workers.stop_all()


def test_sigterm_drains_then_hands_unfinished_jobs_back_at_once(app: App, workers: Workers,
                                                                db: psycopg.Connection[Any]) -> None:
    sleep.app._dsn = app.dsn
    short = sleep.enqueue(0.8)
    long = sleep.enqueue(60.0)
    proc = workers.start("--concurrency", "2", "--lease", "30", "--drain-timeout", "2")
    wait_for(lambda: sum(running_on(db).values()) == 2, message="both jobs to start")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
    took = time.monotonic() - sent
    assert proc.returncode == 0
    assert 1.5 < took < 8, took  # waited out the drain, not the 30 s lease
    assert app.job(short.id).state is JobState.SUCCEEDED
    back = app.job(long.id)
    assert (back.state, back.attempt, back.worker_id, back.errors) == (JobState.QUEUED, 0, None, ())
    assert app.workers() == []


def test_second_signal_forces_the_hand_back(app: App, workers: Workers, db: psycopg.Connection[Any]) -> None:
    sleep.app._dsn = app.dsn
    long = sleep.enqueue(60.0)
    proc = workers.start("--concurrency", "1", "--drain-timeout", "60")
    wait_for(lambda: sum(running_on(db).values()) == 1, message="the job to start")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=15)
    assert time.monotonic() - sent < 8
    assert app.job(long.id).state is JobState.QUEUED

"""Operations: the listener survives a killed connection, stale workers are forgotten, retention prunes,
and pgqueue.testing works inside a rolled-back transaction."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from pgqueue import App, JobState, testing
from pgqueue.connection import DedicatedConnection
from pgqueue.maintenance import Maintenance, MaintenanceConfig
from tests.conftest import wait_for


def test_listener_reconnects_after_its_connection_is_killed(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def ping() -> None: ...

    with testing.running_worker(app, poll_interval=30.0, promote_interval=5.0) as worker:
        notifier = worker.notifier
        assert notifier is not None
        wait_for(notifier.listening.is_set)
        killed = db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE query ILIKE 'LISTEN pgqueue_jobs%' AND pid <> pg_backend_pid() "
                            "AND datname = current_database()").fetchall()
        assert killed == [(True,)]
        wait_for(lambda: notifier.reconnects >= 1 and notifier.listening.is_set(), timeout=10)
        time.sleep(0.2)
        job = ping.enqueue()
        wait_for(lambda: app.job(job.id).state is JobState.SUCCEEDED, timeout=5)
        read = app.job(job.id)
        assert read.started_at is not None
        assert (read.started_at - read.created_at).total_seconds() < 1.0  # woken, not polled (poll is 30 s)


def _maintenance(dsn: str, **config: Any) -> tuple[Maintenance, DedicatedConnection]:
    conn = DedicatedConnection(dsn, "test")
    return Maintenance(conn, MaintenanceConfig(**config)), conn


def test_stale_workers_are_forgotten(app: App, db: psycopg.Connection[Any]) -> None:
    db.execute("""INSERT INTO pgqueue.workers (id, host, pid, concurrency, last_heartbeat_at) VALUES
                  (gen_random_uuid(), 'gone', 1, 1, now() - interval '1 hour'),
                  (gen_random_uuid(), 'alive', 2, 1, now())""")

    async def sweep() -> None:
        maintenance, conn = _maintenance(app.dsn, stale_worker_after=600)
        await maintenance.forget_stale_workers()
        await conn.close()

    asyncio.run(sweep())
    assert [w.host for w in app.workers()] == ["alive"]


def test_retention_prunes_by_state_and_age(app: App, db: psycopg.Connection[Any]) -> None:
    db.execute("""INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt,
                  max_attempts, scheduled_for, created_at, finished_at)
                  SELECT nextval('pgqueue.job_id_seq'), 'r', 't', '[]', '{}', 0, s, 1, 1, now(), now(),
                         now() - age
                  FROM unnest(ARRAY['succeeded', 'cancelled', 'dead', 'succeeded', 'dead']::text[],
                              ARRAY['2 days', '2 days', '2 days', '1 minute', '40 days']::interval[]) AS u(s, age)""")

    async def sweep(**config: Any) -> int:
        maintenance, conn = _maintenance(app.dsn, **config)
        try:
            return await maintenance.prune()
        finally:
            await conn.close()

    assert asyncio.run(sweep(retention=timedelta(days=1), dead_retention=None)) == 2
    assert asyncio.run(sweep(retention=timedelta(days=1), dead_retention=timedelta(days=30))) == 1
    remaining = db.execute("SELECT state FROM pgqueue.finished_jobs ORDER BY state").fetchall()
    assert remaining == [("dead",), ("succeeded",)]


def test_testing_helpers_in_a_rolled_back_transaction(app: App, dsn: str, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def welcome(to: str) -> str:
        return f"sent to {to}"

    with psycopg.connect(dsn) as conn:
        welcome.enqueue("a@b.c", conn=conn)
        testing.assert_enqueued(app, welcome, args=["a@b.c"], count=1, conn=conn)
        with pytest.raises(AssertionError, match="expected a job of"):
            testing.assert_enqueued(app, welcome, args=["someone@else"], conn=conn)
        ran = testing.run_jobs(app, conn=conn)
        assert [(j.task, j.state) for j in ran] == [(welcome.name, JobState.SUCCEEDED)]
        assert ran[0].result == "sent to a@b.c"
        conn.rollback()
    assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM pgqueue.finished_jobs").fetchone() == (0,)


def test_run_jobs_leaves_retries_scheduled(app: App) -> None:
    @app.task(max_attempts=3)
    def flaky() -> None:
        raise ValueError("nope")

    flaky.enqueue()
    (ran,) = testing.run_jobs(app)
    assert ran.state is JobState.SCHEDULED and ran.errors[0].error_type == "ValueError"
    assert testing.enqueued(app, flaky)[0].id == ran.id

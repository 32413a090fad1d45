"""Small, fast tests for the bugs the chaos scenarios found; each failed before its fix."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from pgqueue import App, Context, JobState, ValidationError, testing
from pgqueue.heartbeat import SWITCH_INTERVAL
from pgqueue.queries import q
from pgqueue.testing import running_worker
from tests.conftest import wait_for


def test_arguments_nested_too_deep_for_python_fail_the_attempt(app: App, db: psycopg.Connection[Any]) -> None:
    """Scenario 7: PostgreSQL's json accepts nesting Python's json module cannot parse (RecursionError)."""

    @app.task(name="deep", max_attempts=1)
    def deep(x: Any) -> None: ...

    deep_json = "[" * 5000 + "]" * 5000
    row = db.execute("SELECT pgqueue.enqueue('deep', %s::json, max_attempts => 1)", (deep_json,)).fetchone()
    assert row is not None
    with pytest.raises(ValidationError, match="nested too deeply"):  # reading it back: a typed error
        testing.run_jobs(app)
    state = db.execute("SELECT state, attempt FROM pgqueue.finished_jobs WHERE id = %s", (row[0],)).fetchone()
    error = db.execute("SELECT error_type, message FROM pgqueue.job_errors WHERE job_id = %s", (row[0],)).fetchone()
    assert state == ("dead", 1)
    assert error is not None and error[0] == "ValidationError" and "nested too deeply" in error[1]
    with pytest.raises(ValidationError, match="nested too deeply"):
        app.job(row[0])


def test_a_running_job_the_worker_does_not_know_is_not_renewed(app: App, db: psycopg.Connection[Any]) -> None:
    """A claim whose reply was lost (connection dropped after commit) leaves a job leased to a worker that does
    not run it. Its heartbeat must not renew that lease forever: the job expires and is reclaimed."""

    @app.task(name="orphan")
    def orphan() -> str:
        return "rescued"

    with running_worker(app, lease=1.0, heartbeat=0.25, poll_interval=0.5) as worker:
        # What a lost claim reply leaves behind: the job is running, leased to this worker, which never saw it.
        row = db.execute("INSERT INTO pgqueue.jobs (task, state, attempt, worker_id, started_at, lease_expires_at) "
                         "VALUES ('orphan', 'running', 1, %s, now(), now() + interval '1 second') RETURNING id",
                         (worker.id,)).fetchone()
        assert row is not None
        job = wait_for(lambda: (j := app.job(row[0])).state is JobState.SUCCEEDED and j, timeout=10,
                       message="the forgotten job to be reclaimed and run")
    assert job.result == "rescued" and job.attempt == 2
    assert [e.kind for e in job.errors] == ["lease_expired"]


def test_a_job_scheduled_for_infinity_does_not_stop_maintenance(app: App, db: psycopg.Connection[Any]) -> None:
    """Scenario 8: pgqueue.enqueue(run_at => 'infinity') made the promoter's next-due query fail on
    PostgreSQL 15 (cannot subtract infinite timestamps), and every maintenance sweep with it: expired leases
    were never reclaimed."""

    @app.task(name="orphaned")
    def orphaned() -> str:
        return "rescued"

    db.execute("SELECT pgqueue.enqueue('orphaned', run_at => 'infinity')")
    row = db.execute("INSERT INTO pgqueue.jobs (task, state, attempt, worker_id, started_at, lease_expires_at) "
                     "VALUES ('orphaned', 'running', 1, gen_random_uuid(), now(), now()) RETURNING id").fetchone()
    assert row is not None
    with running_worker(app, lease=1.0, heartbeat=0.25, poll_interval=0.5, promote_interval=0.1):
        job = wait_for(lambda: (j := app.job(row[0])).state is JobState.SUCCEEDED and j, timeout=10,
                       message="the expired lease to be reclaimed")
    assert job.result == "rescued"


def test_a_worker_whose_loop_is_blocked_stops_renewing_its_leases(app: App, db: psycopg.Connection[Any]) -> None:
    """The renewer thread must not keep a wedged worker's jobs forever: once the loop has not run for
    max(3 leases, 5 s), renewals stop and the lease runs out, so another worker can take the job."""

    @app.task(name="wedge")
    async def wedge(ctx: Context) -> None:
        if ctx.attempt == 1:
            time.sleep(8)  # blocks the event loop itself, as a buggy async handler would

    job = wedge.enqueue()
    with running_worker(app, lease=1.0, heartbeat=0.25, poll_interval=0.5):
        expired = wait_for(lambda: db.execute("SELECT lease_expires_at < now() FROM pgqueue.jobs WHERE id = %s "
                                              "AND state = 'running'", (job.id,)).fetchone() == (True,),
                           timeout=10, message="the blocked worker's lease to run out")
        wait_for(lambda: app.job(job.id).state is JobState.SUCCEEDED, timeout=20, message="the job to finish")
    assert expired


def test_the_switch_interval_is_short_while_workers_run_and_restored_after(app: App) -> None:
    """The renewer shortens the GIL switch interval for its process (so it waits less behind CPU-bound handler
    threads) and gives the old one back when the last worker of the process stops."""
    before = sys.getswitchinterval()
    with running_worker(app, lease=1.0), running_worker(app, lease=1.0):
        wait_for(lambda: sys.getswitchinterval() == SWITCH_INTERVAL, timeout=5, message="a shorter interval")
    assert sys.getswitchinterval() == before
    assert [t.name for t in threading.enumerate() if t.name == "pgqueue-heartbeat"] == []


def _running_jobs(db: psycopg.Connection[Any], worker_id: uuid.UUID, n: int) -> list[int]:
    return [r[0] for r in db.execute(
        "INSERT INTO pgqueue.jobs (task, state, attempt, worker_id, started_at, lease_expires_at) "
        "SELECT 't', 'running', 1, %s, now(), now() + interval '1 minute' FROM generate_series(1, %s) "
        "RETURNING id", (worker_id, n)).fetchall()]


def test_a_heartbeat_does_not_wait_for_rows_its_completion_holds(dsn: str, db: psycopg.Connection[Any]) -> None:
    """Scenario 7 (and the PostgreSQL log of every chaos run): a completion of several jobs deletes them in its
    own order while the heartbeat renews the same jobs in id order. Each held a row the other wanted next:
    "deadlock detected", the loser's statement rolled back and its connection was dropped and reopened. The
    heartbeat and the progress flush now skip rows another statement has locked, so they wait for nothing and
    cannot close the cycle; a skipped job still counts as held and is renewed by the next beat."""
    worker_id = uuid.uuid4()
    first, middle, last = _running_jobs(db, worker_id, 3)
    params = {"worker_id": worker_id, "ids": [first, middle, last], "lease": 120.0, "jobs_done": 0,
              "jobs_failed": 0, "state": "running", "progress_ids": [first, last], "progress": [0.5, 0.5],
              "progress_messages": ["half", "half"]}
    with psycopg.connect(dsn) as completion, psycopg.connect(dsn, autocommit=True) as heartbeat:
        heartbeat.execute("SET lock_timeout = '2s'")  # waiting at all fails the test, rather than deadlocking
        # The completion has deleted the last job and is about to delete the first.
        completion.execute("DELETE FROM pgqueue.jobs WHERE id = %s", (last,))
        held, _, _ = heartbeat.execute(q("job_heartbeat"), params).fetchall()[0]
        heartbeat.execute(q("job_progress_update"), params)
        completion.execute("DELETE FROM pgqueue.jobs WHERE id = %s", (first,))
        completion.commit()
    assert sorted(held) == [first, middle, last]  # the locked one is not taken for lost
    leases = dict(db.execute("SELECT id, lease_expires_at > now() + interval '90 seconds' FROM pgqueue.jobs "
                             "WHERE id = ANY(%s)", ([first, middle, last],)).fetchall())
    assert leases == {middle: True}  # renewed; the completion's two are gone, as it committed


def test_a_progress_flush_skips_a_row_being_completed(dsn: str, db: psycopg.Connection[Any]) -> None:
    worker_id = uuid.uuid4()
    done, busy = _running_jobs(db, worker_id, 2)
    params = {"worker_id": worker_id, "progress_ids": [done, busy], "progress": [0.25, 0.75],
              "progress_messages": ["a", "b"]}
    with psycopg.connect(dsn) as completion, psycopg.connect(dsn, autocommit=True) as flush:
        flush.execute("SET lock_timeout = '2s'")
        completion.execute("SELECT 1 FROM pgqueue.jobs WHERE id = %s FOR UPDATE", (done,))
        flush.execute(q("job_progress_update"), params)
        completion.rollback()
    progress = dict(db.execute("SELECT id, progress FROM pgqueue.jobs WHERE id = ANY(%s)",
                               ([done, busy],)).fetchall())
    assert progress == {done: None, busy: 0.75}

"""Small, fast tests for the bugs the chaos scenarios found; each failed before its fix."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import psycopg
import pytest

from pgqueue import App, Context, JobState, ValidationError, testing
from pgqueue.heartbeat import SWITCH_INTERVAL
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

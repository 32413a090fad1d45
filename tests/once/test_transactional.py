"""Transactional handlers in-process: writes and completion commit together; failures and lost leases roll back."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import psycopg
import pytest

from pgqueue import App, ConfigurationError, Context, JobState, testing
from pgqueue.executor import ClaimedJob, execute
from pgqueue.queries import q
from pgqueue.testing import running_worker
from tests.conftest import wait_for
from tests.once.conftest import Receiver, effects

FAST = {"poll_interval": 0.5, "promote_interval": 0.05}
INSERT = "INSERT INTO public.once_effects (job_id, n, attempt) VALUES (%s, %s, %s)"


def test_writes_and_completion_commit_together(app: App, db: psycopg.Connection[Any]) -> None:
    seen_in_tx: list[int] = []

    @app.task(transactional=True)
    def write(ctx: Context, n: int) -> int:
        ctx.conn.execute(INSERT, (ctx.job_id, n, ctx.attempt))
        # Inside the transaction the row is there; outside it is not until the commit.
        row = ctx.conn.execute("SELECT count(*) FROM public.once_effects WHERE job_id = %s", (ctx.job_id,)).fetchone()
        seen_in_tx.append(row[0] if row else -1)
        return n * 2

    @app.task(transactional=True)
    async def write_async(ctx: Context, n: int) -> int:
        await ctx.aconn.execute(INSERT, (ctx.job_id, n, ctx.attempt))
        return n * 3

    jobs = [write.enqueue(i) for i in range(20)] + [write_async.enqueue(i) for i in range(20)]
    with running_worker(app, concurrency=4, **FAST) as worker:
        wait_for(lambda: all(app.job(j.id).state is JobState.SUCCEEDED for j in jobs), timeout=20)
    assert effects(db) == sorted([(j.id, i) for i, j in enumerate(jobs[:20])] + [(j.id, i) for i, j in
                                                                                 enumerate(jobs[20:])])
    assert [app.job(j.id).result for j in jobs] == [i * 2 for i in range(20)] + [i * 3 for i in range(20)]
    assert seen_in_tx == [1] * 20 and worker.stats.done == 40 and worker.stats.fenced == 0


def test_a_failed_attempt_rolls_back_its_writes_and_retries(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task(transactional=True, max_attempts=3, retry_base=0.05, retry_cap=0.1)
    def flaky(ctx: Context, n: int) -> None:
        ctx.conn.execute(INSERT, (ctx.job_id, n, ctx.attempt))
        ctx.publish("flaky.done", {"n": n, "attempt": ctx.attempt})
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} fails after writing")

    @app.task(transactional=True, max_attempts=2, retry_base=0.05, retry_cap=0.1)
    async def doomed(ctx: Context) -> None:
        await ctx.aconn.execute(INSERT, (ctx.job_id, -1, ctx.attempt))
        await ctx.publish_async("doomed.done", {})
        raise RuntimeError("always")

    job, dead = flaky.enqueue(7), doomed.enqueue()
    with running_worker(app, **FAST):
        wait_for(lambda: app.job(job.id).state is JobState.SUCCEEDED and app.job(dead.id).state is JobState.DEAD,
                 timeout=15)
    rows = db.execute("SELECT job_id, attempt FROM public.once_effects").fetchall()
    assert rows == [(job.id, 3)]  # attempts 1 and 2 wrote too, and vanished with their rollback
    assert [m.payload for m in app.outbox_messages(topic="flaky.done")] == [{"n": 7, "attempt": 3}]
    assert app.outbox_messages(topic="doomed.done") == []
    assert [e.attempt for e in app.job(job.id).errors] == [1, 2]


def test_a_fenced_attempt_rolls_back(app: App, db: psycopg.Connection[Any]) -> None:
    """The lease is taken over while the handler runs: its commit is refused and its writes vanish."""
    gate, entered = threading.Event(), threading.Event()

    @app.task(transactional=True)
    def slow(ctx: Context) -> str:
        ctx.conn.execute(INSERT, (ctx.job_id, 1, ctx.attempt))
        entered.set()
        gate.wait(10)
        return "late"

    job = slow.enqueue()
    with running_worker(app, **FAST) as worker:
        wait_for(entered.is_set)
        # The job is handed to someone else, as the reaper would after a lost lease.
        db.execute("UPDATE pgqueue.jobs SET state = 'queued', worker_id = NULL, attempt = attempt + 1 "
                   "WHERE id = %s", (job.id,))
        db.execute("DELETE FROM pgqueue.jobs WHERE id = %s", (job.id,))  # and finished there, whatever it did
        gate.set()
        wait_for(lambda: worker.stats.fenced == 1)
    assert effects(db) == [] and worker.stats.done == 0


def test_sync_handler_that_overruns_its_timeout_is_fenced_off(app: App, db: psycopg.Connection[Any]) -> None:
    release = threading.Event()

    @app.task(transactional=True, timeout=0.3, max_attempts=1)
    def stuck(ctx: Context) -> str:
        ctx.conn.execute(INSERT, (ctx.job_id, 1, ctx.attempt))
        release.wait(10)
        return "late"

    job = stuck.enqueue()
    with running_worker(app, **FAST) as worker:
        wait_for(lambda: app.job(job.id).state is JobState.DEAD, timeout=5)
        release.set()
        wait_for(lambda: worker.busy_threads == 0)
    assert effects(db) == [] and app.job(job.id).errors[0].kind == "timeout"


def test_the_commit_and_the_completion_are_one(app: App, dsn: str, db: psycopg.Connection[Any]) -> None:
    """Seen from outside, the handler's row and the job's success appear in the same instant, never apart."""
    stop = threading.Event()
    torn: list[tuple[int, int]] = []

    @app.task(transactional=True)
    def write(ctx: Context, n: int) -> None:
        ctx.conn.execute(INSERT, (ctx.job_id, n, ctx.attempt))

    def watch() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                # One snapshot: rows written vs jobs succeeded.
                row = conn.execute("SELECT (SELECT count(*) FROM public.once_effects), "
                                   "(SELECT count(*) FROM pgqueue.finished_jobs WHERE state = 'succeeded')"
                                   ).fetchone()
                assert row is not None
                if row[0] != row[1]:
                    torn.append((row[0], row[1]))

    write.enqueue_many([[i] for i in range(300)])
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with running_worker(app, concurrency=8, **FAST):
            wait_for(lambda: len(effects(db)) == 300, timeout=30)
    finally:
        stop.set()
        watcher.join()
    assert torn == []


def test_ctx_conn_outside_a_transactional_task_says_what_to_do(app: App) -> None:
    errors: list[str] = []

    @app.task()
    def plain(ctx: Context) -> None:
        for attempt in (lambda: ctx.conn, lambda: ctx.publish("t", {})):
            try:
                attempt()
            except ConfigurationError as err:
                errors.append(str(err))

    @app.task(transactional=True)
    async def wrong(ctx: Context) -> None:
        try:
            ctx.conn.execute("SELECT 1")
        except ConfigurationError as err:
            errors.append(str(err))

    jobs = [plain.enqueue(), wrong.enqueue()]
    with running_worker(app, **FAST):
        wait_for(lambda: all(app.job(j.id).state is JobState.SUCCEEDED for j in jobs))
    assert errors[0] == errors[1] and "@app.task(transactional=True)" in errors[0]
    assert "is async: use ctx.aconn" in errors[2]
    with pytest.raises(ConfigurationError, match="first parameter must be ctx"):
        @app.task(transactional=True)
        def no_ctx(n: int) -> None: ...


def test_run_jobs_runs_transactional_handlers_inside_the_test_transaction(app: App, dsn: str) -> None:
    @app.task(transactional=True)
    def write(ctx: Context, n: int) -> int:
        ctx.conn.execute(INSERT, (ctx.job_id, n, ctx.attempt))
        ctx.publish("written", {"n": n})
        return n

    with psycopg.connect(dsn) as conn:
        job = write.enqueue(5, conn=conn)
        (ran,) = testing.run_jobs(app, conn=conn)
        assert ran.state is JobState.SUCCEEDED and ran.result == 5
        row = conn.execute("SELECT count(*) FROM public.once_effects WHERE job_id = %s", (job.id,)).fetchone()
        assert row == (1,) and len(app.outbox_messages()) == 0  # not committed: others see nothing yet
        conn.rollback()
    assert app.outbox_messages() == [] and app.jobs() == []


def test_execute_reports_a_fenced_commit_without_recording_anything(app: App, db: psycopg.Connection[Any]) -> None:
    """At the seam: a transactional execution whose fence fails says so (recorded=False) and writes nothing."""
    from concurrent.futures import ThreadPoolExecutor

    @app.task(transactional=True)
    def write(ctx: Context) -> str:
        ctx.conn.execute(INSERT, (ctx.job_id, 1, ctx.attempt))
        return "x"

    job = write.enqueue()
    me, other = uuid.uuid4(), uuid.uuid4()
    row = db.execute(q("job_claim_any"), {"limit": 1, "worker_id": me, "lease": 30}).fetchone()
    assert row is not None
    claimed = ClaimedJob(*row[:8])
    db.execute("UPDATE pgqueue.jobs SET worker_id = %s WHERE id = %s", (other, job.id))  # taken over
    with ThreadPoolExecutor(1) as threads:
        execution = asyncio.run(execute(app, claimed, me, threads))
    assert execution.recorded is False and execution.outcome.state == "succeeded"
    assert effects(db) == [] and app.job(job.id).state is JobState.RUNNING
    db.execute("UPDATE pgqueue.jobs SET worker_id = %s WHERE id = %s", (me, job.id))
    with ThreadPoolExecutor(1) as threads:
        execution = asyncio.run(execute(app, claimed, me, threads))
    assert execution.recorded is True and effects(db) == [(job.id, 1)]
    assert app.job(job.id).state is JobState.SUCCEEDED and app.job(job.id).result == "x"


def test_a_cancelled_transactional_handler_rolls_back_and_ends_cancelled(app: App, db: psycopg.Connection[Any],
                                                                        receiver: Receiver) -> None:
    """Cancelling a running job: a transactional handler that returns on ctx.cancelled commits nothing, an async
    one is interrupted; both end cancelled, and their completion webhooks say so."""
    entered = threading.Event()

    @app.task(transactional=True)
    def polite(ctx: Context) -> str:
        ctx.conn.execute(INSERT, (ctx.job_id, 1, ctx.attempt))
        entered.set()
        wait_for(lambda: ctx.cancelled, timeout=10)
        return "stopped early"

    @app.task(transactional=True)
    async def interrupted(ctx: Context) -> None:
        await ctx.aconn.execute(INSERT, (ctx.job_id, 2, ctx.attempt))
        await ctx.publish_async("never", {})
        await asyncio.sleep(30)

    url = f"{receiver.url}/done"
    jobs = [polite.using(callback_url=url).enqueue(), interrupted.using(callback_url=url).enqueue()]
    with running_worker(app, **FAST):
        wait_for(lambda: entered.is_set() and all(app.job(j.id).state is JobState.RUNNING for j in jobs))
        assert all(app.cancel(j.id) for j in jobs)
        wait_for(lambda: all(app.job(j.id).state is JobState.CANCELLED for j in jobs))
    assert effects(db) == [] and [m.topic for m in app.outbox_messages()] == ["pgqueue.job.cancelled"] * 2

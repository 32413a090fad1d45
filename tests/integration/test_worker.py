"""The worker in-process against real PostgreSQL: running, ordering, retries, leases, wake-ups, timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from pgqueue import App, Context, Fatal, JobState, Retry
from pgqueue.errors import DatabaseUnavailable
from pgqueue.queries import q
from pgqueue.testing import running_worker
from pgqueue.worker import Worker, WorkerConfig
from tests.conftest import wait_for

FAST = {"poll_interval": 0.5, "promote_interval": 0.05}


def state_of(app: App, job_id: int) -> JobState:
    return app.job(job_id).state


def test_sync_and_async_handlers_run_and_store_results(app: App) -> None:
    @app.task()
    def add(a: int, b: int) -> int:
        return a + b

    @app.task()
    async def greet(ctx: Context, name: str) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"hello": name, "attempt": ctx.attempt, "job": ctx.job_id}

    a = add.enqueue(2, 3)
    g = greet.enqueue(name="ann")
    with running_worker(app, **FAST):
        wait_for(lambda: state_of(app, g.id).finished and state_of(app, a.id).finished)
    assert app.job(a.id).result == 5 and app.job(a.id).state is JobState.SUCCEEDED
    assert app.job(g.id).result == {"hello": "ann", "attempt": 1, "job": g.id}
    assert app.job(g.id).finished_at is not None and app.job(g.id).attempt == 1


def test_higher_priority_runs_first_then_oldest(app: App) -> None:
    order: list[str] = []

    @app.task()
    def record(label: str) -> None:
        order.append(label)

    for i in range(3):
        record.using(priority=0).enqueue(f"low{i}")
    for i in range(3):
        record.using(priority=5).enqueue(f"high{i}")
    record.using(priority=9).enqueue("urgent")
    with running_worker(app, concurrency=1, claim_batch=1, **FAST):
        wait_for(lambda: len(order) == 7)
    assert order == ["urgent", "high0", "high1", "high2", "low0", "low1", "low2"]


def test_worker_serves_only_its_queues(app: App) -> None:
    @app.task()
    def noop() -> None: ...

    mine = noop.using(queue="mine").enqueue()
    other = noop.using(queue="other").enqueue()
    with running_worker(app, queues=["mine"], **FAST):
        wait_for(lambda: state_of(app, mine.id) is JobState.SUCCEEDED)
        time.sleep(0.3)
        assert state_of(app, other.id) is JobState.QUEUED


def test_delayed_job_does_not_start_before_its_time(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def later() -> None: ...

    job = later.using(delay=1.5).enqueue()
    with running_worker(app, **FAST):
        time.sleep(1.0)
        assert state_of(app, job.id) is JobState.SCHEDULED
        wait_for(lambda: state_of(app, job.id) is JobState.SUCCEEDED, timeout=10)
    read = app.job(job.id)
    assert read.started_at is not None and read.started_at >= read.scheduled_for
    assert read.scheduled_for - read.created_at >= timedelta(seconds=1.5)


def test_idle_worker_wakes_on_notify_long_before_the_safety_poll(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def ping() -> None: ...

    with running_worker(app, poll_interval=10.0, promote_interval=5.0) as worker:
        assert worker.notifier is not None
        wait_for(lambda: worker.notifier is not None and worker.notifier.listening.is_set())
        time.sleep(0.3)  # the worker is idle, asleep on its 10 s poll
        latencies = []
        for _ in range(5):
            job = ping.enqueue()
            wait_for(lambda j=job: state_of(app, j.id) is JobState.SUCCEEDED, timeout=5)  # type: ignore[misc]
            read = app.job(job.id)
            assert read.started_at is not None
            latencies.append((read.started_at - read.created_at).total_seconds())
            time.sleep(0.1)
    assert max(latencies) < 1.0, latencies
    assert worker.stats.wakeups >= 5


def test_failures_retry_with_backoff_then_go_dead_with_every_error(app: App) -> None:
    @app.task(max_attempts=3, retry_base=1.0, retry_cap=1.0)
    def flaky() -> None:
        raise ConnectionError("upstream down")

    job = flaky.enqueue()
    with running_worker(app, **FAST):
        first = wait_for(lambda: (j := app.job(job.id)).errors and j, timeout=5)
        # The delay is added to the database clock in the same statement that records the error.
        assert first.state is JobState.SCHEDULED
        delay = (first.scheduled_for - first.errors[0].failed_at).total_seconds()
        low, high = flaky.backoff.bounds(1)
        assert low - 0.001 <= delay <= high + 0.001, (delay, low, high)
        wait_for(lambda: state_of(app, job.id) is JobState.DEAD, timeout=15)
    dead = app.job(job.id)
    assert dead.attempt == 3 and [e.attempt for e in dead.errors] == [1, 2, 3]
    assert {e.error_type for e in dead.errors} == {"ConnectionError"}
    assert all(e.traceback and "upstream down" in e.traceback for e in dead.errors)
    letters = app.dead_letters()
    assert [d["id"] for d in letters] == [job.id] and letters[0]["error_message"] == "upstream down"


def test_fatal_non_retryable_and_retry_with_delay(app: App) -> None:
    class BadCard(Exception):
        pass

    @app.task(max_attempts=5)
    def fatal() -> None:
        raise Fatal("cannot ever work")

    @app.task(max_attempts=5, non_retryable=[BadCard])
    def card() -> None:
        raise BadCard("card invalid")

    @app.task(max_attempts=5)
    def snooze() -> None:
        raise Retry(delay=30, reason="not yet")

    jobs = [fatal.enqueue(), card.enqueue(), snooze.enqueue()]
    with running_worker(app, **FAST):
        wait_for(lambda: all(app.job(j.id).attempt >= 1 and app.job(j.id).state is not JobState.RUNNING
                             and app.job(j.id).errors for j in jobs))
    assert app.job(jobs[0].id).state is JobState.DEAD and app.job(jobs[0].id).attempt == 1
    assert app.job(jobs[1].id).state is JobState.DEAD and app.job(jobs[1].id).errors[0].error_type == "BadCard"
    snoozed = app.job(jobs[2].id)
    assert snoozed.state is JobState.SCHEDULED
    assert 29.9 <= (snoozed.scheduled_for - snoozed.errors[0].failed_at).total_seconds() <= 30.1


def test_dead_letter_retry_brings_jobs_back(app: App) -> None:
    healed = threading.Event()

    @app.task(max_attempts=1)
    def fragile(n: int) -> int:
        if not healed.is_set():
            raise RuntimeError("broken")
        return n

    jobs = fragile.enqueue_many([[i] for i in range(5)])
    with running_worker(app, **FAST):
        wait_for(lambda: len(app.dead_letters()) == 5)
        healed.set()
        assert app.retry(jobs[0].id) == 1
        wait_for(lambda: state_of(app, jobs[0].id) is JobState.SUCCEEDED)
        assert app.retry(task=fragile.name) == 4
        assert app.retry(all=True) == 0  # nothing left dead
        wait_for(lambda: all(state_of(app, j.id) is JobState.SUCCEEDED for j in jobs))
    assert app.job(jobs[1].id).attempt == 2 and len(app.job(jobs[1].id).errors) == 1


def test_async_timeout_cancels_and_retries(app: App) -> None:
    cancelled = threading.Event()

    @app.task(timeout=0.3, max_attempts=2, retry_base=0.1, retry_cap=0.2)
    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    job = slow.enqueue()
    with running_worker(app, **FAST):
        wait_for(lambda: state_of(app, job.id) is JobState.DEAD, timeout=10)
    errors = app.job(job.id).errors
    assert [e.kind for e in errors] == ["timeout", "timeout"] and cancelled.is_set()


def test_sync_timeout_fails_on_time_and_the_late_result_is_discarded(app: App) -> None:
    release = threading.Event()
    finished_threads: list[int] = []

    @app.task(timeout=0.3, max_attempts=1)
    def stuck() -> str:
        release.wait(20)
        finished_threads.append(1)
        return "late"

    job = stuck.enqueue()
    with running_worker(app, concurrency=2, **FAST) as worker:
        dead = wait_for(lambda: (j := app.job(job.id)).state is JobState.DEAD and j, timeout=5)
        assert dead.errors[0].kind == "timeout"
        assert worker.busy_threads == 1  # the thread still runs and still holds its slot
        release.set()
        wait_for(lambda: finished_threads and worker.busy_threads == 0)
    assert app.job(job.id).state is JobState.DEAD and app.job(job.id).result is None


def test_expired_lease_is_reclaimed_and_the_old_worker_is_fenced(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def once() -> str:
        return "ran"

    job = once.enqueue()
    ghost = uuid.uuid4()
    claimed = db.execute(q("job_claim_any"), {"limit": 10, "worker_id": ghost, "lease": 0.3}).fetchall()
    assert [row[0] for row in claimed] == [job.id]
    # The ghost never heartbeats. A live worker's reaper reclaims the job after the lease, and runs it.
    with running_worker(app, lease=3, heartbeat=1, reap_interval=0.1, **FAST):
        wait_for(lambda: state_of(app, job.id) is JobState.SUCCEEDED, timeout=10)
    done = app.job(job.id)
    assert done.attempt == 2 and [e.kind for e in done.errors] == ["lease_expired"]
    # The ghost's late completion of attempt 1 changes nothing.
    late = db.execute(q("job_complete_many"), {"ids": [job.id], "attempts": [1], "results": ['"ghost"'],
                                               "worker_id": ghost}).fetchall()
    assert late == []
    late_fail = db.execute(q("job_dead"), {"id": job.id, "attempt": 1, "worker_id": ghost, "kind": "error",
                                           "error_type": "X", "message": "late", "traceback": None}).fetchall()
    assert late_fail == [] and app.job(job.id).result == "ran" and app.job(job.id).state is JobState.SUCCEEDED


def test_late_writes_of_a_fenced_attempt_change_nothing(app: App, db: psycopg.Connection[Any]) -> None:
    job = app.enqueue("fence.task", max_attempts=5)
    ghost, successor = uuid.uuid4(), uuid.uuid4()
    db.execute(q("job_claim_any"), {"limit": 1, "worker_id": ghost, "lease": 0.05})
    time.sleep(0.1)
    reaped = db.execute(q("job_reap_expired"), {"limit": 10}).fetchone()
    assert reaped is not None and reaped[0] == 1
    db.execute(q("job_claim_any"), {"limit": 1, "worker_id": successor, "lease": 30})
    assert app.job(job.id).attempt == 2 and app.job(job.id).worker_id == successor
    # The ghost wakes up and tries every write it could make for attempt 1: none lands.
    params = {"id": job.id, "attempt": 1, "worker_id": ghost, "kind": "error", "error_type": "X",
              "message": "late", "traceback": None, "delay": 0}
    assert db.execute(q("job_complete_many"), {"ids": [job.id], "attempts": [1], "results": ['"ghost"'],
                                               "worker_id": ghost}).fetchall() == []
    assert db.execute(q("job_retry"), params).fetchall() == []
    assert db.execute(q("job_dead"), params).fetchall() == []
    assert db.execute(q("job_release"), {"worker_id": ghost, "ids": [job.id]}).fetchall() == []
    running = app.job(job.id)
    assert (running.state, running.attempt, running.worker_id) == (JobState.RUNNING, 2, successor)
    # Even with the right attempt number, another worker's id does not pass the fence.
    assert db.execute(q("job_complete_many"), {"ids": [job.id], "attempts": [2], "results": ['"x"'],
                                               "worker_id": ghost}).fetchall() == []
    assert db.execute(q("job_complete_many"), {"ids": [job.id], "attempts": [2], "results": ['"ok"'],
                                               "worker_id": successor}).fetchall() == [(job.id,)]
    assert app.job(job.id).result == "ok"


def test_heartbeats_keep_long_jobs(app: App) -> None:
    @app.task()
    def long() -> str:
        time.sleep(2.5)
        return "done"

    job = long.enqueue()
    with running_worker(app, lease=0.9, heartbeat=0.2, reap_interval=0.1, **FAST):
        wait_for(lambda: state_of(app, job.id) is JobState.SUCCEEDED, timeout=10)
    assert app.job(job.id).attempt == 1 and app.job(job.id).errors == ()


def test_lease_out_of_attempts_goes_dead(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task(max_attempts=1)
    def once() -> None: ...

    job = once.enqueue()
    db.execute(q("job_claim_any"), {"limit": 1, "worker_id": uuid.uuid4(), "lease": 0.1})
    with running_worker(app, reap_interval=0.1, **FAST):
        wait_for(lambda: state_of(app, job.id) is JobState.DEAD, timeout=5)
    assert app.job(job.id).errors[0].error_type == "LeaseExpired"


def test_cancel_before_start(app: App) -> None:
    ran = threading.Event()

    @app.task()
    def never() -> None:
        ran.set()

    job = never.using(delay=0.5).enqueue()
    assert app.cancel(job.id) is True
    assert app.cancel(job.id) is False  # already finished
    with running_worker(app, **FAST):
        time.sleep(1.0)
    assert state_of(app, job.id) is JobState.CANCELLED and not ran.is_set()


def test_unknown_task_is_retried_then_dead(app: App) -> None:
    job = app.enqueue("not.registered.here", max_attempts=2)
    with running_worker(app, **FAST):
        wait_for(lambda: state_of(app, job.id) is JobState.DEAD, timeout=10)
    assert app.job(job.id).errors[0].error_type == "UnknownTask"


def test_monitoring_views(app: App, db: psycopg.Connection[Any]) -> None:
    gate = threading.Event()

    @app.task(queue="views")
    def blocked() -> None:
        gate.wait(10)

    @app.task(queue="views", max_attempts=1)
    def broken() -> None:
        raise ValueError("x")

    broken.enqueue()
    for _ in range(3):
        blocked.enqueue()
    blocked.using(delay=60).enqueue()
    with running_worker(app, concurrency=2, **FAST) as worker:
        wait_for(lambda: any(s.queue == "views" and s.running == 2 and s.dead == 1 for s in app.stats()))
        stats = next(s for s in app.stats() if s.queue == "views")
        assert (stats.scheduled, stats.queued, stats.running, stats.dead, stats.dead_last_minute) == (1, 1, 2, 1, 1)
        assert stats.oldest_queued_age is not None and stats.failed_last_minute == 1
        workers = app.workers()
        assert [w.id for w in workers] == [worker.id] and workers[0].running == 2
        gate.set()
    assert app.workers() == []  # a worker that stops cleanly deregisters


def test_prune_removes_old_finished_jobs_only(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def noop() -> None: ...

    jobs = noop.enqueue_many([[] for _ in range(4)])
    with running_worker(app, **FAST):
        wait_for(lambda: all(state_of(app, j.id) is JobState.SUCCEEDED for j in jobs))
    db.execute("UPDATE pgqueue.finished_jobs SET finished_at = now() - interval '10 days' WHERE id = ANY(%s)",
               ([j.id for j in jobs[:3]],))
    live = noop.enqueue()
    assert app.prune(timedelta(days=7)) == 3
    assert state_of(app, jobs[3].id) is JobState.SUCCEEDED and state_of(app, live.id) is JobState.QUEUED


def test_bulk_dead_letter_retry_of_10000(app: App, db: psycopg.Connection[Any]) -> None:
    db.execute("""
        INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt, max_attempts,
                                           scheduled_for, created_at, finished_at, error_type)
        SELECT nextval('pgqueue.job_id_seq'), 'bulk', 'bulk.task', '[]', '{}', 0, 'dead', 3, 3, now(), now(),
               now(), 'ValueError'
        FROM generate_series(1, 10000)""")
    started = time.monotonic()
    assert app.retry(queue="bulk") == 10_000
    elapsed = time.monotonic() - started
    assert app.retry(queue="bulk") == 0
    row = db.execute("SELECT count(*), min(max_attempts) FROM pgqueue.jobs WHERE state = 'queued'").fetchone()
    assert row == (10_000, 4)
    assert elapsed < 30  # one statement; generous so a slow machine cannot fail it


@pytest.mark.parametrize("concurrency", [1, 8])
def test_many_jobs_each_run_once_in_process(app: App, concurrency: int) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    @app.task()
    def count(n: int) -> None:
        with lock:
            seen.append(n)

    count.enqueue_many([[i] for i in range(500)])
    with running_worker(app, concurrency=concurrency, **FAST):
        wait_for(lambda: len(seen) >= 500, timeout=30)
        time.sleep(0.2)
    assert sorted(seen) == list(range(500))


def test_results_with_awkward_text_are_stored_exactly_in_batched_acknowledgements(app: App) -> None:
    """The completer writes results as an array literal it builds itself: quotes, backslashes, braces, commas,
    NUL escapes and non-ASCII must come back unchanged, and None stays None."""
    values: list[Any] = ['quote " back\\slash', "{braces},commas", "\\N", "NULL", "null", "日本\u2028", "\x00nul",
                         {"k": ['a"b', "c\\d", None]}, [], {}, None, 0, -1.5, True]

    @app.task()
    async def give(i: int) -> Any:
        return values[i]

    jobs = give.enqueue_many([[i] for i in range(len(values))])
    with running_worker(app, concurrency=len(values), **FAST):
        wait_for(lambda: all(app.job(j.id).state is JobState.SUCCEEDED for j in jobs))
    assert [app.job(j.id).result for j in jobs] == values


def test_prefetch_holds_jobs_without_running_more_than_the_concurrency(app: App) -> None:
    running, peak = 0, 0
    lock = threading.Lock()

    @app.task()
    async def step(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        await asyncio.sleep(0.02)
        with lock:
            running -= 1
        return i

    jobs = step.enqueue_many([[i] for i in range(40)])
    with running_worker(app, concurrency=2, prefetch=6, **FAST):
        wait_for(lambda: all(state_of(app, j.id) is JobState.SUCCEEDED for j in jobs))
    assert peak == 2
    assert [app.job(j.id).attempt for j in jobs] == [1] * 40


def test_a_prefetched_job_cancelled_while_held_never_runs(app: App, db: psycopg.Connection[Any]) -> None:
    started: list[int] = []
    gate = threading.Event()

    @app.task()
    def hold(i: int) -> None:
        started.append(i)
        gate.wait(10)

    jobs = hold.enqueue_many([[i] for i in range(3)])
    with running_worker(app, concurrency=1, prefetch=2, **FAST) as worker:
        # One runs; two are claimed and held (leased to this worker, running as far as the database knows).
        wait_for(lambda: db.execute("SELECT count(*) FROM pgqueue.jobs WHERE state = 'running'").fetchone() == (3,))
        assert started == [0]
        assert app.cancel(jobs[1].id)
        # The request reaches the worker by notification; only then is it sure to come before the job's turn.
        wait_for(lambda: worker._running[jobs[1].id].cancel_requested)
        gate.set()
        wait_for(lambda: state_of(app, jobs[2].id) is JobState.SUCCEEDED)
    assert started == [0, 2]
    assert [state_of(app, j.id) for j in jobs] == [JobState.SUCCEEDED, JobState.CANCELLED, JobState.SUCCEEDED]


def test_prefetched_jobs_go_back_at_once_when_the_worker_drains(app: App, db: psycopg.Connection[Any]) -> None:
    gate = threading.Event()

    @app.task()
    def hold(i: int) -> None:
        gate.wait(10)

    jobs = hold.enqueue_many([[i] for i in range(4)])
    with running_worker(app, concurrency=1, prefetch=3, drain_timeout=10, **FAST) as worker:
        wait_for(lambda: db.execute("SELECT count(*) FROM pgqueue.jobs WHERE state = 'running'").fetchone() == (4,))
        worker.stop()
        # The running job holds the drain open; the held ones are back in the queue meanwhile, attempt uncounted.
        wait_for(lambda: db.execute("SELECT count(*) FROM pgqueue.jobs WHERE state = 'queued' AND attempt = 0"
                                    ).fetchone() == (3,))
        assert state_of(app, jobs[0].id) is JobState.RUNNING
        gate.set()
        wait_for(lambda: state_of(app, jobs[0].id) is JobState.SUCCEEDED)  # leaving the block stops it again
    assert [state_of(app, j.id) for j in jobs] == [JobState.SUCCEEDED] + [JobState.QUEUED] * 3


def test_a_worker_stopped_as_a_renewal_arrives_still_leaves(app: App, db: psycopg.Connection[Any]) -> None:
    """Before Python 3.12, a cancel that meets a finished wait_for is swallowed: the heartbeat loop, stopped as a
    renewal's answer came in, looped on with its renewer, and the worker never left (its row kept coming back
    as "draining"). Renewals every millisecond make that meeting likely; it hung within 30 stops before."""
    for _ in range(150):
        with running_worker(app, lease=1.0, heartbeat=0.001, timeout=5):
            pass
    assert db.execute("SELECT count(*) FROM pgqueue.workers").fetchone() == (0,)


def _open_connections(db: psycopg.Connection[Any], application_name: str) -> int:
    row = db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                     (application_name,)).fetchone()
    return int(row[0]) if row else 0


def test_a_worker_that_fails_to_start_closes_what_it_opened(dsn: str, db: psycopg.Connection[Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """It registered (opening its heartbeat connection), then its start failed: nothing may stay open.
    The error is kept alive on purpose: a leaked connection referenced from its traceback stays open."""
    name = f"pgqueue-start-{uuid.uuid4().hex[:8]}"
    app = App(dsn=psycopg.conninfo.make_conninfo(dsn, application_name=name))
    try:
        def failing_sync() -> None:
            raise DatabaseUnavailable("injected: the schedules could not be written")

        monkeypatch.setattr(app, "sync_schedules", failing_sync)
        with pytest.raises(DatabaseUnavailable) as failure:
            asyncio.run(Worker(app, WorkerConfig(**FAST)).run())
        assert "injected" in str(failure.value)
        # A closed connection's backend leaves pg_stat_activity a moment after the client has gone (it exits on
        # its own time); a leaked one, held by the traceback kept above, never leaves.
        wait_for(lambda: _open_connections(db, name) == 0, timeout=5, message=f"the connections of {name} to close")
    finally:
        app.close()

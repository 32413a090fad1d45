"""Helpers for testing code that uses pgqueue, against a real database.

::

    from pgqueue import testing

    def test_signup_sends_welcome(app, conn):          # conn: a connection inside a transaction
        signup(conn, "a@b.c")                            # your code enqueues with conn=conn
        testing.assert_enqueued(app, send_welcome, kwargs={"to": "a@b.c"}, conn=conn)
        jobs = testing.run_jobs(app, conn=conn)          # runs them here, in this transaction
        assert jobs[0].state is JobState.SUCCEEDED
        conn.rollback()                                  # and nothing is left behind

``running_worker`` runs a real worker in a background thread for the length of a ``with`` block.
``run_jobs`` claims and runs queued jobs inline, through the same claim, execution and outcome code as a
worker, so retries, timeouts and dead letters behave as in production.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg

from pgqueue.app import App
from pgqueue.errors import PgQueueError, ValidationError
from pgqueue.executor import ClaimedJob, execute
from pgqueue.job import Job, JobState
from pgqueue.once.connections import GivenConnection
from pgqueue.task import Task
from pgqueue.worker import Worker, WorkerConfig

# The worker id under which inline runs claim jobs.
INLINE_WORKER = uuid.UUID("00000000-0000-0000-0000-000000007e57")


def _name(task: Task[Any, Any] | str | None) -> str | None:
    return task.name if isinstance(task, Task) else task


def enqueued(app: App, task: Task[Any, Any] | str | None = None, *, queue: str | None = None,
             conn: psycopg.Connection[Any] | None = None) -> list[Job]:
    """Jobs waiting to run (queued or scheduled), oldest first, optionally of one task or queue."""
    found = [job for state in (JobState.QUEUED, JobState.SCHEDULED)
             for job in app.jobs(task=_name(task), queue=queue, state=state, limit=10_000, conn=conn)]
    return sorted(found, key=lambda j: j.id)


def assert_enqueued(app: App, task: Task[Any, Any] | str, *, args: list[Any] | None = None,
                    kwargs: dict[str, Any] | None = None, count: int | None = None,
                    conn: psycopg.Connection[Any] | None = None) -> list[Job]:
    """Assert that jobs of ``task`` wait to run (with these arguments, this many); returns them."""
    jobs = [j for j in enqueued(app, task, conn=conn)
            if (args is None or j.args == args) and (kwargs is None or j.kwargs == kwargs)]
    wanted = f"{count} job(s)" if count is not None else "a job"
    detail = f" with args={args!r}" if args is not None else ""
    detail += f" kwargs={kwargs!r}" if kwargs is not None else ""
    if (count is None and not jobs) or (count is not None and len(jobs) != count):
        raise AssertionError(f"expected {wanted} of {_name(task)}{detail} to be enqueued, found {len(jobs)}")
    return jobs


def run_jobs(app: App, *, queue: str | None = None, conn: psycopg.Connection[Any] | None = None,
             limit: int = 1000) -> list[Job]:
    """Run queued jobs inline, one at a time, until none is left (or ``limit``); returns them as they ended.

    Scheduled jobs (delayed, or waiting out a retry) are left alone: a failing job is run once, and its retry
    stays scheduled. Handlers' own database writes go through their own connections, not ``conn``; the
    exception is transactional ``def`` handlers, whose ``ctx.conn`` is ``conn`` itself (a savepoint in it).
    """
    if limit < 1:
        raise ValidationError("limit must be at least 1")
    ran: list[Job] = []
    with ThreadPoolExecutor(max_workers=1) as threads:
        while len(ran) < limit:
            params = {"limit": 1, "worker_id": INLINE_WORKER, "lease": 3600.0}
            if queue is not None:
                params["queues"] = [queue]
            rows = app._fetch("job_claim_queues" if queue else "job_claim_any", params, conn)
            if not rows:
                break
            job = ClaimedJob(*rows[0][:8])  # job_claim_any adds its position
            source = GivenConnection(conn) if conn is not None else None
            execution = asyncio.run(execute(app, job, INLINE_WORKER, threads, connections=source))
            outcome = execution.outcome
            if execution.recorded is not None:
                pass  # a transactional handler's transaction recorded it already
            elif outcome.state == "succeeded":
                app._fetch("job_complete_many", {"ids": [job.id], "attempts": [job.attempt],
                                                 "results": [outcome.result], "worker_id": INLINE_WORKER}, conn)
            else:
                name, statement_params = outcome.statement(job, INLINE_WORKER)
                app._fetch(name, statement_params, conn)
            ran.append(app.job(job.id, conn=conn))
    return ran


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """End a loop as ``asyncio.run`` does: cancel the tasks left, let them finish (their ``finally`` blocks
    close connections), close async generators, then close it. A bare ``loop.close()`` would leave them to the
    garbage collector, which closes connections late and warns about each."""
    try:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


@contextmanager
def running_worker(app: App, *, timeout: float = 30.0, **config: Any) -> Iterator[Worker]:
    """A real worker on a background thread for the ``with`` block; stopped (drained) when it ends::

        with testing.running_worker(app, concurrency=4, lease=5):
            job = resize.enqueue(42)
            ...  # wait for the job's state to change

    Keyword arguments are WorkerConfig fields.
    """
    worker = Worker(app, WorkerConfig(**config))
    loop = asyncio.new_event_loop()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            loop.run_until_complete(worker.run())
        except BaseException as err:  # surfaced in the test's thread below
            failure.append(err)
            worker.ready.set()
        finally:
            _close_loop(loop)

    thread = threading.Thread(target=target, name="pgqueue-test-worker", daemon=True)
    thread.start()
    worker.ready.wait(timeout)
    if failure:
        raise failure[0]
    try:
        yield worker
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(worker.stop)
        thread.join(timeout)
        if failure:
            raise failure[0]
        if thread.is_alive():
            # Left running, it would keep heartbeating into the tests that follow and hold locks against them.
            raise PgQueueError(f"the worker did not stop within {timeout:g} s of the with block ending; still "
                               f"waiting in: {_where_stuck(loop)}")


def _where_stuck(loop: asyncio.AbstractEventLoop) -> str:
    """The unfinished tasks of a worker's loop and the line each waits at, for the error above."""
    where = []
    for task in asyncio.all_tasks(loop):
        awaiting: Any = task.get_coro()
        line = "?"
        while awaiting is not None and getattr(awaiting, "cr_frame", None) is not None:
            line = f"{awaiting.cr_code.co_name}:{awaiting.cr_frame.f_lineno}"
            awaiting = awaiting.cr_await  # follow the awaits down to the one waiting
        where.append(f"{task.get_name()} at {line}")
    return ", ".join(sorted(where)) or "no task (a handler thread?)"

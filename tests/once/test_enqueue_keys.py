"""Enqueue-time idempotency keys: any number of concurrent callers make one job and all get its id."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest

from pgqueue import App, JobState, ValidationError
from pgqueue.testing import running_worker
from tests.conftest import connect_when_free, wait_for

CALLERS = 64


def job_count(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT (SELECT count(*) FROM pgqueue.jobs) + (SELECT count(*) FROM pgqueue.finished_jobs)"
                     ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "caller-transaction"])
def test_64_concurrent_enqueuers_with_one_key_make_one_job(app: App, dsn: str, db: psycopg.Connection[Any],
                                                          in_transaction: bool) -> None:
    @app.task()
    def charge(order: int) -> None: ...

    # Every caller has its own connection, so the 64 really race in PostgreSQL, not in a pool queue.
    conns = [connect_when_free(dsn, not in_transaction) for _ in range(CALLERS)]
    barrier = threading.Barrier(CALLERS)
    ids: list[int] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def caller(conn: psycopg.Connection[Any]) -> None:
        try:
            barrier.wait(10)
            job = charge.using(conn=conn, idempotency_key="charge:order-123").enqueue(123)
            if in_transaction:
                conn.execute("SELECT pg_sleep(0.01)")  # hold the transaction a moment: the others must wait
                conn.commit()
            with lock:
                ids.append(job.id)
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=caller, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in conns:
        c.close()
    assert failures == []
    assert len(ids) == CALLERS and len(set(ids)) == 1
    assert job_count(db) == 1
    assert app.job(ids[0]).args == [123]
    row = db.execute("SELECT key, job_id FROM pgqueue.enqueue_keys").fetchall()
    assert row == [("charge:order-123", ids[0])]


def test_a_rolled_back_first_caller_leaves_the_key_to_the_next(app: App, dsn: str,
                                                               db: psycopg.Connection[Any]) -> None:
    @app.task()
    def work(n: int) -> None: ...

    with psycopg.connect(dsn) as conn:
        lost = work.using(conn=conn, idempotency_key="k").enqueue(1)
        conn.rollback()
    kept = work.using(idempotency_key="k").enqueue(2)
    again = work.using(idempotency_key="k").enqueue(3)
    assert kept.id != lost.id and again.id == kept.id and job_count(db) == 1
    assert again.args == [2] and again.state is JobState.QUEUED  # the existing job, read back


def test_the_key_outlives_the_job_until_it_expires(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def ping() -> str:
        return "pong"

    first = ping.using(idempotency_key="ping").enqueue()
    with running_worker(app, poll_interval=0.5):
        wait_for(lambda: app.job(first.id).state is JobState.SUCCEEDED)
    again = ping.using(idempotency_key="ping").enqueue()
    assert (again.id, again.state, again.result) == (first.id, JobState.SUCCEEDED, "pong")
    db.execute("UPDATE pgqueue.enqueue_keys SET expires_at = now()")
    fresh = ping.using(idempotency_key="ping").enqueue()
    assert fresh.id != first.id and fresh.state is JobState.QUEUED
    assert app.enqueue(ping.name, idempotency_key="ping").id == fresh.id  # by name too


def test_async_callers_share_the_job_too(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def work(n: int) -> None: ...

    async def main() -> list[int]:
        jobs = await asyncio.gather(*(work.using(idempotency_key="async-key").enqueue_async(i) for i in range(16)))
        await app.aclose()
        return [j.id for j in jobs]

    ids = asyncio.run(main())
    assert len(set(ids)) == 1 and job_count(db) == 1


def test_misuse_is_refused(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def one() -> None: ...

    @app.task()
    def other() -> None: ...

    one.using(idempotency_key="shared").enqueue()
    with pytest.raises(ValidationError, match=r"already belongs to job \d+ of task"):
        other.using(idempotency_key="shared").enqueue()
    with pytest.raises(ValidationError, match="idempotency_key"):
        one.using(idempotency_key="")
    with pytest.raises(ValidationError, match="callback_url"):
        one.using(callback_url="javascript:alert(1)")
    with pytest.raises(ValidationError, match="enqueue_many takes no idempotency_key"):
        one.enqueue_many([one.call(idempotency_key="x")])  # type: ignore[call-arg]
    assert job_count(db) == 1

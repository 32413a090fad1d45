"""Bulk enqueue through COPY: the same jobs, the same transaction rules and the same checks as one by one."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from pgqueue import App, JobState, ValidationError
from pgqueue.task import Call, EnqueueOptions
from tests.integration.test_enqueue import count_jobs


def test_bulk_jobs_read_back_as_returned(app: App) -> None:
    @app.task(queue="bulk", priority=3, max_attempts=4)
    def item(n: int, tag: str = "") -> None: ...

    jobs = item.enqueue_many([{"n": i, "tag": "é"} for i in range(2000)])
    assert [j.kwargs["n"] for j in jobs] == list(range(2000))
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    for job in (jobs[0], jobs[1234], jobs[-1]):
        read = app.job(job.id)
        assert (read.queue, read.task, read.args, read.kwargs, read.priority, read.max_attempts, read.state) == (
            job.queue, job.task, job.args, job.kwargs, job.priority, job.max_attempts, job.state)
        assert (read.scheduled_for, read.created_at) == (job.scheduled_for, job.created_at)
    assert jobs[0].state is JobState.QUEUED and (jobs[0].queue, jobs[0].priority) == ("bulk", 3)


def test_bulk_enqueue_in_the_callers_transaction_is_rolled_back_with_it(app: App, dsn: str,
                                                                         db: psycopg.Connection[Any]) -> None:
    @app.task()
    def item(n: int) -> None: ...

    with psycopg.connect(dsn) as conn:  # not autocommit: the jobs exist only if this transaction commits
        item.enqueue_many([item.call(i) for i in range(500)], conn=conn)
        assert count_jobs(db) == 0
        conn.rollback()
    assert count_jobs(db) == 0
    with psycopg.connect(dsn) as conn:
        item.enqueue_many([item.call(i) for i in range(500)], conn=conn)
        conn.commit()
    assert count_jobs(db) == 500


def test_bulk_with_run_at_is_scheduled_by_the_database_clock(app: App) -> None:
    @app.task()
    def item(n: int) -> None: ...

    later = datetime.now(timezone.utc) + timedelta(hours=1)
    jobs = item.enqueue_many([item.call(1), Call((2,), {}, EnqueueOptions(run_at=later))])
    assert [j.state for j in jobs] == [JobState.QUEUED, JobState.SCHEDULED]


def test_remembered_argument_shapes_still_refuse_other_shapes(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def item(n: int) -> None: ...

    item.enqueue_many([{"n": 1}, {"n": 2}])
    with pytest.raises(ValidationError, match="bad arguments"):
        item.enqueue_many([{"n": 3}, {"m": 4}])
    with pytest.raises(ValidationError, match="bad arguments"):
        item.enqueue_many([[1], [1, 2]])
    assert count_jobs(db) == 2

"""Enqueueing: in the caller's transaction, in bulk, through SQL, and refusing bad input whole."""

from __future__ import annotations

import json
import select
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from pgqueue import App, JobState, PayloadTooLarge, UnknownTask, ValidationError
from pgqueue.task import Call, EnqueueOptions


def count_jobs(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT (SELECT count(*) FROM pgqueue.jobs) + (SELECT count(*) FROM pgqueue.finished_jobs)"
                     ).fetchone()
    assert row is not None
    return int(row[0])


def heard(listener: psycopg.Connection[Any], wait: float = 1.0, then: float = 0.3) -> list[str]:
    """The payloads of the notifications ``listener`` receives: waits up to ``wait`` s for the first, then
    takes what else arrives within ``then`` s."""
    select.select([listener.fileno()], [], [], wait)
    return sorted(n.payload for n in listener.notifies(timeout=then))


def test_enqueue_returns_the_job_and_it_reads_back(app: App) -> None:
    @app.task(queue="emails", priority=2, max_attempts=5)
    def send_email(to: str, subject: str) -> None: ...

    job = send_email.enqueue("a@b.c", subject="hi")
    assert (job.queue, job.priority, job.max_attempts, job.state) == ("emails", 2, 5, JobState.QUEUED)
    read = app.job(job.id)
    assert read.args == ["a@b.c"] and read.kwargs == {"subject": "hi"}
    assert read.state is JobState.QUEUED and read.attempt == 0


def test_arguments_round_trip_exactly(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def echo(value: Any) -> None: ...

    value = {"z": 1, "a": [1.1, 2**70, -0.0, None, True], "s": "NUL\x00 日本 \u2028 \U0001f600", "e": {}}
    job = echo.enqueue(value)
    assert app.job(job.id).args == [value]
    stored = db.execute("SELECT args::text FROM pgqueue.jobs WHERE id = %s", (job.id,)).fetchone()
    assert stored is not None and stored[0] == json.dumps([value], ensure_ascii=False,
                                                          separators=(",", ":"))  # key order kept too


def test_rollback_leaves_no_job_and_commit_makes_it_visible(app: App, dsn: str,
                                                           db: psycopg.Connection[Any]) -> None:
    @app.task()
    def work(n: int) -> None: ...

    with psycopg.connect(dsn) as conn:
        work.enqueue(1, conn=conn)
        assert count_jobs(db) == 0  # not visible before commit
        conn.rollback()
    assert count_jobs(db) == 0
    with psycopg.connect(dsn) as conn:
        job = work.using(conn=conn, queue="other").enqueue(2)
        conn.commit()
    assert app.job(job.id).queue == "other" and count_jobs(db) == 1


def test_enqueue_many_is_one_statement_with_one_notification_per_queue(app: App, dsn: str) -> None:
    @app.task(queue="bulk")
    def item(n: int) -> None: ...

    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_jobs")
        calls = [item.call(i) for i in range(500)]
        calls += [Call((i,), {}, EnqueueOptions(queue="bulk2")) for i in range(500, 1000)]
        jobs = item.enqueue_many(calls)
        assert [j.args for j in jobs] == [[i] for i in range(1000)]
        assert [j.id for j in jobs] == sorted(j.id for j in jobs)  # ids map back to the input order
        assert [app.job(j.id).args for j in jobs[::100]] == [[i] for i in range(0, 1000, 100)]
        payloads = heard(listener, wait=2, then=0.5)
    assert payloads == ["bulk", "bulk2"]


def test_wake_ups_one_per_queue_per_transaction_and_none_when_turned_off(app: App, dsn: str) -> None:
    """A 5,000-row insert into two queues wakes each queue once; `SET pgqueue.notify = off` sends nothing from
    that session (a bulk load leaves the jobs to the workers' next look); a single SQL enqueue notifies."""
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_jobs")
        bulk = ("INSERT INTO pgqueue.jobs (queue, task, args, kwargs) SELECT CASE WHEN i <= 2500 THEN 'one' "
                "ELSE 'two' END, 't', '[]', '{}' FROM generate_series(1, 5000) AS i")
        conn.execute(bulk)
        assert heard(listener) == ["one", "two"]
        conn.execute("SET pgqueue.notify = off")
        conn.execute(bulk)
        conn.execute("SELECT pgqueue.enqueue('t', queue => 'three')")
        assert heard(listener) == []
        conn.execute("RESET pgqueue.notify")
        conn.execute("SELECT pgqueue.enqueue('t', queue => 'three')")
        assert heard(listener) == ["three"]


def test_an_open_enqueue_holds_its_queues_wake_up_until_it_commits(app: App, dsn: str) -> None:
    """Of the enqueues into one queue in one 100 ms slot, the one whose transaction is open holds the wake-up:
    another commits without notifying (the holder's commit wakes the workers), while an enqueue into another
    queue, or of a job due later, is not held back or sent."""
    slot = "floor(date_part('epoch', now()) * 10)"
    with psycopg.connect(dsn, autocommit=True) as listener, psycopg.connect(dsn, autocommit=True) as other:
        listener.execute("LISTEN pgqueue_jobs")
        for _ in range(50):  # until both transactions start in one slot (almost always the first time)
            with psycopg.connect(dsn) as holder:
                held = holder.execute(f"SELECT {slot} FROM (SELECT pgqueue.enqueue('t', queue => 'held')) AS e")
                with other.transaction():
                    same = other.execute(f"SELECT {slot} FROM (SELECT pgqueue.enqueue('t', queue => 'held')) AS e")
                    same_slot = same.fetchone() == held.fetchone()
                if not same_slot:
                    holder.rollback()
                    heard(listener)
                    continue
                assert heard(listener) == []
                other.execute("SELECT pgqueue.enqueue('t', queue => 'free')")
                other.execute("SELECT pgqueue.enqueue('t', queue => 'later', run_at => now() + interval '1 hour')")
                assert heard(listener) == ["free"]
                holder.commit()
                assert heard(listener) == ["held"]
                break
        else:
            pytest.fail("no two transactions started in one 100 ms slot in 50 tries")


def test_delayed_and_future_jobs_are_scheduled(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def later() -> None: ...

    delayed = later.using(delay=60).enqueue()
    at = later.using(run_at=datetime.now(timezone.utc) + timedelta(hours=1)).enqueue()
    past = later.using(run_at=datetime.now(timezone.utc) - timedelta(hours=1)).enqueue()
    assert delayed.state is JobState.SCHEDULED and at.state is JobState.SCHEDULED
    assert past.state is JobState.QUEUED
    row = db.execute("SELECT scheduled_for - created_at FROM pgqueue.jobs WHERE id = %s", (delayed.id,)).fetchone()
    assert row is not None and timedelta(seconds=59) < row[0] <= timedelta(seconds=61)



def test_enqueue_async_and_in_caller_async_transaction(app: App, dsn: str, db: psycopg.Connection[Any]) -> None:
    import asyncio

    @app.task()
    async def ping(n: int) -> int:
        return n

    async def main() -> None:
        job = await ping.enqueue_async(1)
        assert job.state is JobState.QUEUED
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await ping.enqueue_async(2, conn=conn)
            await conn.rollback()
        await app.aclose()

    asyncio.run(main())
    assert count_jobs(db) == 1


@pytest.mark.parametrize("bad", [
    {"priority": -1}, {"priority": 40000}, {"queue": "';--"}, {"queue": ""}, {"max_attempts": 0},
    {"delay": -5}, {"run_at": datetime(2030, 1, 1)},
])
def test_bad_options_are_refused_and_nothing_is_written(app: App, db: psycopg.Connection[Any],
                                                        bad: dict[str, Any]) -> None:
    @app.task()
    def job(n: int) -> None: ...

    with pytest.raises(ValidationError):
        job.enqueue(1, **bad)
    with pytest.raises(ValidationError):
        job.enqueue_many([job.call(1), job.call(2, **bad)])  # one bad item: none of the batch is written
    assert count_jobs(db) == 0


def test_bad_arguments_payloads_and_names_are_refused(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def job(n: int) -> None: ...

    with pytest.raises(ValidationError, match="bad arguments"):
        job.enqueue(1, 2)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="JSON"):
        job.enqueue(float("nan"))  # type: ignore[arg-type]
    small = App(dsn=app.dsn, max_payload_bytes=1000)
    big = small.task(name="big")(lambda blob: None)
    with pytest.raises(PayloadTooLarge, match="over the limit"):
        big.enqueue("x" * 2000)
    with pytest.raises(UnknownTask, match="unknown task 'nope'"):
        app.enqueue("nope")
    small.close()
    assert count_jobs(db) == 0


def test_by_name_enqueue_for_producers_without_handlers(dsn: str, app: App) -> None:
    producer = App(dsn=dsn)  # registers nothing: any well-formed name goes
    job = producer.enqueue("billing.charge", kwargs={"order": 42}, queue="billing", priority=5)
    assert app.job(job.id).kwargs == {"order": 42}
    with pytest.raises(ValidationError, match="invalid task name"):
        producer.enqueue("drop table;--")
    producer.close()


def test_sql_api_enqueue(app: App, db: psycopg.Connection[Any]) -> None:
    row = db.execute("""SELECT pgqueue.enqueue('send_email', '{"to": "a@b.c"}', queue => 'emails',
                        priority => 3)""").fetchone()
    assert row is not None
    job = app.job(row[0])
    assert (job.task, job.kwargs, job.queue, job.priority, job.state) == (
        "send_email", {"to": "a@b.c"}, "emails", 3, JobState.QUEUED)
    row = db.execute("SELECT pgqueue.enqueue('resize', '[42, \"big\"]', run_at => now() + interval '1 hour')"
                     ).fetchone()
    assert row is not None and app.job(row[0]).args == [42, "big"] and app.job(row[0]).state is JobState.SCHEDULED


@pytest.mark.parametrize(("call", "message"), [
    ("SELECT pgqueue.enqueue('t', '{}', queue => $$';--$$)", "invalid queue name"),
    ("SELECT pgqueue.enqueue($$a'; DROP TABLE x;--$$)", "invalid task name"),
    ("SELECT pgqueue.enqueue('t', '{}', priority => -1)", "priority must be between"),
    ("SELECT pgqueue.enqueue('t', '\"text\"')", "JSON object"),
    ("SELECT pgqueue.enqueue('t', '{}', max_attempts => 0)", "max_attempts"),
])
def test_sql_api_refuses_bad_input(db: psycopg.Connection[Any], app: App, call: str, message: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        db.execute(call)
    assert count_jobs(db) == 0


def test_sql_api_payload_limit(db: psycopg.Connection[Any], app: App) -> None:
    with db.transaction():
        db.execute("SET LOCAL pgqueue.max_payload_bytes = 100")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="over the limit of 100 bytes"), \
                db.transaction():
            db.execute("SELECT pgqueue.enqueue('t', json_build_object('x', repeat('a', 200)))")
    assert count_jobs(db) == 0


def test_a_one_thread_producer_keeps_to_one_server_connection(app: App) -> None:
    # The pool hands out its connections in turn. Had its first request found it empty, it would have grown
    # to two, and each enqueue would go to the other server process (colder, about 5% fewer jobs per second).
    @app.task
    def noop() -> None: ...

    noop.enqueue()  # the pool's first request
    pids = set()
    for _ in range(6):
        with app.connection() as conn:
            pids.add(conn.info.backend_pid)
    assert len(pids) == 1

"""Bulk enqueue through COPY: exact payloads, the caller's transaction, ids in input order, the name checks."""

from __future__ import annotations

import gc
import inspect
import itertools
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from pgqueue import App, JobState, ValidationError
from pgqueue.bulk import _CHUNK
from pgqueue.task import Call, EnqueueOptions, _Shape

# Text that means something to COPY's text format, or to JSON, or to both.
AWKWARD = ["back\\slash", "tab\there", "new\nline", "cr\rhere", "\\N", "\\.", "NUL\x00", "日本 \u2028 \U0001f600",
           'quote " and \'', "end\\"]


def test_bulk_payloads_round_trip_byte_identical(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def echo(value: Any, tag: str = "") -> None: ...

    calls = [echo.call(value, tag=value) for value in AWKWARD] + [echo.call({"k": AWKWARD}, tag="nested")]
    single = [echo.enqueue(value, tag=value) for value in AWKWARD]
    jobs = echo.enqueue_many(calls)
    for bulk, one in zip(jobs, single, strict=False):
        texts = db.execute("SELECT args::text, kwargs::text FROM pgqueue.jobs WHERE id = ANY(%s) ORDER BY id",
                           ([one.id, bulk.id],)).fetchall()
        assert texts[0] == texts[1]  # the COPY path stores exactly what the INSERT path stores
    assert [app.job(j.id).args for j in jobs] == [[c.args[0]] for c in calls]
    assert [app.job(j.id).kwargs for j in jobs] == [c.kwargs for c in calls]


def test_bulk_group_keys_and_options_survive_copy(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task(queue="q1", priority=3, max_attempts=4)
    def work(n: int) -> None: ...

    calls = [Call((i,), {}, EnqueueOptions(group=AWKWARD[i % len(AWKWARD)].replace("\x00", "0"), priority=i % 5))
             for i in range(40)]
    jobs = work.enqueue_many(calls)
    rows = db.execute("SELECT id, group_key, priority, max_attempts, queue, state, created_at = scheduled_for "
                      "FROM pgqueue.jobs ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [j.id for j in jobs]  # ids in input order
    assert [r[1] for r in rows] == [c.options.group for c in calls]
    assert [r[2] for r in rows] == [i % 5 for i in range(40)]
    assert {(r[3], r[4], r[5], r[6]) for r in rows} == {(4, "q1", "queued", True)}
    read = app.job(jobs[7].id)
    assert (read.created_at, read.scheduled_for) == (jobs[7].created_at, jobs[7].scheduled_for)


def test_bulk_across_chunks_returns_each_job_as_written(app: App, db: psycopg.Connection[Any]) -> None:
    """Rows go in chunks and each chunk's Jobs are built while the server inserts it: across chunk edges
    the returned jobs still match the stored rows one for one."""
    @app.task(queue="chunked")
    def work(n: int, tag: str = "") -> None: ...

    n = 2 * _CHUNK + 7
    jobs = work.enqueue_many([work.call(i, tag=f"t{i}") for i in range(n)])
    rows = db.execute("SELECT id, args->>0, kwargs->>'tag', created_at FROM pgqueue.jobs ORDER BY id").fetchall()
    assert [(j.id, str(j.args[0]), j.kwargs["tag"], j.created_at) for j in jobs] == \
        [(r[0], r[1], r[2], r[3]) for r in rows]
    assert [j.args[0] for j in jobs] == list(range(n))


def test_bulk_pauses_the_garbage_collector_and_restores_it(app: App) -> None:
    """20,000 jobs make 80,000 tracked objects: without the pause, over a hundred collections would walk
    them. The collector is on again afterwards, and an application that turned it off keeps it off."""
    @app.task()
    def work(n: int) -> None: ...

    calls = [[i] for i in range(20_000)]  # made before counting: these lists alone start collections
    collections: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        work.enqueue_many(calls)
        assert len(collections) <= 1 and gc.isenabled()  # at most the one due once it is back on (200 before)
        gc.disable()
        try:
            work.enqueue_many([[i] for i in range(10)])
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        gc.callbacks.remove(seen)


def test_bulk_in_the_callers_transaction(app: App, dsn: str, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def work(n: int) -> None: ...

    with psycopg.connect(dsn) as conn:
        work.enqueue_many([[i] for i in range(100)], conn=conn)
        conn.rollback()
    assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")  # a transaction already open: the COPY joins it
        jobs = work.enqueue_many([[i] for i in range(100)], conn=conn)
        assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)
        conn.commit()
    assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (100,)
    assert app.job(jobs[-1].id).args == [99]


def test_bulk_with_a_bad_item_writes_nothing(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def work(n: int) -> None: ...

    with pytest.raises(ValidationError, match="bad arguments for task"):
        work.enqueue_many([[1], [2], {"m": 3}])
    with pytest.raises(ValidationError, match="unique_key and depends_on need enqueue"):
        work.enqueue_many([work.call(1), Call((2,), {}, EnqueueOptions(unique_key="k"))])
    assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)


def test_bulk_with_run_at_or_delay_schedules_the_future_ones(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def work(n: int) -> None: ...

    later = datetime.now(timezone.utc) + timedelta(hours=1)
    jobs = work.enqueue_many([work.call(1), Call((2,), {}, EnqueueOptions(run_at=later)),
                              Call((3,), {}, EnqueueOptions(delay=90)), Call((4,), {}, EnqueueOptions(delay=0))])
    assert [j.state for j in jobs] == [JobState.QUEUED, JobState.SCHEDULED, JobState.SCHEDULED, JobState.QUEUED]
    assert app.job(jobs[1].id).scheduled_for == later
    row = db.execute("SELECT scheduled_for - created_at FROM pgqueue.jobs WHERE id = %s", (jobs[2].id,)).fetchone()
    assert row == (timedelta(seconds=90),)  # counted on the database clock from the insert


def _bind_accepts(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def test_the_quick_argument_check_agrees_with_signature_bind() -> None:
    def f(a: int, b: int = 1, *, c: int, d: int = 2) -> None: ...

    def g(x: int, y: int) -> None: ...

    names = ["a", "b", "c", "d", "x", "y", "z"]
    for fn in (f, g):
        signature = inspect.signature(fn)
        shape = _Shape.of(signature)
        assert shape is not None
        for n_args in range(4):
            for keys in itertools.chain.from_iterable(itertools.combinations(names, k) for k in range(4)):
                args, kwargs = tuple(range(n_args)), dict.fromkeys(keys, 0)
                # It may pass a call to bind for the verdict, never accept one that bind refuses.
                if shape.accepts(args, kwargs):
                    assert _bind_accepts(signature, args, kwargs), (fn.__name__, args, kwargs)
                else:
                    assert not _bind_accepts(signature, args, kwargs), (fn.__name__, args, kwargs)

    def h(a: int, /, *rest: int) -> None: ...

    assert _Shape.of(inspect.signature(h)) is None  # left to bind


def test_name_checks_accept_exactly_what_the_old_ones_did(db: psycopg.Connection[Any]) -> None:
    """Migration 7 replaced bounded regex repeats with a length test; the same names pass and fail."""
    names = ["", "a", "default", "a" * 100, "a" * 101, "a" * 200, "a" * 201, "_x", "9x", ".x", "x.y:z-1", "x y",
             "x;--", "x'", "%s", "$1", "日本", "x\n", "\tx"]
    old_queue, old_task = r"^[A-Za-z0-9_.:-]{1,100}$", r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$"
    for name in names:
        row = db.execute(
            "SELECT %(n)s ~ %(oq)s, %(n)s ~ '^[A-Za-z0-9_.:-]+$' AND length(%(n)s) <= 100,"
            "       %(n)s ~ %(ot)s, %(n)s ~ '^[A-Za-z_][A-Za-z0-9_.:-]*$' AND length(%(n)s) <= 200",
            {"n": name, "oq": old_queue, "ot": old_task}).fetchone()
        assert row is not None and row[0] == row[1] and row[2] == row[3], name
    definitions = dict(db.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'pgqueue.jobs'::regclass AND conname IN ('jobs_queue_check', 'jobs_task_check')"
    ).fetchall())
    assert "length(queue) <= 100" in definitions["jobs_queue_check"]
    assert "length(task) <= 200" in definitions["jobs_task_check"]

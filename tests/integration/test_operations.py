"""Operations: the listener survives a killed connection, stale workers are forgotten, retention prunes,
and pgqueue.testing works inside a rolled-back transaction."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgqueue import App, JobState, testing
from pgqueue.connection import DedicatedConnection
from pgqueue.maintenance import Maintenance, MaintenanceConfig
from pgqueue.queries import q
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


def _sweep(dsn: str, name: str, **config: Any) -> Any:
    """Run one maintenance sweep (``Maintenance.<name>``) on a connection of its own; what it returns."""
    async def sweep() -> Any:
        maintenance, conn = _maintenance(dsn, **config)
        try:
            return await getattr(maintenance, name)()
        finally:
            await conn.close()

    return asyncio.run(sweep())


def test_stale_workers_are_forgotten(app: App, db: psycopg.Connection[Any]) -> None:
    db.execute("""INSERT INTO pgqueue.workers (id, host, pid, concurrency, last_heartbeat_at) VALUES
                  (gen_random_uuid(), 'gone', 1, 1, now() - interval '1 hour'),
                  (gen_random_uuid(), 'alive', 2, 1, now())""")

    _sweep(app.dsn, "forget_stale_workers", stale_worker_after=600)
    assert [w.host for w in app.workers()] == ["alive"]


def test_retention_prunes_by_state_and_age(app: App, db: psycopg.Connection[Any]) -> None:
    db.execute("""INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt,
                  max_attempts, scheduled_for, created_at, finished_at)
                  SELECT nextval('pgqueue.job_id_seq'), 'r', 't', '[]', '{}', 0, s, 1, 1, now(), now(),
                         now() - age
                  FROM unnest(ARRAY['succeeded', 'cancelled', 'dead', 'succeeded', 'dead']::text[],
                              ARRAY['2 days', '2 days', '2 days', '1 minute', '40 days']::interval[]) AS u(s, age)""")

    assert _sweep(app.dsn, "prune", retention=timedelta(days=1), dead_retention=None) == 2
    assert _sweep(app.dsn, "prune", retention=timedelta(days=1), dead_retention=timedelta(days=30)) == 1
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


def _vacuums(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'pgqueue.jobs'::regclass").fetchone()
    return int(row[0]) if row else 0


def _dead(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT pg_stat_get_dead_tuples('pgqueue.jobs'::regclass)").fetchone()
    return int(row[0]) if row else 0


def _claim_scan_buffers(db: psycopg.Connection[Any]) -> int:
    """Buffers the claim's index scan reads to find that no job is queued. The claim index is what a claim reads
    (an empty table's statistics may make the planner pick a sequential scan of it for this bare query)."""
    with db.transaction():
        db.execute("SET LOCAL enable_seqscan = off")
        db.execute("SET LOCAL enable_bitmapscan = off")
        row = db.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id FROM pgqueue.jobs WHERE state = 'queued' "
                         "ORDER BY priority DESC, scheduled_for, id LIMIT 100").fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    return int(plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0))


def _leave_dead_rows(db: psycopg.Connection[Any], n: int) -> None:
    """n dead row versions in pgqueue.jobs, reported to the statistics the vacuum check reads."""
    db.execute("INSERT INTO pgqueue.jobs (task) SELECT 'gone' FROM generate_series(1, %s)", (n,))
    db.execute("DELETE FROM pgqueue.jobs WHERE task = 'gone'")
    db.execute("SELECT pg_stat_force_next_flush()")
    db.execute("SELECT 1")
    wait_for(lambda: _dead(db) >= n, message="the dead rows to reach the statistics")


def test_a_worker_vacuums_the_live_table_once_claims_leave_enough_dead_rows(app: App,
                                                                             db: psycopg.Connection[Any]) -> None:
    @app.task
    def noop(i: int) -> None:
        pass

    before = _vacuums(db)
    noop.enqueue_many([[i] for i in range(3000)])
    with testing.running_worker(app, concurrency=20, vacuum_after=1000) as worker:
        wait_for(lambda: not db.execute("SELECT 1 FROM pgqueue.jobs LIMIT 1").fetchone(), message="the drain")
        wait_for(lambda: worker.maintenance.vacuums >= 1, message="the worker's vacuum")
    assert _vacuums(db) > before


def test_the_vacuum_waits_for_its_threshold_and_skips_rows_it_cannot_remove(app: App, dsn: str,
                                                                            db: psycopg.Connection[Any]) -> None:
    _leave_dead_rows(db, 2000)
    before = _vacuums(db)
    assert not _sweep(app.dsn, "vacuum", vacuum_after=0)  # off
    assert not _sweep(app.dsn, "vacuum", vacuum_after=5000)  # below the threshold
    assert _vacuums(db) == before
    # What the vacuum is for: the dead jobs' entries at the head of the claim index, read by every claim.
    assert _claim_scan_buffers(db) >= 8
    assert _sweep(app.dsn, "vacuum", vacuum_after=1000)
    assert _vacuums(db) == before + 1
    assert _claim_scan_buffers(db) <= 2

    # An open snapshot keeps rows that die after it from being removed. One vacuum finds that out; neither
    # its worker's next check nor another worker's (which sees that someone vacuumed) starts another while no
    # new rows have died.
    async def stuck() -> list[bool]:
        (one, one_conn), (other, other_conn) = (_maintenance(app.dsn, vacuum_after=1000) for _ in range(2))
        try:
            looked = await other.vacuum()  # nothing dead yet; it has now seen the last vacuum's time
            with psycopg.connect(dsn) as old:
                old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                old.execute("SELECT count(*) FROM pgqueue.jobs")
                _leave_dead_rows(db, 2000)
                return [looked, await one.vacuum(), await one.vacuum(), await other.vacuum()]
        finally:
            await one_conn.close()
            await other_conn.close()

    assert asyncio.run(stuck()) == [False, True, False, False]
    assert _dead(db) >= 2000
    assert _vacuums(db) == before + 2


def test_a_vacuum_skipped_for_a_lock_is_not_counted_and_not_retried_at_once(app: App, dsn: str,
                                                                            db: psycopg.Connection[Any]) -> None:
    async def attempts() -> list[tuple[bool, int]]:
        maintenance, conn = _maintenance(app.dsn, vacuum_after=1000)
        try:
            await maintenance.vacuum()  # the first look only notes the last vacuum's time
            _leave_dead_rows(db, 2000)
            seen = []
            # What autovacuum or CREATE INDEX CONCURRENTLY would hold: VACUUM (SKIP_LOCKED) passes the table by.
            with psycopg.connect(dsn) as holder:
                holder.execute("LOCK TABLE pgqueue.jobs IN SHARE UPDATE EXCLUSIVE MODE")
                seen.append((await maintenance.vacuum(), maintenance.vacuums))
                seen.append((await maintenance.vacuum(), maintenance.vacuums))
            _leave_dead_rows(db, 2000)
            seen.append((await maintenance.vacuum(), maintenance.vacuums))
            return seen
        finally:
            await conn.close()

    before = _vacuums(db)
    assert asyncio.run(attempts()) == [(False, 0), (False, 0), (True, 1)]
    assert _vacuums(db) == before + 1


def test_a_login_that_may_not_vacuum_the_live_table_leaves_it_to_autovacuum(app: App,
                                                                            db: psycopg.Connection[Any]) -> None:
    role = f"pgq_novacuum_{uuid.uuid4().hex[:12]}"
    db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    try:
        db.execute(sql.SQL("GRANT USAGE ON SCHEMA pgqueue TO {}").format(sql.Identifier(role)))
        _leave_dead_rows(db, 2000)
        before = _vacuums(db)

        # The server's superuser connects and becomes the role, as a login granted only that role would be.
        # Without the check it would "vacuum": PostgreSQL only warns that it skipped the table.
        assert not _sweep(make_conninfo(app.dsn, options=f"-c role={role}"), "vacuum", vacuum_after=1000)
        assert _vacuums(db) == before
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _rows_examined(plan: Any, table: str) -> int:
    """Rows the scans of ``table`` in an EXPLAIN ANALYZE JSON plan read: kept plus filtered out, every loop."""
    if isinstance(plan, list):
        return sum(_rows_examined(p, table) for p in plan)
    if not isinstance(plan, dict):
        return 0
    own = 0
    if plan.get("Relation Name") == table and "Scan" in str(plan.get("Node Type")):
        own = (int(plan.get("Actual Rows", 0)) + int(plan.get("Rows Removed by Filter", 0))) \
            * int(plan.get("Actual Loops", 1))
    return own + sum(_rows_examined(v, table) for v in plan.values() if isinstance(v, (list, dict)))


def test_writes_fenced_by_job_id_read_those_jobs_only_whatever_else_runs(app: App,
                                                                         db: psycopg.Connection[Any]) -> None:
    # Statistics gathered while nothing ran (an idle queue, a bulk load) say no job runs. Then another worker
    # takes 2,000 of 20,000 queued jobs. Each write one worker makes by job id must still find its jobs by
    # primary key, never read its way through every running job (what the planner chose, left to itself).
    db.execute("INSERT INTO pgqueue.jobs (task) SELECT 'work' FROM generate_series(1, 20000)")
    db.execute("ANALYZE pgqueue.jobs")
    other, mine = uuid.uuid4(), uuid.uuid4()
    claim = {"limit": 100, "lease": 600.0}
    for _ in range(20):
        assert len(db.execute(q("job_claim_any"), {**claim, "worker_id": other}).fetchall()) == 100
    held = db.execute(q("job_claim_any"), {**claim, "worker_id": mine}).fetchall()
    ids, first = [r[0] for r in held], {"id": held[0][0], "attempt": held[0][6], "worker_id": mine}
    failure = {**first, "kind": "error", "error_type": "E", "message": "m", "traceback": None, "delay": 5.0}
    batch = {
        "job_complete_many": {"ids": ids, "attempts": [r[6] for r in held], "results": ["null"] * len(ids),
                              "worker_id": mine},
        "job_heartbeat": {"ids": ids, "worker_id": mine, "lease": 30.0, "progress_ids": [], "progress": [],
                          "progress_messages": [], "jobs_done": 0, "jobs_failed": 0, "state": "running"},
        "job_progress_update": {"progress_ids": ids, "progress": [0.5] * len(ids),
                                "progress_messages": ["half"] * len(ids), "worker_id": mine},
        "job_release": {"ids": ids, "worker_id": mine},
    }
    single = {"job_retry": failure, "job_dead": failure, "job_cancelled": first,
              "job_cancel_running": {"id": first["id"]}}
    examined = {}
    for name, params in {**batch, **single}.items():
        with db.transaction(force_rollback=True):
            row = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + q(name), params).fetchone()
        assert row is not None
        examined[name] = _rows_examined(row[0], "jobs")
    # A probe per id finds the job's versions (its claim left one behind): at most two rows per id named, for
    # each time the statement reads the jobs by id. The heartbeat reads them three times (what it holds, what
    # is free to lock, the renewal) and the progress flush twice (what is free to lock, the write): both skip
    # rows locked by a completion rather than wait and deadlock with it.
    reads = {"job_heartbeat": 3, "job_progress_update": 2}
    bound = {**{name: 2 * len(ids) * reads.get(name, 1) for name in batch}, **{name: 2 for name in single}}
    assert {name: min(n, bound[name]) for name, n in examined.items()} == examined, (examined, bound)

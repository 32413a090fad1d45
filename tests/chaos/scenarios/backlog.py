"""Scenario 10: a deep backlog (queued and finished rows by the million) costs the claim nothing it can feel.

Rows are bulk-loaded in SQL (``INSERT ... SELECT generate_series``), not through the API, then vacuumed and
analysed as autovacuum would have by then. Everything is compared as a ratio with a small queue on the same
server in the same minute, so the shared machine's load falls on both: claim latency interleaved claim by
claim, drain rate of one worker process before and after the deep runs.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from pgqueue.claiming import ClaimPosition
from pgqueue.queries import q
from tests.chaos.harness import Run, scenario
from tests.chaos.probes import scalar, wait_until
from tests.chaos.scenarios.workers import lease_args

TASK = "chaos.work_async"
LOAD_CHUNK = 500_000
# Idle transactions of both kinds: one READ COMMITTED (the usual "idle in transaction" of an application) holds
# no snapshot between statements, so it should cost nothing; one REPEATABLE READ (a long report, pg_dump) holds
# one, and with it every row version claimed or finished since it began, for vacuum and for index scans.
ISOLATION = ("READ COMMITTED", "REPEATABLE READ")
JOB_TABLES = {"jobs", "finished_jobs"}  # pgqueue.queues (a row per configured queue) may well be scanned

FINISHED = """
INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt, max_attempts,
                                   scheduled_for, created_at, started_at, finished_at, worker_id, result)
SELECT g, 'default', %(task)s, '[]', '{}', 0, 'succeeded', 1, 10, t, t, t, t, %(worker)s, 'null'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g,
     LATERAL (SELECT now() - interval '6 days' + g * interval '100 microseconds') AS s(t)
"""
# Queued rows, oldest first in claim order; ids follow the finished ones, as they would have been issued.
QUEUED = """
INSERT INTO pgqueue.jobs (id, queue, task, args, kwargs, scheduled_for, created_at)
SELECT g, 'default', %(task)s, '[]', '{}', s.t, s.t
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g,
     LATERAL (SELECT now() - interval '1 hour' + (g - %(first)s) * interval '1 microsecond') AS s(t)
"""


def chunks(first: int, count: int) -> Iterator[tuple[int, int]]:
    for start in range(first, first + count, LOAD_CHUNK):
        yield start, min(first + count, start + LOAD_CHUNK) - 1


def load(dsn: str, queued: int, finished: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        for first, last in chunks(1, finished):
            db.execute(FINISHED, {"task": TASK, "worker": uuid.uuid4(), "first": first, "last": last})
        for first, last in chunks(finished + 1, queued):
            db.execute(QUEUED, {"task": TASK, "first": first, "last": last})
        db.execute("SELECT setval('pgqueue.job_id_seq', %s)", (finished + queued,))
        db.execute("VACUUM ANALYZE pgqueue.jobs")
        db.execute("VACUUM ANALYZE pgqueue.finished_jobs")


def vacuum(*dsns: str) -> None:
    """Vacuum the live jobs tables after each drain, before claims are timed: the claims then measure the depth
    of the backlog (and what an open snapshot keeps), not how far autovacuum lags behind the drain (by default it
    waits until a fifth of a table's rows are dead, 200,000 of a million-job backlog)."""
    for dsn in dsns:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute("VACUUM pgqueue.jobs")


def seq_scans(plan: Any) -> list[str]:
    """Relations a JSON plan reads with a sequential scan."""
    found = []
    if isinstance(plan, dict):
        if plan.get("Node Type") == "Seq Scan":
            found.append(str(plan.get("Relation Name")))
        for value in plan.values():
            found += seq_scans(value)
    elif isinstance(plan, list):
        for value in plan:
            found += seq_scans(value)
    return found


def claim_plans(dsn: str) -> dict[str, list[str]]:
    """Sequential scans in the plans of both claim statements (run and rolled back: EXPLAIN ANALYZE)."""
    params = {"limit": 10, "worker_id": uuid.uuid4(), "lease": 30.0, "queues": ["default"]}
    scans = {}
    with psycopg.connect(dsn) as db:
        for name in ("job_claim_any", "job_claim_queues"):
            row = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + q(name), params).fetchone()
            assert row is not None
            scans[name] = seq_scans(row[0])
            db.rollback()
    return scans


def claim_buffers(dsn: str, batch: int, after: str | None = None) -> int:
    """Buffers one claim of ``batch`` touches (EXPLAIN ANALYZE, BUFFERS; rolled back): pages it had to visit.
    From the head of the queue, or (``after``) on from a claimer's position."""
    params = {"limit": batch, "worker_id": uuid.uuid4(), "lease": 30.0, "after": after}
    name = "job_claim_any" if after is None else "job_claim_any_after"
    with psycopg.connect(dsn) as db:
        row = db.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + q(name), params).fetchone()
        db.rollback()
    assert row is not None
    plan = row[0][0]["Plan"]
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


class Claimer:
    """Claims ``batch`` jobs at a time as a worker does (job_claim_any from the head of the queue, then on from its
    position with job_claim_any_after while a backlog lasts: pgqueue.claiming) and acknowledges them."""

    def __init__(self, dsn: str, batch: int) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.batch = batch
        self.worker = uuid.uuid4()
        self.position = ClaimPosition()
        self.latencies: list[float] = []

    def claim(self) -> None:
        started = time.perf_counter()
        rows = self._take()
        self.latencies.append(time.perf_counter() - started)
        assert len(rows) == self.batch, "the backlog ran out"
        self.conn.execute(q("job_complete_many"), {"ids": [r[0] for r in rows], "attempts": [r[6] for r in rows],
                                                   "results": ["null"] * len(rows), "worker_id": self.worker})

    def _take(self) -> list[tuple[Any, ...]]:
        params: dict[str, Any] = {"limit": self.batch, "worker_id": self.worker, "lease": 30.0}
        rows: list[tuple[Any, ...]] = []
        after, epoch = self.position.after, self.position.epoch
        if after is not None:
            rows = self.conn.execute(q("job_claim_any_after"), {**params, "after": after}).fetchall()
            self.position.claimed(rows, self.batch, from_head=False, epoch=epoch)
        if len(rows) < self.batch:
            head = self.conn.execute(q("job_claim_any"), {**params, "limit": self.batch - len(rows)}).fetchall()
            self.position.claimed(head, self.batch - len(rows), from_head=True, epoch=epoch)
            rows += head
        return rows

    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    def close(self) -> None:
        self.conn.close()


def claim_latency(claimers: list[Claimer], rounds: int) -> None:
    """Claims interleaved across the databases (order alternating), so load from elsewhere falls on all."""
    for i in range(rounds):
        for claimer in claimers if i % 2 == 0 else reversed(claimers):
            claimer.claim()


def drain_rate(run: Run, dsn: str, jobs: int) -> float:
    """Jobs per second one worker process takes from this database's queue, over ``jobs`` jobs: from the
    tenth percentile of their finish times to the last, so worker start-up is left out."""
    with psycopg.connect(dsn, autocommit=True) as db:
        fleet = run.fleet(dsn, *lease_args(30.0, 10.0, concurrency=100))
        started = scalar(db, "SELECT now()")
        fleet.start()
        count = "SELECT count(*) FROM pgqueue.finished_jobs WHERE finished_at >= %s"
        wait_until(lambda: int(scalar(db, count, (started,))) >= jobs, 300, interval=0.1,
                   what=f"the worker to finish {jobs} jobs")
        fleet.stop_all()
        times = [r[0] for r in db.execute("SELECT finished_at FROM pgqueue.finished_jobs WHERE finished_at >= %s "
                                          "ORDER BY finished_at LIMIT %s", (started, jobs)).fetchall()]
    first = times[len(times) // 10]
    span: float = (times[-1] - first).total_seconds()
    return (len(times) - len(times) // 10) / max(1e-6, span)


@scenario(10, "deep backlog",
          quick={"queued": 50_000, "finished": 200_000, "drain": 3_000, "claims": 100},
          full={"queued": 1_000_000, "finished": 5_000_000, "drain": 100_000, "claims": 600})
def deep_backlog(run: Run, queued: int, finished: int, drain: int, claims: int) -> None:
    """Claim latency and drain rate with ``queued`` queued and ``finished`` finished jobs, against a queue
    holding only what the measurement takes; then the same with a transaction left open and idle in the deep
    database for the whole measurement, READ COMMITTED and then REPEATABLE READ (see ISOLATION)."""
    batch = 10
    small, deep = run.database(), run.database()
    loading = time.monotonic()
    load(deep, queued, finished)
    run.figure("deep database: queued / finished rows", f"{queued:,} / {finished:,}")
    run.figure("bulk load, vacuum and analyse", round(time.monotonic() - loading, 1), "s")
    load(small, 3 * drain + 3 * claims * batch + 5000, 0)  # two drains, each overshooting a little, and claims

    scans = claim_plans(deep)
    for name, found in scans.items():
        on_jobs = [r for r in found if r in JOB_TABLES]
        run.check(f"sequential scans of job tables in {name}'s plan (deep)", ", ".join(on_jobs) or "none", "==",
                  "none")
        if len(on_jobs) < len(found):
            run.figure(f"other sequential scans in {name}'s plan", ", ".join(r for r in found if r not in JOB_TABLES))

    drains = {"small": drain_rate(run, small, drain), "deep": drain_rate(run, deep, drain)}
    vacuum(deep, small)
    to_small, to_deep = Claimer(small, batch), Claimer(deep, batch)
    claim_latency([to_small, to_deep], claims)
    small_claim = to_small.median_ms()
    claim_ratios = {"deep": to_deep.median_ms() / small_claim}
    buffers = {"deep": claim_buffers(deep, batch)}
    buffers_on: dict[str, int] = {}  # the same claim on from the claimer's position
    holds: dict[str, bool] = {}
    claimed_since: dict[str, int] = {}
    idle_age: dict[str, float] = {}
    for level in ISOLATION:
        name = f"deep, idle {level} transaction open"
        with psycopg.connect(deep) as idle:
            idle.execute(sql.SQL("SET TRANSACTION ISOLATION LEVEL {}").format(sql.SQL(level)))
            idle_since = scalar(idle, "SELECT now()")  # the transaction's first statement: it is open from here
            holds[level] = scalar(to_deep.conn, "SELECT backend_xmin IS NOT NULL FROM pg_stat_activity "
                                                "WHERE pid = %s", (idle.info.backend_pid,))
            drains[name] = drain_rate(run, deep, drain)
            vacuum(deep, small)  # removes what the drain left, unless the idle transaction's snapshot still sees it
            to_small.latencies, to_deep.latencies = [], []
            claim_latency([to_small, to_deep], claims)
            claim_ratios[name] = to_deep.median_ms() / to_small.median_ms()
            buffers[name] = claim_buffers(deep, batch)
            if to_deep.position.after is not None:  # (unless it is due back at the head just now)
                buffers_on[name] = claim_buffers(deep, batch, to_deep.position.after)
            claimed_since[level] = int(scalar(to_deep.conn, "SELECT count(*) FROM pgqueue.finished_jobs WHERE id > %s "
                                                            "AND finished_at >= %s", (finished, idle_since)))
            idle_age[level] = float(scalar(idle, "SELECT extract(epoch FROM clock_timestamp() - xact_start)::float8 "
                                                 "FROM pg_stat_activity WHERE pid = pg_backend_pid()"))
            idle.rollback()
    to_small.close()
    to_deep.close()
    small_rate = (drains["small"] + drain_rate(run, small, drain)) / 2  # before and after the deep runs

    run.figure(f"claim of {batch}, small queue, median", round(small_claim, 3), "ms")
    run.figure(f"drain rate, small queue ({drain:,} jobs, mean of before and after)", round(small_rate), "jobs/s")
    for level in ISOLATION:
        run.figure(f"idle {level} transaction: open for", round(idle_age[level], 1), "s")
        run.check(f"idle {level} transaction: holds back vacuum (a snapshot's xmin)", holds[level], "==",
                  level != "READ COMMITTED")
        run.figure(f"idle {level} transaction: jobs claimed meanwhile (their index entries stay if it holds)",
                   claimed_since[level])
    for name in ("deep", *(f"deep, idle {level} transaction open" for level in ISOLATION)):
        claim_ratio = round(claim_ratios[name], 2)
        drain_ratio = round(drains[name] / small_rate, 2)
        run.figure(f"drain rate, {name}", round(drains[name]), "jobs/s")
        run.figure(f"buffers one claim of {batch} touches from the head of the queue, {name}", buffers[name])
        if name in buffers_on:
            run.figure(f"buffers one claim of {batch} touches on from the claimer's position, {name}", buffers_on[name])
        if run.mode == "full":
            run.check(f"claim latency, {name} / small", claim_ratio, "<=", 1.2, "x")
            run.check(f"drain rate, {name} / small", drain_ratio, ">=", 0.8, "x")
        else:
            # Ratios of times are for `make chaos`: inside `make test`, on a loaded machine, they would fail at
            # random. The quick slice reports them and checks the plans.
            run.figure(f"claim latency, {name} / small (bound 1.2x in make chaos)", claim_ratio, "x")
            run.figure(f"drain rate, {name} / small (bound 0.8x in make chaos)", drain_ratio, "x")

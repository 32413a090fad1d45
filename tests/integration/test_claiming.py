"""Claims that go on from the last job taken (pgqueue.claiming) against real PostgreSQL: what they skip under an
open snapshot, and that nothing is left behind them or taken twice."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest

from pgqueue import App
from pgqueue.claiming import HEAD_EVERY, ClaimPosition
from pgqueue.queries import q
from pgqueue.testing import running_worker
from tests.conftest import wait_for

FAST = {"poll_interval": 0.5, "promote_interval": 0.05}


def index_buffers(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> int:
    """Buffers one claim's scan of the claim index touches, with the rows it visits to see which entries are
    still queued (EXPLAIN ANALYZE runs the claim; the caller rolls it back)."""
    row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + q(name), params).fetchone()
    assert row is not None
    scans = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Index Name") in ("jobs_claim_any_idx", "jobs_claim_queue_idx"):  # whichever it chose
            scans.append(int(node["Shared Hit Blocks"]) + int(node["Shared Read Blocks"]))
        for child in node.get("Plans", []):
            walk(child)

    walk(row[0][0]["Plan"])
    assert len(scans) == 1, scans
    return scans[0]


# A worker serving any queue, and one serving the one queue "default": their claims from the head and on.
CLAIMS = {"any queue": ("job_claim_any", "job_claim_any_after", {}),
          "one queue": ("job_claim_queues", "job_claim_queue_after", {"queues": ["default"], "queue": "default"})}
SERVES = {"any queue": None, "one queue": ["default"]}


@pytest.mark.parametrize("serving", CLAIMS)
def test_claims_from_the_position_skip_what_an_open_snapshot_keeps(app: App, db: psycopg.Connection[Any],
                                                                   dsn: str, serving: str) -> None:
    head_claim, after_claim, serves = CLAIMS[serving]

    @app.task()
    def noop() -> None: ...

    jobs = noop.enqueue_many([{}] * 4_000)
    db.execute("VACUUM ANALYZE pgqueue.jobs")  # statistics, as autovacuum or the worker would have gathered
    me, position, taken = uuid.uuid4(), ClaimPosition(clock=lambda: 0.0), []
    params: dict[str, Any] = {"limit": 100, "worker_id": me, "lease": 30.0, **serves}
    with psycopg.connect(dsn) as report:
        report.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        report.execute("SELECT 1")  # the snapshot: from here no row version it sees may be removed
        for _ in range(30):
            after = position.after
            name = head_claim if after is None else after_claim
            rows = db.execute(q(name), {**params, "after": after}).fetchall()
            position.claimed(rows, 100, from_head=after is None, epoch=0)
            db.execute(q("job_complete_many"), {"ids": [r[0] for r in rows], "attempts": [r[6] for r in rows],
                                                "results": [None] * len(rows), "worker_id": me})
            taken += [r[0] for r in rows]
        db.execute("VACUUM pgqueue.jobs")  # removes nothing the snapshot still sees
        with psycopg.connect(dsn) as look:
            head = index_buffers(look, head_claim, params)
            look.rollback()
            on = index_buffers(look, after_claim, {**params, "after": position.after})
            look.rollback()
        report.rollback()
    assert taken == [j.id for j in jobs[:3_000]]  # in claim order, none skipped, none twice
    assert on * 4 < head, (on, head)  # from the head, the claim reads the 3,000 claimed jobs' entries; ours not


@pytest.mark.parametrize("serving", SERVES)
def test_a_worker_draining_a_backlog_takes_a_new_higher_priority_job_at_its_next_claim(app: App,
                                                                                       serving: str) -> None:
    order: list[str] = []

    @app.task()
    async def step(label: str) -> None:
        await asyncio.sleep(0.002)
        order.append(label)

    step.enqueue_many([step.call("low")] * 3_000)
    with running_worker(app, queues=SERVES[serving], concurrency=4, claim_batch=20, **FAST):
        wait_for(lambda: len(order) >= 200)
        step.using(priority=5).enqueue("high")  # commits with a notification
        ran_before = len(order)
        wait_for(lambda: "high" in order)
    assert order.index("high") - ran_before < 300, (ran_before, order.index("high"))


@pytest.mark.parametrize("serving", SERVES)
def test_a_job_behind_the_position_without_a_notification_waits_at_most_head_every(app: App, dsn: str,
                                                                                   serving: str) -> None:
    order: list[str] = []

    @app.task()
    async def step(label: str) -> None:
        await asyncio.sleep(0.005)
        order.append(label)

    step.enqueue_many([step.call("low")] * 3_000)
    with running_worker(app, queues=SERVES[serving], concurrency=2, claim_batch=20, **FAST):
        wait_for(lambda: len(order) >= 100)
        with psycopg.connect(dsn, autocommit=True) as quiet:
            quiet.execute("SET pgqueue.notify = off")  # no wake-up: only the return to the head finds it
            quiet.execute("INSERT INTO pgqueue.jobs (queue, task, args, kwargs, scheduled_for) "
                          "VALUES ('default', %s, '[\"behind\"]', '{}', now() - interval '1 hour')", (step.name,))
        inserted = time.monotonic()
        wait_for(lambda: "behind" in order)
        waited = time.monotonic() - inserted
        left = order.count("low")
    assert left < 3_000, "it waited for the whole backlog"
    assert waited < HEAD_EVERY + 1.5, waited


@pytest.mark.parametrize("serving", SERVES)
def test_levels_in_order_and_each_job_once_across_workers(app: App, db: psycopg.Connection[Any],
                                                          serving: str) -> None:
    order: list[tuple[int, int]] = []

    @app.task()
    def record(level: int, n: int) -> None:
        order.append((level, n))

    @app.task(priority=3)
    def urgent(level: int, n: int) -> None:
        order.append((level, n))

    record.enqueue_many([record.call(0, n) for n in range(400)])
    urgent.enqueue_many([urgent.call(3, n) for n in range(400)])
    with running_worker(app, queues=SERVES[serving], concurrency=1, claim_batch=50, **FAST):
        wait_for(lambda: len(order) == 800)
    assert order == [(3, n) for n in range(400)] + [(0, n) for n in range(400)]

    order.clear()
    record.enqueue_many([record.call(0, n) for n in range(2_000)])
    urgent.enqueue_many([urgent.call(3, n) for n in range(2_000)])
    with running_worker(app, queues=SERVES[serving], concurrency=8, claim_batch=25, **FAST), \
            running_worker(app, concurrency=8, claim_batch=25, **FAST):  # and one serving any queue
        wait_for(lambda: len(order) == 4_000)
    assert sorted(order) == sorted([(level, n) for level in (0, 3) for n in range(2_000)])
    assert db.execute("SELECT count(*), max(attempt) FROM pgqueue.finished_jobs WHERE state = 'succeeded'"
                      ).fetchone() == (4_800, 1)

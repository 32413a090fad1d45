"""Flow control on real PostgreSQL: pause, limits, fairness, unique keys, dependencies, batches, cancellation,
progress, cron."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from pgqueue import App, Context, JobState, ValidationError, chain, group
from pgqueue.connection import DedicatedConnection
from pgqueue.maintenance import Maintenance, MaintenanceConfig
from pgqueue.queries import q
from pgqueue.testing import running_worker
from tests.conftest import wait_for

FAST = {"poll_interval": 0.5, "promote_interval": 0.05}


def state_of(app: App, job_id: int) -> JobState:
    return app.job(job_id).state


class Gauge:
    """Counts handlers running at once, and the most ever."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.per_group: Counter[str] = Counter()
        self.group_peak: Counter[str] = Counter()

    def enter(self, group: str = "") -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.per_group[group] += 1
            self.group_peak[group] = max(self.group_peak[group], self.per_group[group])

    def leave(self, group: str = "") -> None:
        with self.lock:
            self.now -= 1
            self.per_group[group] -= 1


# -- pause and limits -------------------------------------------------------------------------------------------

def test_paused_queue_is_not_claimed_and_running_jobs_finish(app: App) -> None:
    gate = threading.Event()

    @app.task(queue="p")
    def work(n: int) -> int:
        if n == 0:
            gate.wait(10)
        return n

    first = work.enqueue(0)
    with running_worker(app, **FAST):
        wait_for(lambda: state_of(app, first.id) is JobState.RUNNING)
        app.pause_queue("p")
        later = work.enqueue(1)
        gate.set()
        wait_for(lambda: state_of(app, first.id) is JobState.SUCCEEDED)  # the running one finishes
        time.sleep(0.6)
        assert state_of(app, later.id) is JobState.QUEUED
        assert next(s for s in app.stats() if s.queue == "p").paused
        app.resume_queue("p")
        wait_for(lambda: state_of(app, later.id) is JobState.SUCCEEDED, timeout=5)


def test_concurrency_limit_holds_across_a_busy_worker(app: App) -> None:
    gauge = Gauge()

    @app.task(queue="limited")
    def slow() -> None:
        gauge.enter()
        time.sleep(0.15)
        gauge.leave()

    app.configure_queue("limited", concurrency=2)
    jobs = slow.enqueue_many([[] for _ in range(10)])
    with running_worker(app, concurrency=8, **FAST):
        wait_for(lambda: all(state_of(app, j.id) is JobState.SUCCEEDED for j in jobs), timeout=20)
    assert gauge.peak == 2


def test_group_concurrency_limit_is_one_at_a_time_per_group(app: App) -> None:
    gauge = Gauge()

    @app.task(queue="per-user")
    def sync_user(user: str) -> None:
        gauge.enter(user)
        time.sleep(0.1)
        gauge.leave(user)

    app.configure_queue("per-user", group_concurrency=1)
    jobs = [sync_user.using(group=u).enqueue(u) for u in ["ann", "bob", "cy"] for _ in range(4)]
    with running_worker(app, concurrency=8, **FAST):
        wait_for(lambda: all(state_of(app, j.id) is JobState.SUCCEEDED for j in jobs), timeout=20)
    assert set(gauge.group_peak.values()) == {1}
    assert gauge.peak > 1  # different users still ran side by side


def test_rate_limit_caps_starts_per_window(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task(queue="api")
    def call() -> None: ...

    app.configure_queue("api", rate=(5, 1.0))
    jobs = call.enqueue_many([[] for _ in range(12)])
    with running_worker(app, concurrency=10, **FAST):
        wait_for(lambda: all(state_of(app, j.id) is JobState.SUCCEEDED for j in jobs), timeout=20)
    starts = sorted(row[0] for row in db.execute(
        "SELECT started_at FROM pgqueue.finished_jobs WHERE id = ANY(%s)", ([j.id for j in jobs],)))
    for i, start in enumerate(starts):
        in_window = [s for s in starts[i:] if s - start < timedelta(seconds=1)]
        assert len(in_window) <= 5, (start, in_window)
    assert starts[-1] - starts[0] >= timedelta(seconds=2)  # 12 starts at 5 per second need over 2 seconds


def test_fairness_lets_a_small_tenant_through_a_huge_backlog(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task(queue="fair")
    def work(tenant: str) -> None:
        time.sleep(0.005)

    app.configure_queue("fair", fair=True)
    work.enqueue_many([work.call("big", group="big") for _ in range(300)])
    small = work.enqueue_many([work.call("small", group="small") for _ in range(10)])
    with running_worker(app, concurrency=4, **FAST):
        wait_for(lambda: all(state_of(app, j.id) is JobState.SUCCEEDED for j in small), timeout=30)
        big_done = db.execute("SELECT count(*) FROM pgqueue.finished_jobs WHERE group_key = 'big'").fetchone()
    assert big_done is not None and big_done[0] < 60, big_done  # without fairness: all 300 first


def test_weights_share_a_fair_queue(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task(queue="weighted")
    def work() -> None:
        time.sleep(0.003)

    app.configure_queue("weighted", fair=True)
    app.set_group_weight("weighted", "gold", 3)
    work.enqueue_many([work.call(group=g) for g in ("gold", "basic") for _ in range(200)])
    with running_worker(app, concurrency=2, claim_batch=4, **FAST):
        wait_for(lambda: (db.execute("SELECT count(*) FROM pgqueue.finished_jobs").fetchone() or [0])[0] >= 120,
                 timeout=30)
    counts = dict(db.execute("SELECT group_key, count(*) FROM pgqueue.finished_jobs GROUP BY 1").fetchall())
    assert counts["gold"] > 2 * counts["basic"], counts


@pytest.mark.parametrize("claim_size", [1, 2, 4, 7])
def test_weights_hold_for_claims_of_any_size(app: App, db: psycopg.Connection[Any], claim_size: int) -> None:
    """A claim of several jobs splits by weight too, not evenly among the groups it serves."""
    @app.task(queue="weighted")
    def work() -> None: ...

    app.configure_queue("weighted", fair=True)
    app.set_group_weight("weighted", "gold", 3)
    app.set_group_weight("weighted", "silver", 2)
    work.enqueue_many([work.call(group=g) for g in ("gold", "silver", "basic") for _ in range(200)])
    claimed: Counter[str] = Counter()
    worker = "00000000-0000-0000-0000-000000000001"
    while sum(claimed.values()) < 300:
        rows = db.execute("SELECT group_key FROM pgqueue.claim_controlled('weighted', %s, 60, %s)",
                          (worker, claim_size)).fetchall()
        assert len(rows) == claim_size
        claimed.update(r[0] for r in rows)
    # Shares 3:2:1 of 300 are 150, 100 and 50; a claim may run ahead by at most its size.
    for key, share in (("gold", 150), ("silver", 100), ("basic", 50)):
        assert abs(claimed[key] - share) <= claim_size + 1, claimed


def test_a_fair_claim_comes_back_short_only_when_the_queue_is(app: App, db: psycopg.Connection[Any]) -> None:
    """The weighted group has one job: the share it cannot take goes to the other group, not to waste."""
    @app.task(queue="weighted")
    def work() -> None: ...

    app.configure_queue("weighted", fair=True)
    app.set_group_weight("weighted", "gold", 3)
    work.enqueue_many([work.call(group="gold")] + [work.call(group="basic") for _ in range(50)])
    rows = db.execute("SELECT group_key FROM pgqueue.claim_controlled('weighted', %s, 60, 10)",
                      ("00000000-0000-0000-0000-000000000001",)).fetchall()
    assert sorted(r[0] for r in rows) == ["basic"] * 9 + ["gold"]
    assert len(db.execute("SELECT id FROM pgqueue.jobs WHERE state = 'running'").fetchall()) == 10


def test_priority_aging_raises_waiting_jobs(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task(queue="aging")
    def low() -> None: ...

    app.configure_queue("aging", priority_aging=0.2)
    app.pause_queue("aging")
    job = low.enqueue()
    db.execute("UPDATE pgqueue.jobs SET scheduled_for = now() - interval '1 second' WHERE id = %s", (job.id,))

    async def age() -> None:
        conn = DedicatedConnection(app.dsn, "test")
        await Maintenance(conn, MaintenanceConfig()).age_priorities()
        await conn.close()

    asyncio.run(age())
    assert app.job(job.id).priority == 1


def test_queue_settings_are_validated(app: App) -> None:
    for bad in ({"concurrency": -1}, {"rate": (5, 0)}, {"rate": (-1, 1)}, {"priority_aging": 0}):
        with pytest.raises(ValidationError):
            app.configure_queue("q", **bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="queue name"):
        app.pause_queue("';--")
    assert app.queues() == []


# -- unique keys ------------------------------------------------------------------------------------------------

def test_unique_key_returns_the_live_job_then_frees_on_finish(app: App) -> None:
    @app.task()
    def report(day: str) -> None: ...

    first = report.using(unique_key="report:2026-11-22").enqueue("2026-11-22")
    again = report.using(unique_key="report:2026-11-22").enqueue("other args")
    assert again.id == first.id and again.args == ["2026-11-22"]
    with running_worker(app, **FAST):
        wait_for(lambda: state_of(app, first.id) is JobState.SUCCEEDED)
    fresh = report.using(unique_key="report:2026-11-22").enqueue("2026-11-22")
    assert fresh.id != first.id
    windowed = report.using(unique_key="w", unique_for=3600).enqueue("x")
    app.cancel(windowed.id)
    assert report.using(unique_key="w", unique_for=3600).enqueue("x").id == windowed.id  # within the window
    assert report.using(unique_key="w").enqueue("x").id != windowed.id  # no window: finished means free


def test_unique_key_under_concurrent_enqueuers(app: App, dsn: str, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def once() -> None: ...

    ids: list[int] = []
    barrier = threading.Barrier(16)

    def enqueue() -> None:
        producer = App(dsn=dsn)
        barrier.wait()
        for _ in range(20):
            ids.append(producer.enqueue(once.name, unique_key="the-one").id)
        producer.close()

    threads = [threading.Thread(target=enqueue) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 320 and len(set(ids)) == 1
    assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (1,)


# -- dependencies and workflows ---------------------------------------------------------------------------------

def test_child_waits_for_its_parents_then_reads_their_results(app: App) -> None:
    seen: dict[str, Any] = {}

    @app.task()
    def parent(n: int) -> int:
        return n * 10

    @app.task()
    def child(ctx: Context) -> None:
        seen.update(ctx.parent_results())

    a, b = parent.enqueue(1), parent.enqueue(2)
    c = child.using(depends_on=[a, b.id]).enqueue()
    assert c.state is JobState.WAITING
    with running_worker(app, **FAST):
        wait_for(lambda: state_of(app, c.id) is JobState.SUCCEEDED)
    assert seen == {a.id: 10, b.id: 20}
    done = child.using(depends_on=[a]).enqueue()  # parent already succeeded: ready at once
    assert done.state is JobState.QUEUED


def test_failed_parent_cancels_dependants_in_cascade_or_runs_them(app: App) -> None:
    @app.task(max_attempts=1)
    def doomed() -> None:
        raise RuntimeError("no")

    @app.task()
    def step() -> str:
        return "ran"

    parent = doomed.enqueue()
    child = step.using(depends_on=[parent]).enqueue()
    grandchild = step.using(depends_on=[child]).enqueue()
    anyway = step.using(depends_on=[parent], on_parent_failure="run").enqueue()
    with running_worker(app, **FAST):
        wait_for(lambda: state_of(app, anyway.id) is JobState.SUCCEEDED)
        wait_for(lambda: state_of(app, grandchild.id) is JobState.CANCELLED)
    assert state_of(app, parent.id) is JobState.DEAD and state_of(app, child.id) is JobState.CANCELLED
    late = step.using(depends_on=[parent]).enqueue()  # enqueued after the failure: cancelled at once
    assert late.state is JobState.CANCELLED


def test_depending_on_a_missing_job_is_refused(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def step() -> None: ...

    with pytest.raises(ValidationError, match="does not exist"):
        step.using(depends_on=[987654321]).enqueue()
    with pytest.raises(ValidationError, match="depends_on"):
        step.using(depends_on=["nope"]).enqueue()
    assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)


def test_parent_finishing_while_the_child_is_enqueued_does_not_strand_it(app: App, dsn: str) -> None:
    """The race: the child's transaction and the parent's completion overlap, in both orders."""
    import uuid

    for child_first in (True, False):
        queue = f"race-{child_first}"
        parent = app.enqueue("race.parent", queue=queue)
        worker = uuid.uuid4()
        with psycopg.connect(dsn, autocommit=True) as claim:
            claimed = claim.execute(q("job_claim_queues"), {"limit": 1, "worker_id": worker, "lease": 60,
                                                            "queues": [queue]}).fetchall()
            assert [row[0] for row in claimed] == [parent.id]
        complete = {"ids": [parent.id], "attempts": [1], "results": ["1"], "worker_id": worker}
        with psycopg.connect(dsn) as child_tx, psycopg.connect(dsn) as parent_tx:
            if child_first:
                child = app._enqueue(None, [], {}, _opts(parent.id), child_tx, name="race.child")
                done = threading.Thread(target=parent_tx.execute, args=(q("job_complete_many"), complete))
                done.start()  # blocks on the parent's row lock until the child commits
                time.sleep(0.2)
                child_tx.commit()
                done.join(10)
                parent_tx.commit()
            else:
                parent_tx.execute(q("job_complete_many"), complete)
                result: list[Any] = []

                def enqueue_child(out: list[Any] = result, parent_id: int = parent.id) -> None:
                    out.append(app._enqueue(None, [], {}, _opts(parent_id), child_tx, name="race.child"))

                enq = threading.Thread(target=enqueue_child)
                enq.start()  # blocks until the parent's completion commits
                time.sleep(0.2)
                parent_tx.commit()
                enq.join(10)
                child_tx.commit()
                child = result[0]
        assert child is not None
        assert state_of(app, child.id) is JobState.QUEUED, child_first


def _opts(parent_id: int) -> Any:
    from pgqueue.task import EnqueueOptions

    return EnqueueOptions(depends_on=[parent_id])


def test_chain_and_group(app: App) -> None:
    order: list[str] = []

    @app.task()
    def step(name: str) -> str:
        order.append(name)
        return name

    jobs = chain(step.call("a"), step.call("b"), step.call("c")).enqueue()
    assert [j.state for j in jobs] == [JobState.QUEUED, JobState.WAITING, JobState.WAITING]
    members, fan_in = group(step.call("x"), step.call("y")).then(step.call("z")).enqueue()
    assert fan_in is not None and fan_in.state is JobState.WAITING
    with running_worker(app, concurrency=4, **FAST):
        wait_for(lambda: all(state_of(app, j.id) is JobState.SUCCEEDED for j in [*jobs, *members, fan_in]))
    assert order.index("a") < order.index("b") < order.index("c")
    assert order.index("z") > max(order.index("x"), order.index("y"))


def test_batch_progress_and_callback_runs_once_with_the_summary(app: App) -> None:
    summaries: list[Any] = []

    @app.task(max_attempts=1)
    def item(n: int) -> None:
        if n % 10 == 0:
            raise ValueError("bad row")

    @app.task()
    def report(batch_id: int) -> None:
        info = app.batch(batch_id)
        summaries.append((info.total, info.counts.get("succeeded"), info.counts.get("dead")))

    batch = app.create_batch("import", [item.call(i) for i in range(50)], on_complete=report.call())
    assert batch.callback is not None and app.batch(batch.id).progress == 0
    with running_worker(app, concurrency=6, **FAST):
        wait_for(lambda: state_of(app, batch.callback.id) is JobState.SUCCEEDED, timeout=20)  # type: ignore[union-attr]
    info = app.batch(batch.id)
    assert info.done and info.progress == 1 and info.counts == {"succeeded": 45, "dead": 5}
    assert summaries == [(50, 45, 5)]


# -- cancellation and progress ----------------------------------------------------------------------------------

def test_cancel_a_running_async_job_promptly(app: App) -> None:
    @app.task()
    async def endless() -> None:
        await asyncio.sleep(60)

    job = endless.enqueue()
    with running_worker(app, **FAST):
        wait_for(lambda: state_of(app, job.id) is JobState.RUNNING)
        asked = time.monotonic()
        assert app.cancel(job.id) is True
        wait_for(lambda: state_of(app, job.id) is JobState.CANCELLED, timeout=5)
        assert time.monotonic() - asked < 2  # the notification, not the 10 s heartbeat
    assert app.cancel(job.id) is False


def test_cancel_a_running_sync_job_cooperatively_and_see_progress(app: App) -> None:
    steps: list[int] = []

    @app.task()
    def crunch(ctx: Context, n: int) -> str:
        for i in range(n):
            if ctx.cancelled:
                return "stopped early"
            ctx.progress((i + 1) / n, f"step {i + 1}/{n}")
            steps.append(i)
            time.sleep(0.05)
        return "finished"

    job = crunch.enqueue(1000)
    with running_worker(app, **FAST):
        seen = wait_for(lambda: (j := app.job(job.id)).progress and j, timeout=5)
        assert 0 < seen.progress <= 1 and seen.progress_message.startswith("step ")
        app.cancel(job.id)
        wait_for(lambda: state_of(app, job.id) is JobState.CANCELLED, timeout=5)
    assert len(steps) < 1000


# -- cron -------------------------------------------------------------------------------------------------------

def _sweep(app: App, names: list[str]) -> int:
    async def run() -> int:
        conn = DedicatedConnection(app.dsn, "test")
        try:
            return await Maintenance(conn, MaintenanceConfig(schedules=names)).tick_schedules()
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.mark.parametrize(("missed", "expected"), [("once", 1), ("all", 3), ("skip", 0)])
def test_missed_ticks_policy(app: App, db: psycopg.Connection[Any], missed: str, expected: int) -> None:
    @app.task()
    def tick() -> None: ...

    # Hourly at the minute that was five minutes ago; the last tick seen was three hours ago: three ticks were
    # missed, the newest of them five minutes late.
    row = db.execute("SELECT extract(minute FROM now() - interval '5 minutes')::int").fetchone()
    assert row is not None
    app.periodic(cron=f"{row[0]} * * * *", missed=missed)(tick)
    app.sync_schedules()
    db.execute("UPDATE pgqueue.schedules SET last_tick_at = now() - interval '3 hours' + interval '1 second'")
    assert _sweep(app, [tick.name]) == expected
    assert _sweep(app, [tick.name]) == 0  # nothing twice
    assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (expected,)
    db.execute("TRUNCATE pgqueue.schedules, pgqueue.schedule_ticks")


def test_stale_scheduler_cannot_enqueue_a_tick_twice(app: App, db: psycopg.Connection[Any]) -> None:
    @app.task()
    def tick() -> None: ...

    app.periodic(cron="* * * * *")(tick)
    app.sync_schedules()
    db.execute("UPDATE pgqueue.schedules SET last_tick_at = now() - interval '61 seconds'")
    row = db.execute("SELECT last_tick_at, date_trunc('minute', now()) FROM pgqueue.schedules").fetchone()
    assert row is not None
    stale_last, tick_at = row
    assert _sweep(app, [tick.name]) == 1
    # An old leader that read the schedule before that sweep now tries the same tick: nothing happens.
    again = db.execute(q("schedule_tick_enqueue"), {"name": tick.name, "new_last": tick_at, "expected_last": stale_last,
                                                     "ticks": [tick_at]}).fetchall()
    assert again == []
    db.execute("UPDATE pgqueue.schedules SET last_tick_at = %s", (stale_last,))  # even if the CAS were fooled
    again = db.execute(q("schedule_tick_enqueue"), {"name": tick.name, "new_last": tick_at, "expected_last": stale_last,
                                                     "ticks": [tick_at]}).fetchall()
    assert again == []  # the (schedule, tick) key still refuses it
    assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (1,)
    db.execute("TRUNCATE pgqueue.schedules, pgqueue.schedule_ticks")


def test_cli_schedules_and_paused_ones(app: App, db: psycopg.Connection[Any]) -> None:
    from pgqueue.periodic import Schedule

    app.add_schedule(Schedule(name="nightly", cron="0 3 * * *", task="reports.nightly", timezone="Europe/Berlin"))
    rows = app.list_schedules()
    assert [(r.name, r.source, r.paused) for r in rows] == [("nightly", "cli", False)]
    assert rows[0].next_tick(datetime.now().astimezone()) is not None
    app.pause_schedule("nightly")
    db.execute("UPDATE pgqueue.schedules SET last_tick_at = now() - interval '3 days'")
    assert _sweep(app, []) == 0  # paused: no ticks
    app.pause_schedule("nightly", False)
    assert _sweep(app, []) == 1  # resumed: the missed policy (once) decides
    app.remove_schedule("nightly")
    assert app.list_schedules() == []
    db.execute("TRUNCATE pgqueue.schedules, pgqueue.schedule_ticks")

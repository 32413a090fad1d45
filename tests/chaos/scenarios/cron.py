"""Scenario 12: the worker enqueuing cron ticks is killed or frozen, again and again; no tick is lost or doubled.

Time is simulated on the database's clock, the only one cron reads (``schedule_due`` returns its ``now()``):
the workers' sessions put a schema of the scenario's own, ``chaos_clock``, before ``pg_catalog`` on their
``search_path``, so the unqualified ``now()`` of pgqueue's queries is ``chaos_clock.now()``: the real clock
plus a shift the scenario moves a minute at a time. Nothing in pgqueue knows. A trigger of the scenario's on
``pgqueue.schedule_ticks`` records which worker (by ``application_name``) enqueued each tick, so the leader
is known: whoever enqueued the last tick.
"""

from __future__ import annotations

import itertools
import random
import statistics
import subprocess
import time
from collections import Counter
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from pgqueue import App
from pgqueue.periodic import Schedule
from tests.chaos.harness import Run, scenario
from tests.chaos.probes import scalar, wait_until
from tests.chaos.scenarios.workers import lease_args

CLOCK = """
CREATE SCHEMA chaos_clock;
CREATE TABLE chaos_clock.shift (s interval NOT NULL);
INSERT INTO chaos_clock.shift VALUES ('0');
CREATE FUNCTION chaos_clock.now() RETURNS timestamptz LANGUAGE sql STABLE
    AS $$ SELECT pg_catalog.now() + (SELECT s FROM chaos_clock.shift) $$;
CREATE TABLE chaos_clock.tick_log (schedule text, tick timestamptz, job_id bigint, worker text,
                                   at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp());
CREATE FUNCTION chaos_clock.log_tick() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_clock.tick_log (schedule, tick, job_id, worker)
    VALUES (NEW.schedule, NEW.tick, NEW.job_id, current_setting('application_name'));
    RETURN NEW;
END $$;
CREATE TRIGGER chaos_log_tick AFTER INSERT ON pgqueue.schedule_ticks
    FOR EACH ROW EXECUTE FUNCTION chaos_clock.log_tick();
"""
SCHEDULE = "chaos-minutely"


def set_clock(db: psycopg.Connection[Any], simulated: datetime) -> datetime:
    """Move the simulated clock so that it reads ``simulated`` now; returns the real time it was moved at."""
    row = db.execute("UPDATE chaos_clock.shift SET s = %s - pg_catalog.now() RETURNING pg_catalog.now()",
                     (simulated,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


@scenario(12, "cron leader failover", quick={"minutes": 6, "workers": 3},
          full={"minutes": 60, "workers": 3})
def cron_failover(run: Run, minutes: int, workers: int) -> None:
    """A one-minute schedule over ``minutes`` simulated minutes. Before each tick the leader (the worker that
    enqueued the last one) is, in turn, SIGKILLed (a supervisor starts another), SIGSTOPped (and SIGCONTed two
    ticks later, with its sweep possibly half done), or left alone; the kill or pause lands at a random moment
    up to 1.2 s after the clock reaches the tick, so it often meets the leader inside its sweep."""
    dsn = run.database()
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(CLOCK)
    clocked = make_conninfo(dsn, options="-c search_path=chaos_clock,pg_catalog,public")
    with App(dsn=dsn) as app:
        app.add_schedule(Schedule(name=SCHEDULE, cron="* * * * *", task="chaos.work", queue="cron-ticks",
                                  kwargs={"ms": 0}))
    # Lease 60 s, heartbeat 1 s: workers stay registered however far the clock jumps within a few seconds.
    fleet = run.fleet(dsn, *lease_args(60.0, 1.0, concurrency=2))
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker() -> None:
        name = f"chaos-cron-{len(procs)}"
        (procs[name],) = fleet.start(env={"PGQUEUE_DSN": make_conninfo(clocked, application_name=name)})

    paused: dict[int, str] = {}  # the tick number at which to resume -> worker
    kills = pauses = 0
    delays: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as db:
        real_now: datetime = scalar(db, "SELECT pg_catalog.now()")
        # Simulated minute 0 is a whole minute a day ahead; the schedule has fired for it already.
        origin = (real_now + timedelta(days=1)).replace(second=0, microsecond=0)
        db.execute("UPDATE pgqueue.schedules SET last_tick_at = %s WHERE name = %s", (origin, SCHEDULE))
        set_clock(db, origin + timedelta(seconds=30))
        for _ in range(workers):
            start_worker()
        wait_until(lambda: scalar(db, "SELECT count(*) FROM pgqueue.workers") == workers, 30, what="workers")
        for minute in range(1, minutes + 1):
            tick = origin + timedelta(minutes=minute)
            leader = scalar(db, "SELECT worker FROM chaos_clock.tick_log ORDER BY at DESC LIMIT 1")
            moved_at = set_clock(db, tick + timedelta(seconds=1))
            action = ("kill", "pause", "none")[minute % 3] if leader in procs else "none"
            if action != "none" and leader not in paused.values():
                time.sleep(random.uniform(0.0, 1.2))
                if action == "kill":
                    fleet.kill(procs[leader])
                    start_worker()
                    kills += 1
                else:
                    fleet.pause(procs[leader])
                    paused[minute + 2] = leader
                    pauses += 1
            if minute in paused:
                fleet.resume(procs[paused.pop(minute)])
            enqueued_at = wait_until(partial(scalar, db, "SELECT at FROM chaos_clock.tick_log WHERE tick = %s",
                                             (tick,)), 30, interval=0.02, what=f"tick {minute}")
            delays.append((enqueued_at - moved_at).total_seconds())
        for worker in paused.values():
            fleet.resume(procs[worker])
        # A resumed leader may finish a sweep it began before it froze: give it time to try.
        time.sleep(3.0)
        set_clock(db, origin + timedelta(minutes=minutes, seconds=30))
        time.sleep(2.0)
        logged = db.execute("SELECT tick, job_id, worker FROM chaos_clock.tick_log WHERE schedule = %s ORDER BY tick",
                            (SCHEDULE,)).fetchall()
        ticked = ("(SELECT id FROM pgqueue.jobs WHERE queue = 'cron-ticks' UNION ALL "
                  "SELECT id FROM pgqueue.finished_jobs WHERE queue = 'cron-ticks') AS j")
        jobs = int(scalar(db, f"SELECT count(*) FROM {ticked}"))
        orphans = int(scalar(db, f"SELECT count(*) FROM {ticked} WHERE NOT EXISTS "
                                 "(SELECT 1 FROM pgqueue.schedule_ticks t WHERE t.job_id = j.id)"))
    fleet.stop_all()
    expected = {origin + timedelta(minutes=m) for m in range(1, minutes + 1)}
    per_tick = Counter(row[0] for row in logged)
    by = [row[2] for row in logged]
    run.figure("simulated one-minute ticks", minutes)
    run.figure("leader SIGKILLs / SIGSTOPs (each paused for 2 ticks)", f"{kills} / {pauses}")
    run.figure("ticks enqueued by a new leader", sum(1 for a, b in itertools.pairwise(by) if a != b))
    run.figure("workers that enqueued ticks", len(set(by)))
    run.check("ticks enqueued", len(per_tick), "==", minutes)
    run.check("ticks missed", len(expected - set(per_tick)), "==", 0)
    run.check("ticks enqueued more than once", sum(1 for n in per_tick.values() if n > 1), "==", 0)
    run.check("ticks enqueued that were not due", len(set(per_tick) - expected), "==", 0)
    run.check("tick jobs made (queued or run)", jobs, "==", minutes)
    run.check("tick jobs without a tick record", orphans, "==", 0)
    run.figure("tick enqueued after the clock reached it, median", round(statistics.median(delays), 3), "s")
    run.figure("tick enqueued after the clock reached it, slowest", round(max(delays), 3), "s")
    run.check("worker processes that crashed by themselves", len(fleet.crashed()), "==", 0)

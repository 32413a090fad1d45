"""Scenarios where the database misbehaves or is pushed: 4, 5, 11, 14 and 17."""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.chaos.harness import Run, scenario
from tests.chaos.load import Producer, enqueue_many
from tests.chaos.probes import db_now, scalar, wait_until
from tests.chaos.scenarios.workers import all_finished, errors_of, finished_states, lease_args

LISTENERS = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = 'LISTEN pgqueue_jobs'"


def listeners(dsn: str) -> int:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
            return int(scalar(conn, LISTENERS))
    except psycopg.OperationalError:
        return -1


def connect_retrying(dsn: str, timeout: float = 30) -> psycopg.Connection[Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(dsn, autocommit=True, connect_timeout=2)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- 4 ------------------------------------------------------------------------------------------------------------

@scenario(4, "PostgreSQL restart mid-load",
          quick={"restarts": ["fast", "immediate"], "workers": 2},
          full={"restarts": ["fast", "immediate", "immediate", "fast", "immediate", "fast"], "workers": 3})
def database_restart(run: Run, restarts: list[str], workers: int) -> None:
    """A private PostgreSQL is stopped (fast or immediate) and started again at random points while a producer
    enqueues and workers run jobs; nothing is restarted but the database."""
    lease, poll = 10.0, 5.0
    server = run.private_server()
    dsn = run.database(server.dsn)
    fleet = run.fleet(dsn, *lease_args(lease, 1.0, poll=poll, concurrency=8))
    procs = fleet.start(workers)
    wait_until(lambda: listeners(dsn) == workers, 30, what="workers to listen")
    resume_claims: list[float] = []
    resume_listen: list[float] = []
    with Producer(dsn, "chaos.work", {"ms": 20}, interval=0.005) as producer:
        for mode in restarts:
            time.sleep(random.uniform(0.5, 2.0))  # a random point of the load
            server.stop(mode)
            time.sleep(1.0)
            ready = server.boot()
            with connect_retrying(dsn) as db:
                ready_at = db_now(db)
                wait_until(lambda: listeners(dsn) == workers, 30, what="workers to listen again")
                resume_listen.append(time.monotonic() - ready)
                first = wait_until(lambda: scalar(db, "SELECT min(started_at) FROM pgqueue.jobs WHERE started_at > %s "
                                                      "UNION ALL SELECT min(started_at) FROM pgqueue.finished_jobs "
                                                      "WHERE started_at > %s ORDER BY 1 LIMIT 1",
                                                  (ready_at, ready_at)), 30, what="a claim after the restart")
                resume_claims.append((first - ready_at).total_seconds())
        time.sleep(1.0)
    acknowledged = producer.acknowledged
    with connect_retrying(dsn) as db:
        wait_until(lambda: all_finished(db, acknowledged), lease * 3 + 30, what="every acknowledged job to finish")
        states = finished_states(db, acknowledged)
        errors = errors_of(db, acknowledged)
        unacknowledged = scalar(db, "SELECT count(*) FROM (SELECT id FROM pgqueue.jobs UNION ALL "
                                    "SELECT id FROM pgqueue.finished_jobs) j WHERE NOT id = ANY(%s)", (acknowledged,))
    same_processes = all(p.poll() is None for p in procs)
    fleet.stop_all()
    runlog = fleet.runlog()
    run.figure("restarts (stop mode)", ", ".join(restarts))
    run.figure("acknowledged enqueues", len(acknowledged))
    run.figure("enqueues refused during the outages (retried by the client)", producer.failures)
    run.figure("committed enqueues whose reply was lost", unacknowledged)
    run.check("acknowledged enqueues lost", len(acknowledged) - sum(states.values()), "==", 0)
    run.check("acknowledged jobs completed", states["succeeded"], "==", len(acknowledged))
    run.check("worker processes restarted or dead", 0 if same_processes else 1, "==", 0)
    run.check("slowest return to listening after the database is up", round(max(resume_listen), 2), "<=", 5.0, "s")
    run.check("slowest first claim after the database is up", round(max(resume_claims), 2), "<=", 5.0, "s")
    run.figure("claims whose reply was lost (reclaimed after the lease)",
               sum(1 for e in errors if e[2] == "lease_expired"))
    run.check("failed attempts other than lost claims", sum(1 for e in errors if e[2] != "lease_expired"), "==", 0)
    run.check("jobs whose handler ran twice", sum(1 for ex in runlog.executions.values() if len(ex) > 1), "==", 0)


# -- 5 ------------------------------------------------------------------------------------------------------------

def latency(db: psycopg.Connection[Any], job_id: int) -> float:
    """Seconds from a job's commit to its claim, by the database clock."""
    wait_until(lambda: all_finished(db, [job_id]), 30, what=f"job {job_id}")
    return float(scalar(db, "SELECT extract(epoch FROM started_at - created_at) FROM pgqueue.finished_jobs "
                            "WHERE id = %s", (job_id,)))


def enqueue_one(db: psycopg.Connection[Any]) -> int:
    return int(scalar(db, "SELECT pgqueue.enqueue('chaos.work')"))


def terminate_listener(db: psycopg.Connection[Any]) -> int:
    return len(db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND query = 'LISTEN pgqueue_jobs'").fetchall())


@scenario(5, "LISTEN connection killed", quick={"poll": 2.0, "probes": 4}, full={"poll": 5.0, "probes": 12})
def listener_killed(run: Run, poll: float, probes: int) -> None:
    """The listener is terminated again and again, then kept away (the database refuses new connections)."""
    dsn = run.database()
    fleet = run.fleet(dsn, *lease_args(10.0, 1.0, poll=poll, concurrency=4))
    fleet.start()
    dbname = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(dsn, autocommit=True) as db:
        wait_until(lambda: scalar(db, LISTENERS) == 1, 30, what="the worker to listen")
        time.sleep(0.2)

        def probe_round(gap: float) -> list[float]:
            found = []
            for _ in range(probes):
                time.sleep(random.uniform(0.5, 1.0) * gap)
                found.append(latency(db, enqueue_one(db)))
            return found

        before = probe_round(0.3)
        kills, during_kills = 0, []
        for _ in range(probes):
            kills += terminate_listener(db)
            time.sleep(random.uniform(0.0, 0.2))
            during_kills.append(latency(db, enqueue_one(db)))
        wait_until(lambda: scalar(db, LISTENERS) == 1, 30, what="the worker to listen again")
        # An outage: the listener is killed and cannot come back while the database refuses new connections.
        with psycopg.connect(run.server_dsn, autocommit=True) as server:
            server.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(dbname)))
            try:
                kills += terminate_listener(db)
                time.sleep(0.3)
                outage = probe_round(poll)
            finally:
                server.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(dbname)))
        back_at = time.monotonic()
        wait_until(lambda: scalar(db, LISTENERS) == 1, 30, what="the worker to listen after the outage")
        relisten = time.monotonic() - back_at
        time.sleep(0.2)
        after = probe_round(0.3)
    fleet.stop_all()
    run.figure("safety poll", poll, "s")
    run.figure("listener connections terminated", kills)
    run.figure("median wake-up before", round(statistics.median(before) * 1000, 1), "ms")
    run.figure("median wake-up while the listener is killed repeatedly",
               round(statistics.median(during_kills) * 1000, 1), "ms")
    run.figure("median wake-up while it cannot reconnect (outage)", round(statistics.median(outage), 3), "s")
    run.check("longest wake-up during the outage", round(max(outage), 3), "<=", poll + 0.5, "s")
    run.check("longest wake-up while killed repeatedly", round(max(during_kills), 3), "<=", poll + 0.5, "s")
    run.check("median wake-up during the outage (falls back to the poll)", round(statistics.median(outage), 3),
              ">", 0.05, "s")
    run.check("listening again after the outage within", round(relisten, 2), "<=", 3.0, "s")
    run.check("longest wake-up after", round(max(after) * 1000, 1), "<=", 200.0, "ms")
    run.figure("median wake-up after", round(statistics.median(after) * 1000, 1), "ms")

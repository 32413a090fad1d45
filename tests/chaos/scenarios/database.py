"""Scenarios where the database misbehaves or is pushed: 4, 5, 11, 14 and 17."""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime
from functools import partial
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pgqueue.migrate import available
from pgqueue.queries import q
from tests.chaos.harness import Run, scenario
from tests.chaos.load import Producer
from tests.chaos.probes import LockWatch, db_now, scalar, wait_until
from tests.chaos.scenarios.workers import all_finished, errors_of, finished_states, lease_args
from tests.conftest import ROOT

LISTENERS = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
             "AND query LIKE 'LISTEN pgqueue_jobs%'")


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
                first = wait_until(partial(first_claim_after, db, ready_at), 30, what="a claim after the restart")
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


def first_claim_after(db: psycopg.Connection[Any], moment: datetime) -> datetime | None:
    return scalar(db, "SELECT min(s) FROM (SELECT started_at AS s FROM pgqueue.jobs WHERE started_at > %(t)s "
                      "UNION ALL SELECT started_at FROM pgqueue.finished_jobs WHERE started_at > %(t)s) AS c",
                  {"t": moment})  # type: ignore[no-any-return]


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
                          "AND query LIKE 'LISTEN pgqueue_jobs%'").fetchall())


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


# -- 11 -----------------------------------------------------------------------------------------------------------

def run_cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgqueue", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PGQUEUE_DSN": dsn})


@scenario(11, "dead-letter bulk retry during live load", quick={"dead": 10_000}, full={"dead": 10_000})
def dead_letter_retry(run: Run, dead: int) -> None:
    """``pgqueue dlq retry --queue dlq`` on ``dead`` dead jobs while a producer and two workers keep busy."""
    dsn = run.database()
    fleet = run.fleet(dsn, *lease_args(10.0, 1.0, concurrency=16))
    fleet.start(2)
    with psycopg.connect(dsn, autocommit=True) as db:
        ids = [int(i) for (i,) in db.execute(
            "INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt, max_attempts, "
            "scheduled_for, created_at, finished_at, error_type) "
            "SELECT nextval('pgqueue.job_id_seq'), 'dlq', 'chaos.work', '[]', '{}', 0, 'dead', 3, 3, now(), now(), "
            "now(), 'RuntimeError' FROM generate_series(1, %s) RETURNING id", (dead,)).fetchall()]
        with Producer(dsn, "chaos.work", {"ms": 5}, interval=0.005) as producer, LockWatch(dsn) as locks:
            time.sleep(1.0)
            started = time.monotonic()
            first = run_cli(dsn, "dlq", "retry", "--queue", "dlq")
            took = time.monotonic() - started
            second = run_cli(dsn, "dlq", "retry", "--queue", "dlq")
            time.sleep(0.5)
        wait_until(lambda: all_finished(db, ids + producer.acknowledged), 120, what="retried and live jobs to finish")
        states = finished_states(db, ids)
        live = finished_states(db, producer.acknowledged)
    fleet.stop_all()
    runlog = fleet.runlog()
    run.figure("dead jobs", dead)
    run.figure("live jobs enqueued meanwhile", len(producer.acknowledged))
    run.check("requeued by the first retry", first.stdout.strip(), "==", f"queued {dead} dead jobs again")
    run.check("requeued by a second retry", second.stdout.strip(), "==", "queued 0 dead jobs again")
    run.figure("first retry, whole CLI call", round(took, 2), "s")
    run.check("longest lock held on a pgqueue table", round(locks.held, 3), "<=", 1.0, "s")
    run.check("longest wait for a lock", round(locks.waited, 3), "<=", 1.0, "s")
    run.check("retried jobs completed", states["succeeded"], "==", dead)
    run.check("retried jobs run more than once", sum(1 for j in ids if runlog.count(j) > 1), "==", 0)
    run.check("live jobs completed", live["succeeded"], "==", len(producer.acknowledged))


# -- 14 -----------------------------------------------------------------------------------------------------------

# A throughput ratio: speed is measured by `make chaos` and bench/, never asserted inside `make test`, where a
# loaded machine would make it fail at random.
@scenario(14, "NOTIFY contention", quick=None, full={"processes": 4, "threads": 75, "seconds": 4.0, "cycles": 8})
def notify_contention(run: Run, processes: int, threads: int, seconds: float, cycles: int) -> None:
    """Hundreds of concurrent single-job enqueues on a private server that allows that many connections, in
    windows that cycle through: notifications on; off (``SET pgqueue.notify = off``, the trigger still runs);
    and no trigger at all. The shared machine's load drifts, so each window is compared with its neighbours in
    the same cycle and the median ratio is the figure. A first cycle is run and reported but not counted: its
    first window measured the enqueuers' new connections warming their caches (it read 0.6-0.7x its neighbours in every
    run, always against ``on``, the mode that came first)."""
    gap = 0.4
    modes = ("on", "off", "none")
    server = run.private_server(max_connections=str(processes * threads + 50))
    dsn = run.database(server.dsn)
    fleet = run.fleet(dsn, "--queue", "elsewhere")  # a worker LISTENs (its queue is another), as in production
    fleet.start()
    wait_until(lambda: listeners(dsn) == 1, 30, what="a listener")
    first = time.time() + 3.0 + 0.03 * threads  # time for every process to open its connections
    windows = [(first + i * (seconds + gap), modes[i % 3]) for i in range(3 * (cycles + 1))]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.chaos.enqueuers", dsn, str(threads), str(seconds),
                               *(f"{start}:{'off' if mode == 'off' else 'on'}" for start, mode in windows)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    with psycopg.connect(dsn, autocommit=True) as db:
        for start, mode in windows:
            # Switch in the gap before the window, while the enqueuers are idle.
            time.sleep(max(0.0, start - gap / 2 - time.time()))
            state = "DISABLE" if mode == "none" else "ENABLE"
            db.execute(f"ALTER TABLE pgqueue.jobs {state} TRIGGER jobs_notify_inserted")
        per_process = [list(map(int, p.communicate(timeout=len(windows) * (seconds + gap) + 120)[0].split()))
                       for p in procs]
        db.execute("ALTER TABLE pgqueue.jobs ENABLE TRIGGER jobs_notify_inserted")
        enqueued = int(scalar(db, "SELECT count(*) FROM pgqueue.jobs"))
    fleet.stop_all()
    totals = [sum(column) for column in zip(*per_process, strict=True)]
    warm_up, totals = totals[:3], totals[3:]
    rates = {mode: [n / seconds for n in totals[i::3]] for i, mode in enumerate(modes)}
    run.figure("concurrent enqueuers", processes * threads)
    run.figure("jobs enqueued", enqueued)
    run.figure("enqueues/s in the warm-up cycle, not counted (on, off, none)",
               ", ".join(f"{n / seconds:,.0f}" for n in warm_up))
    for mode, label in (("on", "notifications on"), ("off", "pgqueue.notify = off"), ("none", "no trigger")):
        run.figure(f"enqueues/s, {label} (per window)", ", ".join(f"{r:,.0f}" for r in rates[mode]))
    versus_none = statistics.median(a / b for a, b in zip(rates["on"], rates["none"], strict=True))
    run.figure("notifications on vs no trigger at all (median of cycles)", round(versus_none, 3), "x")
    versus_off = statistics.median(a / b for a, b in zip(rates["on"], rates["off"], strict=True))
    run.check("notifications on vs off (median of cycles)", round(versus_off, 3), ">=", 0.9, "x")


# -- 17 -----------------------------------------------------------------------------------------------------------

@scenario(17, "migration under load", quick={"seconds": 4.0}, full={"seconds": 12.0})
def migration_under_load(run: Run, seconds: float) -> None:
    """``pgqueue migrate`` to the newest schema while a producer and two workers run at a steady load.

    The database starts with every migration but the newest, as the previous release left it. Workers check
    the schema version only when they start, so the newest is recorded for their start and unrecorded again
    before the migration runs: from then on they run against the older schema, as deployed workers do while
    the upgrade is applied."""
    shipped = available()
    newest = shipped[-1]
    dsn = run.database(migrated=False)
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(q("migrations_prepare").encode())
        for migration in shipped[:-1]:
            with db.transaction():
                db.execute(migration.sql.encode())
                db.execute(q("migrations_record"), {"version": migration.version, "name": migration.name})
        db.execute(q("migrations_record"), {"version": newest.version, "name": newest.name})
        fleet = run.fleet(dsn, *lease_args(10.0, 1.0, concurrency=8))
        fleet.start(2)
        wait_until(lambda: scalar(db, "SELECT count(*) FROM pgqueue.workers") == 2, 30, what="workers")
        db.execute("DELETE FROM pgqueue.schema_migrations WHERE version = %s", (newest.version,))
        with Producer(dsn, "chaos.work", {"ms": 5}, interval=0.003) as producer, LockWatch(dsn) as locks:
            time.sleep(seconds / 2)
            started = time.monotonic()
            migrated = run_cli(dsn, "migrate")
            took = time.monotonic() - started
            time.sleep(seconds / 2)
        wait_until(lambda: all_finished(db, producer.acknowledged), 60, what="the jobs enqueued under load")
        states = finished_states(db, producer.acknowledged)
        errors = errors_of(db, producer.acknowledged)
        version = scalar(db, "SELECT max(version) FROM pgqueue.schema_migrations")
    fleet.stop_all()
    run.figure("migration applied", f"{newest.version:04d}_{newest.name}")
    run.figure("jobs enqueued under load", len(producer.acknowledged))
    run.check("`pgqueue migrate` output", migrated.stdout.strip(), "==",
              f"applied migrations {newest.version}; schema is at version {newest.version}")
    run.check("schema version after", version, "==", newest.version)
    run.figure("migration, whole CLI call", round(took, 2), "s")
    run.check("enqueues refused during the migration", producer.failures, "==", 0)
    run.check("jobs failed", len(errors), "==", 0)
    run.check("jobs completed", states["succeeded"], "==", len(producer.acknowledged))
    run.check("longest lock held on a pgqueue table", round(locks.held, 3), "<=", 1.0, "s")
    run.check("longest wait for a lock", round(locks.waited, 3), "<=", 1.0, "s")
    run.check("worker crashes", len(fleet.crashed()), "==", 0)

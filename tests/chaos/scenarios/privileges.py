"""Scenario 16: least privilege. The roles `pgqueue roles --apply` makes, against the whole permission matrix."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgqueue.queries import q
from pgqueue.roles import role_names
from tests.chaos.harness import Run, scenario
from tests.chaos.probes import scalar, wait_until
from tests.chaos.scenarios.workers import all_finished, lease_args
from tests.conftest import ROOT

WORKER = uuid.UUID(int=6)
P: dict[str, Any] = {
    "limit": 1, "worker_id": WORKER, "lease": 30.0, "ids": [1], "attempts": [1], "results": ["1"], "jobs_done": 0,
    "jobs_failed": 0, "state": "running", "task": None, "queue": None, "states": ["dead"], "older_than": 0.0,
    "id": WORKER, "host": "h", "pid": 1, "queues": None, "concurrency": 1, "progress_ids": [], "progress": [],
    "progress_messages": [],
}
# Every operation, and the roles that may do it.
MATRIX: list[tuple[str, str, dict[str, Any] | None, set[str]]] = [
    ("enqueue through pgqueue.enqueue()", "SELECT pgqueue.enqueue('t.x', '{}')", None, {"enqueue", "worker", "admin"}),
    ("insert into jobs directly", "INSERT INTO pgqueue.jobs (task) VALUES ('t.x')", None, {"worker", "admin"}),
    ("select jobs", "SELECT count(*) FROM pgqueue.jobs", None, {"worker", "admin"}),
    ("claim", q("job_claim_any"), P, {"worker", "admin"}),
    ("update jobs", "UPDATE pgqueue.jobs SET priority = 1", None, {"worker", "admin"}),
    ("delete jobs", "DELETE FROM pgqueue.jobs", None, {"worker", "admin"}),
    ("heartbeat", q("job_heartbeat"), P, {"worker", "admin"}),
    ("complete", q("job_complete_many"), P, {"worker", "admin"}),
    ("reap expired leases", q("job_reap_expired"), {"limit": 10}, {"worker", "admin"}),
    ("register a worker", q("worker_register"), P, {"worker", "admin"}),
    ("read the schema version", "SELECT count(*) FROM pgqueue.schema_migrations", None, {"worker", "admin"}),
    ("queue stats", q("queue_stats"), None, {"worker", "admin"}),
    ("list dead letters", q("job_dead_list"), {**P, "ids": None, "limit": 10}, {"worker", "admin"}),
    ("retry dead letters", q("job_retry_finished"), {**P, "ids": None}, {"worker", "admin"}),
    ("delete dead letters", q("job_delete_dead"), {**P, "ids": None}, {"worker", "admin"}),
    ("prune finished jobs", q("job_prune"), {**P, "limit": 10}, {"worker", "admin"}),
    ("truncate finished jobs", "TRUNCATE pgqueue.finished_jobs", None, {"admin"}),
    ("update finished jobs", "UPDATE pgqueue.finished_jobs SET priority = 1", None, {"admin"}),
    ("alter a table (migrations)", "ALTER TABLE pgqueue.jobs ADD COLUMN x integer", None, set()),
    ("create in schema pgqueue", "CREATE TABLE pgqueue.intruder (x integer)", None, set()),
]
DEFINER_WITHOUT_PATH = """
SELECT count(*) FROM pg_proc
WHERE pronamespace = 'pgqueue'::regnamespace AND prosecdef
  AND NOT EXISTS (SELECT FROM unnest(proconfig) c WHERE c LIKE 'search_path=%%')
"""


def allowed(db: psycopg.Connection[Any], role: str, statement: str, params: dict[str, Any] | None) -> bool:
    """Run ``statement`` as ``role`` in a transaction that is rolled back; False on permission denied."""
    try:
        with db.transaction(force_rollback=True):
            db.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            db.execute(statement, params)
    except pg_errors.InsufficientPrivilege:
        return False
    return True


@scenario(16, "least privilege", quick={"jobs": 20}, full={"jobs": 200})
def least_privilege(run: Run, jobs: int) -> None:
    """`pgqueue roles --apply` with a prefix of this run; every role against every operation; then a real
    worker process logged in with only the worker role runs jobs enqueued by the enqueue-only role."""
    prefix = f"chaos{uuid.uuid4().hex[:8]}_"
    names = {**role_names(prefix), "nobody": f"{prefix}nobody"}
    login = f"{prefix}login_worker"

    def drop_roles() -> None:
        with psycopg.connect(run.server_dsn, autocommit=True) as server:
            for role in [login, *names.values()]:
                server.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    run.defer(drop_roles)  # after the database is dropped (cleanups run last first)
    dsn = run.database()
    applied = subprocess.run([sys.executable, "-m", "pgqueue", "roles", "--prefix", prefix, "--apply"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, env={"PGQUEUE_DSN": dsn, "PATH": ""})
    again = subprocess.run([sys.executable, "-m", "pgqueue", "roles", "--prefix", prefix, "--apply"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60, env={"PGQUEUE_DSN": dsn, "PATH": ""})
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(names["nobody"])))
        db.execute(sql.SQL("GRANT USAGE ON SCHEMA pgqueue TO {}").format(sql.Identifier(names["nobody"])))
        wrong = []
        for label, statement, params, who in MATRIX:
            for kind in ("enqueue", "worker", "admin", "nobody"):
                if allowed(db, names[kind], statement, params) != (kind in who):
                    wrong.append(f"{kind}: {label} {'allowed' if kind not in who else 'denied'}")
        definer_unpinned = int(scalar(db, DEFINER_WITHOUT_PATH))
        enqueue_definer = bool(scalar(db, "SELECT bool_and(prosecdef) FROM pg_proc WHERE proname = 'enqueue' "
                                          "AND pronamespace = 'pgqueue'::regnamespace"))
        # A real worker with only the worker role's rights, fed by the enqueue-only role.
        db.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(sql.Identifier(login),
                                                                      sql.Identifier(names["worker"])))
        fleet = run.fleet(make_conninfo(dsn, user=login), *lease_args(5.0, 1.0))
        fleet.start()
        ids = []
        with db.transaction():
            db.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(names["enqueue"])))
            ids = [int(scalar(db, "SELECT pgqueue.enqueue('chaos.work', '{\"ms\": 1}')")) for _ in range(jobs)]
        wait_until(lambda: all_finished(db, ids), 60, what="the least-privileged worker to run the jobs")
        worker_user = scalar(db, "SELECT usename FROM pg_stat_activity WHERE application_name = 'pgqueue' "
                                 "AND datname = current_database() LIMIT 1")
    fleet.stop_all()
    run.figure("roles", ", ".join(role_names(prefix).values()))
    run.check("`pgqueue roles --apply` exit codes (twice)", (applied.returncode, again.returncode), "==", (0, 0))
    run.figure("operations x roles checked", len(MATRIX) * 4)
    run.check("permission matrix cells wrong", len(wrong), "==", 0)
    for line in wrong:
        run.note(line)
    run.check("pgqueue.enqueue is SECURITY DEFINER", enqueue_definer, "==", True)
    run.check("SECURITY DEFINER functions without a pinned search_path", definer_unpinned, "==", 0)
    run.check("jobs run by a worker logged in with only the worker role", len(ids), "==", jobs)
    run.check("the worker's database user", worker_user, "==", login)
    run.check("worker crashes", len(fleet.crashed()), "==", 0)

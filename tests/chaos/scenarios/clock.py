"""Scenario 9: workers whose clock is skewed make the same lease, retry and schedule decisions.

The skew is real: each worker process runs under libfaketime (``LD_PRELOAD``, ``FAKETIME``), so its
``time.time()`` and ``datetime.now()`` are off by hours; the database's clock is the only one compared.
"""

from __future__ import annotations

from pathlib import Path

import libfaketime
import psycopg

from tests.chaos.apps import POISON_RETRY
from tests.chaos.harness import Run, scenario
from tests.chaos.load import enqueue_many
from tests.chaos.probes import db_now, scalar, wait_until
from tests.chaos.scenarios.workers import all_finished, errors_of, lease_args, worker_ids

LIBFAKETIME = str(Path(libfaketime.__file__).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1")


def skewed(offset: str) -> dict[str, str]:
    """Environment that puts a process's clock ``offset`` away (libfaketime syntax: '+2h', '-90m')."""
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_NO_CACHE": "1"}


@scenario(9, "clock skew", quick={"skews": ["+2h", "-2h"]},
          full={"skews": ["+0", "+2h", "-2h", "+1d", "-30m"]})
def clock_skew(run: Run, skews: list[str]) -> None:
    """For each skew, one worker runs: a job it holds (its lease length), a failing job (its retry delay), a
    delayed job (when it starts), and, killed while holding jobs, how soon another skewed worker reclaims them."""
    lease, heartbeat = 1.5, 0.5
    dsn = run.database()
    leases, delays, lateness, reclaims, clocks = [], [], [], [], []
    for offset in skews:
        fleet = run.fleet(dsn, *lease_args(lease, heartbeat, poll=1.0, concurrency=8), env=skewed(offset))
        (worker,) = fleet.start()
        with psycopg.connect(dsn, autocommit=True) as db:
            held = enqueue_many(db, "chaos.work", [{"ms": 1500}] * 2)
            wait_until(lambda ids=held: scalar(db, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND "
                                                   "state = 'running'", (ids,)) == 2, 30, what="jobs to start")
            leases.append(float(scalar(db, "SELECT max(abs(extract(epoch FROM lease_expires_at - started_at) - %s)) "
                                           "FROM pgqueue.jobs WHERE id = ANY(%s)", (lease, held))))
            failing = enqueue_many(db, "chaos.raise", [{}], max_attempts=2)
            delayed = enqueue_many(db, "chaos.work", [{}], run_at=None)
            db.execute("UPDATE pgqueue.jobs SET state = 'scheduled', scheduled_for = now() + interval '1 second' "
                       "WHERE id = %s", (delayed[0],))
            wait_until(lambda ids=failing + delayed + held: all_finished(db, ids), 30, what="the skewed worker's jobs")
            delays.append(float(scalar(
                db, "SELECT extract(epoch FROM n.started_at - e.failed_at) FROM pgqueue.job_errors e "
                    "JOIN pgqueue.job_errors n ON n.job_id = e.job_id AND n.attempt = 2 WHERE e.job_id = %s "
                    "AND e.attempt = 1", failing)))
            lateness.append(float(scalar(db, "SELECT extract(epoch FROM started_at - scheduled_for) "
                                             "FROM pgqueue.finished_jobs WHERE id = %s", delayed)))
            # Killed while holding jobs: a second worker with the same skew reclaims them.
            held = enqueue_many(db, "chaos.work", [{"ms": 5000}] * 2)
            wait_until(lambda ids=held: scalar(db, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND "
                                                   "state = 'running'", (ids,)) == 2, 30, what="jobs to start")
            wid = worker_ids(db, [worker.pid])[worker.pid]
            fleet.start()
            at = db_now(db)
            fleet.kill(worker)
            wait_until(lambda ids=held: len(errors_of(db, ids)) == 2, 30, what="the reclaim")
            reclaims.append(max((e[5] - at).total_seconds() for e in errors_of(db, held) if e[4] == wid))
            clocks.append(fleet.output().count("Traceback"))
            db.execute("DELETE FROM pgqueue.jobs")
        fleet.stop_all()
    run.figure("worker clock offsets (libfaketime)", ", ".join(skews))
    run.check("lease length error, any skew", round(max(leases), 3), "<=", 0.01, "s")
    low, high = POISON_RETRY[0] * 0.5, POISON_RETRY[0]
    run.check("retry delay after attempt 1, shortest", round(min(delays), 3), ">=", round(low, 3), "s")
    run.check("retry delay after attempt 1, longest", round(max(delays), 3), "<=", high + 0.3, "s")
    run.check("delayed job started before its time", round(min(lateness), 3), ">=", 0.0, "s")
    run.check("delayed job started late by at most", round(max(lateness), 3), "<=", 0.5, "s")
    run.check("reclaim after a kill, slowest (R = L + H + S)", round(max(reclaims), 3), "<=",
              lease + 2 * heartbeat, "s")
    run.check("worker tracebacks", sum(clocks), "==", 0)
    run.figure("per skew: reclaim after kill", ", ".join(f"{r:.2f} s" for r in reclaims))

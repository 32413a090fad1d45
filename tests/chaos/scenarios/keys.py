"""Scenario 13: many connections enqueue with one key at once, over and over; the database keeps one job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import psycopg

from tests.chaos.harness import Run, scenario
from tests.chaos.probes import scalar
from tests.conftest import ROOT

PROCESSES = 4  # enqueuing processes, so the callers' Python is not what limits the race

# How the key is given, and what it promises: an idempotency key makes one job for as long as the key lives
# (whatever becomes of the job); a unique key, one unfinished job. No job runs here, so both must give one.
OPTIONS = ("idempotency_key", "unique_key")


@scenario(13, "idempotency race", quick={"connections": 16, "calls": 50},
          full={"connections": 64, "calls": 1000})
def idempotency_race(run: Run, connections: int, calls: int) -> None:
    """``connections`` connections (half autocommit, half in explicit transactions), spread over a few
    processes, each enqueue one key ``calls`` times from the same instant, through the Python API."""
    run.figure("connections x calls each", f"{connections} x {calls:,}")
    for option in OPTIONS:
        dsn = run.database()
        submitted = connections * calls
        per_process = [connections // PROCESSES + (i < connections % PROCESSES) for i in range(PROCESSES)]
        start = time.time() + 3.0  # every process connected and waiting by then
        env = {**os.environ, "PGQUEUE_DSN": dsn}
        procs = [subprocess.Popen([sys.executable, "-m", "tests.chaos.keyed", dsn, option, "race:order-42", str(n),
                                   str(calls), str(start)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for n in per_process if n]
        answers: Counter[int] = Counter()
        errors, first_error = 0, None
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise AssertionError(f"an enqueuing process failed ({proc.returncode}): {err.strip()[-2000:]}")
            report = json.loads(out.strip().splitlines()[-1])
            answers.update({int(k): v for k, v in report["ids"].items()})
            errors += report["errors"]
            first_error = first_error or report["first_error"]
        seconds = time.time() - start
        with psycopg.connect(dsn, autocommit=True) as db:
            created = int(scalar(db, "SELECT (SELECT count(*) FROM pgqueue.jobs) "
                                     "+ (SELECT count(*) FROM pgqueue.finished_jobs)"))
            keys = int(scalar(db, "SELECT count(*) FROM pgqueue.enqueue_keys"))
        run.figure(f"{option}: calls submitted", submitted)
        run.check(f"{option}: jobs created", created, "==", 1)
        run.figure(f"{option}: duplicates refused (answered with the one job)", sum(answers.values()) - created)
        run.check(f"{option}: distinct job ids returned", len(answers), "==", 1)
        run.check(f"{option}: calls answered", sum(answers.values()), "==", submitted)
        run.check(f"{option}: calls that raised", errors, "==", 0)
        if option == "idempotency_key":
            run.check(f"{option}: key rows", keys, "==", 1)
        run.figure(f"{option}: time for all calls", round(seconds, 2), "s")
        run.figure(f"{option}: calls per second", round(submitted / seconds))
        if first_error:
            run.note(f"{option}: first error: {first_error}")
    run.note("SQL path: pgqueue.enqueue(...) takes no idempotency or unique key, so only the Python API is raced")

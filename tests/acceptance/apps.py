"""The app that acceptance tests run in real worker processes (``pgqueue work tests.acceptance.apps:app``)."""

from __future__ import annotations

import gc
import os
import time

from pgqueue import App, Context

app = App()  # PGQUEUE_DSN from the test


def _log(line: str) -> None:
    folder = os.environ.get("PGQUEUE_TEST_RUNLOG")
    if folder:
        with open(os.path.join(folder, f"{os.getpid()}.log"), "a") as out:
            out.write(line + "\n")


@app.task(name="t.record")
def record(ctx: Context, n: int = 0) -> int:
    """Writes one line per execution: how tests see that nothing runs twice."""
    _log(f"{ctx.job_id} {ctx.attempt}")
    return n


@app.task(name="t.sleep")
def sleep(ctx: Context, seconds: float) -> float:
    _log(f"start {ctx.job_id} {ctx.attempt}")
    time.sleep(seconds)
    _log(f"end {ctx.job_id} {ctx.attempt}")
    return seconds


@app.task(name="t.collector")
def collector() -> list[int]:
    """The worker process's garbage collector settings: young threshold, objects frozen at start-up."""
    return [gc.get_threshold()[0], gc.get_freeze_count()]


@app.task(name="t.tick")
def tick() -> None:
    """Enqueued by a cron schedule in the tests."""


@app.task(name="t.hold")
def hold(seconds: float) -> None:
    time.sleep(seconds)

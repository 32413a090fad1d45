"""The app that effectively-once process tests run (``pgqueue work|relay tests.once.apps:app``).

Handlers kill their own process with SIGKILL at the worst moments, on purpose: after writing but before the
commit, inside an idempotent block, right after one. Each such moment is first written to the run log, so the
test knows exactly which attempts died where.
"""

from __future__ import annotations

import os
import random
import signal

from pgqueue import App, Context, HttpSink

app = App()  # PGQUEUE_DSN from the test

SECRET = "relay-test-secret"
if os.environ.get("PGQUEUE_TEST_RECEIVER"):
    app.sink("kill.*", HttpSink(os.environ["PGQUEUE_TEST_RECEIVER"], secret=SECRET, timeout=5))


def log(line: str) -> None:
    folder = os.environ.get("PGQUEUE_TEST_RUNLOG")
    if folder:
        with open(os.path.join(folder, f"{os.getpid()}.log"), "a") as out:
            out.write(line + "\n")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def logged(folder: str, prefix: str) -> set[str]:
    """Lines starting with ``prefix`` in the run log (across every process so far)."""
    found = set()
    for name in os.listdir(folder):
        if name.endswith(".log"):
            with open(os.path.join(folder, name)) as source:
                found.update(line.strip() for line in source if line.startswith(prefix))
    return found


@app.task(name="once.write", transactional=True, max_attempts=100)
def write(ctx: Context, n: int) -> int:
    """Writes its row, then (sometimes) dies before the row and the job's completion can commit."""
    ctx.conn.execute("INSERT INTO public.once_effects (job_id, n, attempt) VALUES (%s, %s, %s)",
                     (ctx.job_id, n, ctx.attempt))
    if random.random() < float(os.environ.get("PGQUEUE_TEST_KILL_RATE", "0")):
        log(f"killed {ctx.job_id} {ctx.attempt}")
        die()
    return n


@app.task(name="once.pay", max_attempts=100)
def pay(ctx: Context, order: int) -> str:
    """An outside effect in an idempotent block; each job dies once inside the block and once just after it."""
    folder = os.environ["PGQUEUE_TEST_RUNLOG"]
    with ctx.idempotent(f"pay:{order}") as once:
        if once.needed:
            log(f"start {ctx.job_id} {ctx.attempt}")
            if f"crash-inside {ctx.job_id}" not in logged(folder, "crash-inside"):
                log(f"crash-inside {ctx.job_id}")
                die()
            log(f"done {ctx.job_id} {ctx.attempt}")
            once.result = f"receipt-{order}-{ctx.attempt}"
    if f"crash-after {ctx.job_id}" not in logged(folder, "crash-after"):
        log(f"crash-after {ctx.job_id}")
        die()
    log(f"returned {ctx.job_id} {ctx.attempt}")
    return str(once.result)

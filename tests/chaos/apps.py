"""The app the chaos suite runs in real worker processes (``pgqueue work tests.chaos.apps:app``).

Each handler logs its start and end (see ``tests.chaos.fleet``), so the suite counts what really ran.
Options that scenarios measure against (timeouts, attempts, backoff) are constants here.
"""

from __future__ import annotations

import asyncio
import os
import time

from pgqueue import App, Context

app = App(pool_size=int(os.environ.get("CHAOS_POOL_SIZE", "4")))  # PGQUEUE_DSN from the suite

HANG_TIMEOUT = 1.0  # chaos.hang's timeout, seconds
HANG_RETRY = (0.5, 0.5)  # its retry_base and retry_cap: the retry comes 0.25-0.5 s after the timeout
POISON_ATTEMPTS = 3
POISON_RETRY = (0.2, 0.4)


def _log(kind: str, ctx: Context) -> None:
    folder = os.environ.get("CHAOS_RUNLOG")
    if folder:
        line = f"{kind} {ctx.job_id} {ctx.attempt} {ctx.worker_id}\n".encode()
        fd = os.open(os.path.join(folder, f"{os.getpid()}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


@app.task(name="chaos.work", max_attempts=100)
def work(ctx: Context, ms: float = 0.0, n: int = 0) -> int:
    """A short job: sleeps ``ms`` milliseconds."""
    _log("S", ctx)
    if ms:
        time.sleep(ms / 1000)
    _log("E", ctx)
    return n


@app.task(name="chaos.work_async", max_attempts=100)
async def work_async(ctx: Context, ms: float = 0.0, n: int = 0) -> int:
    _log("S", ctx)
    if ms:
        await asyncio.sleep(ms / 1000)
    _log("E", ctx)
    return n


@app.task(name="chaos.spin", max_attempts=100)
def spin(ctx: Context, seconds: float) -> float:
    """A long CPU-bound job in a thread: holds the GIL as much as Python lets it."""
    _log("S", ctx)
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        count += sum(range(1000))
    _log("E", ctx)
    return seconds


@app.task(name="chaos.hang", timeout=HANG_TIMEOUT, max_attempts=3, retry_base=HANG_RETRY[0],
          retry_cap=HANG_RETRY[1])
def hang(ctx: Context, hang_seconds: float) -> str:
    """The first attempt hangs past the timeout, then returns anyway; later attempts return at once."""
    _log("S", ctx)
    if ctx.attempt == 1:
        time.sleep(hang_seconds)
    _log("E", ctx)
    return f"attempt {ctx.attempt}"


@app.task(name="chaos.hang_async", timeout=HANG_TIMEOUT, max_attempts=3, retry_base=HANG_RETRY[0],
          retry_cap=HANG_RETRY[1])
async def hang_async(ctx: Context, hang_seconds: float) -> str:
    _log("S", ctx)
    if ctx.attempt == 1:
        await asyncio.sleep(hang_seconds)
    _log("E", ctx)
    return f"attempt {ctx.attempt}"


@app.task(name="chaos.raise", max_attempts=POISON_ATTEMPTS, retry_base=POISON_RETRY[0], retry_cap=POISON_RETRY[1])
def poison_raise(ctx: Context, n: int = 0) -> None:
    _log("S", ctx)
    raise RuntimeError(f"poison job {ctx.job_id} raises on every attempt")


@app.task(name="chaos.exit", max_attempts=POISON_ATTEMPTS, retry_base=POISON_RETRY[0], retry_cap=POISON_RETRY[1])
def poison_exit(ctx: Context, n: int = 0) -> None:
    """Kills its own worker process, as a segfaulting extension or an OOM kill would."""
    _log("S", ctx)
    os._exit(3)


@app.task(name="chaos.args", max_attempts=POISON_ATTEMPTS, retry_base=POISON_RETRY[0], retry_cap=POISON_RETRY[1])
def poison_args(ctx: Context, n: int = 0) -> int:
    """Enqueued from SQL with arguments it cannot take (or cannot decode): it never starts."""
    _log("S", ctx)
    return n


@app.task(name="chaos.pool", max_attempts=100)
def hold_pool(ctx: Context, seconds: float) -> None:
    """Holds one of the app's pooled connections for ``seconds`` (the pool is CHAOS_POOL_SIZE wide)."""
    _log("S", ctx)
    with ctx.app.connection() as conn:
        conn.execute("SELECT pg_sleep(%s)", (seconds,))
    _log("E", ctx)

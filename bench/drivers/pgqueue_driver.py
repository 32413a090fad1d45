"""pgqueue through its public API: App, tasks, Worker. Run by bench/run.py with pgqueue's own venv.

``python bench/drivers/pgqueue_driver.py FIGURE --dsn DSN [--n N] [--procs P] ...``: one JSON result line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
from measure import (  # noqa: E402
    ServerCpu,
    emit,
    latency_result,
    log,
    own_cpu,
    rss_mb,
    throughput_result,
)
from processing import Probe, Shared, measure_latency, measure_processing  # noqa: E402

from pgqueue import App, Worker, WorkerConfig  # noqa: E402
from pgqueue.migrate import migrate  # noqa: E402

TABLES = "pgqueue.jobs, pgqueue.finished_jobs, pgqueue.job_errors, pgqueue.workers"


def make_app(dsn: str, probe: Probe | None = None, sleep: float = 0.0) -> App:
    """The benchmark's tasks: ``noop`` counts itself, ``stamp`` notes when it started, ``io`` sleeps."""
    app = App(dsn=dsn)

    @app.task(name="noop")
    async def noop() -> None:
        if probe is not None:
            probe.tick()

    @app.task(name="stamp")
    async def stamp(seq: int) -> None:
        if probe is not None:
            probe.started(seq)

    @app.task(name="io")
    async def io() -> None:
        await asyncio.sleep(sleep)
        if probe is not None:
            probe.tick()

    return app


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES}")
        conn.execute("VACUUM ANALYZE pgqueue.jobs")


def remaining(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()
    return int(row[0]) if row else 0


def bulk_enqueue(dsn: str, task: str, n: int, chunk: int = 50_000) -> None:
    app = make_app(dsn)
    for start in range(0, n, chunk):
        app.tasks[task].enqueue_many([{}] * min(chunk, n - start))
    app.close()


# -- the worker process --------------------------------------------------------------------------------------


def worker_process(dsn: str, shared: Shared, slot: int, options: dict[str, Any]) -> None:
    probe = Probe(shared, slot)
    app = make_app(dsn, probe, sleep=options.get("sleep", 0.0))
    worker = Worker(app, WorkerConfig(concurrency=options.get("concurrency", 100),
                                      claim_batch=options.get("claim_batch", 100)))

    async def main() -> None:
        running = asyncio.create_task(worker.run())
        early = options.get("rss_early_at", 0)
        while not shared.stop.is_set() and not running.done():
            await asyncio.sleep(0.02)
            if early and probe.count >= early and not shared.early_rss[slot]:
                shared.early_rss[slot] = rss_mb()
        probe.finish()
        worker.stop(force=True)
        await running
        await app.aclose()

    asyncio.run(main())


# -- figures ---------------------------------------------------------------------------------------------------


def enqueue_single(dsn: str, n: int) -> dict[str, Any]:
    app = make_app(dsn)
    noop = app.tasks["noop"]
    noop.enqueue()  # warm the pool
    server = ServerCpu(dsn)
    server.start()
    cpu, started = own_cpu(), time.perf_counter()
    for _ in range(n):
        noop.enqueue()
    seconds = time.perf_counter() - started
    result = throughput_result(n, seconds, own_cpu() - cpu, server.stop())
    app.close()
    return result


def enqueue_bulk(dsn: str, n: int) -> dict[str, Any]:
    app = make_app(dsn)
    noop = app.tasks["noop"]
    noop.enqueue_many([{}])
    server = ServerCpu(dsn)
    server.start()
    cpu, started = own_cpu(), time.perf_counter()
    noop.enqueue_many([{}] * n)
    seconds = time.perf_counter() - started
    result = throughput_result(n, seconds, own_cpu() - cpu, server.stop())
    app.close()
    return result


def process(dsn: str, n: int, procs: int, seconds: float, options: dict[str, Any]) -> dict[str, Any]:
    bulk_enqueue(dsn, options.get("task", "noop"), n)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE pgqueue.jobs")
    return measure_processing(dsn, procs=procs, expected=n, max_seconds=seconds, target=worker_process,
                              remaining=lambda: remaining(dsn), options=options)


def latency(dsn: str, samples: int) -> dict[str, Any]:
    app = make_app(dsn)
    stamp = app.tasks["stamp"]

    def enqueue_one(seq: int) -> None:
        stamp.enqueue(seq)

    result = latency_result(measure_latency(dsn, samples=samples, gap=0.02, target=worker_process,
                                            enqueue_one=enqueue_one, options={"concurrency": 10}))
    app.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("figure")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--finished", type=int, default=0)
    args = parser.parse_args()
    dsn = args.dsn
    if args.figure == "setup":
        migrate(dsn)
        emit({"ok": True})
        return
    reset(dsn)
    options: dict[str, Any] = {"concurrency": args.concurrency}
    if args.figure == "enqueue_single":
        emit(enqueue_single(dsn, args.n))
    elif args.figure == "enqueue_bulk":
        emit(enqueue_bulk(dsn, args.n))
    elif args.figure == "process":
        emit(process(dsn, args.n, args.procs, args.seconds, options))
    elif args.figure == "latency":
        emit(latency(dsn, args.samples))
    elif args.figure == "io_bound":
        options.update(task="io", sleep=0.05, concurrency=200)
        emit(process(dsn, args.n, 1, args.seconds, options))
    elif args.figure == "memory":
        options.update(rss_early_at=max(1, args.n // 10))
        emit(process(dsn, args.n, 1, args.seconds, options))
    else:
        raise SystemExit(f"unknown figure {args.figure}")


if __name__ == "__main__":
    main()

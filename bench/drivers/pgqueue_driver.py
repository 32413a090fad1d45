"""pgqueue through its public API: App, tasks, Worker. Run by bench/run.py with pgqueue's own venv.

``python bench/drivers/pgqueue_driver.py FIGURE --dsn DSN [--n N] [--procs P] ...``: one JSON result line.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from measure import (
    ServerCpu,
    emit,
    latency_result,
    log,
    named,
    own_cpu,
    rss_mb,
    throughput_result,
)
from processing import Probe, Shared, measure_backlog, measure_latency, measure_processing

from pgqueue import App, Worker, WorkerConfig
from pgqueue.migrate import migrate
from pgqueue.queries import q
from pgqueue.worker import prepare_worker_process

SQL = named("pgqueue")


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
        conn.execute(SQL["pgq_reset"])
        conn.execute("VACUUM ANALYZE pgqueue.jobs")


def remaining(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(SQL["pgq_remaining"]).fetchone()
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
    prepare_worker_process()  # as `pgqueue work` does once the app is imported
    # The same 100 slots as the peers; claims of the default size (half the slots).
    worker = Worker(app, WorkerConfig(concurrency=options.get("concurrency", 100),
                                      claim_batch=options.get("claim_batch"),
                                      prefetch=options.get("prefetch", 0)))

    async def main() -> None:
        running = asyncio.create_task(worker.run())
        early = options.get("rss_early_at", 0)
        next_sample = early
        while not shared.stop.is_set() and not running.done():
            await asyncio.sleep(0.02)
            if early and probe.count >= early and not shared.early_rss[slot]:
                shared.early_rss[slot] = rss_mb()
            if early and probe.count >= next_sample:
                samples.append(f"{probe.count // 1000}k:{rss_mb():.0f}")
                next_sample += early
        probe.finish()
        worker.stop(force=True)
        await running
        await app.aclose()

    samples: list[str] = []
    asyncio.run(main())
    if samples:
        log("bench: RSS MiB by jobs done " + " ".join(samples))


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


def process(dsn: str, n: int, procs: int, seconds: float, options: dict[str, Any],
            worker_dsn: str | None = None) -> dict[str, Any]:
    bulk_enqueue(dsn, options.get("task", "noop"), n)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE pgqueue.jobs")
    return measure_processing(dsn, procs=procs, expected=n, max_seconds=seconds, target=worker_process,
                              remaining=lambda: remaining(dsn), options=options, worker_dsn=worker_dsn)


def latency(dsn: str, samples: int) -> dict[str, Any]:
    app = make_app(dsn)
    stamp = app.tasks["stamp"]

    def enqueue_one(seq: int) -> None:
        stamp.enqueue(seq)

    result = latency_result(measure_latency(dsn, samples=samples, gap=0.02, target=worker_process,
                                            enqueue_one=enqueue_one, options={"concurrency": 10}))
    app.close()
    return result


def backlog(dsn: str, jobs: int, queued: int, finished: int, runs: int) -> dict[str, Any]:
    def fill_small(n: int) -> None:
        bulk_enqueue(dsn, "noop", n)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE pgqueue.jobs")

    def fill_backlog() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SQL["pgq_fill_finished"], {"finished": finished})
            conn.execute(SQL["pgq_fill_queued"], {"queued": queued})
            conn.execute("VACUUM ANALYZE pgqueue.jobs")
            conn.execute("VACUUM ANALYZE pgqueue.finished_jobs")

    return measure_backlog(dsn, jobs=jobs, runs=runs, reset=lambda: reset(dsn), fill_small=fill_small,
                           fill_backlog=fill_backlog, count=lambda: remaining(dsn), target=worker_process,
                           live_table="pgqueue.jobs",
                           options={"concurrency": 100})


def feature_cost(dsn: str, n: int, rounds: int = 3) -> dict[str, Any]:
    """The claim statement as shipped against the plain one kept in bench/sql (no worker, no handlers).

    Both loop "claim 100, complete them" over ``n`` jobs with the same completion statement. Segments run in
    ABBA order with a VACUUM before each, so neither gains from going first (claimed rows leave dead entries
    at the front of the claim index until a vacuum). The figure is how much slower the shipped claim is, in
    percent (negative: faster). Until the features land the two statements are the same and this reads ~0.
    """
    worker_id = uuid.uuid4()
    rates: dict[str, list[float]] = {"shipped": [], "plain": []}
    statements = {"shipped": q("job_claim_any"), "plain": SQL["pgq_claim_baseline"]}
    order = ["shipped", "plain", "plain", "shipped"] * rounds
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        conn.execute(SQL["pgq_fill_queued"], {"queued": n * len(order)})
        for name in order:
            conn.execute("VACUUM ANALYZE pgqueue.jobs")
            done, started = 0, time.perf_counter()
            while done < n:
                rows = conn.execute(statements[name], {"limit": 100, "worker_id": worker_id, "lease": 30.0}
                                    ).fetchall()
                if not rows:
                    break
                conn.execute(q("job_complete_many"), {
                    "ids": [r[0] for r in rows], "attempts": [r[6] for r in rows],
                    "results": [None] * len(rows), "worker_id": worker_id})
                done += len(rows)
            rates[name].append(done / (time.perf_counter() - started))
    shipped, plain = statistics.median(rates["shipped"]), statistics.median(rates["plain"])
    return {"value": (plain / shipped - 1) * 100, "shipped_jobs_s": shipped, "plain_jobs_s": plain, "runs": rates}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("figure")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--worker-dsn", help="where workers connect (the round-trip relay); default --dsn")
    parser.add_argument("--queued", type=int, default=1_000_000)
    parser.add_argument("--finished", type=int, default=5_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    dsn = args.dsn
    if args.figure == "setup":
        migrate(dsn)
        emit({"ok": True})
        return
    reset(dsn)
    # Its fastest documented mode, as graphile-worker runs with its local queue of 500: the same 500 jobs held per
    # process (100 running, 400 prefetched: WorkerConfig.prefetch) taken 250 at a time (claim_batch). The
    # process_default figure shows the default settings (no prefetch) beside it.
    options: dict[str, Any] = {"concurrency": args.concurrency, "prefetch": 400, "claim_batch": 250}
    if args.figure == "enqueue_single":
        emit(enqueue_single(dsn, args.n))
    elif args.figure == "enqueue_bulk":
        emit(enqueue_bulk(dsn, args.n))
    elif args.figure == "process":
        emit(process(dsn, args.n, args.procs, args.seconds, options, args.worker_dsn))
    elif args.figure == "process_default":
        emit(process(dsn, args.n, args.procs, args.seconds, {**options, "prefetch": 0, "claim_batch": None}))
    elif args.figure == "latency":
        emit(latency(dsn, args.samples))
    elif args.figure == "backlog":
        emit(backlog(dsn, args.n, args.queued, args.finished, args.runs))
    elif args.figure == "feature_cost":
        emit(feature_cost(dsn, args.n))
    elif args.figure == "io_bound":
        # Short I/O waits are what prefetch is for (WorkerConfig.prefetch): the next job starts as one returns.
        options.update(task="io", sleep=0.05, concurrency=200, prefetch=100, claim_batch=None)
        emit(process(dsn, args.n, 1, args.seconds, options))
    elif args.figure == "memory":
        options.update(rss_early_at=max(1, args.n // 10))
        emit(process(dsn, args.n, 1, args.seconds, options))
    else:
        raise SystemExit(f"unknown figure {args.figure}")


if __name__ == "__main__":
    main()

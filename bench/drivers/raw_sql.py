"""The ceiling: the smallest honest SKIP LOCKED queue in raw SQL, no library, psycopg only.

One table, a partial index on queued rows. Enqueue is a plain INSERT (one per transaction) or COPY; a worker
connection loops "claim up to 100 with FOR UPDATE SKIP LOCKED, run them, delete them in one statement"; an
idle worker sleeps on LISTEN and the enqueue notifies in its own transaction. No leases, retries, results or
history: what is left is what PostgreSQL itself costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from measure import ServerCpu, emit, latency_result, named, own_cpu, throughput_result
from processing import Probe, Shared, measure_backlog, measure_latency, measure_processing

SQL = named("raw_sql")


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SQL["raw_reset"])
        conn.execute("VACUUM ANALYZE raw_jobs")


def remaining(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(SQL["raw_remaining"]).fetchone()
    return int(row[0]) if row else 0


def copy_in(conn: psycopg.Connection[Any], n: int, args: str = "{}") -> None:
    with conn.cursor() as cur, cur.copy(SQL["raw_copy"]) as copy:
        for _ in range(n):
            copy.write_row((args,))


def worker_process(dsn: str, shared: Shared, slot: int, options: dict[str, Any]) -> None:
    probe = Probe(shared, slot)
    wake = asyncio.Event()

    async def listen() -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        await conn.execute(SQL["raw_listen"])
        async for _ in conn.notifies():
            wake.set()

    async def loop(batch: int) -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=0)
        while not shared.stop.is_set():
            cur = await conn.execute(SQL["raw_claim"], (batch,))
            rows = await cur.fetchall()
            if not rows:
                wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), 0.05)
                continue
            for _, args in rows:
                seq = json.loads(args).get("seq")
                if seq is None:
                    probe.tick()
                else:
                    probe.started(seq)
            await conn.execute(SQL["raw_complete"], ([r[0] for r in rows],))
        await conn.close()

    async def main() -> None:
        listener = asyncio.create_task(listen())
        await asyncio.gather(*(loop(options.get("batch", 100)) for _ in range(options.get("conns", 2))))
        listener.cancel()

    try:
        asyncio.run(main())
    finally:
        probe.finish()


def enqueue_single(dsn: str, n: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        conn.execute(SQL["raw_insert"], ("{}",))
        server = ServerCpu(dsn)
        server.start()
        cpu, started = own_cpu(), time.perf_counter()
        for _ in range(n):
            conn.execute(SQL["raw_insert"], ("{}",))
        seconds = time.perf_counter() - started
        return throughput_result(n, seconds, own_cpu() - cpu, server.stop())


def enqueue_bulk(dsn: str, n: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        server = ServerCpu(dsn)
        server.start()
        cpu, started = own_cpu(), time.perf_counter()
        copy_in(conn, n)
        seconds = time.perf_counter() - started
        return throughput_result(n, seconds, own_cpu() - cpu, server.stop())


def latency(dsn: str, samples: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        def enqueue_one(seq: int) -> None:
            conn.execute(SQL["raw_insert_notify"], (json.dumps({"seq": seq}),))

        return latency_result(measure_latency(dsn, samples=samples, gap=0.02, target=worker_process,
                                              enqueue_one=enqueue_one, options={"conns": 1}))


def backlog(dsn: str, jobs: int, queued: int, finished: int, runs: int) -> dict[str, Any]:
    def fill_small(n: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            copy_in(conn, n)
            conn.execute("VACUUM ANALYZE raw_jobs")

    def fill_backlog() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SQL["raw_fill_backlog"], {"queued": queued, "finished": finished})
            conn.execute("VACUUM ANALYZE raw_jobs")
            conn.execute("VACUUM ANALYZE raw_finished")

    return measure_backlog(dsn, jobs=jobs, runs=runs, reset=lambda: reset(dsn), fill_small=fill_small,
                           fill_backlog=fill_backlog, count=lambda: remaining(dsn), target=worker_process,
                           live_table="raw_jobs",
                           options={"conns": 2})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("figure")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--queued", type=int, default=1_000_000)
    parser.add_argument("--finished", type=int, default=5_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker-dsn", help="where workers connect (the round-trip relay); default --dsn")
    args = parser.parse_args()
    dsn = args.dsn
    if args.figure == "setup":
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SQL["raw_schema"])
        emit({"ok": True})
        return
    reset(dsn)
    if args.figure == "enqueue_single":
        emit(enqueue_single(dsn, args.n))
    elif args.figure == "enqueue_bulk":
        emit(enqueue_bulk(dsn, args.n))
    elif args.figure == "process":
        with psycopg.connect(dsn, autocommit=True) as conn:
            copy_in(conn, args.n)
            conn.execute("VACUUM ANALYZE raw_jobs")
        emit(measure_processing(dsn, procs=args.procs, expected=args.n, max_seconds=args.seconds,
                                target=worker_process, remaining=lambda: remaining(dsn), options={"conns": 2},
                                worker_dsn=args.worker_dsn))
    elif args.figure == "latency":
        emit(latency(dsn, args.samples))
    elif args.figure == "backlog":
        emit(backlog(dsn, args.n, args.queued, args.finished, args.runs))
    else:
        raise SystemExit(f"unknown figure {args.figure}")


if __name__ == "__main__":
    main()

"""PgQueuer (PyPI ``pgqueuer``, pinned in bench/requirements-peers.txt) through its public API.

Its fastest documented set-up: the asyncpg driver, async entrypoints, batched dequeue. Run by bench/run.py
with the peers' venv.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

import asyncpg
import psycopg
from driver import arguments
from measure import ServerCpu, emit, latency_result, named, own_cpu, throughput_result
from pgqueuer import AsyncpgDriver, Job, PgQueuer, Queries
from processing import Probe, Shared, measure_latency, measure_processing

SQL = named("peers")
BATCH = 50  # jobs per dequeue; their benchmark's default is 10, 50 measured faster here


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SQL["pgqueuer_reset"])
        conn.execute("VACUUM ANALYZE pgqueuer")


def remaining(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(SQL["pgqueuer_remaining"]).fetchone()
    return int(row[0]) if row else 0


async def queries(dsn: str) -> tuple[asyncpg.Connection, Queries]:
    conn = await asyncpg.connect(dsn)
    return conn, Queries(AsyncpgDriver(conn))


def worker_process(dsn: str, shared: Shared, slot: int, options: dict[str, Any]) -> None:
    probe = Probe(shared, slot)

    async def main() -> None:
        conn = await asyncpg.connect(dsn)
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint("noop")
        async def noop(job: Job) -> None:
            probe.tick()

        @pgq.entrypoint("stamp")
        async def stamp(job: Job) -> None:
            probe.started(int(job.payload or b"0"))

        running = asyncio.create_task(pgq.run(batch_size=options.get("batch", BATCH)))
        while not shared.stop.is_set() and not running.done():
            await asyncio.sleep(0.02)
        probe.finish()
        pgq.shutdown.set()
        pgq.qm.shutdown.set()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(running, 10)
        await conn.close()

    asyncio.run(main())


async def enqueue_single(dsn: str, n: int) -> dict[str, Any]:
    conn, q = await queries(dsn)
    await q.enqueue("noop", None)
    server = ServerCpu(dsn)
    server.start()
    cpu, started = own_cpu(), time.perf_counter()
    for _ in range(n):
        await q.enqueue("noop", None)
    seconds = time.perf_counter() - started
    result = throughput_result(n, seconds, own_cpu() - cpu, server.stop())
    await conn.close()
    return result


async def enqueue_bulk(dsn: str, n: int) -> dict[str, Any]:
    conn, q = await queries(dsn)
    server = ServerCpu(dsn)
    server.start()
    cpu, started = own_cpu(), time.perf_counter()
    await q.enqueue(["noop"] * n, [None] * n, [0] * n)
    seconds = time.perf_counter() - started
    result = throughput_result(n, seconds, own_cpu() - cpu, server.stop())
    await conn.close()
    return result


async def backlog(dsn: str, n: int) -> None:
    conn, q = await queries(dsn)
    for start in range(0, n, 50_000):
        size = min(50_000, n - start)
        await q.enqueue(["noop"] * size, [None] * size, [0] * size)
    await conn.close()


def latency(dsn: str, samples: int) -> dict[str, Any]:
    loop = asyncio.new_event_loop()
    conn, q = loop.run_until_complete(queries(dsn))

    def enqueue_one(seq: int) -> None:
        loop.run_until_complete(q.enqueue("stamp", str(seq).encode()))

    try:
        return latency_result(measure_latency(dsn, samples=samples, gap=0.02, target=worker_process,
                                              enqueue_one=enqueue_one))
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


def main() -> None:
    args = arguments()
    dsn = args.dsn
    if args.figure == "setup":
        async def install() -> None:
            conn, q = await queries(dsn)
            await q.install()
            await conn.close()

        asyncio.run(install())
        emit({"ok": True})
        return
    reset(dsn)
    if args.figure == "enqueue_single":
        emit(asyncio.run(enqueue_single(dsn, args.n)))
    elif args.figure == "enqueue_bulk":
        emit(asyncio.run(enqueue_bulk(dsn, args.n)))
    elif args.figure == "process":
        asyncio.run(backlog(dsn, args.n))
        emit(measure_processing(dsn, procs=args.procs, expected=args.n, max_seconds=args.seconds,
                                target=worker_process, remaining=lambda: remaining(dsn),
                                worker_dsn=args.worker_dsn))
    elif args.figure == "latency":
        emit(latency(dsn, args.samples))
    else:
        raise SystemExit(f"unknown figure {args.figure}")


if __name__ == "__main__":
    main()

"""Procrastinate (PyPI ``procrastinate``, pinned in bench/requirements-peers.txt) through its public API.

Async tasks, the psycopg connector, LISTEN/NOTIFY on, one worker with ``concurrency`` jobs at once. Run by
bench/run.py with the peers' venv.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

import procrastinate
import psycopg
from driver import arguments
from measure import ServerCpu, emit, latency_result, named, own_cpu, throughput_result
from processing import Probe, Shared, measure_latency, measure_processing

SQL = named("peers")


def make_app(dsn: str, probe: Probe | None = None) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop")
    async def noop() -> None:
        if probe is not None:
            probe.tick()

    @app.task(name="stamp")
    async def stamp(seq: int) -> None:
        if probe is not None:
            probe.started(seq)

    return app


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SQL["procrastinate_reset"])
        conn.execute("VACUUM ANALYZE procrastinate_jobs")


def remaining(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(SQL["procrastinate_remaining"]).fetchone()
    return int(row[0]) if row else 0


def worker_process(dsn: str, shared: Shared, slot: int, options: dict[str, Any]) -> None:
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    probe = Probe(shared, slot)
    app = make_app(dsn, probe)

    async def main() -> None:
        async with app.open_async():
            running = asyncio.create_task(app.run_worker_async(
                concurrency=options.get("concurrency", 100), install_signal_handlers=False,
                delete_jobs="never", listen_notify=True))
            while not shared.stop.is_set() and not running.done():
                await asyncio.sleep(0.02)
            probe.finish()
            running.cancel()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(running, 10)

    asyncio.run(main())


async def enqueue_single(dsn: str, n: int) -> dict[str, Any]:
    app = make_app(dsn)
    async with app.open_async():
        noop = app.tasks["noop"]
        await noop.defer_async()
        server = ServerCpu(dsn)
        server.start()
        cpu, started = own_cpu(), time.perf_counter()
        for _ in range(n):
            await noop.defer_async()
        seconds = time.perf_counter() - started
        return throughput_result(n, seconds, own_cpu() - cpu, server.stop())


async def enqueue_bulk(dsn: str, n: int) -> dict[str, Any]:
    app = make_app(dsn)
    async with app.open_async():
        noop = app.tasks["noop"]
        server = ServerCpu(dsn)
        server.start()
        cpu, started = own_cpu(), time.perf_counter()
        await noop.batch_defer_async(*([{}] * n))
        seconds = time.perf_counter() - started
        return throughput_result(n, seconds, own_cpu() - cpu, server.stop())


async def backlog(dsn: str, n: int) -> None:
    app = make_app(dsn)
    async with app.open_async():
        for start in range(0, n, 20_000):
            await app.tasks["noop"].batch_defer_async(*([{}] * min(20_000, n - start)))


def latency(dsn: str, samples: int) -> dict[str, Any]:
    app = make_app(dsn)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(app.open_async().__aenter__())

    def enqueue_one(seq: int) -> None:
        loop.run_until_complete(app.tasks["stamp"].defer_async(seq=seq))

    try:
        return latency_result(measure_latency(dsn, samples=samples, gap=0.02, target=worker_process,
                                              enqueue_one=enqueue_one, options={"concurrency": 10}))
    finally:
        loop.run_until_complete(app.close_async())
        loop.close()


def main() -> None:
    args = arguments()
    dsn = args.dsn
    if args.figure == "setup":
        async def install() -> None:
            app = make_app(dsn)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

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
                                options={"concurrency": args.concurrency}, worker_dsn=args.worker_dsn))
    elif args.figure == "latency":
        emit(latency(dsn, args.samples))
    else:
        raise SystemExit(f"unknown figure {args.figure}")


if __name__ == "__main__":
    main()

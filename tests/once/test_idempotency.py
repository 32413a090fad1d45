"""Idempotent blocks in-process: once per key, stored results, crashes free the key, duplicates wait or fail."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from pgqueue import App, ConfigurationError, Context, IdempotencyConflict, JobState, ValidationError
from pgqueue.testing import running_worker
from tests.conftest import wait_for

FAST = {"poll_interval": 0.5, "promote_interval": 0.05}


def test_a_block_runs_once_and_later_runs_get_its_result(app: App, db: psycopg.Connection[Any]) -> None:
    runs: list[int] = []
    for i in range(3):
        with app.idempotent("charge:1") as once:
            if once.needed:
                runs.append(i)
                once.result = {"charge": "ch_1", "run": i}
        assert once.result == {"charge": "ch_1", "run": 0}
    assert runs == [0]
    row = db.execute("SELECT result::text, expires_at - created_at FROM pgqueue.idempotency_keys").fetchone()
    assert row == ('{"charge":"ch_1","run":0}', timedelta(days=1))


def test_a_block_that_raises_stores_nothing_and_runs_again(app: App) -> None:
    with pytest.raises(RuntimeError), app.idempotent("k") as once:
        assert once.needed
        once.result = "half"
        raise RuntimeError("the effect failed")
    with app.idempotent("k") as once:
        assert once.needed  # nothing was stored
        once.result = "whole"
    with app.idempotent("k") as once:
        assert not once.needed and once.result == "whole"


def test_a_crashed_block_frees_its_key_at_once(app: App, dsn: str) -> None:
    """The process running the block dies (its connection drops): no lease to wait out, the next run runs it."""
    conn = psycopg.connect(dsn, autocommit=True)
    pid_row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert pid_row is not None
    conn.execute("BEGIN")
    conn.execute("SELECT pg_advisory_xact_lock(%s::integer, hashtext('crash'))", (0x70677169,))
    with pytest.raises(IdempotencyConflict), app.idempotent("crash", wait=False):
        pass
    with psycopg.connect(dsn, autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", (pid_row[0],))
    conn.close()
    with app.idempotent("crash", wait=2.0) as once:
        assert once.needed


def test_a_concurrent_duplicate_waits_then_gets_the_result(app: App) -> None:
    inside, release = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def first() -> None:
        with app.idempotent("dup") as once:
            inside.set()
            release.wait(10)
            once.result = "from first"
        results["first"] = once.result

    def second() -> None:
        with app.idempotent("dup") as once:
            results["second_needed"] = once.needed
        results["second"] = once.result

    a = threading.Thread(target=first)
    a.start()
    inside.wait(10)
    b = threading.Thread(target=second)
    b.start()
    time.sleep(0.3)
    assert b.is_alive()  # waiting on the key
    with pytest.raises(IdempotencyConflict, match="held by another run"), app.idempotent("dup", wait=False):
        pass
    started = time.monotonic()
    with pytest.raises(IdempotencyConflict, match=r"after 0\.2 s"), app.idempotent("dup", wait=0.2):
        pass
    assert 0.15 < time.monotonic() - started < 2
    release.set()
    a.join(10)
    b.join(10)
    assert results == {"first": "from first", "second_needed": False, "second": "from first"}


def test_keys_expire(app: App, db: psycopg.Connection[Any]) -> None:
    with app.idempotent("short", ttl=timedelta(seconds=30)) as once:
        once.result = 1
    db.execute("UPDATE pgqueue.idempotency_keys SET expires_at = now() - interval '1 second'")
    with app.idempotent("short") as once:
        assert once.needed
        once.result = 2
    with app.idempotent("short") as once:
        assert once.result == 2


def test_the_decorator_sync_and_async(app: App) -> None:
    calls: list[str] = []

    @app.once(key=lambda order, amount: f"charge:{order}")
    def charge(order: int, amount: int) -> tuple[int, int]:
        calls.append(f"charge {order}")
        return (order, amount)

    @app.once(key=lambda order: f"refund:{order}", ttl=timedelta(hours=1))
    async def refund(order: int) -> dict[str, int]:
        calls.append(f"refund {order}")
        return {"refunded": order}

    assert charge(1, 100) == [1, 100] and charge(1, 999) == [1, 100] and charge(2, 5) == [2, 5]
    assert asyncio.run(refund(1)) == {"refunded": 1} and asyncio.run(refund(1)) == {"refunded": 1}
    assert calls == ["charge 1", "charge 2", "refund 1"]
    with pytest.raises(ValidationError, match="takes a function"):
        app.once(key="charge")  # type: ignore[arg-type]


def test_bad_input_and_misuse(app: App) -> None:
    with pytest.raises(ValidationError, match="idempotency key"):
        app.idempotent("")
    with pytest.raises(ValidationError, match="wait"):
        app.idempotent("k", wait=-1)
    with pytest.raises(ValidationError, match="ttl"):
        app.idempotent("k", ttl=timedelta(0))
    with pytest.raises(ValidationError, match="JSON"), app.idempotent("json") as once:
        once.result = object()
    with app.idempotent("json") as once:
        assert once.needed  # the failed block stored nothing

    async def sync_with_on_the_loop() -> None:
        with app.idempotent("loop"):
            pass

    with pytest.raises(ConfigurationError, match="async with"):
        asyncio.run(sync_with_on_the_loop())


def test_in_handlers_a_completed_block_is_not_run_again_by_a_retry(app: App) -> None:
    effects: list[tuple[int, int]] = []

    @app.task(max_attempts=3, retry_base=0.05, retry_cap=0.1)
    def pay(ctx: Context, order: int) -> str:
        with ctx.idempotent(f"pay:{order}") as once:
            if once.needed:
                effects.append((order, ctx.attempt))
                once.result = f"receipt-{order}-{ctx.attempt}"
        if ctx.attempt < 3:
            raise RuntimeError("fails after the outside effect")
        return str(once.result)

    @app.task(max_attempts=3, retry_base=0.05, retry_cap=0.1, transactional=True)
    async def pay_async(ctx: Context, order: int) -> str:
        async with ctx.idempotent(f"pay-async:{order}") as once:
            if once.needed:
                effects.append((-order, ctx.attempt))
                once.result = f"receipt-{order}-{ctx.attempt}"
        if ctx.attempt < 2:
            raise RuntimeError("the transaction rolls back; the stored result does not")
        return str(once.result)

    jobs = [pay.enqueue(1), pay_async.enqueue(2)]
    with running_worker(app, **FAST):
        wait_for(lambda: all(app.job(j.id).state is JobState.SUCCEEDED for j in jobs), timeout=15)
    assert effects == [(1, 1), (-2, 1)] or sorted(effects) == [(-2, 1), (1, 1)]
    assert [app.job(j.id).result for j in jobs] == ["receipt-1-1", "receipt-2-1"]

"""Idempotency keys for effects outside the database: run a block once per key, give later runs its result.

::

    with ctx.idempotent(f"charge:{order_id}") as once:
        if once.needed:               # first run, or every earlier run failed or died before finishing
            once.result = payments.charge(order_id, idempotency_key=once.key)
    charge_id = once.result           # the stored result, for every later run of the key

How it works: entering takes a transaction-scoped advisory lock on the key, on a connection of its own, and
looks for a stored result. Found: the transaction ends at once and ``needed`` is False. Not found: the
transaction (and the lock) stays open while the block runs; a clean exit stores the result and commits, an
exception rolls back. A process that dies inside the block loses its connection, so PostgreSQL rolls back
and frees the key at once: the next run of the key runs the block again. A concurrent duplicate waits on the
lock (``wait=True``), gives up after ``wait`` seconds, or fails fast (``wait=False``), with
``IdempotencyConflict``; once the first run commits, the duplicate gets its result.

The result commits on its own, not with a transactional handler's ``ctx.conn``: once the outside effect has
happened, its record must survive whatever the handler does next.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from pgqueue.errors import ConfigurationError, IdempotencyConflict, ValidationError
from pgqueue.job import to_json
from pgqueue.once.connections import ConnectionSource
from pgqueue.once.conversation import Conversation, run, run_async
from pgqueue.once.outbox import check_key

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TTL = timedelta(days=1)
# The first key of the two-key advisory lock space of idempotent blocks ('pgqi'); the second is the key's hash.
LOCK_SPACE = 0x70677169


def _check_ttl(ttl: timedelta) -> float:
    if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
        raise ValidationError(f"ttl must be a positive timedelta, got {ttl!r}")
    return ttl.total_seconds()


def _check_wait(wait: bool | float) -> bool | float:
    if isinstance(wait, bool):
        return wait
    if not isinstance(wait, int | float) or not wait > 0:
        raise ValidationError(f"wait must be True, False or a positive number of seconds, got {wait!r}")
    return float(wait)


def begin(key: str, wait: bool | float) -> Conversation[str | None]:
    """Take the key's lock and read its stored result (JSON text); None when the block must run."""
    params = {"space": LOCK_SPACE, "key": key}
    if wait is False:
        rows = yield "idempotency_lock_try", params
        if not rows[0][0]:
            raise IdempotencyConflict(f"idempotency key {key!r} is held by another run in progress")
    else:
        if wait is not True:
            yield "idempotency_lock_timeout", {"timeout": f"{max(1, int(wait * 1000))}ms"}
        try:
            yield "idempotency_lock_wait", params
        except pg_errors.LockNotAvailable:
            raise IdempotencyConflict(f"idempotency key {key!r} was still held by another run after {wait} s") \
                from None
    # A statement of its own, after the lock: its snapshot sees what the previous holder committed.
    rows = yield "idempotency_get", {"key": key}
    if not rows:
        return None
    stored: str = rows[0][0] if rows[0][0] is not None else "null"
    return stored


def store(key: str, result: str, ttl: float, job_id: int | None) -> Conversation[None]:
    yield "idempotency_store", {"key": key, "result": result, "ttl": ttl, "job_id": job_id}


class Once:
    """One run of an idempotent block; use it with ``with`` (sync code) or ``async with`` (async code).

    ``needed``: whether the block must run (no stored result). ``result``: set it inside the block to what
    later runs should get (JSON-serialisable); after a stored run it holds the stored value, as JSON
    round-trips it. ``key``: pass it on to the outside service as its own idempotency key, so that a run
    that died after the effect but before storing it is recognised there too.
    """

    def __init__(self, source: ConnectionSource, key: str, *, ttl: timedelta = DEFAULT_TTL,
                 wait: bool | float = True, job_id: int | None = None) -> None:
        self.key = check_key(key, "idempotency key")
        self._ttl = _check_ttl(ttl)
        self._wait = _check_wait(wait)
        self._source = source
        self._job_id = job_id
        self.needed = False
        self._result: Any = None
        self._result_json = "null"
        self._sync: ExitStack | None = None
        self._async: AsyncExitStack | None = None
        self._conn: Any = None

    @property
    def result(self) -> Any:
        return self._result

    @result.setter
    def result(self, value: Any) -> None:
        # Checked here, inside the block, so an unstorable value fails the block (and rolls back) at once.
        self._result_json = to_json(value, f"the result of idempotent block {self.key!r}")
        self._result = value

    def _found(self, stored: str | None) -> bool:
        if stored is None:
            self.needed = True
            return False
        self._result = json.loads(stored)
        self._result_json = stored
        return True

    # -- sync ------------------------------------------------------------------------------------------------

    def __enter__(self) -> Once:
        _refuse_on_event_loop()
        with ExitStack() as stack:  # on any error: roll back, give the connection back
            conn: psycopg.Connection[Any] = stack.enter_context(self._source.sync())
            stack.enter_context(conn.transaction())
            if self._found(run(conn, begin(self.key, self._wait))):
                return self  # a stored result: commit now, there is nothing to hold
            self._sync, self._conn = stack.pop_all(), conn
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        stack, self._sync = self._sync, None
        if stack is None:
            return
        if exc_type is not None:
            stack.__exit__(exc_type, exc, tb)  # roll back: nothing stored, the key is free again
            return
        with stack:
            run(self._conn, store(self.key, self._result_json, self._ttl, self._job_id))

    # -- async -----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Once:
        async with AsyncExitStack() as stack:
            conn: psycopg.AsyncConnection[Any] = await stack.enter_async_context(self._source.async_())
            await stack.enter_async_context(conn.transaction())
            if self._found(await run_async(conn, begin(self.key, self._wait))):
                return self
            self._async, self._conn = stack.pop_all(), conn
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        stack, self._async = self._async, None
        if stack is None:
            return
        if exc_type is not None:
            await stack.__aexit__(exc_type, exc, tb)
            return
        async with stack:
            await run_async(self._conn, store(self.key, self._result_json, self._ttl, self._job_id))


def _refuse_on_event_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise ConfigurationError("an idempotent block in async code must use `async with`, not `with` "
                             "(which would block the event loop while it waits for the key)")


def once_decorator(source: Callable[[], ConnectionSource], key: Callable[..., str], ttl: timedelta,
                   wait: bool | float) -> Callable[[F], F]:
    """The decorator behind ``app.once``: the function runs once per key; later calls return the stored result."""
    if not callable(key):
        raise ValidationError("once(key=...) takes a function of the call's arguments that returns the key, "
                              "e.g. key=lambda order_id: f'charge:{order_id}'")
    _check_ttl(ttl)
    _check_wait(wait)

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def call_async(*args: Any, **kwargs: Any) -> Any:
                async with Once(source(), key(*args, **kwargs), ttl=ttl, wait=wait) as once:
                    if once.needed:
                        once.result = await fn(*args, **kwargs)
                return json.loads(once._result_json)

            return call_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with Once(source(), key(*args, **kwargs), ttl=ttl, wait=wait) as once:
                if once.needed:
                    once.result = fn(*args, **kwargs)
            return json.loads(once._result_json)

        return call  # type: ignore[return-value]

    return decorate

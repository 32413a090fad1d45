"""Database conversations written once and run on a sync or an async connection.

A conversation is a generator that yields ``(query_name, params)`` steps and receives each step's rows back;
what it returns is the conversation's result. The logic (which statement follows which, what the rows mean)
lives in the generator alone; ``run`` and ``run_async`` are the only places that touch a connection, so the
sync and async APIs cannot drift apart::

    def owner(key: str) -> Conversation[int | None]:
        rows = yield "enqueue_key_get", {"key": key}
        return rows[0][0] if rows else None

    run(conn, owner("order-42"))                 # psycopg.Connection
    await run_async(aconn, owner("order-42"))    # psycopg.AsyncConnection

A psycopg error is thrown into the generator at the step that caused it, so a conversation can turn a class of
errors into its own (lock timeouts into IdempotencyConflict, say); whatever it does not catch comes out mapped
to pgqueue's error tree.

A step may also be named after a function the caller supplies (``steps={"core:insert_job": fn}``): ``fn(conn,
params)`` returns the rows. That is how a conversation includes logic that lives elsewhere, such as the core's
choice of insert statement, without copying it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, TypeVar

import psycopg

from pgqueue.connection import has_rows
from pgqueue.errors import PgQueueError, from_psycopg
from pgqueue.queries import q

T = TypeVar("T")
Rows = list[tuple[Any, ...]]
Step = tuple[str, dict[str, Any]]
Conversation = Generator[Step, Rows, T]
SyncSteps = Mapping[str, Callable[[psycopg.Connection[Any], dict[str, Any]], Rows]]
AsyncSteps = Mapping[str, Callable[[psycopg.AsyncConnection[Any], dict[str, Any]], Awaitable[Rows]]]


def run(conn: psycopg.Connection[Any], conversation: Conversation[T], steps: SyncSteps | None = None) -> T:
    """Run ``conversation`` on a sync connection (in whatever transaction the connection is in)."""
    try:
        step = next(conversation)
        while True:
            try:
                if steps is not None and step[0] in steps:
                    rows: Rows = steps[step[0]](conn, step[1])
                else:
                    cur = conn.execute(q(step[0]), step[1])
                    rows = cur.fetchall() if has_rows(cur) else []
            except psycopg.Error as err:
                step = conversation.throw(err)
            else:
                step = conversation.send(rows)
    except StopIteration as done:
        result: T = done.value
        return result
    except PgQueueError:
        raise
    except psycopg.Error as err:
        raise from_psycopg(err) from err


async def run_async(conn: psycopg.AsyncConnection[Any], conversation: Conversation[T],
                    steps: AsyncSteps | None = None) -> T:
    """Run ``conversation`` on an async connection (in whatever transaction the connection is in)."""
    try:
        step = next(conversation)
        while True:
            try:
                if steps is not None and step[0] in steps:
                    rows: Rows = await steps[step[0]](conn, step[1])
                else:
                    cur = await conn.execute(q(step[0]), step[1])
                    rows = await cur.fetchall() if has_rows(cur) else []
            except psycopg.Error as err:
                step = conversation.throw(err)
            else:
                step = conversation.send(rows)
    except StopIteration as done:
        result: T = done.value
        return result
    except PgQueueError:
        raise
    except psycopg.Error as err:
        raise from_psycopg(err) from err


def needs_own_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether statements on ``conn`` would each commit alone (autocommit, outside a transaction block).

    Multi-statement conversations then wrap themselves in a transaction. A connection in a transaction, or
    a non-autocommit one (whose first statement opens one), belongs to the caller: the conversation runs in
    the caller's transaction and commits or rolls back with it.
    """
    return conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

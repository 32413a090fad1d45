"""Transactional handlers: the handler's database writes and its job's completion commit together, or neither.

``@app.task(transactional=True)``: the handler runs inside a transaction on a connection of the worker's
handler pool, reachable as ``ctx.conn`` (``def`` handlers) or ``ctx.aconn`` (``async def``). When it returns,
the job's success is recorded in that same transaction by the fenced completion (``job_complete_many`` for
this one job: id, attempt, worker, running), and the transaction commits:

- handler returned, fence matched: one commit makes its writes, its outbox messages and the job's success
  visible together; the job never runs again;
- the fence matched nothing (the lease was lost, the job was handed back or timed out): roll back, so the writes
  of this attempt vanish; whoever holds the job now decides;
- the handler raised: roll back, then the failure is recorded as for any handler (retry or dead);
- the process died (SIGKILL, OOM, power) before the commit: PostgreSQL rolls back when the connection drops and
  the lease reaper runs the job again; after the commit there is nothing left to run;
- cancellation was requested while it ran (``ctx.cancelled``): roll back; the job ends cancelled;
- the connection broke during the commit itself: the outcome is unknown to the worker, so it records nothing.
  If the commit happened the job is done; if not, its lease runs out and it runs again. Either way once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from pgqueue.errors import DatabaseUnavailable, Fatal, PgQueueError
from pgqueue.job import to_json
from pgqueue.once.connections import ConnectionSource
from pgqueue.once.conversation import Conversation, run, run_async

if TYPE_CHECKING:
    from pgqueue.executor import ClaimedJob
    from pgqueue.task import Context, Task

log = logging.getLogger("pgqueue.worker")


@dataclass(frozen=True)
class Committed:
    """What became of a transactional attempt that returned: ``accepted`` if it committed with its job."""

    result: str
    accepted: bool


class _Fenced(Exception):
    """The completion matched nothing: raised inside the transaction so that it rolls back."""


class CancelRequested(Exception):
    """The job's cancellation was requested while its handler ran: its transaction is rolled back and the worker
    records the job as cancelled (a handler that returns early on ``ctx.cancelled`` must not commit)."""


def complete(job: ClaimedJob, worker_id: uuid.UUID, result: str) -> Conversation[bool]:
    """The fenced completion of one job, in the caller's transaction."""
    rows = yield "job_complete_many", {"ids": [job.id], "attempts": [job.attempt], "results": [result],
                                       "worker_id": worker_id}
    return bool(rows)


def _storable(task: Task[Any, Any], value: Any) -> str:
    try:
        return to_json(value, f"the result of task {task.name}")
    except PgQueueError as err:
        # Deterministic: another attempt would return the same value (and repeat its writes for nothing).
        raise Fatal(str(err)) from err


def _in_doubt(job: ClaimedJob, err: BaseException) -> None:
    log.warning("job %s attempt %s: the connection broke while committing (%s); if the commit happened the job "
                "is done, if not it runs again after its lease", job.id, job.attempt, err)


class _Attempt:
    """What the sync and async runners share: the bound context and where the attempt has got to."""

    def __init__(self, task: Task[Any, Any], job: ClaimedJob, worker_id: uuid.UUID, ctx: Context,
                 completing: Callable[[], None] | None) -> None:
        self.task, self.job, self.worker_id, self.ctx = task, job, worker_id, ctx
        self._completing = completing
        self.committing = False
        self.result = "null"

    def returned(self, value: Any) -> Conversation[bool]:
        """After the handler returned: serialise its result, say we are committing, run the completion."""
        if self.ctx.cancelled:
            raise CancelRequested(f"job {self.job.id} was cancelled while it ran; its writes were rolled back")
        self.result = _storable(self.task, value)
        self.committing = True
        if self._completing is not None:
            self._completing()  # the worker stops treating the job as abandonable: the database decides now
        return complete(self.job, self.worker_id, self.result)

    def broke(self, err: BaseException) -> Committed:
        """A lost connection: in doubt if it happened while committing, else the handler's own failure."""
        if not self.committing:
            raise err
        _in_doubt(self.job, err)
        return Committed(self.result, False)


def bind(task: Task[Any, Any], job: ClaimedJob, worker_id: uuid.UUID, ctx: Context, source: ConnectionSource,
         completing: Callable[[], None] | None = None) -> Callable[..., Any]:
    """The handler wrapped to run in a transaction and commit its job's completion with it.

    Same shape as the handler: a function for ``def`` handlers (called in a thread), a coroutine function for
    ``async def`` ones. It returns ``Committed``; what the handler raises comes out after the rollback.
    """
    attempt = _Attempt(task, job, worker_id, ctx, completing)

    def call_sync(*args: Any, **kwargs: Any) -> Committed:
        with source.sync() as conn:
            try:
                with conn.transaction():
                    with ctx._transaction(conn):
                        value = task.fn(*args, **kwargs)
                    if not run(conn, attempt.returned(value)):
                        raise _Fenced
            except _Fenced:
                return Committed(attempt.result, False)
            except (psycopg.OperationalError, DatabaseUnavailable) as err:
                return attempt.broke(err)
        return Committed(attempt.result, True)

    async def call_async(*args: Any, **kwargs: Any) -> Committed:
        async with source.async_() as conn:
            try:
                async with conn.transaction():
                    with ctx._transaction(conn):
                        value = await task.fn(*args, **kwargs)
                    if not await run_async(conn, attempt.returned(value)):
                        raise _Fenced
            except _Fenced:
                return Committed(attempt.result, False)
            except (psycopg.OperationalError, DatabaseUnavailable) as err:
                return attempt.broke(err)
        return Committed(attempt.result, True)

    return call_async if task.is_async else call_sync

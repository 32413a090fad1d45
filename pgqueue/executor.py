"""Running one claimed job and turning what happened into an outcome the database can record.

Shared by the worker and by ``pgqueue.testing``, so a job run inline in a test is classified exactly as in
production: success, retry (with its delay) or dead.

Timeouts. An ``async def`` handler that overruns its ``timeout`` is cancelled. A plain ``def`` handler runs in
a thread, and Python cannot stop a thread: at the timeout the attempt is failed and the retry scheduled on
time (the database fences the attempt, so the thread's late result is discarded), while the thread runs on
until the function returns and keeps its concurrency slot until then, so hung threads cannot pile up beyond
``--concurrency``.
"""

from __future__ import annotations

import asyncio
import functools
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from pgqueue.errors import Fatal, PgQueueError, Retry, UnknownTask
from pgqueue.job import from_json, to_json
from pgqueue.once import transactional
from pgqueue.once.connections import ConnectionSource
from pgqueue.retry import Backoff
from pgqueue.task import Context

if TYPE_CHECKING:
    from pgqueue.app import App

DEFAULT_BACKOFF = Backoff()
_TRACEBACK_LIMIT = 16_000


class ClaimedJob(NamedTuple):
    """A job as a claim returns it (columns of job_claim_*). A tuple: a worker makes thousands a second."""

    id: int
    queue: str
    task: str
    args: str
    kwargs: str
    priority: int
    attempt: int
    max_attempts: int


@dataclass(frozen=True)
class Outcome:
    """What became of one attempt."""

    state: str  # succeeded | retry | dead | cancelled
    result: str | None = None
    delay: float = 0.0
    kind: str = "error"  # error | timeout
    error_type: str = ""
    message: str = ""
    traceback: str | None = None

    def statement(self, job: ClaimedJob, worker_id: uuid.UUID) -> tuple[str, dict[str, Any]]:
        """The named query and parameters that record a failed outcome (successes are batched elsewhere)."""
        params = {"id": job.id, "attempt": job.attempt, "worker_id": worker_id, "kind": self.kind,
                  "error_type": self.error_type, "message": self.message, "traceback": self.traceback,
                  "delay": self.delay}
        names = {"retry": "job_retry", "dead": "job_dead", "cancelled": "job_cancelled"}
        return names[self.state], params


@dataclass
class Execution:
    """The outcome, and for a sync handler that overran its timeout, the thread's still-running future.

    ``recorded``: None for the usual path (the caller records the outcome); for a transactional handler that
    returned, whether its transaction already committed the success (False: fenced off or in doubt, so there
    is nothing left to record).
    """

    outcome: Outcome
    overrun: asyncio.Future[Any] | None = None
    recorded: bool | None = None


async def _overran(job: ClaimedJob, timeout: float, backoff: Backoff, running: asyncio.Future[Any],
                   cancellable: bool) -> Execution:
    err = TimeoutError(f"task {job.task} ran past its timeout of {timeout} s")
    outcome = _failure(job, err, backoff, kind="timeout")
    if not cancellable:
        return Execution(outcome, overrun=running)
    running.cancel()
    await asyncio.wait({running})  # let it unwind; whatever it raises while cancelled is beside the point
    return Execution(outcome)


# Shared by every handler that returned None. Nothing changes an Execution after it is returned.
_SUCCEEDED = Execution(Outcome("succeeded", result="null"))


def _arguments(job: ClaimedJob) -> tuple[list[Any], dict[str, Any]]:
    # Most jobs have no positional or no keyword arguments: skip the parser for those.
    args = [] if job.args == "[]" else from_json(job.args, "the arguments")
    kwargs = {} if job.kwargs == "{}" else from_json(job.kwargs, "the arguments")
    return args, kwargs


def _current_task() -> asyncio.Future[Any]:
    task = asyncio.current_task()
    assert task is not None, "execute() runs inside a task"
    return task


def context_for(app: App, job: ClaimedJob, worker_id: uuid.UUID) -> Context:
    return Context(job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt,
                   max_attempts=job.max_attempts, worker_id=worker_id, app=app)


def _failure(job: ClaimedJob, err: BaseException, backoff: Backoff, *, kind: str = "error",
             fatal: bool = False, delay: float | None = None) -> Outcome:
    out_of_attempts = job.attempt >= job.max_attempts
    tb = "".join(traceback.format_exception(err))[-_TRACEBACK_LIMIT:]
    message = str(err) or type(err).__name__
    if fatal or out_of_attempts:
        state, wait = "dead", 0.0
    else:
        state, wait = "retry", delay if delay is not None else backoff.delay(job.attempt)
    return Outcome(state, delay=wait, kind=kind, error_type=type(err).__name__, message=message[:2000],
                   traceback=tb)


async def execute(app: App, job: ClaimedJob, worker_id: uuid.UUID, threads: Executor, *,
                  ctx: Context | None = None,
                  started: Callable[[asyncio.Future[Any]], None] | None = None,
                  connections: ConnectionSource | None = None,
                  completing: Callable[[], None] | None = None) -> Execution:
    """Run ``job``'s handler once and classify the result. Never raises, except CancelledError.

    ``ctx`` is the context to hand a handler that takes one (made here if not given); ``started`` learns the
    handler's future, so the caller can cancel an async handler. ``connections``: where transactional handlers
    and idempotent blocks get connections (default: the app's); ``completing``: called when a transactional
    handler starts committing its job's success.
    """
    task = app.tasks.get(job.task)
    if task is None:
        # Not fatal: during a rolling deploy the next worker to claim it may know the task.
        err = UnknownTask(f"no handler for task {job.task!r} in this worker")
        return Execution(_failure(job, err, DEFAULT_BACKOFF))
    try:
        args, kwargs = _arguments(job)
    except ValueError as err:  # undecodable (ValidationError is one): a failed attempt like any other
        return Execution(_failure(job, err, task.backoff))
    fn = task.fn
    if task.takes_context:
        ctx = ctx or context_for(app, job, worker_id)
        ctx._connections = connections
        args = [ctx, *args]
        if task.transactional:
            fn = transactional.bind(task, job, worker_id, ctx, connections or app._effects_connections(), completing)
    loop = asyncio.get_running_loop()
    try:
        if task.is_async and task.timeout is None:
            # The common case needs no task of its own: cancelling the caller's task cancels the handler.
            if started is not None:
                started(_current_task())
            value = await fn(*args, **kwargs)
        else:
            running: asyncio.Future[Any]
            if task.is_async:
                running = asyncio.ensure_future(fn(*args, **kwargs))
            else:
                running = loop.run_in_executor(threads, functools.partial(fn, *args, **kwargs))
            if started is not None:
                started(running)
            if task.timeout is None:
                value = await running
            else:
                try:
                    done, _ = await asyncio.wait({running}, timeout=task.timeout)
                except asyncio.CancelledError:
                    running.cancel()
                    raise
                if not done:
                    return await _overran(job, task.timeout, task.backoff, running, task.is_async)
                value = running.result()
    except asyncio.CancelledError:
        raise
    except Retry as err:
        return Execution(_failure(job, err, task.backoff, delay=err.delay))
    except Fatal as err:
        return Execution(_failure(job, err, task.backoff, fatal=True))
    except Exception as err:
        return Execution(_failure(job, err, task.backoff, fatal=isinstance(err, task.non_retryable)))
    except BaseException as err:  # SystemExit or KeyboardInterrupt from a handler: a failed attempt
        return Execution(_failure(job, err, task.backoff))
    if isinstance(value, transactional.Committed):
        return Execution(Outcome("succeeded", result=value.result), recorded=value.accepted)
    if value is None:
        return _SUCCEEDED  # most handlers return nothing
    try:
        result = to_json(value, f"the result of task {job.task}")
    except PgQueueError as err:
        # Deterministic: running it again would give the same unstorable result (and repeat its effects).
        return Execution(_failure(job, err, task.backoff, fatal=True))
    return Execution(Outcome("succeeded", result=result))

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
import json
import traceback
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from pgqueue.errors import Fatal, PgQueueError, Retry, UnknownTask
from pgqueue.job import to_json
from pgqueue.retry import Backoff
from pgqueue.task import Context

if TYPE_CHECKING:
    from pgqueue.app import App

DEFAULT_BACKOFF = Backoff()


def _decode(text: str, empty: str, kind: type) -> Any:
    """JSON arguments; the common empty ones without running the parser."""
    return kind() if text == empty else json.loads(text)
_TRACEBACK_LIMIT = 16_000


class ClaimedJob(NamedTuple):
    """A job as a claim returns it (columns of job_claim_*). A tuple: built per job on the hot path."""

    id: int
    queue: str
    task: str
    args: str
    kwargs: str
    priority: int
    attempt: int
    max_attempts: int
    scheduled_for: datetime
    created_at: datetime
    started_at: datetime


@dataclass(frozen=True)
class Outcome:
    """What became of one attempt."""

    state: str  # succeeded | retry | dead
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
        return ("job_retry" if self.state == "retry" else "job_dead"), params


_SUCCEEDED_NONE = Outcome("succeeded", result="null")


@dataclass
class Execution:
    """The outcome, and for a sync handler that overran its timeout, the thread's still-running future."""

    outcome: Outcome
    overrun: asyncio.Future[Any] | None = None


async def _overran(job: ClaimedJob, timeout: float, backoff: Backoff, running: asyncio.Future[Any],
                   cancellable: bool) -> Execution:
    err = TimeoutError(f"task {job.task} ran past its timeout of {timeout} s")
    outcome = _failure(job, err, backoff, kind="timeout")
    if not cancellable:
        return Execution(outcome, overrun=running)
    running.cancel()
    await asyncio.wait({running})  # let it unwind; whatever it raises while cancelled is beside the point
    return Execution(outcome)


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


async def execute(app: App, job: ClaimedJob, worker_id: uuid.UUID, threads: Executor) -> Execution:
    """Run ``job``'s handler once and classify the result. Never raises, except CancelledError."""
    task = app.tasks.get(job.task)
    if task is None:
        # Not fatal: during a rolling deploy the next worker to claim it may know the task.
        err = UnknownTask(f"no handler for task {job.task!r} in this worker")
        return Execution(_failure(job, err, DEFAULT_BACKOFF))
    try:
        args, kwargs = _decode(job.args, "[]", list), _decode(job.kwargs, "{}", dict)
    except ValueError as err:
        return Execution(_failure(job, err, task.backoff))
    if task.takes_context:
        ctx = Context(job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt,
                      max_attempts=job.max_attempts, worker_id=worker_id, app=app)
        args = [ctx, *args]
    loop = asyncio.get_running_loop()
    try:
        if task.is_async and task.timeout is None:
            # Nothing to enforce: await the handler in this task rather than in a task of its own.
            value = await task.fn(*args, **kwargs)
        else:
            if task.is_async:
                running: asyncio.Future[Any] = asyncio.ensure_future(task.fn(*args, **kwargs))
            else:
                running = loop.run_in_executor(threads, functools.partial(task.fn, *args, **kwargs))
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
    if value is None:
        return Execution(_SUCCEEDED_NONE)
    try:
        result = to_json(value, f"the result of task {job.task}")
    except PgQueueError as err:
        # Deterministic: running it again would give the same unstorable result (and repeat its effects).
        return Execution(_failure(job, err, task.backoff, fatal=True))
    return Execution(Outcome("succeeded", result=result))

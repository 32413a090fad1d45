"""Batches over HTTP, on the core's batches (``pgqueue.workflow.create_batch``): create a named batch of jobs,
with an optional completion callback, in one transaction; read its progress.

::

    POST /api/v1/batches {"name": "import", "jobs": [{"task": "rows.load", "args": [1]}, ...],
                          "on_complete": {"task": "rows.report"}}
    GET  /api/v1/batches/{id}
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from pgqueue.app import App
from pgqueue.errors import JobNotFound, PayloadTooLarge, ValidationError
from pgqueue.retry import Backoff
from pgqueue.task import Call, EnqueueOptions, Task
from pgqueue.web.access import Services, require
from pgqueue.web.auth import Scope
from pgqueue.web.jobs import check_task, too_large
from pgqueue.web.models import MAX_ID, BatchCreate, BatchCreated, BatchInfo, BatchJob
from pgqueue.web.problems import invalid, not_found, responses

router = APIRouter(tags=["batches"])


def _any_arguments(*args: Any, **kwargs: Any) -> None:
    """The handler of a stand-in task: the serve process does not run jobs, and any arguments fit."""


def _task(app: App, name: str) -> Task[Any, Any]:
    """The served app's task ``name`` (``--app``: its defaults apply), else a stand-in known only by name, with
    the defaults ``app.enqueue`` gives a task it does not know. Batches are made of tasks' calls."""
    if app.tasks:
        return app.get_task(name)
    return Task(app, _any_arguments, name=name, queue="default", priority=0, max_attempts=10, timeout=None,
                backoff=Backoff(), non_retryable=())


def _call(app: App, job: BatchJob, tasks: dict[str, Task[Any, Any]]) -> Call:
    """``tasks``: the request's tasks by name, so jobs of one task share one Task and go in as one bulk insert
    (a stand-in per job made a 10,000-job batch 10,000 inserts: over 10 seconds)."""
    task = tasks.get(job.task)
    if task is None:
        task = tasks[job.task] = _task(app, job.task)
    options = EnqueueOptions(queue=job.queue, priority=job.priority, run_at=job.run_at,
                             delay=job.delay, max_attempts=job.max_attempts, group=job.group)
    return Call(tuple(job.args), dict(job.kwargs), options, task)


@router.post("/batches", status_code=201, response_model=BatchCreated, summary="Create a batch of jobs",
             responses=responses(401, 403, 413, 422))
async def create_batch(body: BatchCreate, svc: Annotated[Services, Depends(require(Scope.ENQUEUE))]
                       ) -> BatchCreated:
    """Enqueue ``jobs`` as one named batch, and ``on_complete`` (if given) to run once all of them have finished,
    with ``batch_id`` added to its keyword arguments. All or nothing: one transaction. Follow it with
    GET /batches/{id}."""
    for i, job in enumerate(body.jobs):
        check_task(svc, job.task, job.args, job.kwargs, f"jobs.{i}.task", f"jobs.{i}.args")
    if body.on_complete is not None:
        check_task(svc, body.on_complete.task, body.on_complete.args, {**body.on_complete.kwargs, "batch_id": 1},
                   "on_complete.task", "on_complete.args")
    app = svc.app
    tasks: dict[str, Task[Any, Any]] = {}
    calls = [_call(app, job, tasks) for job in body.jobs]
    callback = _call(app, body.on_complete, tasks) if body.on_complete is not None else None
    try:
        batch = await asyncio.to_thread(app.create_batch, body.name, calls, on_complete=callback)
    except PayloadTooLarge as err:
        raise too_large(err, "jobs") from None
    except ValidationError as err:
        raise invalid("jobs", str(err)) from None
    svc.hub.poke()
    return BatchCreated(id=batch.id, job_ids=[j.id for j in batch.jobs],
                        callback_job_id=batch.callback.id if batch.callback else None)


@router.get("/batches/{batch_id}", response_model=BatchInfo, summary="A batch's progress",
            responses=responses(401, 403, 404, 422))
async def get_batch(batch_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Batch id.")],
                    svc: Annotated[Services, Depends(require(Scope.READ))]) -> BatchInfo:
    """How many of the batch's jobs are in each state, and whether all have finished."""
    try:
        batch = await asyncio.to_thread(svc.app.batch, batch_id)
    except JobNotFound:
        raise not_found(f"no batch with id {batch_id}") from None
    return BatchInfo(id=batch.id, name=batch.name, total=batch.total, counts=batch.counts, finished=batch.finished,
                     progress=batch.progress, done=batch.done, callback_job_id=batch.callback_job_id,
                     created_at=batch.created_at)

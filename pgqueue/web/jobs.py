"""Jobs and dead letters over HTTP: enqueue, read, page through, cancel, retry; list, bulk retry, bulk delete
and CSV export of dead letters. Every write is one statement (or one transaction), and every refusal happens
before it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import StreamingResponse

from pgqueue.errors import PayloadTooLarge, ValidationError
from pgqueue.job import Job
from pgqueue.web import cursors
from pgqueue.web.access import Services, require
from pgqueue.web.auth import Scope
from pgqueue.web.models import (
    MAX_ID,
    AttemptError,
    BulkResult,
    DeadLetter,
    DeadPage,
    DeadSelection,
    JobAction,
    JobCreate,
    JobCreated,
    JobDetail,
    JobPage,
    JobState,
    JobSummary,
)
from pgqueue.web.problems import ApiError, FieldProblem, conflict, invalid, not_found, responses

router = APIRouter(tags=["jobs"])
dead_router = APIRouter(tags=["dead letters"])

QueueFilter = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,100}$", description="Only this queue.")]
TaskFilter = Annotated[str | None, Query(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$",
                                         description="Only this task.")]
ErrorFilter = Annotated[str | None, Query(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,199}$",
                                          description="Only dead letters whose last error is of this class.")]
JobCursor = Annotated[int | None, Query(ge=1, le=MAX_ID, description="next_cursor of the previous page.")]
DeadCursor = Annotated[str | None, Query(pattern=r"^[0-9]{1,16}_[0-9]{1,19}$",
                                         description="next_cursor of the previous page.")]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
JobIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="Job id.")]


def _summary(job: Job) -> JobSummary:
    return JobSummary(id=job.id, queue=job.queue, task=job.task, state=JobState(job.state.value), priority=job.priority,
                      attempt=job.attempt, max_attempts=job.max_attempts, scheduled_for=job.scheduled_for,
                      created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
                      worker_id=str(job.worker_id) if job.worker_id else None, progress=job.progress,
                      progress_message=job.progress_message, group_key=job.group_key, unique_key=job.unique_key,
                      batch_id=job.batch_id)


# -- enqueue ------------------------------------------------------------------------------------------------------

def check_task(svc: Services, name: str, args: list[Any], kwargs: dict[str, Any], field: str = "task",
               args_field: str = "args") -> None:
    """With ``--app``, the task must be one of the served app's and the arguments must fit its handler."""
    app = svc.app
    if not app.tasks:
        return
    task = app.tasks.get(name)
    if task is None:
        raise invalid(field, f"no task {name!r} is registered in the served app")
    try:
        task.check_arguments(args, kwargs)
    except ValidationError as err:
        raise invalid(args_field, str(err)) from None


def too_large(err: PayloadTooLarge, field: str = "args") -> ApiError:
    return ApiError(413, "payload_too_large", str(err), [FieldProblem(field=field, location="body", message=str(err))])


async def _refused(svc: Services, body: JobCreate, err: ValidationError) -> ApiError:
    """What a ValidationError of the core's enqueue means here: the idempotency key is another task's, or the
    arguments cannot be stored (NaN, lone surrogates)."""
    if body.idempotency_key is not None:
        owner = await svc.db.fetch("web_enqueue_key_task", {"key": body.idempotency_key})
        if owner and owner[0][0] is not None and owner[0][0] != body.task:
            return ApiError(409, "conflict", str(err),
                            [FieldProblem(field="idempotency_key", location="body", message=str(err))])
    return invalid("args", str(err))


@router.post("/jobs", status_code=201, response_model=JobCreated, summary="Enqueue a job",
             responses={200: {"model": JobCreated, "description": "An idempotency_key or unique_key handed back "
                                                                   "an existing job (created: false)"},
                        **responses(401, 403, 404, 409, 413, 422)})
async def create_job(body: JobCreate, response: Response,
                     svc: Annotated[Services, Depends(require(Scope.ENQUEUE))]) -> JobCreated:
    """Enqueue one job. Returns its id, state and, when queued, how many jobs of its queue run before it.

    With an ``idempotency_key``, the first request makes the job and every other one with that key (concurrent
    or later, until the key expires) gets that same job back, whatever its state, with status 200 and
    ``created: false``; the same key with another task is a 409. With a ``unique_key`` already held, the job
    holding it comes back the same way and nothing is enqueued."""
    check_task(svc, body.task, body.args, body.kwargs)
    if body.depends_on:
        missing = await svc.db.fetch("web_jobs_missing", {"ids": body.depends_on})
        if missing:
            message = f"depends_on names job {missing[0][0]}, which does not exist"
            raise ApiError(404, "not_found", message,
                           [FieldProblem(field="depends_on", location="body", message=message)])
    try:
        async with svc.db.transaction() as conn:
            job = await svc.app.enqueue_async(
                body.task, body.args, body.kwargs, queue=body.queue, priority=body.priority, run_at=body.run_at,
                delay=body.delay, max_attempts=body.max_attempts, group=body.group, unique_key=body.unique_key,
                depends_on=body.depends_on, on_parent_failure=body.on_parent_failure,
                idempotency_key=body.idempotency_key, conn=conn)
            created = True
            if body.idempotency_key is not None or body.unique_key is not None:
                # Ours is not committed yet, so only a job the key handed back is visible from outside.
                created = not (await svc.db.fetch_outside("web_job_committed", {"id": job.id}))[0][0]
            position = await svc.db.fetch("web_job_queue_position", {"id": job.id}, conn)
    except PayloadTooLarge as err:
        raise too_large(err) from None
    except ValidationError as err:
        raise await _refused(svc, body, err) from None
    if created:
        svc.hub.poke()
    else:
        response.status_code = 200
    return JobCreated(id=job.id, state=JobState(job.state.value), queue=job.queue, task=job.task,
                      queue_position=position[0][0] if position else None, scheduled_for=job.scheduled_for,
                      created_at=job.created_at, created=created)


# -- read ---------------------------------------------------------------------------------------------------------

@router.get("/jobs", response_model=JobPage, summary="List jobs, newest first",
            responses=responses(401, 403, 422))
async def list_jobs(svc: Annotated[Services, Depends(require(Scope.READ))], queue: QueueFilter = None,
                    state: Annotated[JobState | None, Query(description="Only this state.")] = None,
                    task: TaskFilter = None, cursor: JobCursor = None, limit: Limit = 50) -> JobPage:
    """Jobs live and finished, newest first, a page at a time (keyset pagination: stable under inserts)."""
    rows = await svc.db.fetch("web_job_page", {"queue": queue, "state": state.value if state else None,
                                               "task": task, "before": cursor, "limit": limit})
    items = [_summary(Job.from_row(row)) for row in rows]
    next_cursor = items[-1].id if len(items) == limit else None
    return JobPage(items=items, next_cursor=next_cursor)


async def job_detail(svc: Services, job_id: int) -> JobDetail:
    rows = await svc.db.fetch("job_get", {"id": job_id})
    if not rows:
        raise not_found(f"no job with id {job_id}")
    job = Job.from_row(rows[0])
    errors = [AttemptError(attempt=e[0], kind=e[1], error_type=e[2], message=e[3], traceback=e[4],
                           worker_id=str(e[5]) if e[5] else None, started_at=e[6], failed_at=e[7])
              for e in await svc.db.fetch("job_errors_get", {"id": job_id})]
    return JobDetail(**_summary(job).model_dump(), args=job.args, kwargs=job.kwargs, result=job.result,
                     lease_expires_at=job.lease_expires_at, errors=errors)


@router.get("/jobs/{job_id}", response_model=JobDetail, summary="One job with every attempt's error",
            responses=responses(401, 403, 404, 422))
async def get_job(job_id: JobIdPath, svc: Annotated[Services, Depends(require(Scope.READ))]) -> JobDetail:
    """A job wherever it is in its life: arguments, result, and each failed attempt with its traceback."""
    return await job_detail(svc, job_id)


# -- change -------------------------------------------------------------------------------------------------------

async def _state_of(svc: Services, job_id: int) -> str:
    rows = await svc.db.fetch("job_get", {"id": job_id})
    if not rows:
        raise not_found(f"no job with id {job_id}")
    return str(rows[0][6])


@router.delete("/jobs/{job_id}", response_model=JobAction, summary="Cancel a job",
               responses=responses(401, 403, 404, 409, 422))
async def cancel_job(job_id: JobIdPath, svc: Annotated[Services, Depends(require(Scope.ADMIN))]) -> JobAction:
    """Cancel a job. One that has not started never runs (state cancelled); a running one is asked to stop
    (cancel_requested: its handler sees ``ctx.cancelled`` and the job ends cancelled). A finished job gives 409."""
    if await svc.db.fetch("job_cancel", {"id": job_id}):
        svc.hub.poke()
        return JobAction(id=job_id, state=JobState.cancelled)
    if await svc.db.fetch("job_cancel_running", {"id": job_id}):
        return JobAction(id=job_id, state=JobState.running, cancel_requested=True)
    state = await _state_of(svc, job_id)
    raise conflict(f"job {job_id} is {state}; only unfinished jobs can be cancelled")


@router.post("/jobs/{job_id}/retry", response_model=JobAction, summary="Queue a dead or cancelled job again",
             responses=responses(401, 403, 404, 409, 422))
async def retry_job(job_id: JobIdPath, svc: Annotated[Services, Depends(require(Scope.ADMIN))]) -> JobAction:
    """Queue a dead or cancelled job again; it keeps its attempt count and gets at least one more attempt."""
    rows = await svc.db.fetch("job_retry_finished", {"ids": [job_id], "task": None, "queue": None,
                                                     "states": ["dead", "cancelled"]})
    if rows:
        svc.hub.poke()
        return JobAction(id=job_id, state=JobState.queued)
    state = await _state_of(svc, job_id)
    raise conflict(f"job {job_id} is {state}; only dead or cancelled jobs can be retried")


# -- dead letters -------------------------------------------------------------------------------------------------

def _dead(row: tuple[Any, ...]) -> DeadLetter:
    (id_, queue, task, args, kwargs, attempt, max_attempts, created_at, finished_at, error_type, message) = row
    return DeadLetter(id=id_, queue=queue, task=task, args=json.loads(args), kwargs=json.loads(kwargs),
                      attempt=attempt, max_attempts=max_attempts, created_at=created_at, finished_at=finished_at,
                      error_type=error_type, error_message=message)


def _dead_params(queue: str | None, task: str | None, error_type: str | None, cursor: str | None, limit: int
                 ) -> dict[str, Any]:
    before_at, before_id = None, None
    if cursor is not None:
        before_at, before_id = cursors.decode_dead(cursor)
    return {"queue": queue, "task": task, "error_type": error_type, "before_at": before_at,
            "before_id": before_id, "limit": limit}


@dead_router.get("/dead-letters", response_model=DeadPage, summary="List dead letters",
                 responses=responses(401, 403, 422))
async def list_dead(svc: Annotated[Services, Depends(require(Scope.READ))], queue: QueueFilter = None,
                    task: TaskFilter = None, error_type: ErrorFilter = None, cursor: DeadCursor = None,
                    limit: Limit = 50) -> DeadPage:
    """Dead jobs, most recently dead first, with their last error; filtered by queue, task and error class."""
    rows = await svc.db.fetch("web_dead_page", _dead_params(queue, task, error_type, cursor, limit))
    items = [_dead(row) for row in rows]
    next_cursor = cursors.encode_dead(items[-1].finished_at, items[-1].id) if len(items) == limit else None
    return DeadPage(items=items, next_cursor=next_cursor)


def _selection(body: DeadSelection) -> dict[str, Any]:
    # all=true and no filter: every parameter NULL, which the statements read as "no condition".
    return {"ids": body.ids, "queue": body.queue, "task": body.task, "error_type": body.error_type}


@dead_router.post("/dead-letters/retry", response_model=BulkResult, summary="Retry dead letters in bulk",
                  responses=responses(401, 403, 422))
async def retry_dead(body: DeadSelection, svc: Annotated[Services, Depends(require(Scope.ADMIN))]) -> BulkResult:
    """Queue the chosen dead letters again, in one statement however many."""
    rows = await svc.db.fetch("web_dead_retry", _selection(body))
    svc.hub.poke()
    return BulkResult(count=len(rows))


@dead_router.post("/dead-letters/delete", response_model=BulkResult, summary="Delete dead letters in bulk",
                  responses=responses(401, 403, 422))
async def delete_dead(body: DeadSelection, svc: Annotated[Services, Depends(require(Scope.ADMIN))]
                      ) -> BulkResult:
    """Delete the chosen dead letters and their errors for good."""
    count = int((await svc.db.fetch("web_dead_delete", _selection(body)))[0][0])
    svc.hub.poke()
    return BulkResult(count=count)


CSV_COLUMNS = ("id", "queue", "task", "attempt", "max_attempts", "created_at", "finished_at", "error_type",
               "error_message", "args", "kwargs")


def _cell(value: Any) -> str:
    text = value.isoformat() if isinstance(value, datetime) else "" if value is None else str(value)
    # A cell a spreadsheet would run as a formula is quoted, so an export is safe to open (OWASP CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@dead_router.get("/dead-letters.csv", summary="Export dead letters as CSV", response_class=StreamingResponse,
                 responses={200: {"content": {"text/csv": {}}, "description": "CSV, one dead letter a row"},
                            **responses(401, 403, 422)})
async def export_dead(svc: Annotated[Services, Depends(require(Scope.READ))], queue: QueueFilter = None,
                      task: TaskFilter = None, error_type: ErrorFilter = None) -> StreamingResponse:
    """Every dead letter matching the filters, streamed a page at a time."""

    async def rows() -> AsyncIterator[str]:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        params = _dead_params(queue, task, error_type, None, 1000)
        while True:
            page = [_dead(row) for row in await svc.db.fetch("web_dead_page", params)]
            for d in page:
                writer.writerow([_cell(v) for v in (d.id, d.queue, d.task, d.attempt, d.max_attempts, d.created_at,
                                                    d.finished_at, d.error_type, d.error_message,
                                                    json.dumps(d.args), json.dumps(d.kwargs))])
            yield out.getvalue()
            out.seek(0)
            out.truncate()
            if len(page) < params["limit"]:
                return
            params = {**params, "before_at": page[-1].finished_at, "before_id": page[-1].id}

    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": 'attachment; filename="dead-letters.csv"'})

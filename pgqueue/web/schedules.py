"""Cron schedules and batches over HTTP, on the core's scheduling (``pgqueue.periodic``, ``pgqueue.workflow``).

Schedules: list, create (or replace, by name), pause, resume, delete. Batches: read a batch's progress.
Creating a batch over HTTP is not built yet (a batch is made of registered tasks' calls: ``app.create_batch``);
POST /batches answers 501.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path

from pgqueue.errors import JobNotFound, UnknownTask, ValidationError
from pgqueue.periodic import Schedule, ScheduleRow, check_cron, check_timezone
from pgqueue.web.access import Services, require
from pgqueue.web.auth import Scope
from pgqueue.web.models import MAX_ID, BatchInfo, ScheduleCreate, ScheduleInfo
from pgqueue.web.problems import invalid, not_found, pending_feature, responses

router = APIRouter(tags=["schedules and batches"])

NamePath = Annotated[str, Path(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$", description="Schedule name.")]


def _info(row: ScheduleRow) -> ScheduleInfo:
    return ScheduleInfo(name=row.name, cron=row.cron, timezone=row.timezone, task=row.task, args=row.args,
                        kwargs=row.kwargs, queue=row.queue, priority=row.priority, max_attempts=row.max_attempts,
                        missed=row.missed, max_catchup=row.max_catchup, paused=row.paused, source=row.source,
                        last_tick_at=row.last_tick_at)


async def _schedule(svc: Services, name: str) -> ScheduleInfo:
    for row in await asyncio.to_thread(svc.app.list_schedules):
        if row.name == name:
            return _info(row)
    raise not_found(f"no schedule named {name!r}")


@router.get("/schedules", response_model=list[ScheduleInfo], summary="Cron schedules",
            responses=responses(401, 403))
async def list_schedules(svc: Annotated[Services, Depends(require(Scope.READ))]) -> list[ScheduleInfo]:
    return [_info(row) for row in await asyncio.to_thread(svc.app.list_schedules)]


@router.post("/schedules", status_code=201, response_model=ScheduleInfo, summary="Create or replace a schedule",
             responses=responses(401, 403, 422))
async def create_schedule(body: ScheduleCreate, svc: Annotated[Services, Depends(require(Scope.ADMIN))]
                          ) -> ScheduleInfo:
    """Enqueue ``task`` at each time ``cron`` gives (5 fields, or 6 with seconds), in ``timezone``."""
    for field, check in (("cron", check_cron), ("timezone", check_timezone)):
        try:
            check(getattr(body, field))
        except ValidationError as err:
            raise invalid(field, str(err)) from None
    try:
        schedule = Schedule(name=body.name, cron=body.cron, task=body.task, timezone=body.timezone,
                            args=tuple(body.args), kwargs=body.kwargs, queue=body.queue, priority=body.priority,
                            max_attempts=body.max_attempts, missed=body.missed, max_catchup=body.max_catchup)
        await asyncio.to_thread(svc.app.add_schedule, schedule)
    except UnknownTask as err:
        raise invalid("task", str(err)) from None
    except ValidationError as err:
        raise invalid("body", str(err)) from None
    return await _schedule(svc, body.name)


async def _set_paused(svc: Services, name: str, paused: bool) -> ScheduleInfo:
    try:
        await asyncio.to_thread(svc.app.pause_schedule, name, paused)
    except JobNotFound:
        raise not_found(f"no schedule named {name!r}") from None
    return await _schedule(svc, name)


@router.post("/schedules/{name}/pause", response_model=ScheduleInfo, summary="Pause a schedule",
             responses=responses(401, 403, 404, 422))
async def pause_schedule(name: NamePath, svc: Annotated[Services, Depends(require(Scope.ADMIN))]) -> ScheduleInfo:
    return await _set_paused(svc, name, True)


@router.post("/schedules/{name}/resume", response_model=ScheduleInfo, summary="Resume a schedule",
             responses=responses(401, 403, 404, 422))
async def resume_schedule(name: NamePath, svc: Annotated[Services, Depends(require(Scope.ADMIN))]) -> ScheduleInfo:
    return await _set_paused(svc, name, False)


@router.delete("/schedules/{name}", response_model=ScheduleInfo, summary="Delete a schedule",
               responses=responses(401, 403, 404, 422))
async def delete_schedule(name: NamePath, svc: Annotated[Services, Depends(require(Scope.ADMIN))]) -> ScheduleInfo:
    info = await _schedule(svc, name)
    try:
        await asyncio.to_thread(svc.app.remove_schedule, name)
    except JobNotFound:
        raise not_found(f"no schedule named {name!r}") from None
    return info


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


@router.post("/batches", include_in_schema=False)
async def create_batch(_: Annotated[Services, Depends(require(Scope.ENQUEUE))]) -> None:
    raise pending_feature("creating batches over HTTP", "not built yet; use app.create_batch in Python")

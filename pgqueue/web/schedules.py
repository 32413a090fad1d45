"""Cron schedules over HTTP, on the core's scheduling (``pgqueue.periodic``): list (with the next and last
tick), create (or replace, by name), pause, resume, delete.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path

from pgqueue.errors import JobNotFound, UnknownTask, ValidationError
from pgqueue.periodic import Schedule, ScheduleRow, check_cron, check_timezone
from pgqueue.web.access import Services, require
from pgqueue.web.auth import Scope
from pgqueue.web.models import ScheduleCreate, ScheduleInfo
from pgqueue.web.problems import invalid, not_found, responses

router = APIRouter(tags=["schedules"])

NamePath = Annotated[str, Path(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$", description="Schedule name.")]


def _info(row: ScheduleRow, now: datetime) -> ScheduleInfo:
    return ScheduleInfo(name=row.name, cron=row.cron, timezone=row.timezone, task=row.task, args=row.args,
                        kwargs=row.kwargs, queue=row.queue, priority=row.priority, max_attempts=row.max_attempts,
                        missed=row.missed, max_catchup=row.max_catchup, paused=row.paused, source=row.source,
                        last_tick_at=row.last_tick_at, next_tick_at=None if row.paused else row.next_tick(now))


async def _schedules(svc: Services) -> list[ScheduleInfo]:
    # Next ticks are counted from the database clock, as the scheduler counts them.
    now = await svc.db.scalar("web_now")
    return [_info(row, now) for row in await asyncio.to_thread(svc.app.list_schedules)]


async def _schedule(svc: Services, name: str) -> ScheduleInfo:
    for info in await _schedules(svc):
        if info.name == name:
            return info
    raise not_found(f"no schedule named {name!r}")


@router.get("/schedules", response_model=list[ScheduleInfo], summary="Cron schedules",
            responses=responses(401, 403))
async def list_schedules(svc: Annotated[Services, Depends(require(Scope.READ))]) -> list[ScheduleInfo]:
    """Every schedule, by name: its cron expression and time zone, what it enqueues, its missed-ticks policy
    (``once``, ``all`` or ``skip``), whether it is paused, its last tick and (unless paused) its next one."""
    return await _schedules(svc)


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

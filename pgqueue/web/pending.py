"""Endpoints of features that are being built elsewhere and have not landed: each answers 501 with a JSON body
naming the feature and where it comes from, after the same scope check it will have. None is in the OpenAPI
document yet. This is where they plug in: replace a stub with its router when its feature merges.

- batches (issue 3): GET/POST /batches, GET /batches/{id}
- schedules (issue 3): GET/POST /schedules, POST /schedules/{id}/pause|resume, DELETE /schedules/{id}
- queue pause, resume and limits (issue 3): POST /queues/{name}/pause|resume, PUT /queues/{name}/limits
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from pgqueue.web.access import Services, require
from pgqueue.web.auth import Scope
from pgqueue.web.problems import pending_feature

router = APIRouter(include_in_schema=False)

ISSUE_3 = "issue 3"


@router.get("/batches")
@router.get("/batches/{batch_id}")
async def read_batches(_: Annotated[Services, Depends(require(Scope.READ))]) -> None:
    raise pending_feature("batches", ISSUE_3)


@router.post("/batches")
async def create_batch(_: Annotated[Services, Depends(require(Scope.ENQUEUE))]) -> None:
    raise pending_feature("batches", ISSUE_3)


@router.get("/schedules")
async def read_schedules(_: Annotated[Services, Depends(require(Scope.READ))]) -> None:
    raise pending_feature("schedules (cron)", ISSUE_3)


@router.post("/schedules")
@router.post("/schedules/{schedule_id}/pause")
@router.post("/schedules/{schedule_id}/resume")
@router.delete("/schedules/{schedule_id}")
async def change_schedules(_: Annotated[Services, Depends(require(Scope.ADMIN))]) -> None:
    raise pending_feature("schedules (cron)", ISSUE_3)


@router.post("/queues/{queue}/pause")
@router.post("/queues/{queue}/resume")
async def pause_queue(_: Annotated[Services, Depends(require(Scope.ADMIN))]) -> None:
    raise pending_feature("queue pause and resume", ISSUE_3)


@router.put("/queues/{queue}/limits")
async def queue_limits(_: Annotated[Services, Depends(require(Scope.ADMIN))]) -> None:
    raise pending_feature("queue limits", ISSUE_3)

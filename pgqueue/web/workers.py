"""Workers over HTTP: list them, and ask one to change its concurrency or to drain.

Requests go on the worker's row in ``pgqueue.workers``; the worker reads them at its next heartbeat (every
lease/3 seconds, 10 s by default), applies them and clears them (see ``worker_sync`` in sql/queries/web.sql).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from pgqueue.web.access import Services, require
from pgqueue.web.auth import Scope
from pgqueue.web.database import Database
from pgqueue.web.models import ConcurrencyRequest, WorkerInfo
from pgqueue.web.problems import not_found, responses

router = APIRouter(tags=["workers"])


def _worker(row: tuple[Any, ...]) -> WorkerInfo:
    (id_, host, pid, queues, concurrency, state, started_at, heartbeat_at, uptime, heartbeat_age, running,
     done, failed, requested, drain_at) = row
    return WorkerInfo(id=str(id_), host=host, pid=pid, queues=queues, concurrency=concurrency, state=state,
                      started_at=started_at, last_heartbeat_at=heartbeat_at, uptime_seconds=uptime,
                      heartbeat_age_seconds=heartbeat_age, running=running, jobs_done=done, jobs_failed=failed,
                      requested_concurrency=requested, drain_requested_at=drain_at)


async def list_workers(db: Database) -> list[WorkerInfo]:
    return [_worker(row) for row in await db.fetch("web_worker_list")]


@router.get("/workers", response_model=list[WorkerInfo], summary="Registered workers",
            responses=responses(401, 403))
async def get_workers(svc: Annotated[Services, Depends(require(Scope.READ))]) -> list[WorkerInfo]:
    """Every registered worker: host, pid, queues, concurrency, running jobs, uptime, last heartbeat."""
    return await list_workers(svc.db)


WorkerPath = Annotated[uuid.UUID, Path(description="Worker id.")]


async def _request(svc: Services, worker_id: uuid.UUID, concurrency: int | None, drain: bool) -> WorkerInfo:
    rows = await svc.db.fetch("web_worker_request", {"id": worker_id, "concurrency": concurrency, "drain": drain})
    if not rows:
        raise not_found(f"no worker with id {worker_id}")
    svc.hub.poke()
    for worker in await list_workers(svc.db):
        if worker.id == str(worker_id):
            return worker
    raise not_found(f"worker {worker_id} left")


@router.post("/workers/{worker_id}/concurrency", status_code=202, response_model=WorkerInfo,
             summary="Ask a worker to run with another concurrency", responses=responses(401, 403, 404, 422))
async def set_concurrency(worker_id: WorkerPath, body: ConcurrencyRequest,
                          svc: Annotated[Services, Depends(require(Scope.ADMIN))]) -> WorkerInfo:
    """Accepted, not done: the worker applies it at its next heartbeat (``requested_concurrency`` until then)."""
    return await _request(svc, worker_id, body.concurrency, False)


@router.post("/workers/{worker_id}/drain", status_code=202, response_model=WorkerInfo,
             summary="Ask a worker to drain", responses=responses(401, 403, 404, 422))
async def drain(worker_id: WorkerPath, svc: Annotated[Services, Depends(require(Scope.ADMIN))]) -> WorkerInfo:
    """At its next heartbeat the worker stops claiming, finishes its running jobs and leaves, as on SIGTERM."""
    return await _request(svc, worker_id, None, True)

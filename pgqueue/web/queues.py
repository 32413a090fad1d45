"""Queues: per-queue counts, rates and a health colour, for the API, the dashboard and its live pushes.

Health, so the overview reads at a glance:

- amber first of all when the queue is paused.
- red: jobs wait and no live worker serves the queue; or at least half the attempts of the last minute failed;
  or the oldest queued job has waited over 5 minutes.
- amber: at least 10% of the last minute's attempts failed; or the oldest queued job has waited over a minute;
  or a job went dead in the last hour.
- green: otherwise.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from pgqueue.errors import ValidationError
from pgqueue.web.access import Services, require
from pgqueue.web.auth import Scope
from pgqueue.web.database import Database
from pgqueue.web.models import Health, QueueInfo, QueueLimits, Rate
from pgqueue.web.problems import invalid, not_found, responses

router = APIRouter(tags=["queues"])

QueuePath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,100}$", description="Queue name.")]


def health(info: dict[str, Any]) -> tuple[Health, str]:
    """The colour of a queue and why, from its overview figures."""
    rate, oldest = info["failure_rate"], info["oldest_queued_age"] or 0.0
    if info["paused"]:
        return Health.amber, "paused: workers claim nothing from it until it is resumed"
    if info["queued"] and not info["live_workers"]:
        return Health.red, "jobs are queued and no live worker serves this queue"
    if rate is not None and rate >= 0.5:
        return Health.red, f"{rate:.0%} of the last minute's attempts failed"
    if oldest > 300:
        return Health.red, f"the oldest queued job has waited {oldest:.0f} s"
    if rate is not None and rate >= 0.1:
        return Health.amber, f"{rate:.0%} of the last minute's attempts failed"
    if oldest > 60:
        return Health.amber, f"the oldest queued job has waited {oldest:.0f} s"
    if info["dead_last_hour"]:
        return Health.amber, f"{info['dead_last_hour']} jobs went dead in the last hour"
    return Health.green, "ok"


def limits(row: tuple[Any, ...]) -> QueueLimits:
    """A row of queue_settings_list as the API shows limits."""
    (_, _, concurrency, rate, rate_period, group_concurrency, group_rate, group_rate_period, fair, aging) = row
    return QueueLimits(
        concurrency=concurrency, rate=Rate(limit=rate, period=rate_period) if rate is not None else None,
        group_concurrency=group_concurrency,
        group_rate=Rate(limit=group_rate, period=group_rate_period) if group_rate is not None else None,
        fair=fair, priority_aging=aging)


class Overview:
    """Reads the per-queue overview. The last hour's figures are cached ``hour_ttl`` seconds: they cost more
    than the rest and move slowly, while the overview is read several times a second while browsers watch."""

    def __init__(self, db: Database, hour_ttl: float = 5.0) -> None:
        self._db = db
        self._hour_ttl = hour_ttl
        self._hour: dict[str, tuple[int, int, int]] = {}
        self._hour_read = float("-inf")

    async def read(self) -> list[QueueInfo]:
        if time.monotonic() - self._hour_read > self._hour_ttl:
            rows = await self._db.fetch("web_queue_hour")
            self._hour = {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}
            self._hour_read = time.monotonic()
        settings = {row[0]: row for row in await self._db.fetch("queue_settings_list")}
        out = []
        for row in await self._db.fetch("web_queue_overview"):
            (queue, scheduled, queued, running, dead, oldest, ok_1m, failed_1m, dead_1m, live) = row
            ok_1h, failed_1h, dead_1h = self._hour.get(queue, (0, 0, 0))
            # The minute's figures are read fresh; keep the cached hour at least as large as them.
            ok_1h, failed_1h, dead_1h = max(ok_1h, ok_1m), max(failed_1h, failed_1m), max(dead_1h, dead_1m)
            attempts = ok_1m + failed_1m
            info: dict[str, Any] = {
                "queue": queue, "scheduled": scheduled, "queued": queued, "running": running, "dead": dead,
                "oldest_queued_age": oldest, "succeeded_last_minute": ok_1m, "failed_last_minute": failed_1m,
                "dead_last_minute": dead_1m, "succeeded_last_hour": ok_1h, "failed_last_hour": failed_1h,
                "dead_last_hour": dead_1h, "rate_per_second": (ok_1m + dead_1m) / 60.0,
                "failure_rate": failed_1m / attempts if attempts else None, "live_workers": live,
                "paused": bool(settings[queue][1]) if queue in settings else False,
                "limits": limits(settings[queue]) if queue in settings else None,
            }
            info["health"], info["health_reason"] = health(info)
            out.append(QueueInfo(**info))
        return out


@router.get("/queues", response_model=list[QueueInfo], summary="Every queue with counts, rates and health",
            responses=responses(401, 403))
async def list_queues(svc: Annotated[Services, Depends(require(Scope.READ))]) -> list[QueueInfo]:
    """Queues that have live jobs, dead letters or recent history."""
    return await svc.overview.read()


@router.get("/queues/{queue}", response_model=QueueInfo, summary="One queue",
            responses=responses(401, 403, 404, 422))
async def get_queue(queue: QueuePath, svc: Annotated[Services, Depends(require(Scope.READ))]) -> QueueInfo:
    for info in await svc.overview.read():
        if info.queue == queue:
            return info
    raise not_found(f"no queue {queue!r} has jobs, dead letters or recent history")


async def _one(svc: Services, queue: str) -> QueueInfo:
    svc.hub.poke()
    for info in await svc.overview.read():
        if info.queue == queue:
            return info
    raise not_found(f"no queue {queue!r}")


@router.post("/queues/{queue}/pause", response_model=QueueInfo, summary="Pause a queue",
             responses=responses(401, 403, 422))
async def pause(queue: QueuePath, svc: Annotated[Services, Depends(require(Scope.ADMIN))]) -> QueueInfo:
    """Workers claim nothing more from the queue (running jobs finish) until it is resumed."""
    await asyncio.to_thread(svc.app.pause_queue, queue)
    return await _one(svc, queue)


@router.post("/queues/{queue}/resume", response_model=QueueInfo, summary="Resume a paused queue",
             responses=responses(401, 403, 422))
async def resume(queue: QueuePath, svc: Annotated[Services, Depends(require(Scope.ADMIN))]) -> QueueInfo:
    await asyncio.to_thread(svc.app.resume_queue, queue)
    return await _one(svc, queue)


@router.put("/queues/{queue}/limits", response_model=QueueLimits, summary="Set a queue's limits",
            responses=responses(401, 403, 422))
async def set_limits(queue: QueuePath, body: QueueLimits, svc: Annotated[Services, Depends(require(Scope.ADMIN))]
                     ) -> QueueLimits:
    """Replace the queue's limits (a field left out: no such limit). Enforced at claim time, across workers."""
    rate = (body.rate.limit, body.rate.period) if body.rate else None
    group_rate = (body.group_rate.limit, body.group_rate.period) if body.group_rate else None
    try:
        await asyncio.to_thread(
            svc.app.configure_queue, queue, concurrency=body.concurrency, rate=rate,
            group_concurrency=body.group_concurrency, group_rate=group_rate, fair=body.fair,
            priority_aging=body.priority_aging)
    except ValidationError as err:
        raise invalid("body", str(err)) from None
    svc.hub.poke()
    rows = [r for r in await svc.db.fetch("queue_settings_list") if r[0] == queue]
    return limits(rows[0])

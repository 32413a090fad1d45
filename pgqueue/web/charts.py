"""JSON metrics for charts, read from the database: throughput over time, outcomes per queue, run-time
histogram with percentiles, queue depth over time. Served under ``/api/v1/metrics``.

Time windows are ``?from=&to=`` (ISO 8601 with a timezone); both default from the database clock: the last
hour. A throughput series has at most 500 points: its step grows with the window.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from pgqueue.web.access import Services, require
from pgqueue.web.auth import Scope
from pgqueue.web.models import (
    Bucket,
    DepthPoint,
    Durations,
    QueueInfo,
    QueueOutcomes,
    Throughput,
    ThroughputPoint,
    Time,
    WorkerInfo,
)
from pgqueue.web.problems import invalid, responses
from pgqueue.web.workers import list_workers

router = APIRouter(prefix="/metrics", tags=["metrics"])

# Upper bounds (seconds) of the run-time histogram, shared with the Prometheus histogram.
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
# Steps a throughput series may use, so buckets fall on round times.
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
MAX_POINTS = 500

From = Annotated[Time | None, Query(alias="from", description="Start (ISO 8601 with timezone); "
                                                              "default: an hour before `to`.")]
To = Annotated[Time | None, Query(description="End (ISO 8601 with timezone); default: now (or an hour after a "
                                               "`from` in the future). Must not be before `from`.")]
QueueFilter = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,100}$", description="Only this queue.")]
TaskFilter = Annotated[str | None, Query(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$",
                                         description="Only this task.")]


async def window(svc: Services, start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """The [from, to) window asked for, defaults from the database clock; 422 naming ``from`` when empty."""
    if end is None:
        end = await svc.db.scalar("web_now")
        assert end is not None
        if start is not None and start > end:
            end = start + timedelta(hours=1)  # a window that starts in the future: its first hour
    if start is None:
        try:
            start = end - timedelta(hours=1)
        except OverflowError:
            start = datetime.min.replace(tzinfo=timezone.utc)
    if start > end:
        raise invalid("from", "must not be after to", "query")
    return start, end


def step_for(span: timedelta) -> int:
    """The smallest round step that draws ``span`` in at most MAX_POINTS points (whole days past a day)."""
    wanted = span.total_seconds() / MAX_POINTS
    return next((s for s in STEPS if s >= wanted), math.ceil(wanted / 86400) * 86400)


@router.get("/queues", response_model=list[QueueInfo], summary="Per-queue counts and rates",
            responses=responses(401, 403))
async def queues(svc: Annotated[Services, Depends(require(Scope.READ))]) -> list[QueueInfo]:
    return await svc.overview.read()


@router.get("/workers", response_model=list[WorkerInfo], summary="Per-worker figures",
            responses=responses(401, 403))
async def workers(svc: Annotated[Services, Depends(require(Scope.READ))]) -> list[WorkerInfo]:
    return await list_workers(svc.db)


@router.get("/throughput", response_model=Throughput, summary="Succeeded, failed and dead per time bucket",
            responses=responses(401, 403, 422))
async def throughput(svc: Annotated[Services, Depends(require(Scope.READ))], start: From = None, to: To = None,
                     queue: QueueFilter = None) -> Throughput:
    """Outcomes over time: succeeded and dead jobs, and failed attempts (retried or not), per bucket."""
    begin, end = await window(svc, start, to)
    step = step_for(end - begin)
    rows = await svc.db.fetch("web_throughput", {"from": begin, "to": end, "step": step, "queue": queue})
    return Throughput(start=begin, end=end, step_seconds=step, queue=queue,
                      points=[ThroughputPoint(at=r[0], succeeded=r[1], failed=r[2], dead=r[3]) for r in rows])


@router.get("/outcomes", response_model=list[QueueOutcomes], summary="Success against failure per queue",
            responses=responses(401, 403, 422))
async def outcomes(svc: Annotated[Services, Depends(require(Scope.READ))], start: From = None, to: To = None
                   ) -> list[QueueOutcomes]:
    begin, end = await window(svc, start, to)
    rows = await svc.db.fetch("web_outcomes_by_queue", {"from": begin, "to": end})
    return [QueueOutcomes(queue=r[0], succeeded=r[1], failed=r[2], dead=r[3]) for r in rows]


@router.get("/durations", response_model=Durations, summary="Run-time histogram and percentiles",
            responses=responses(401, 403, 422))
async def durations(svc: Annotated[Services, Depends(require(Scope.READ))], queue: QueueFilter = None,
                    task: TaskFilter = None, start: From = None, to: To = None) -> Durations:
    """Run time of the last attempt of jobs that succeeded in the window: histogram, p50, p95, p99."""
    begin, end = await window(svc, start, to)
    params = {"from": begin, "to": end, "queue": queue, "task": task, "bounds": list(DURATION_BOUNDS)}
    counts = {int(b): int(n) for b, n in await svc.db.fetch("web_duration_histogram", params)}
    # width_bucket gives 0 below the first bound and i when bounds[i-1] <= d < bounds[i]: so bucket i holds
    # durations under bounds[i], and len(bounds) those at or over the last bound.
    buckets = [Bucket(le=bound, count=counts.get(i, 0)) for i, bound in enumerate(DURATION_BOUNDS)]
    buckets.append(Bucket(le=None, count=counts.get(len(DURATION_BOUNDS), 0)))
    count, percentiles, mean, longest = (await svc.db.fetch("web_duration_percentiles", params))[0]
    p50, p95, p99 = percentiles if percentiles else (None, None, None)
    return Durations(queue=queue, task=task, count=count, p50=_finite(p50), p95=_finite(p95), p99=_finite(p99),
                     mean=_finite(mean), max=_finite(longest), buckets=buckets)


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


@router.get("/depth", response_model=list[DepthPoint], summary="Queue depth over time",
            responses=responses(401, 403, 422))
async def depth(svc: Annotated[Services, Depends(require(Scope.READ))], start: From = None, to: To = None,
                queue: QueueFilter = None) -> list[DepthPoint]:
    """Scheduled, queued and running jobs over time, from the samples the serve leader takes every few seconds."""
    begin, end = await window(svc, start, to)
    rows = await svc.db.fetch("web_depth_history", {"from": begin, "to": end, "queue": queue})
    return [DepthPoint(at=r[0], scheduled=r[1], queued=r[2], running=r[3]) for r in rows]

"""Prometheus ``/metrics``, in the text exposition format, read from the database at each scrape.

=========================================  =========  ===========================================================
metric                                     type       what
=========================================  =========  ===========================================================
pgqueue_jobs{queue,state}                  gauge      jobs per state: scheduled, queued, running, dead
pgqueue_oldest_queued_age_seconds{queue}   gauge      how long the oldest queued job has waited (0: none)
pgqueue_workers{state}                     gauge      registered workers, running or draining
pgqueue_jobs_started_total{worker,host}    counter    jobs claimed by each worker
pgqueue_jobs_succeeded_total{worker,host}  counter    jobs each worker ran to success
pgqueue_jobs_failed_total{worker,host}     counter    failed attempts (retried or dead) of each worker
pgqueue_jobs_dead_total{worker,host}       counter    jobs each worker sent to the dead letters
pgqueue_lease_reclaims_total{worker,host}  counter    expired leases each worker's reaper took back
pgqueue_notify_wakeups_total{worker,host}  counter    LISTEN/NOTIFY wake-ups of each worker
pgqueue_job_duration_seconds{task}         histogram  run time of the last attempt of finished jobs
pgqueue_serve_notifications_total          counter    notifications this serve process received
=========================================  =========  ===========================================================

Worker counters are kept by each worker and written at its heartbeat (``worker_sync``), so they are as fresh as
the last heartbeat, and a worker's series ends when it leaves. The duration histogram counts jobs that finished
since this serve process started, read incrementally up to a watermark two seconds behind the database clock.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from pgqueue.web.access import Services, principal, services
from pgqueue.web.auth import Scope
from pgqueue.web.charts import DURATION_BOUNDS
from pgqueue.web.database import Database
from pgqueue.web.events import Hub
from pgqueue.web.problems import ApiError

router = APIRouter(include_in_schema=False)

STATES = ("scheduled", "queued", "running", "dead")
WORKER_COUNTERS = (
    ("pgqueue_jobs_started_total", "Jobs claimed by the worker.", 5),
    ("pgqueue_jobs_succeeded_total", "Jobs the worker ran to success.", 6),
    ("pgqueue_jobs_failed_total", "Failed attempts (retried or dead) of the worker.", 7),
    ("pgqueue_jobs_dead_total", "Jobs the worker sent to the dead letters.", 8),
    ("pgqueue_lease_reclaims_total", "Expired leases the worker's reaper took back.", 9),
    ("pgqueue_notify_wakeups_total", "LISTEN/NOTIFY wake-ups of the worker.", 10),
)


def label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


class Exporter:
    """Renders /metrics; keeps the duration histogram of jobs finished since ``start()``."""

    def __init__(self, db: Database, hub: Hub) -> None:
        self._db = db
        self._hub = hub
        self._lock = asyncio.Lock()
        self._watermark: datetime | None = None
        self._buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(DURATION_BOUNDS) + 1))
        self._sums: dict[str, float] = defaultdict(float)

    async def start(self) -> None:
        self._watermark = await self._db.scalar("metrics_watermark")

    async def _advance(self) -> None:
        until = await self._db.scalar("metrics_watermark")
        if self._watermark is None:
            self._watermark = until
            return
        if until <= self._watermark:
            return
        rows = await self._db.fetch("metrics_durations_between", {
            "since": self._watermark, "until": until, "bounds": list(DURATION_BOUNDS)})
        for task, bucket, count, total in rows:
            self._buckets[task][int(bucket)] += int(count)
            self._sums[task] += float(total or 0.0)
        self._watermark = until

    def _histogram(self) -> list[str]:
        samples = []
        for task in sorted(self._buckets):
            counts, running = self._buckets[task], 0
            # Bucket i holds durations under DURATION_BOUNDS[i] (width_bucket); Prometheus buckets are cumulative.
            for i, bound in enumerate(DURATION_BOUNDS):
                running += counts[i]
                samples.append(f'pgqueue_job_duration_seconds_bucket{{task="{label(task)}",le="{bound}"}} {running}')
            running += counts[-1]
            samples.append(f'pgqueue_job_duration_seconds_bucket{{task="{label(task)}",le="+Inf"}} {running}')
            samples.append(f'pgqueue_job_duration_seconds_sum{{task="{label(task)}"}} {number(self._sums[task])}')
            samples.append(f'pgqueue_job_duration_seconds_count{{task="{label(task)}"}} {running}')
        return family("pgqueue_job_duration_seconds", "histogram",
                      "Run time of the last attempt of jobs finished since this serve process started.", samples)

    async def render(self) -> str:
        async with self._lock:
            await self._advance()
            depth: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
            for queue, state, count in await self._db.fetch("metrics_depth"):
                depth[queue][state] = int(count)
            oldest = dict.fromkeys(depth, 0.0)
            oldest.update({q: float(age) for q, age in await self._db.fetch("metrics_oldest_queued")})
            workers = await self._db.fetch("metrics_workers")
            lines = family("pgqueue_jobs", "gauge", "Jobs per queue and state (dead: the dead-letter queue).",
                           [f'pgqueue_jobs{{queue="{label(q)}",state="{s}"}} {n}'
                            for q in sorted(depth) for s, n in depth[q].items()])
            lines += family("pgqueue_oldest_queued_age_seconds", "gauge",
                            "Seconds the oldest queued job of the queue has waited (0: none queued).",
                            [f'pgqueue_oldest_queued_age_seconds{{queue="{label(q)}"}} {number(a)}'
                             for q, a in sorted(oldest.items())])
            by_state = {"running": 0, "draining": 0}
            for row in workers:
                by_state[row[3]] = by_state.get(row[3], 0) + 1
            lines += family("pgqueue_workers", "gauge", "Registered workers.",
                            [f'pgqueue_workers{{state="{s}"}} {n}' for s, n in by_state.items()])
            for name, help_text, column in WORKER_COUNTERS:
                lines += family(name, "counter", help_text,
                                [f'{name}{{worker="{row[0]}",host="{label(row[1])}"}} {int(row[column])}'
                                 for row in workers])
            lines += self._histogram()
            received = self._hub.notifications
            lines += family("pgqueue_serve_notifications_total", "counter",
                            "Job notifications (LISTEN pgqueue_jobs) this serve process received.",
                            [f"pgqueue_serve_notifications_total {received}"])
            return "\n".join(lines) + "\n"


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    svc: Services = services(request)
    if not svc.settings.public_metrics:
        who = await principal(request)
        if who is None:
            raise ApiError(401, "unauthorized", "/metrics needs a token with the read scope (or serve with "
                                                "--public-metrics)")
        if not who.allows(Scope.READ):
            raise ApiError(403, "forbidden", "/metrics needs a token with the read scope")
    return PlainTextResponse(await svc.exporter.render(), media_type="text/plain; version=0.0.4; charset=utf-8")



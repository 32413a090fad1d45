"""Cron schedules: periodic jobs, each tick enqueued exactly once however many workers run.

Schedules live in ``pgqueue.schedules``: declared in code with ``@app.periodic(...)`` (mirrored into the table
when a worker starts) or added with ``pgqueue cron add``. Every worker's maintenance loop runs the scheduler
under an advisory lock; whichever holds it enqueues the due ticks. Exactly-once does not rest on that lock (a
paused or partitioned old holder may wake up believing it still leads): each enqueue is a compare-and-set on
the schedule's ``last_tick_at`` and an insert into ``schedule_ticks`` whose primary key is (schedule, tick), so
the database admits each tick once.

Ticks are computed in the schedule's time zone on the database clock. Across daylight-saving changes a tick in
the skipped hour runs once, shifted by the gap (02:30 becomes 03:30), and a tick in the repeated hour runs once
(the first time that wall-clock time occurs).

After downtime the ``missed`` policy decides: ``"skip"`` enqueues nothing for ticks more than a minute late,
``"once"`` (default) enqueues the latest missed tick once, ``"all"`` enqueues every missed tick up to
``max_catchup``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, croniter

from pgqueue.errors import ValidationError
from pgqueue.job import check_max_attempts, check_priority, check_queue, check_task_name, to_json

MISSED_POLICIES = ("skip", "once", "all")
SKIP_GRACE = timedelta(minutes=1)


def check_cron(expression: Any) -> str:
    """A valid 5-field cron expression (or 6 with seconds), or ValidationError saying what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValidationError(f"invalid cron expression {expression!r}: give five fields, like '*/5 * * * *'")
    expression = " ".join(str(expression).split())
    if len(expression.split()) not in (5, 6):
        raise ValidationError(f"invalid cron expression {expression!r}: it needs 5 fields (minute hour day month "
                              "weekday), or 6 with seconds")
    try:
        croniter(expression, datetime(2000, 1, 1)).get_next(datetime)
    except (CroniterBadCronError, ValueError, KeyError) as err:
        raise ValidationError(f"invalid cron expression {expression!r}: {err}") from err
    return str(expression)


def check_timezone(name: Any) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as err:
        raise ValidationError(f"unknown time zone {name!r}: use an IANA name like 'Europe/Berlin' or 'UTC'") from err


@dataclass(frozen=True)
class Schedule:
    """A cron schedule: which task to enqueue, with what, when."""

    name: str
    cron: str
    task: str
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 10
    missed: str = "once"
    max_catchup: int = 100

    def __post_init__(self) -> None:
        check_task_name(self.name)
        object.__setattr__(self, "cron", check_cron(self.cron))
        check_timezone(self.timezone)
        check_task_name(self.task)
        check_queue(self.queue)
        check_priority(self.priority)
        check_max_attempts(self.max_attempts)
        if self.missed not in MISSED_POLICIES:
            raise ValidationError(f"missed must be one of {', '.join(MISSED_POLICIES)}, got {self.missed!r}")
        if isinstance(self.max_catchup, bool) or not isinstance(self.max_catchup, int) \
                or not 1 <= self.max_catchup <= 10_000:
            raise ValidationError(f"max_catchup must be from 1 to 10000, got {self.max_catchup!r}")

    def params(self, source: str) -> dict[str, Any]:
        return {"name": self.name, "cron": self.cron, "timezone": self.timezone, "task": self.task,
                "args": to_json(list(self.args), "schedule arguments"),
                "kwargs": to_json(self.kwargs or {}, "schedule arguments"), "queue": self.queue,
                "priority": self.priority, "max_attempts": self.max_attempts, "missed": self.missed,
                "max_catchup": self.max_catchup, "source": source}


def _instant(naive_local: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a wall-clock time: fold=0 takes the first of a repeated time, and shifts a skipped
    time by the gap."""
    return naive_local.replace(tzinfo=zone, fold=0).astimezone(timezone.utc)


def due_ticks(cron: str, zone_name: str, after: datetime, now: datetime, limit: int) -> list[datetime]:
    """The newest ``limit`` ticks in (after, now], oldest first, as UTC instants.

    Walks backwards from ``now``, so a schedule that missed a year of minutes costs ``limit`` steps, not a year.
    """
    zone = check_timezone(zone_name)
    start = now.astimezone(zone).replace(tzinfo=None) + timedelta(microseconds=1)
    walker = croniter(cron, start)
    found: list[datetime] = []
    seen: set[datetime] = set()
    steps = 0
    while len(found) < limit and steps < limit * 4 + 10:
        steps += 1
        naive = walker.get_prev(datetime)
        instant = _instant(naive, zone)
        if instant <= after:
            break
        if instant <= now and instant not in seen:
            seen.add(instant)
            found.append(instant)
    return sorted(found)


def plan(schedule_missed: str, ticks: list[datetime], now: datetime) -> list[datetime]:
    """Which of the due ``ticks`` to enqueue under the missed-ticks policy."""
    if not ticks:
        return []
    if schedule_missed == "all":
        return ticks
    newest = ticks[-1]
    if schedule_missed == "skip" and now - newest > SKIP_GRACE:
        return []
    return [newest]


@dataclass(frozen=True)
class ScheduleRow:
    """A schedule as stored, with its state."""

    name: str
    cron: str
    timezone: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    priority: int
    max_attempts: int
    missed: str
    max_catchup: int
    paused: bool
    source: str
    last_tick_at: datetime

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> ScheduleRow:
        values = list(row)
        values[4], values[5] = json.loads(values[4]), json.loads(values[5])
        return cls(*values)

    def next_tick(self, now: datetime) -> datetime | None:
        zone = check_timezone(self.timezone)
        local = croniter(self.cron, now.astimezone(zone).replace(tzinfo=None)).get_next(datetime)
        return _instant(local, zone)

"""Cron arithmetic: time zones, daylight saving, missed-tick policies, validation at definition time."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest

from pgqueue import App, ValidationError
from pgqueue.periodic import Schedule, check_cron, due_ticks, plan

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_every_five_minutes() -> None:
    ticks = due_ticks("*/5 * * * *", "UTC", utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 10, 17), 100)
    assert ticks == [utc(2026, 1, 1, 10, 5), utc(2026, 1, 1, 10, 10), utc(2026, 1, 1, 10, 15)]


def test_after_is_exclusive_and_now_inclusive() -> None:
    ticks = due_ticks("0 * * * *", "UTC", utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 12, 0), 100)
    assert ticks == [utc(2026, 1, 1, 11), utc(2026, 1, 1, 12)]


def test_time_zone_is_honoured() -> None:
    # 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
    winter = due_ticks("0 9 * * *", "Europe/Berlin", utc(2026, 1, 10), utc(2026, 1, 11), 10)
    summer = due_ticks("0 9 * * *", "Europe/Berlin", utc(2026, 7, 10), utc(2026, 7, 11), 10)
    assert winter == [utc(2026, 1, 10, 8)] and summer == [utc(2026, 7, 10, 7)]


def test_spring_forward_runs_the_skipped_time_once_shifted() -> None:
    # Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST. 02:30 does not exist that day.
    ticks = due_ticks("30 2 * * *", "Europe/Berlin", utc(2026, 3, 27, 12), utc(2026, 3, 30, 12), 10)
    assert ticks == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)]
    hourly = due_ticks("0 * * * *", "Europe/Berlin", utc(2026, 3, 28, 23, 30), utc(2026, 3, 29, 3, 30), 10)
    assert len(hourly) == len(set(hourly)) == 4  # 01:00 CET, 03:00 CEST, 04:00, 05:00 local: no duplicate
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(hourly))


def test_fall_back_runs_the_repeated_time_once() -> None:
    # Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET. 02:30 happens twice; the job runs once.
    ticks = due_ticks("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12), utc(2026, 10, 26, 12), 10)
    assert ticks == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_catch_up_is_bounded_and_cheap() -> None:
    # A year of minutes missed: only the newest max_catchup are computed.
    ticks = due_ticks("* * * * *", "UTC", utc(2025, 1, 1), utc(2026, 1, 1), 50)
    assert len(ticks) == 50 and ticks[-1] == utc(2026, 1, 1) and ticks[0] == utc(2025, 12, 31, 23, 11)


def test_missed_policies() -> None:
    now = utc(2026, 1, 1, 12, 0, 30)
    ticks = [utc(2026, 1, 1, 11, 58), utc(2026, 1, 1, 11, 59), utc(2026, 1, 1, 12, 0)]
    assert plan("all", ticks, now) == ticks
    assert plan("once", ticks, now) == ticks[-1:]
    assert plan("skip", ticks, now) == ticks[-1:]  # the newest tick is current, not missed
    assert plan("skip", ticks, now + timedelta(minutes=5)) == []
    assert plan("once", [], now) == []


@pytest.mark.parametrize("expression", ["", "* * *", "61 * * * *", "* * * * * * * *", "every minute", None])
def test_bad_cron_is_rejected_at_definition(expression: object) -> None:
    with pytest.raises(ValidationError, match="cron expression"):
        check_cron(expression)
    app = App(dsn="postgresql://nowhere.invalid/x")
    with pytest.raises(ValidationError, match="cron expression"):
        app.periodic(cron=expression)  # type: ignore[arg-type]


def test_schedule_validation() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        Schedule(name="s", cron="* * * * *", task="t", timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="missed"):
        Schedule(name="s", cron="* * * * *", task="t", missed="sometimes")
    app = App(dsn="postgresql://nowhere.invalid/x")

    @app.task()
    def tick(n: int) -> None: ...

    with pytest.raises(ValidationError, match="bad arguments"):
        app.periodic(cron="* * * * *", kwargs={"wrong": 1})(tick)
    app.periodic(cron="* * * * *", kwargs={"n": 1})(tick)
    with pytest.raises(ValidationError, match="declared twice"):
        app.periodic(cron="*/2 * * * *", kwargs={"n": 2})(tick)

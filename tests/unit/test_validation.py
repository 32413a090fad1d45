import math
from datetime import datetime

import pytest

from pgqueue import App, Context, PayloadTooLarge, ValidationError
from pgqueue.cli import parse_duration
from pgqueue.job import check_priority, check_queue, check_task_name, encode_payload
from pgqueue.queries import parse_named, queries
from pgqueue.task import EnqueueOptions

HOSTILE = ["", "';--", 'a"b', "%s", "$1", "a b", "x" * 101, "é", "a\x00b", None, 5]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_queue_names_are_refused(name: object) -> None:
    with pytest.raises(ValidationError, match="invalid queue name"):
        check_queue(name)


@pytest.mark.parametrize("name", [*[h for h in HOSTILE if h != "x" * 101], "1abc", "x" * 201])
def test_hostile_task_names_are_refused(name: object) -> None:
    with pytest.raises(ValidationError, match="invalid task name"):
        check_task_name(name)


@pytest.mark.parametrize("priority", [-1, 32768, 1.5, True, "1", None])
def test_bad_priorities_are_refused(priority: object) -> None:
    with pytest.raises(ValidationError, match="priority"):
        check_priority(priority)


def test_payload_limit() -> None:
    encode_payload(["x" * 100], {}, limit=200)
    with pytest.raises(PayloadTooLarge, match="over the limit of 200 bytes"):
        encode_payload(["x" * 300], {}, limit=200)


@pytest.mark.parametrize("value", [math.nan, math.inf, object(), b"bytes", "\ud800"])
def test_values_json_cannot_carry_are_refused(value: object) -> None:
    with pytest.raises(ValidationError):
        encode_payload([value], {})


def test_nul_bytes_and_unicode_are_kept() -> None:
    args, kwargs = encode_payload(["a\x00b", "日本"], {"k": "\u2028"})
    assert "\\u0000" in args and "日本" in args and "\u2028" in kwargs


def test_enqueue_options_are_checked() -> None:
    with pytest.raises(ValidationError, match="run_at or delay"):
        EnqueueOptions(run_at=datetime.now().astimezone(), delay=1)
    with pytest.raises(ValidationError, match="timezone-aware"):
        EnqueueOptions(run_at=datetime.now())
    with pytest.raises(ValidationError, match="delay"):
        EnqueueOptions(delay=-1)


def test_durations() -> None:
    assert parse_duration("7d").total_seconds() == 7 * 86400
    assert parse_duration("90").total_seconds() == 90
    assert parse_duration("1.5h").total_seconds() == 5400
    with pytest.raises(ValidationError, match="invalid duration"):
        parse_duration("soon")


def test_every_query_is_named_once() -> None:
    assert {"job_claim_any", "job_complete_many", "job_reap_expired", "job_heartbeat"} <= set(queries())
    with pytest.raises(ValueError, match="twice"):
        parse_named("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")


def test_comments_are_not_sent() -> None:
    assert parse_named("-- name: a\n-- about %(x)s\nSELECT 1;") == {"a": "SELECT 1"}


def test_task_registration_and_argument_checks() -> None:
    app = App(dsn="postgresql://nowhere.invalid/x")  # nothing here connects

    @app.task(queue="q1", priority=3)
    def plain(a: int, b: str = "x") -> None: ...

    @app.task(name="with_ctx")
    def with_ctx(ctx: Context, a: int) -> None: ...

    assert plain.name.endswith(".plain") and plain.queue == "q1" and not plain.takes_context
    assert with_ctx.takes_context
    with_ctx.check_arguments([1], {})
    with pytest.raises(ValidationError, match="bad arguments for task"):
        plain.check_arguments([], {"c": 1})
    with pytest.raises(ValidationError, match="registered twice"):
        app.task(name="with_ctx")(lambda: None)
    with pytest.raises(ValidationError, match="queue"):
        app.task(name="x", queue="bad queue")(lambda: None)


def test_claim_batch_defaults_to_half_the_slots_and_refuses_nonsense() -> None:
    from pgqueue import WorkerConfig

    assert [WorkerConfig(concurrency=c).batch for c in (1, 2, 10, 200, 1000)] == [1, 1, 5, 100, 100]
    assert WorkerConfig(concurrency=100, prefetch=100).batch == 100
    assert WorkerConfig(concurrency=10, claim_batch=7).batch == 7
    with pytest.raises(ValidationError, match="claim_batch must be at least 1"):
        WorkerConfig(claim_batch=0)


def test_vacuum_after_refuses_a_negative_count() -> None:
    from pgqueue import WorkerConfig

    assert WorkerConfig(vacuum_after=0).vacuum_after == 0  # off
    with pytest.raises(ValidationError, match="vacuum_after must not be negative"):
        WorkerConfig(vacuum_after=-1)

"""The shapes the API takes and returns. Pydantic checks every request against them before anything runs, so
a bad field is refused with a 422 naming it (see ``problems``), and the OpenAPI document is generated from them.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from pgqueue.job import MAX_PRIORITY

QueueName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$", min_length=1, max_length=100,
                                 examples=["default"])]
TaskName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$", min_length=1, max_length=200,
                                examples=["myproject.tasks.send_email"])]
# Ids stay within 2**53, the integers a JSON number (a JavaScript client) holds exactly.
MAX_ID = 2**53
JobId = Annotated[int, Field(ge=1, le=MAX_ID), BeforeValidator(lambda v: exact_int(v))]


def storable(text: str) -> str:
    """PostgreSQL text holds neither NUL characters nor lone surrogates: refuse them here, as a 422."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError("must be valid Unicode (no lone surrogates)") from err
    return text


Text = Annotated[str, Field(pattern=r"^[^\x00]*$"), AfterValidator(storable)]


def exact_int(value: Any) -> Any:
    """JSON has one number type: 3.0 is the integer 3 (as JSON Schema says); 3.5, "3" and true are not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


def exact_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


def exact_bool(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]")


def iso_8601(value: Any) -> Any:
    """Times are ISO 8601 text: refuse the Unix timestamps pydantic would otherwise read from bare numbers."""
    if not isinstance(value, str | datetime) or (isinstance(value, str) and not ISO_DATE.match(value)):
        raise ValueError("must be an ISO 8601 date and time with a timezone, e.g. 2030-01-31T12:00:00Z")
    return value


def in_utc(value: datetime) -> datetime:
    """PostgreSQL takes offsets up to 15:59 only; ISO 8601 allows up to 23:59. The instant is what counts."""
    try:
        return value.astimezone(timezone.utc)
    except OverflowError as err:
        raise ValueError("must be a time between the years 1 and 9999 in UTC") from err


# Exact JSON types: no coercion of "3" to 3, of 0 to false, or of a number to a time. (Range constraints go
# before the validator inside Annotated, or pydantic leaves them out of the JSON schema.)
Bool = Annotated[bool, BeforeValidator(exact_bool)]
Time = Annotated[AwareDatetime, BeforeValidator(iso_8601), AfterValidator(in_utc)]
Priority = Annotated[int, Field(ge=0, le=MAX_PRIORITY), BeforeValidator(exact_int)]
Delay = Annotated[float, Field(ge=0, le=10 * 365 * 86400), BeforeValidator(exact_number)]
Attempts = Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(exact_int)]
Concurrency = Annotated[int, Field(ge=1, le=10_000), BeforeValidator(exact_int)]
Threshold = Annotated[float, Field(ge=0, le=1e12), BeforeValidator(exact_number)]
Window = Annotated[int, Field(ge=10, le=86_400), BeforeValidator(exact_int)]
Key = Annotated[Text, Field(min_length=1, max_length=200)]
Count = Annotated[int, Field(ge=0, le=1_000_000_000), BeforeValidator(exact_int)]
Seconds = Annotated[float, Field(gt=0, le=10 * 365 * 86400), BeforeValidator(exact_number)]


class Strict(BaseModel):
    """Request bodies: unknown fields are refused, and so are values of the wrong JSON type (see the
    exact_* validators), so a request either means exactly what the document says or gets a 422."""

    model_config = ConfigDict(extra="forbid")


class JobState(str, Enum):
    waiting = "waiting"
    scheduled = "scheduled"
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    dead = "dead"
    cancelled = "cancelled"


# -- jobs ---------------------------------------------------------------------------------------------------------

def _one_start(data: Any) -> None:
    """run_at and delay both say when a job starts: a request gives one of them at most."""
    if isinstance(data, dict) and "run_at" in data and "delay" in data:
        raise ValueError("give run_at or delay, not both")


class JobCreate(Strict):
    """A job to enqueue. ``args`` are positional arguments, ``kwargs`` keyword arguments of the task.
    Options left out take the task's defaults when the server knows the task (``--app``), else the global ones.
    """

    # run_at and delay exclude each other, and so (for now) do unique_key and depends_on: the document says so,
    # so generated clients and fuzzers know it.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"allOf": [
        {"not": {"required": ["run_at", "delay"]}}, {"not": {"required": ["unique_key", "depends_on"]}}]})

    task: TaskName
    queue: QueueName | None = None
    args: list[Any] = Field(default_factory=list, max_length=10_000)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    priority: Priority | None = Field(default=None, description="Higher runs first.")
    run_at: Time | None = Field(default=None, description="Run at this time (with a timezone). Not with delay.")
    delay: Delay | None = Field(default=None, description="Run after this many seconds. Not with run_at.")
    max_attempts: Attempts | None = None
    group: Key | None = Field(default=None, description="The job's group within its queue (fairness, limits).")
    unique_key: Key | None = Field(default=None, description="While a job with this key is unfinished (and "
                                   "unique_for seconds after), enqueueing returns that job instead of a new one.")
    depends_on: Annotated[list[JobId], Field(min_length=1, max_length=1000)] | None = Field(
        default=None, description="Jobs that must finish first; the job waits until they have.")
    on_parent_failure: Literal["cancel", "run"] = Field(
        default="cancel", description="When a parent ends dead or cancelled: cancel this job, or run it anyway.")
    idempotency_key: Key | None = Field(
        default=None, description="One job per key: the first request makes it, every later or concurrent one "
        "with the same key gets it back (status 200, created false) until the key expires (a day by default).")

    @model_validator(mode="before")
    @classmethod
    def _exclusive(cls, data: Any) -> Any:
        _one_start(data)
        if isinstance(data, dict) and "unique_key" in data and "depends_on" in data:
            # The core's dependent insert does not take the unique-key path: refused until it does.
            raise ValueError("unique_key and depends_on cannot be combined yet")
        return data


class JobCreated(BaseModel):
    id: int
    state: JobState
    queue: str
    task: str
    queue_position: int | None = Field(description="Queued jobs of this queue that run before it; "
                                                   "null unless the job is queued.")
    scheduled_for: datetime
    created_at: datetime
    created: bool = Field(default=True, description="False when an idempotency_key or unique_key handed back "
                                                    "a job that existed already (the answer is then 200, not 201).")


class JobSummary(BaseModel):
    id: int
    queue: str
    task: str
    state: JobState
    priority: int
    attempt: int
    max_attempts: int
    scheduled_for: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    progress: float | None
    progress_message: str | None
    group_key: str | None
    unique_key: str | None
    batch_id: int | None


class AttemptError(BaseModel):
    attempt: int
    kind: str
    error_type: str
    message: str
    traceback: str | None
    worker_id: str | None
    started_at: datetime | None
    failed_at: datetime


class JobDetail(JobSummary):
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any = None
    lease_expires_at: datetime | None
    errors: list[AttemptError]


class JobPage(BaseModel):
    items: list[JobSummary]
    next_cursor: int | None = Field(description="Pass as ?cursor= for the next page; null at the end.")


class JobAction(BaseModel):
    id: int
    state: JobState
    cancel_requested: bool = Field(default=False, description="A running job was asked to stop; it ends "
                                                               "cancelled once its handler returns.")


# -- dead letters -------------------------------------------------------------------------------------------------

class DeadLetter(BaseModel):
    id: int
    queue: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    attempt: int
    max_attempts: int
    created_at: datetime
    finished_at: datetime
    error_type: str | None
    error_message: str | None


class DeadPage(BaseModel):
    items: list[DeadLetter]
    next_cursor: str | None


class DeadSelection(Strict):
    """Which dead letters a bulk action takes: ``ids``; or ``queue``, ``task``, ``error_type`` (all that are
    given must match); or ``all: true``. At least one, and none of them null: an empty selection is refused
    rather than read as "everything"."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    ids: Annotated[list[JobId], Field(min_length=1, max_length=10_000)] | SkipJsonSchema[None] = None
    queue: QueueName | SkipJsonSchema[None] = None
    task: TaskName | SkipJsonSchema[None] = None
    error_type: Annotated[Text, Field(min_length=1, max_length=200)] | SkipJsonSchema[None] = None
    all: Annotated[Literal[True], BeforeValidator(exact_bool)] | SkipJsonSchema[None] = Field(
        default=None, description="Every dead letter.")

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = sorted(k for k, v in data.items() if v is None)
            if nulls:
                raise ValueError(f"{', '.join(nulls)} must not be null; leave the field out instead")
            if not data:
                raise ValueError("say which dead letters: ids, queue, task, error_type or all=true")
        return data


class BulkResult(BaseModel):
    count: int


# -- queues and workers -------------------------------------------------------------------------------------------

class Health(str, Enum):
    green = "green"
    amber = "amber"
    red = "red"


class Rate(Strict):
    """At most ``limit`` job starts per ``period`` seconds."""

    limit: Count
    period: Seconds


class QueueLimits(Strict):
    """A queue's limits, enforced at claim time across every worker; a field left out (or null) is no limit.
    ``group_*`` apply to each group of the queue; ``fair`` shares claims between groups; ``priority_aging``:
    seconds of waiting worth one priority step."""

    concurrency: Count | None = None
    rate: Rate | None = None
    group_concurrency: Count | None = None
    group_rate: Rate | None = None
    fair: Bool = False
    priority_aging: Seconds | None = None


class QueueInfo(BaseModel):
    queue: str
    scheduled: int
    queued: int
    running: int
    dead: int
    oldest_queued_age: float | None = Field(description="Seconds the oldest queued job has waited.")
    succeeded_last_minute: int
    failed_last_minute: int = Field(description="Failed attempts (retried or not).")
    dead_last_minute: int
    succeeded_last_hour: int
    failed_last_hour: int
    dead_last_hour: int
    rate_per_second: float = Field(description="Jobs finished per second over the last minute.")
    failure_rate: float | None = Field(description="Failed attempts / (failed attempts + successes), last minute.")
    live_workers: int
    health: Health
    health_reason: str
    paused: bool = False
    limits: QueueLimits | None = None


class WorkerInfo(BaseModel):
    id: str
    host: str
    pid: int
    queues: list[str] | None
    concurrency: int
    state: str
    started_at: datetime
    last_heartbeat_at: datetime
    uptime_seconds: float
    heartbeat_age_seconds: float
    running: int
    jobs_done: int
    jobs_failed: int
    requested_concurrency: int | None
    drain_requested_at: datetime | None


class ConcurrencyRequest(Strict):
    """The concurrency a worker should run with; it applies it at its next heartbeat."""

    concurrency: Concurrency


# -- schedules and batches ------------------------------------------------------------------------------------------

class ScheduleCreate(Strict):
    """A cron schedule: enqueue ``task`` at each time ``cron`` gives, in ``timezone``."""

    name: TaskName
    cron: Annotated[Text, Field(min_length=1, max_length=200, examples=["*/5 * * * *"])]
    task: TaskName
    timezone: Annotated[Text, Field(min_length=1, max_length=100)] = "UTC"
    args: list[Any] = Field(default_factory=list, max_length=10_000)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: QueueName = "default"
    priority: Priority = 0
    max_attempts: Attempts = 10
    missed: Literal["once", "all", "skip"] = "once"
    max_catchup: Annotated[int, Field(ge=1, le=10_000), BeforeValidator(exact_int)] = 100


class ScheduleInfo(BaseModel):
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
    source: str = Field(description="Where it was declared: code (@app.periodic, synced by workers) or cli "
                                    "(pgqueue cron add, or this API).")
    last_tick_at: datetime | None = Field(description="Ticks after this time are due: the last tick enqueued "
                                                      "(or skipped), at first the schedule's creation.")
    next_tick_at: datetime | None = Field(description="When it next enqueues; null while paused.")


class BatchJob(Strict):
    """One job of a batch: a task and its arguments, with options as in POST /jobs."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"not": {"required": ["run_at", "delay"]}})

    task: TaskName
    args: list[Any] = Field(default_factory=list, max_length=10_000)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: QueueName | None = None
    priority: Priority | None = None
    run_at: Time | None = Field(default=None, description="Run at this time (with a timezone). Not with delay.")
    delay: Delay | None = Field(default=None, description="Run after this many seconds (database clock). "
                                "Not with run_at.")
    max_attempts: Attempts | None = None
    group: Key | None = None

    @model_validator(mode="before")
    @classmethod
    def _exclusive(cls, data: Any) -> Any:
        _one_start(data)
        return data


class BatchCreate(Strict):
    """Jobs enqueued together, atomically, as one named batch. ``on_complete`` is enqueued with them and runs
    once every job of the batch has finished (succeeded, dead or cancelled), with ``batch_id`` added to its
    keyword arguments."""

    name: Annotated[Text, Field(min_length=1, max_length=200)]
    jobs: Annotated[list[BatchJob], Field(min_length=1, max_length=10_000)]
    on_complete: BatchJob | None = None


class BatchCreated(BaseModel):
    id: int
    job_ids: list[int]
    callback_job_id: int | None


class BatchInfo(BaseModel):
    id: int
    name: str
    total: int
    counts: dict[str, int]
    finished: int
    progress: float
    done: bool
    callback_job_id: int | None
    created_at: datetime


# -- charts -------------------------------------------------------------------------------------------------------

class ThroughputPoint(BaseModel):
    at: datetime
    succeeded: int
    failed: int
    dead: int


class Throughput(BaseModel):
    start: datetime
    end: datetime
    step_seconds: float
    queue: str | None
    points: list[ThroughputPoint]


class QueueOutcomes(BaseModel):
    queue: str
    succeeded: int
    failed: int
    dead: int


class Bucket(BaseModel):
    le: float | None = Field(description="Upper bound in seconds; null is +infinity.")
    count: int


class Durations(BaseModel):
    queue: str | None
    task: str | None
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    max: float | None
    buckets: list[Bucket]


class DepthPoint(BaseModel):
    at: datetime
    scheduled: int
    queued: int
    running: int


# -- alerts -------------------------------------------------------------------------------------------------------

class AlertKind(str, Enum):
    dead_letters_above = "dead_letters_above"
    failure_rate_above = "failure_rate_above"
    oldest_queued_above = "oldest_queued_above"
    no_live_worker = "no_live_worker"


# Control characters and every character str.isspace() accepts, as a regex character-class body.
_NOT_IN_URL = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


class AlertRuleCreate(Strict):
    """threshold: a count of dead jobs, a failure percentage, an age in seconds, or (no_live_worker) the
    heartbeat age in seconds past which a worker no longer counts as live."""

    # A failure rate is a percentage: stated in the document too, so clients and fuzzers know it.
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "if": {"properties": {"kind": {"const": "failure_rate_above"}}, "required": ["kind"]},
        "then": {"properties": {"threshold": {"maximum": 100}}}})

    name: Text = Field(min_length=1, max_length=200)
    kind: AlertKind
    queue: QueueName | None = None
    threshold: Threshold
    window_seconds: Window = 300
    # A host, and no spaces or control characters, spelt out (the outbox's check_url refuses what Python calls
    # whitespace): "\s" means different things to different regex engines.
    webhook_url: Annotated[str, Field(pattern=rf"^https?://[^/{_NOT_IN_URL}][^{_NOT_IN_URL}]*$", max_length=2000),
                           AfterValidator(storable)]
    enabled: Bool = True


class AlertRulePatch(Strict):
    enabled: Bool


class AlertRule(BaseModel):
    id: int
    name: str
    kind: AlertKind
    queue: str | None
    threshold: float
    window_seconds: int
    webhook_url: str
    enabled: bool
    firing: bool
    last_value: float | None
    last_evaluated_at: datetime | None
    changed_at: datetime | None
    created_at: datetime


class AlertEvent(BaseModel):
    id: int
    rule_id: int | None
    rule_name: str
    kind: str
    queue: str | None
    status: str
    value: float | None
    threshold: float
    message: str
    created_at: datetime
    delivery: Literal["pending", "delivered", "failed"] = Field(
        description="The webhook's delivery, read from the event's outbox message: pending (being tried), "
                    "delivered, or failed (the message is dead; `pgqueue outbox replay` sends it again).")
    attempts: int | None = Field(description="Delivery attempts so far; null once the relay has forgotten a "
                                             "delivered message (after its retention).")
    delivered_at: datetime | None
    last_error: str | None = Field(description="The last failed attempt's error, while it is retried or dead.")
    outbox_id: int | None = Field(description="The outbox message that delivers it (`pgqueue outbox show ID`).")


class Whoami(BaseModel):
    scopes: list[str]
    anonymous: bool

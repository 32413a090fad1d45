"""The shapes the API takes and returns. Pydantic checks every request against them before anything runs, so
a bad field is refused with a 422 naming it (see ``problems``), and the OpenAPI document is generated from them.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from pgqueue.job import MAX_PRIORITY

QueueName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$", min_length=1, max_length=100,
                                 examples=["default"])]
TaskName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$", min_length=1, max_length=200,
                                examples=["myproject.tasks.send_email"])]
JobId = Annotated[int, Field(ge=1, le=2**63 - 1)]


def storable(text: str) -> str:
    """PostgreSQL text holds neither NUL characters nor lone surrogates: refuse them here, as a 422."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError("must be valid Unicode (no lone surrogates)") from err
    return text


Text = Annotated[str, AfterValidator(storable)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobState(str, Enum):
    scheduled = "scheduled"
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    dead = "dead"
    cancelled = "cancelled"


# -- jobs ---------------------------------------------------------------------------------------------------------

class JobCreate(Strict):
    """A job to enqueue. ``args`` are positional arguments, ``kwargs`` keyword arguments of the task.
    Options left out take the task's defaults when the server knows the task (``--app``), else the global ones.
    """

    task: TaskName
    queue: QueueName | None = None
    args: list[Any] = Field(default_factory=list, max_length=10_000)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    priority: int | None = Field(default=None, ge=0, le=MAX_PRIORITY, description="Higher runs first.")
    run_at: AwareDatetime | None = Field(default=None, description="Run at this time (with a timezone).")
    delay: float | None = Field(default=None, ge=0, le=10 * 365 * 86400, description="Run after this many seconds.")
    max_attempts: int | None = Field(default=None, ge=1, le=1_000_000)
    # Pending features (issues 3 and 4): accepted so that a client using them gets a clear 501 rather than a
    # silently ignored option; kept out of the OpenAPI document until they exist.
    idempotency_key: SkipJsonSchema[str | None] = None
    unique_key: SkipJsonSchema[str | None] = None
    depends_on: SkipJsonSchema[list[int] | None] = None

    @model_validator(mode="after")
    def _one_time(self) -> JobCreate:
        if self.run_at is not None and self.delay is not None:
            raise ValueError("give run_at or delay, not both")
        return self


class JobCreated(BaseModel):
    id: int
    state: JobState
    queue: str
    task: str
    queue_position: int | None = Field(description="Queued jobs of this queue that run before it; "
                                                   "null unless the job is queued.")
    scheduled_for: datetime
    created_at: datetime


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
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end.")


class JobAction(BaseModel):
    id: int
    state: JobState


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
    """Which dead letters a bulk action takes: ``ids``, or the filters, or ``all``; at least one."""

    ids: list[JobId] | None = Field(default=None, min_length=1, max_length=10_000)
    queue: QueueName | None = None
    task: TaskName | None = None
    error_type: Text | None = Field(default=None, min_length=1, max_length=200)
    all: bool = False

    @model_validator(mode="after")
    def _something(self) -> DeadSelection:
        if not (self.ids or self.queue or self.task or self.error_type or self.all):
            raise ValueError("say which dead letters: ids, queue, task, error_type or all=true")
        return self


class BulkResult(BaseModel):
    count: int


# -- queues and workers -------------------------------------------------------------------------------------------

class Health(str, Enum):
    green = "green"
    amber = "amber"
    red = "red"


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


class WorkerCommand(Strict):
    """Ask a worker to run with another concurrency, or to drain (finish its jobs and leave). Workers read it
    at their next heartbeat."""

    concurrency: int | None = Field(default=None, ge=1, le=10_000)
    drain: bool = False

    @model_validator(mode="after")
    def _something(self) -> WorkerCommand:
        if self.concurrency is None and not self.drain:
            raise ValueError("give concurrency or drain=true")
        return self


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


class AlertRuleCreate(Strict):
    """threshold: a count of dead jobs, a failure percentage, an age in seconds, or (no_live_worker) the
    heartbeat age in seconds past which a worker no longer counts as live."""

    name: Text = Field(min_length=1, max_length=200)
    kind: AlertKind
    queue: QueueName | None = None
    threshold: float = Field(ge=0, le=1e12)
    window_seconds: int = Field(default=300, ge=10, le=86_400)
    webhook_url: Text = Field(pattern=r"^https?://[^\s]+$", max_length=2000)
    enabled: bool = True


class AlertRulePatch(Strict):
    enabled: bool


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
    delivery: str
    attempts: int
    delivered_at: datetime | None
    last_error: str | None


class Whoami(BaseModel):
    scopes: list[str]
    anonymous: bool

"""Jobs as the API hands them out, and how their arguments travel.

Arguments and results are stored as JSON text (PostgreSQL ``json``, not ``jsonb``), so they come back byte
for byte: a handler receives ``json.loads(json.dumps(value))`` of what was enqueued. Tuples arrive as lists,
dict keys as strings; NaN and infinities are refused, because JSON has no such numbers.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from enum import Enum
from typing import Any

from pgqueue.errors import PayloadTooLarge, ValidationError

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_PRIORITY = 32767

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")


class JobState(str, Enum):
    """Where a job is in its life. Live: waiting, scheduled, queued, running. Finished: succeeded, dead,
    cancelled."""

    WAITING = "waiting"  # for its parents (depends_on) to finish
    SCHEDULED = "scheduled"  # waiting for its time or a retry delay
    QUEUED = "queued"  # ready to be claimed
    RUNNING = "running"  # claimed by a worker, lease held
    SUCCEEDED = "succeeded"
    DEAD = "dead"  # gave up: the dead-letter queue
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)


@dataclass(frozen=True)
class JobError:
    """One failed attempt: what was raised, where and when."""

    attempt: int
    kind: str  # error | timeout | lease_expired
    error_type: str
    message: str
    traceback: str | None
    worker_id: uuid.UUID | None
    started_at: datetime | None
    failed_at: datetime


@dataclass(frozen=True)
class Job:
    """A job's state as read from the database.

    ::

        job = send_email.enqueue("a@b.c", subject="hi")
        app.job(job.id).state   # JobState.QUEUED, later SUCCEEDED
    """

    id: int
    queue: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    state: JobState
    attempt: int
    max_attempts: int
    scheduled_for: datetime
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: uuid.UUID | None = None
    result: Any = None
    lease_expires_at: datetime | None = None
    progress: float | None = None
    progress_message: str | None = None
    group_key: str | None = None
    unique_key: str | None = None
    batch_id: int | None = None
    errors: tuple[JobError, ...] = field(default=())

    @classmethod
    def enqueued(cls, id: int, queue: str, task: str, args: list[Any], kwargs: dict[str, Any], priority: int,
                 state: str, max_attempts: int, scheduled_for: datetime, created_at: datetime) -> Job:
        """A job as its enqueue just wrote it. Built straight into the instance's __dict__, past the frozen
        dataclass's __init__ (22 guarded assignments): a bulk enqueue returns a hundred thousand of these."""
        job = object.__new__(cls)
        object.__setattr__(job, "__dict__", {
            **_JOB_DEFAULTS, "id": id, "queue": queue, "task": task, "args": args, "kwargs": kwargs,
            "priority": priority, "state": _STATES[state], "attempt": 0, "max_attempts": max_attempts,
            "scheduled_for": scheduled_for, "created_at": created_at,
        })
        return job

    @classmethod
    def from_row(cls, row: tuple[Any, ...], errors: tuple[JobError, ...] = ()) -> Job:
        """Build from the column order of the job_get / job_list queries."""
        (id_, queue, task, args, kwargs, priority, state, attempt, max_attempts, scheduled_for, created_at,
         started_at, finished_at, worker_id, result, lease_expires_at, progress, progress_message, group_key,
         unique_key, batch_id) = row
        return cls(
            id=id_, queue=queue, task=task, args=from_json(args, f"job {id_}'s arguments"),
            kwargs=from_json(kwargs, f"job {id_}'s arguments"),
            priority=priority, state=JobState(state), attempt=attempt, max_attempts=max_attempts,
            scheduled_for=scheduled_for, created_at=created_at, started_at=started_at,
            finished_at=finished_at, worker_id=worker_id,
            result=None if result is None else from_json(result, f"job {id_}'s result"),
            lease_expires_at=lease_expires_at, progress=progress, progress_message=progress_message,
            group_key=group_key, unique_key=unique_key, batch_id=batch_id, errors=errors,
        )


_JOB_DEFAULTS = {f.name: f.default for f in fields(Job) if f.default is not MISSING}
_STATES = {state.value: state for state in JobState}

# One encoder for every payload and result: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _encode(value: Any, what: str) -> tuple[str, int]:
    """Compact JSON and its size in UTF-8 bytes, or ValidationError saying which value cannot be stored."""
    try:
        text = _ENCODER.encode(value)
        size = len(text.encode("utf-8"))  # lone surrogates cannot be stored: say so here, not in the driver
    except (TypeError, ValueError) as err:
        raise ValidationError(f"{what} must be JSON-serialisable: {err}") from err
    except UnicodeEncodeError as err:
        raise ValidationError(f"{what} contain text that is not valid Unicode (a lone surrogate)") from err
    except RecursionError as err:
        raise ValidationError(f"{what} are nested too deeply to serialise") from err
    return text, size


def to_json(value: Any, what: str) -> str:
    """Serialise to compact JSON, or ValidationError saying which value cannot be."""
    return _encode(value, what)[0]


def from_json(text: str, what: str) -> Any:
    """Parse stored JSON. PostgreSQL accepts nesting deeper than Python's parser can follow (it raises
    RecursionError); that becomes a ValidationError like any other undecodable payload."""
    try:
        return json.loads(text)
    except RecursionError as err:
        raise ValidationError(f"{what} are nested too deeply for Python to decode") from err


def encode_payload(args: Sequence[Any], kwargs: dict[str, Any],
                   limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> tuple[str, str]:
    """The (args, kwargs) JSON texts of a job, checked against the payload limit."""
    # Jobs without positional (or keyword) arguments are common, and bulk enqueues make thousands of them.
    args_text, args_size = _encode(list(args), "job arguments") if args else ("[]", 2)
    kwargs_text, kwargs_size = _encode(kwargs, "job arguments") if kwargs else ("{}", 2)
    size = args_size + kwargs_size
    if size > limit:
        raise PayloadTooLarge(
            f"job arguments are {size} bytes, over the limit of {limit} bytes; "
            "store large data elsewhere and pass a reference (or raise max_payload_bytes)"
        )
    return args_text, kwargs_text


def check_queue(name: Any) -> str:
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise ValidationError(
            f"invalid queue name {name!r}: use 1-100 letters, digits and _ . : - characters"
        )
    return name


def check_task_name(name: Any) -> str:
    if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
        raise ValidationError(
            f"invalid task name {name!r}: start with a letter or _, then up to 199 letters, digits, _ . : -"
        )
    return name


def check_priority(priority: Any) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise ValidationError(f"priority must be an integer from 0 to {MAX_PRIORITY} (higher runs first), "
                              f"got {priority!r}")
    return priority


def check_max_attempts(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise ValidationError(f"max_attempts must be an integer from 1 to 1000000, got {value!r}")
    return value


def check_key(value: Any, what: str, limit: int) -> str | None:
    """A group or unique key: None, or a non-empty string of at most ``limit`` bytes."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value.encode("utf-8", "surrogatepass")) > limit \
            or "\x00" in value:
        raise ValidationError(f"{what} must be a non-empty string of at most {limit} bytes without NUL, "
                              f"got {value!r:.80}")
    return value

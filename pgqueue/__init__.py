"""pgqueue: background jobs for Python, with PostgreSQL as the only moving part.

::

    from pgqueue import App

    app = App()  # $PGQUEUE_DSN, else an embedded PostgreSQL

    @app.task(queue="emails", max_attempts=5, timeout=30)
    def send_email(to: str, subject: str) -> dict[str, str]:
        ...

    send_email.enqueue("a@b.c", subject="hi")

Then ``pgqueue migrate`` once and ``pgqueue work mymodule:app`` on as many hosts as you like.
"""

from pgqueue.app import App, BatchInfo, QueueSettings, QueueStats, WorkerInfo
from pgqueue.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    DeliveryFailed,
    Fatal,
    IdempotencyConflict,
    JobNotFound,
    MessageNotFound,
    MissingDependency,
    PayloadTooLarge,
    PgQueueError,
    Retry,
    SchemaNotMigrated,
    UnknownTask,
    ValidationError,
)
from pgqueue.job import Job, JobError, JobState
from pgqueue.once.idempotency import Once
from pgqueue.once.outbox import Message, Published
from pgqueue.once.relay import Relay, RelayConfig
from pgqueue.once.sinks import CallableSink, HttpSink, NotifySink, Sink, verify_webhook
from pgqueue.periodic import Schedule
from pgqueue.retry import Backoff
from pgqueue.task import BoundTask, Call, Context, Task
from pgqueue.worker import Worker, WorkerConfig
from pgqueue.workflow import Batch, Chain, Group, chain, group

__version__ = "0.1.0"

__all__ = [
    "App",
    "Backoff",
    "Batch",
    "BatchInfo",
    "BoundTask",
    "Call",
    "CallableSink",
    "Chain",
    "ConfigurationError",
    "Context",
    "DatabaseError",
    "DatabaseUnavailable",
    "DeliveryFailed",
    "Fatal",
    "Group",
    "HttpSink",
    "IdempotencyConflict",
    "Job",
    "JobError",
    "JobNotFound",
    "JobState",
    "Message",
    "MessageNotFound",
    "MissingDependency",
    "NotifySink",
    "Once",
    "PayloadTooLarge",
    "PgQueueError",
    "Published",
    "QueueSettings",
    "QueueStats",
    "Relay",
    "RelayConfig",
    "Retry",
    "Schedule",
    "SchemaNotMigrated",
    "Sink",
    "Task",
    "UnknownTask",
    "ValidationError",
    "Worker",
    "WorkerConfig",
    "WorkerInfo",
    "chain",
    "group",
    "verify_webhook",
]

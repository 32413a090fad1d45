"""pgqueue's exceptions: one tree, one class per cause.

::

    PgQueueError
    ├── ConfigurationError        bad settings: a DSN, an app path, a task definition
    ├── ValidationError           bad input to enqueue: names, priority, payload, arguments
    │   └── PayloadTooLarge
    ├── UnknownTask               a task name no registered handler answers to
    ├── JobNotFound
    ├── MessageNotFound           no outbox message has this id
    ├── IdempotencyConflict       a duplicate of an idempotent block holds its key (wait=False, or the wait ran out)
    ├── DeliveryFailed            a sink did not take an outbox message (the relay retries it, then marks it dead)
    ├── DatabaseError             PostgreSQL said no
    │   ├── DatabaseUnavailable   cannot connect, or the connection dropped
    │   └── SchemaNotMigrated     the pgqueue schema is missing or older than this code
    ├── MissingDependency         an optional extra is not installed (pgqueue serve needs pgqueue[web])
    └── (handler control flow, raised by handlers, not errors of pgqueue)
        ├── Retry                 try again after a chosen delay
        └── Fatal                 give up now: the job goes to the dead letters

Every message is one line that names the problem and what to do about it; the CLI prints it as it is.
"""

from __future__ import annotations

import psycopg
from psycopg import errors as pg_errors


class PgQueueError(Exception):
    """Root of every error pgqueue raises. ``str(err)`` is a one-line message fit for a user."""


class ConfigurationError(PgQueueError):
    """A setting is wrong: DSN, app path, task options."""


class ValidationError(PgQueueError, ValueError):
    """Input to enqueue is wrong: a name, a priority, a date, the arguments."""


class PayloadTooLarge(ValidationError):
    """The job's arguments serialise to more bytes than the configured limit."""


class UnknownTask(PgQueueError, LookupError):
    """No task is registered under this name."""


class JobNotFound(PgQueueError, LookupError):
    """No job has this id."""


class MessageNotFound(PgQueueError, LookupError):
    """No outbox message has this id."""


class IdempotencyConflict(PgQueueError):
    """Another run of an idempotent block with the same key is in progress, and this one would not wait.

    Raised from ``ctx.idempotent(key, wait=False)`` (or when a ``wait=`` of seconds runs out). In a handler it
    fails the attempt like any error, so the job is retried later, when the other run has stored its result.
    """


class DeliveryFailed(PgQueueError):
    """A sink did not take an outbox message: an HTTP status other than 2xx, no sink for the topic, ...

    Sinks may raise it (or anything else); the relay records the message and tries again after a backoff.
    """


class DatabaseError(PgQueueError):
    """PostgreSQL refused or failed an operation."""


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL cannot be reached, or the connection was lost."""


class SchemaNotMigrated(DatabaseError):
    """The ``pgqueue`` schema is missing or older than this version of pgqueue."""


class MissingDependency(PgQueueError, ImportError):
    """A feature needs an optional extra that is not installed; the message names it."""


class Retry(Exception):
    """Raise from a handler to have the job tried again after ``delay`` seconds.

    The attempt counts towards ``max_attempts``::

        @app.task()
        def poll(order_id: int) -> None:
            if not ready(order_id):
                raise pgqueue.Retry(delay=30, reason="order not ready")
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        if delay is not None and delay < 0:
            raise ValidationError(f"Retry delay must be >= 0 seconds, got {delay}")
        self.delay = delay
        self.reason = reason


class Fatal(Exception):
    """Raise from a handler to give up at once: the job goes to the dead letters, attempts left or not.

    ::

        @app.task()
        def charge(card: str) -> None:
            if not valid(card):
                raise pgqueue.Fatal("card number is invalid; retrying cannot help")
    """


_MISSING_SCHEMA = (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName, pg_errors.UndefinedFunction,
                   pg_errors.UndefinedColumn)


def from_psycopg(err: psycopg.Error) -> PgQueueError:
    """Map a psycopg error to ours by its class (never by matching message text)."""
    if isinstance(err, _MISSING_SCHEMA):
        return SchemaNotMigrated(
            "the pgqueue schema is not installed (or is out of date) in this database; run `pgqueue migrate`"
        )
    if isinstance(err, psycopg.OperationalError):
        return DatabaseUnavailable(f"lost or could not open the database connection: {first_line(err)}")
    if isinstance(err, pg_errors.InvalidParameterValue | pg_errors.CheckViolation):
        return ValidationError(first_line(err))
    return DatabaseError(first_line(err))


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (PostgreSQL errors carry DETAIL lines after it)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__

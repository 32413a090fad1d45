"""Tasks: a handler function plus its defaults, with an enqueue typed by the function's own signature."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from pgqueue.errors import ValidationError
from pgqueue.job import Job
from pgqueue.retry import Backoff

if TYPE_CHECKING:
    from pgqueue.app import App

P = ParamSpec("P")
R = TypeVar("R")

# Per-enqueue options accepted as keywords by Task.enqueue when the handler has no parameter of that name.
OPTION_NAMES = frozenset({"conn", "queue", "priority", "run_at", "delay", "max_attempts"})


@dataclass
class Context:
    """What a handler that asks for it (first parameter ``ctx: Context``) learns about its job::

        @app.task()
        def resize(ctx: pgqueue.Context, image_id: int) -> None:
            log.info("job %s attempt %s", ctx.job_id, ctx.attempt)
    """

    job_id: int
    task: str
    queue: str
    attempt: int
    max_attempts: int
    worker_id: uuid.UUID
    app: App


@dataclass(frozen=True)
class EnqueueOptions:
    """Per-job overrides of a task's defaults; None keeps the default."""

    queue: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    delay: float | None = None
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.run_at is not None and self.delay is not None:
            raise ValidationError("give run_at or delay, not both")
        if self.run_at is not None and (not isinstance(self.run_at, datetime) or self.run_at.tzinfo is None):
            raise ValidationError(f"run_at must be a timezone-aware datetime, got {self.run_at!r}")
        if self.delay is not None and (isinstance(self.delay, bool) or not isinstance(self.delay, int | float)
                                       or not 0 <= self.delay <= 10 * 365 * 86400):
            raise ValidationError(f"delay must be a number of seconds from 0 to 10 years, got {self.delay!r}")


NO_OPTIONS = EnqueueOptions()


@dataclass(frozen=True)
class Call:
    """One job's arguments and options, for ``enqueue_many``: ``task.call(x, y=1)``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: EnqueueOptions = NO_OPTIONS


def _takes_context(fn: Callable[..., Any]) -> bool:
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        return False
    first = params[0]
    annotation = first.annotation
    return first.name == "ctx" or annotation is Context or annotation in ("Context", "pgqueue.Context")


class Task(Generic[P, R]):
    """A registered handler. Made by ``@app.task(...)``; enqueue with its own arguments::

        @app.task(queue="emails", max_attempts=5, timeout=30)
        def send_email(to: str, subject: str) -> dict[str, str]: ...

        send_email.enqueue("a@b.c", subject="hi")                 # checked by mypy against the signature
        send_email.using(conn=conn, delay=60).enqueue("a@b.c", subject="hi")
    """

    def __init__(self, app: App, fn: Callable[..., Any], *, name: str, queue: str, priority: int,
                 max_attempts: int, timeout: float | None, backoff: Backoff,
                 non_retryable: tuple[type[BaseException], ...]) -> None:
        if timeout is not None and not timeout > 0:
            raise ValidationError(f"task {name}: timeout must be a positive number of seconds, got {timeout}")
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.priority = priority
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff = backoff
        self.non_retryable = non_retryable
        self.takes_context = _takes_context(fn)
        self.is_async = inspect.iscoroutinefunction(fn)
        signature = inspect.signature(fn)
        if self.takes_context:
            params = list(signature.parameters.values())[1:]
            signature = signature.replace(parameters=params)
        self.signature = signature
        self._own_option_names = OPTION_NAMES & set(signature.parameters)
        # Whether a call binds depends only on how many positional arguments it has and which keywords: shapes
        # that bound once are remembered, so bulk enqueues do not bind the signature for every job.
        self._good_shapes: set[tuple[int, frozenset[str]]] = set()

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise ValidationError unless the handler could be called with these arguments."""
        shape = (len(args), frozenset(kwargs))
        if shape in self._good_shapes:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as err:
            raise ValidationError(f"bad arguments for task {self.name}: {err}") from err
        if len(self._good_shapes) < 256:
            self._good_shapes.add(shape)

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], EnqueueOptions, Any]:
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in OPTION_NAMES - self._own_option_names}
        conn = options.pop("conn", None)
        return kwargs, EnqueueOptions(**options), conn

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Enqueue one job; returns it (queued, or scheduled if delayed).

        Options ``queue``, ``priority``, ``run_at``, ``delay``, ``max_attempts`` and ``conn`` (a psycopg
        connection: the job then exists only if that transaction commits) are taken from the keywords when
        the handler has no parameter of that name; ``using(...)`` passes them with full typing.
        """
        rest, options, conn = self._split(dict(kwargs))
        return self.app._enqueue(self, args, rest, options, conn)

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """``enqueue`` for asyncio code; ``conn`` is then a psycopg AsyncConnection."""
        rest, options, conn = self._split(dict(kwargs))
        return await self.app._enqueue_async(self, args, rest, options, conn)

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        """Arguments (and options) of one job for ``enqueue_many``."""
        rest, options, conn = self._split(dict(kwargs))
        if conn is not None:
            raise ValidationError("pass conn to enqueue_many, not to each call")
        return Call(tuple(args), rest, options)

    def using(self, *, conn: Any = None, queue: str | None = None, priority: int | None = None,
              run_at: datetime | None = None, delay: float | None = None,
              max_attempts: int | None = None) -> BoundTask[P, R]:
        """The same task with per-job options, fully typed: ``task.using(delay=5).enqueue(...)``."""
        return BoundTask(self, EnqueueOptions(queue, priority, run_at, delay, max_attempts), conn)

    def enqueue_many(self, calls: Iterable[Call | Mapping[str, Any] | Sequence[Any]], *, conn: Any = None
                     ) -> list[Job]:
        """Enqueue many jobs in one statement (one round trip, one notification per queue).

        Each item is ``task.call(...)``, a mapping of keyword arguments, or a sequence of positional ones.
        """
        return self.app._enqueue_many(self, [self._as_call(c) for c in calls], conn)

    def _as_call(self, item: Call | Mapping[str, Any] | Sequence[Any]) -> Call:
        if type(item) is dict:  # the common case, without the slower abstract-class checks below
            return Call((), dict(item))
        if isinstance(item, Call):
            return item
        if isinstance(item, Mapping):
            return Call((), dict(item))
        if isinstance(item, Sequence) and not isinstance(item, str | bytes):
            return Call(tuple(item), {})
        raise ValidationError(f"enqueue_many items must be task.call(...), a mapping or a sequence, "
                              f"got {type(item).__name__}")


class BoundTask(Generic[P, R]):
    """A task with per-job options fixed; made by ``Task.using``."""

    def __init__(self, task: Task[P, R], options: EnqueueOptions, conn: Any) -> None:
        self.task = task
        self.options = options
        self.conn = conn

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        return self.task.app._enqueue(self.task, args, dict(kwargs), self.options, self.conn)

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        return await self.task.app._enqueue_async(self.task, args, dict(kwargs), self.options, self.conn)

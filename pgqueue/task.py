"""Tasks: a handler function plus its defaults, with an enqueue typed by the function's own signature."""

from __future__ import annotations

import inspect
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from pgqueue.bulk import collector_paused
from pgqueue.errors import ConfigurationError, ValidationError
from pgqueue.job import Job
from pgqueue.once.context import HandlerEffects
from pgqueue.once.outbox import check_key, check_url
from pgqueue.retry import Backoff

if TYPE_CHECKING:
    from pgqueue.app import App

P = ParamSpec("P")
R = TypeVar("R")

# Per-enqueue options accepted as keywords by Task.enqueue when the handler has no parameter of that name.
OPTION_NAMES = frozenset({"conn", "queue", "priority", "run_at", "delay", "max_attempts", "group", "unique_key",
                          "unique_for", "depends_on", "on_parent_failure", "idempotency_key", "callback_url"})


@dataclass
class Context(HandlerEffects):
    """What a handler that asks for it (first parameter ``ctx: Context``) learns about its job::

        @app.task()
        def resize(ctx: pgqueue.Context, image_ids: list[int]) -> None:
            for i, image in enumerate(image_ids):
                if ctx.cancelled:          # someone ran `pgqueue jobs cancel` / app.cancel(): stop cleanly
                    return
                ...
                ctx.progress((i + 1) / len(image_ids), f"resized {i + 1}/{len(image_ids)}")

    Transactional tasks also get ``ctx.conn`` (``ctx.aconn``) and ``ctx.publish``; every task gets
    ``ctx.idempotent`` (see ``pgqueue.once.context``).
    """

    job_id: int
    task: str
    queue: str
    attempt: int
    max_attempts: int
    worker_id: uuid.UUID
    app: App
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _progress: tuple[float, str | None] | None = field(default=None, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once cancellation of this running job was requested; the job will end ``cancelled``."""
        return self._cancel.is_set()

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress (0.0-1.0, and a short message); shown by ``jobs show`` and ``app.job()``.

        Cheap to call often: the latest value goes out with the worker's next heartbeat.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
            raise ValidationError(f"progress must be a number from 0 to 1, got {fraction!r}")
        self._progress = (float(fraction), None if message is None else str(message)[:500])

    def parent_results(self) -> dict[int, Any]:
        """The results of the jobs this one depended on (``depends_on``), by job id."""
        return self.app.parent_results(self.job_id)


@dataclass(frozen=True)
class EnqueueOptions:
    """Per-job overrides of a task's defaults; None keeps the default.

    ``group``: the job's group within its queue (a tenant, an API host) for fairness and per-group limits.
    ``unique_key``: while a job with this key is unfinished (and ``unique_for`` seconds after it finished),
    enqueueing returns that job instead of a new one. ``depends_on``: jobs (or ids) that must finish first;
    ``on_parent_failure``: "cancel" (default) or "run" when a parent ends dead or cancelled.
    """

    queue: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    delay: float | None = None
    max_attempts: int | None = None
    group: str | None = None
    unique_key: str | None = None
    unique_for: float | None = None
    depends_on: Sequence[Any] | None = None
    on_parent_failure: str = "cancel"
    batch_id: int | None = None
    idempotency_key: str | None = None  # one job per key, every caller gets its id (see pgqueue.once.enqueue)
    callback_url: str | None = None  # the job's outcome is POSTed here through the outbox

    def __post_init__(self) -> None:
        if self.idempotency_key is not None:
            check_key(self.idempotency_key, "idempotency_key")
        if self.callback_url is not None:
            check_url(self.callback_url, "callback_url")
        if self.run_at is not None and self.delay is not None:
            raise ValidationError("give run_at or delay, not both")
        if self.run_at is not None and (not isinstance(self.run_at, datetime) or self.run_at.tzinfo is None):
            raise ValidationError(f"run_at must be a timezone-aware datetime, got {self.run_at!r}")
        if self.delay is not None and (isinstance(self.delay, bool) or not isinstance(self.delay, int | float)
                                       or not 0 <= self.delay <= 10 * 365 * 86400):
            raise ValidationError(f"delay must be a number of seconds from 0 to 10 years, got {self.delay!r}")
        if self.unique_for is not None and (self.unique_key is None or not 0 <= self.unique_for <= 10 * 365 * 86400):
            raise ValidationError("unique_for needs a unique_key and a number of seconds from 0 to 10 years")
        if self.unique_key is not None and self.depends_on is not None:
            raise ValidationError("unique_key and depends_on cannot be combined on one job yet; "
                                  "enqueue the dependent job without a unique key")
        if self.on_parent_failure not in ("cancel", "run"):
            raise ValidationError(f"on_parent_failure must be 'cancel' or 'run', got {self.on_parent_failure!r}")

    @property
    def parent_ids(self) -> list[int] | None:
        """depends_on as job ids (Job objects or ints), or None."""
        if self.depends_on is None:
            return None
        ids = []
        for parent in self.depends_on:
            value = getattr(parent, "id", parent)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValidationError(f"depends_on takes jobs or job ids, got {parent!r:.80}")
            ids.append(value)
        if not ids:
            raise ValidationError("depends_on is empty; leave it out for a job without parents")
        return ids


# Options are immutable, so calls without any share one: a bulk enqueue works out its defaults once.
NO_OPTIONS = EnqueueOptions()


@dataclass(frozen=True)
class Call:
    """One job's arguments and options: ``task.call(x, y=1)``. For ``enqueue_many``, chains, groups and batches."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: EnqueueOptions = field(default_factory=lambda: NO_OPTIONS)
    task: Task[Any, Any] | None = None

    def then(self, *calls: Call) -> Any:
        """A chain: this call, then each of ``calls`` after the one before succeeded."""
        from pgqueue.workflow import Chain

        return Chain([self, *calls])


@dataclass(frozen=True)
class _Shape:
    """The parameters of a plain signature (no positional-only, no ``*args`` or ``**kwargs``), to check a call
    against it quickly. Anything it does not accept is left to ``Signature.bind`` for the decision and the
    message."""

    names: tuple[str, ...]
    required: frozenset[str]
    keyword_only: frozenset[str]

    @classmethod
    def of(cls, signature: inspect.Signature) -> _Shape | None:
        params = list(signature.parameters.values())
        if any(p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params):
            return None
        return cls(tuple(p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD),
                   frozenset(p.name for p in params if p.default is p.empty),
                   frozenset(p.name for p in params if p.kind == p.KEYWORD_ONLY))

    def accepts(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
        if len(args) > len(self.names):
            return False
        positional = self.names[:len(args)]
        for key in kwargs:
            if key in positional or (key not in self.names and key not in self.keyword_only):
                return False
        return all(name in kwargs or name in positional for name in self.required)


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
                 non_retryable: tuple[type[BaseException], ...], transactional: bool = False) -> None:
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
        self.transactional = transactional
        if transactional and not self.takes_context:
            raise ConfigurationError(f"task {name} is transactional, so its first parameter must be "
                                     "ctx: pgqueue.Context (its transaction is ctx.conn)")
        signature = inspect.signature(fn)
        if self.takes_context:
            params = list(signature.parameters.values())[1:]
            signature = signature.replace(parameters=params)
        self.signature = signature
        self._own_option_names = OPTION_NAMES & set(signature.parameters)
        self._option_names = OPTION_NAMES - self._own_option_names  # keywords that are options, not arguments
        self._shape = _Shape.of(signature)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise ValidationError unless the handler could be called with these arguments."""
        if self._shape is not None and self._shape.accepts(args, kwargs):
            return  # the common case, without Signature.bind (a bulk enqueue checks every item)
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as err:
            raise ValidationError(f"bad arguments for task {self.name}: {err}") from err

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], EnqueueOptions, Any]:
        if not kwargs:
            return kwargs, NO_OPTIONS, None
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in self._option_names}
        conn = options.pop("conn", None)
        return kwargs, EnqueueOptions(**options) if options else NO_OPTIONS, conn

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Enqueue one job; returns it (queued, or scheduled if delayed).

        Options ``queue``, ``priority``, ``run_at``, ``delay``, ``max_attempts``, ``idempotency_key``,
        ``callback_url`` and ``conn`` (a psycopg connection: the job then exists only if that transaction
        commits) are taken from the keywords when the handler has no parameter of that name; ``using(...)``
        passes them with full typing.
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
        return Call(tuple(args), rest, options, self)

    def using(self, *, conn: Any = None, queue: str | None = None, priority: int | None = None,
              run_at: datetime | None = None, delay: float | None = None, max_attempts: int | None = None,
              group: str | None = None, unique_key: str | None = None, unique_for: float | None = None,
              depends_on: Sequence[Any] | None = None, on_parent_failure: str = "cancel",
              idempotency_key: str | None = None, callback_url: str | None = None) -> BoundTask[P, R]:
        """The same task with per-job options, fully typed: ``task.using(delay=5).enqueue(...)``."""
        options = EnqueueOptions(queue, priority, run_at, delay, max_attempts, group, unique_key, unique_for,
                                 depends_on, on_parent_failure, idempotency_key=idempotency_key,
                                 callback_url=callback_url)
        return BoundTask(self, options, conn)

    def enqueue_many(self, calls: Iterable[Call | Mapping[str, Any] | Sequence[Any]], *, conn: Any = None
                     ) -> list[Job]:
        """Enqueue many jobs in one statement (one round trip, one notification per queue).

        Each item is ``task.call(...)``, a mapping of keyword arguments, or a sequence of positional ones.
        """
        with collector_paused():
            return self.app._enqueue_many(self, [self._as_call(c) for c in calls], conn)

    def _as_call(self, item: Call | Mapping[str, Any] | Sequence[Any]) -> Call:
        if isinstance(item, Call):
            if item.task is not None and item.task is not self:
                raise ValidationError(f"a call of task {item.task.name} passed to {self.name}.enqueue_many")
            return item
        if isinstance(item, Mapping):
            return Call((), dict(item), NO_OPTIONS)
        if isinstance(item, Sequence) and not isinstance(item, str | bytes):
            return Call(tuple(item), {}, NO_OPTIONS)
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

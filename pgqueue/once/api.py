"""The effectively-once part of the App's API (mixed into ``pgqueue.App``): publishing to the outbox, sinks,
idempotent blocks outside handlers, managing outbox messages, and enqueueing with keys or callbacks."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import psycopg
import psycopg_pool

from pgqueue.connection import describe
from pgqueue.errors import DatabaseUnavailable, MessageNotFound
from pgqueue.job import Job
from pgqueue.once import enqueue as enqueue_once
from pgqueue.once import outbox
from pgqueue.once.connections import HandlerConnections
from pgqueue.once.conversation import AsyncSteps, Conversation, SyncSteps, needs_own_transaction, run, run_async
from pgqueue.once.idempotency import DEFAULT_TTL, Once, once_decorator
from pgqueue.once.sinks import HttpSink, SinkLike, Sinks

if TYPE_CHECKING:
    from pgqueue.app import App
    from pgqueue.task import EnqueueOptions

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# Connections an App keeps for idempotent blocks run outside workers (each holds one while its block runs).
APP_BLOCK_CONNECTIONS = 10
_effects_lock = threading.Lock()


def _in_transaction(conn: psycopg.Connection[Any], conversation: Conversation[T], steps: SyncSteps) -> T:
    if needs_own_transaction(conn):
        with conn.transaction():
            return run(conn, conversation, steps)
    return run(conn, conversation, steps)


async def _in_transaction_async(conn: psycopg.AsyncConnection[Any], conversation: Conversation[T],
                                steps: AsyncSteps) -> T:
    if needs_own_transaction(conn):
        async with conn.transaction():
            return await run_async(conn, conversation, steps)
    return await run_async(conn, conversation, steps)


class Effects:
    """Publish, sinks, idempotency and outbox management on the App. See the README's "Effectively once"."""

    #: How long idempotency keys (of blocks and of enqueues) live unless a call says otherwise.
    idempotency_ttl: timedelta = DEFAULT_TTL

    _sinks: Sinks | None = None
    _block_connections: HandlerConnections | None = None

    def _as_app(self) -> App:
        return cast("App", self)

    # -- sinks -----------------------------------------------------------------------------------------------

    @property
    def sinks(self) -> Sinks:
        """The relay's routing table of this app."""
        with _effects_lock:
            if self._sinks is None:
                self._sinks = Sinks()
            return self._sinks

    def sink(self, pattern: str, sink: SinkLike) -> None:
        """Route outbox messages of ``pattern`` (a topic, ``"prefix.*"`` or ``"*"``) to ``sink``::

            app.sink("orders.*", pgqueue.HttpSink("https://example.com/hooks", secret="s3cret"))
            app.sink("audit", lambda message: audit.write(message.payload))
            app.sink("cache", pgqueue.NotifySink("cache_events"))
        """
        self.sinks.add(pattern, sink)

    @property
    def webhooks(self) -> HttpSink:
        """The sink of messages that carry their own URL (completion webhooks, ``publish(url=...)``).

        Default: unsigned unless ``$PGQUEUE_WEBHOOK_SECRET`` is set; ``app.webhooks = HttpSink(secret=...)``.
        """
        sinks = self.sinks
        if sinks.webhooks is None:
            sinks.webhooks = HttpSink()
        return sinks.webhooks

    @webhooks.setter
    def webhooks(self, sink: HttpSink) -> None:
        self.sinks.webhooks = sink

    # -- publishing ------------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: Any, *, key: str | None = None, url: str | None = None,
                conn: psycopg.Connection[Any] | None = None) -> outbox.Published:
        """Write a message to the outbox; with ``conn``, in that transaction (it exists iff you commit)::

            with psycopg.connect(dsn) as conn:
                conn.execute("UPDATE orders SET state = 'paid' WHERE id = %s", (42,))
                app.publish("orders.paid", {"order": 42}, key="order:42", conn=conn)

        The relay delivers it at least once, in order with the other messages of ``key``. ``url`` sends it to
        that HTTP(S) address through ``app.webhooks`` instead of the sink of its topic.
        """
        app = self._as_app()
        params = outbox.publish_params(topic, payload, key, url, app.max_payload_bytes)
        rows = app._fetch("outbox_insert", params, conn)
        return outbox.Published(*rows[0])

    async def publish_async(self, topic: str, payload: Any, *, key: str | None = None, url: str | None = None,
                            conn: psycopg.AsyncConnection[Any] | None = None) -> outbox.Published:
        """``publish`` for asyncio code; ``conn`` is then a psycopg AsyncConnection."""
        app = self._as_app()
        params = outbox.publish_params(topic, payload, key, url, app.max_payload_bytes)
        if conn is not None:
            return await run_async(conn, outbox.publish(params))
        try:
            async with (await app._async_pool()).connection() as pooled:
                return await run_async(pooled, outbox.publish(params))
        except psycopg_pool.PoolTimeout as err:
            raise DatabaseUnavailable(f"no connection to PostgreSQL at {describe(app.dsn)} within 10 s") from err

    # -- idempotency -----------------------------------------------------------------------------------------

    def _effects_connections(self) -> HandlerConnections:
        with _effects_lock:
            if self._block_connections is None:
                self._block_connections = HandlerConnections(self._as_app().dsn, APP_BLOCK_CONNECTIONS,
                                                             name="pgqueue-blocks")
            return self._block_connections

    def _close_effects(self) -> None:
        connections, self._block_connections = self._block_connections, None
        if connections is not None:
            connections.close()

    def idempotent(self, key: str, *, ttl: timedelta | None = None, wait: bool | float = True) -> Once:
        """An idempotent block outside a handler (inside one, prefer ``ctx.idempotent``)::

            with app.idempotent(f"refund:{order_id}") as once:
                if once.needed:
                    once.result = payments.refund(order_id, idempotency_key=once.key)
        """
        return Once(self._effects_connections(), key, ttl=self.idempotency_ttl if ttl is None else ttl, wait=wait)

    def once(self, key: Callable[..., str], *, ttl: timedelta | None = None, wait: bool | float = True
             ) -> Callable[[F], F]:
        """Decorate a function (sync or async) to run once per key; later calls return the stored result::

            @app.once(key=lambda order_id, amount: f"charge:{order_id}")
            def charge(order_id: int, amount: int) -> str:
                return payments.charge(order_id, amount)["id"]

        The stored result is what JSON round-trips, and it is what every call returns, the first one included.
        """
        return once_decorator(self._effects_connections, key, self.idempotency_ttl if ttl is None else ttl, wait)

    # -- managing the outbox ---------------------------------------------------------------------------------

    def outbox_message(self, message_id: int) -> outbox.Message:
        """One outbox message with its state, attempts and last error. Raises MessageNotFound."""
        rows = self._as_app()._fetch("outbox_get", {"id": message_id})
        if not rows:
            raise MessageNotFound(f"no outbox message with id {message_id}")
        return outbox.Message.from_row(rows[0])

    def outbox_messages(self, *, state: str | None = None, topic: str | None = None, limit: int = 100
                        ) -> list[outbox.Message]:
        """Outbox messages, newest first: ``app.outbox_messages(state="dead")`` lists failed deliveries."""
        params = {"state": outbox.check_state(state), "topic": topic, "limit": limit}
        return [outbox.Message.from_row(row) for row in self._as_app()._fetch("outbox_list", params)]

    def replay(self, *message_ids: int, topic: str | None = None, all: bool = False) -> int:
        """Put dead outbox messages back to be delivered (same delivery ids); returns how many."""
        params = outbox.replay_params(message_ids, topic, all)
        return len(self._as_app()._fetch("outbox_replay", params))

    # -- enqueue with an idempotency key or a callback -------------------------------------------------------

    def _enqueue_once(self, params: dict[str, Any], args: Sequence[Any], kwargs: dict[str, Any],
                      options: EnqueueOptions, conn: psycopg.Connection[Any] | None,
                      insert_one: Callable[[psycopg.Connection[Any], dict[str, Any]], tuple[Any, ...]]) -> Job:
        app = self._as_app()
        conversation = self._enqueue_conversation(params, options)
        steps = {enqueue_once.INSERT_JOB: lambda c, p: [insert_one(c, p)]}
        if conn is not None:
            made, rows = _in_transaction(conn, conversation, steps)
        else:
            with app.connection() as pooled:
                made, rows = _in_transaction(pooled, conversation, steps)
        return app._inserted(params, args, kwargs, rows[0]) if made else Job.from_row(rows[0])

    async def _enqueue_once_async(self, params: dict[str, Any], args: Sequence[Any], kwargs: dict[str, Any],
                                  options: EnqueueOptions, conn: psycopg.AsyncConnection[Any] | None,
                                  insert_one: Callable[[psycopg.AsyncConnection[Any], dict[str, Any]],
                                                       Awaitable[tuple[Any, ...]]]) -> Job:
        app = self._as_app()
        conversation = self._enqueue_conversation(params, options)

        async def insert(c: psycopg.AsyncConnection[Any], p: dict[str, Any]) -> list[tuple[Any, ...]]:
            return [await insert_one(c, p)]

        steps = {enqueue_once.INSERT_JOB: insert}
        if conn is not None:
            made, rows = await _in_transaction_async(conn, conversation, steps)
        else:
            try:
                async with (await app._async_pool()).connection() as pooled:
                    made, rows = await _in_transaction_async(pooled, conversation, steps)
            except psycopg_pool.PoolTimeout as err:
                raise DatabaseUnavailable(f"no connection to PostgreSQL at {describe(app.dsn)} "
                                          "within 10 s") from err
        return app._inserted(params, args, kwargs, rows[0]) if made else Job.from_row(rows[0])

    def _enqueue_conversation(self, params: dict[str, Any], options: EnqueueOptions
                              ) -> Conversation[tuple[bool, list[tuple[Any, ...]]]]:
        return enqueue_once.enqueue(params, options.idempotency_key, self.idempotency_ttl.total_seconds(),
                                    options.callback_url)


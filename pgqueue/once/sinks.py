"""Where the relay delivers outbox messages: HTTP webhooks, Python callables, PostgreSQL NOTIFY.

Routing, per message: one with a ``url`` of its own (completion webhooks, ``publish(url=...)``) goes to the
app's webhook sink (``app.webhooks``, an ``HttpSink``) at that URL; any other goes to the sink registered for
its topic with ``app.sink(pattern, sink)``: an exact topic, a prefix ending in ``*`` (``"orders.*"``), or
``"*"``; the most specific pattern wins. A message no sink takes fails (and is retried, then dead), so a
relay deployed before the code that registers a sink does not lose messages.

A sink is anything with ``async def deliver(message)`` that returns when the message is taken and raises when
it is not; a plain function (sync or async) of the message also works.

Webhooks follow the Standard Webhooks scheme (https://www.standardwebhooks.com), so receivers can use its
libraries: the body is the payload's JSON exactly as published, with headers ``webhook-id`` (the delivery id,
the same on every attempt: deduplicate on it), ``webhook-timestamp`` (Unix seconds, database clock at the
claim) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``), plus
``pgqueue-topic``, ``pgqueue-key`` and ``pgqueue-attempt``. ``verify_webhook`` checks one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from pgqueue.errors import DeliveryFailed, ValidationError
from pgqueue.once.outbox import Message, check_topic, check_url

SECRET_ENV = "PGQUEUE_WEBHOOK_SECRET"


@runtime_checkable
class Sink(Protocol):
    """Takes an outbox message, or raises. Called at least once per message; must finish within the lease."""

    async def deliver(self, message: Message) -> None: ...


class CallableSink:
    """A Python function of the message (``def`` runs in a thread, ``async def`` on the relay's loop)::

        def record(message: pgqueue.Message) -> None:
            audit_log.write(message.topic, message.payload)

        app.sink("audit.*", record)          # wrapped in a CallableSink for you
    """

    def __init__(self, fn: Callable[[Message], Any]) -> None:
        self.fn = fn
        self._is_async = inspect.iscoroutinefunction(fn)

    async def deliver(self, message: Message) -> None:
        if self._is_async:
            await self.fn(message)
        else:
            outcome = await asyncio.to_thread(self.fn, message)
            if inspect.isawaitable(outcome):  # a plain function that returned a coroutine
                await outcome


class NotifySink:
    """``pg_notify(channel, ...)`` in the same transaction that marks the message delivered: listeners that are
    connected hear each message exactly once (NOTIFY keeps nothing for listeners that are not)::

        app.sink("cache.invalidate", pgqueue.NotifySink("cache_events"))

    The notification's payload is JSON: ``{"id", "delivery_id", "topic", "key", "payload"}``; NOTIFY limits it
    to 8000 bytes, so a bigger message fails (and ends dead).
    """

    def __init__(self, channel: str) -> None:
        if not isinstance(channel, str) or not 1 <= len(channel) <= 63:
            raise ValidationError(f"a NOTIFY channel is a name of 1-63 characters, got {channel!r}")
        self.channel = channel

    def body(self, message: Message) -> str:
        # The payload is already JSON text: splice it in rather than parse and print it again.
        head = {"id": message.id, "delivery_id": str(message.delivery_id), "topic": message.topic,
                "key": message.key}
        return json.dumps(head, separators=(",", ":"))[:-1] + ',"payload":' + message.body + "}"

    async def deliver(self, message: Message) -> None:  # the relay runs it as SQL; never called
        raise DeliveryFailed("NotifySink messages are delivered by the relay's own statement")


def _secret_bytes(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    if secret.startswith("whsec_"):  # the Standard Webhooks form: base64 after the prefix
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def sign(secret: str | bytes, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_webhook(secret: str | bytes, body: bytes, headers: Mapping[str, str], *, tolerance: float = 300.0,
                   now: float | None = None) -> bool:
    """Whether a webhook request is authentic: signed with ``secret`` and stamped within ``tolerance`` seconds.

    ::

        if not pgqueue.verify_webhook(SECRET, request.body, request.headers):
            return 401
        if seen(request.headers["webhook-id"]):   # the same on every attempt of a message
            return 200                              # a duplicate: already handled
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        delivery_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        signatures = lowered["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, delivery_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


class HttpSink:
    """POST each message's payload as JSON to ``url`` (or to the message's own URL), signed with ``secret``::

        app.sink("orders.*", pgqueue.HttpSink("https://example.com/hooks", secret="s3cret"))
        app.webhooks = pgqueue.HttpSink(secret="s3cret")     # for messages that carry their own URL

    A 2xx answer within ``timeout`` seconds is a delivery; anything else (another status, a refused or reset
    connection, a timeout) is a failure the relay retries. Without a secret (``$PGQUEUE_WEBHOOK_SECRET`` is
    the default) requests go unsigned. Uses the standard library's urllib in a thread, so there is no extra
    dependency; each delivery is one short request, which is all a webhook needs.
    """

    def __init__(self, url: str | None = None, *, secret: str | bytes | None = None, timeout: float = 10.0,
                 headers: Mapping[str, str] | None = None) -> None:
        self.url = None if url is None else check_url(url)
        self.secret = secret if secret is not None else (os.environ.get(SECRET_ENV) or None)
        if not timeout > 0:
            raise ValidationError(f"timeout must be positive, got {timeout!r}")
        self.timeout = timeout
        self.headers = dict(headers or {})

    def request(self, message: Message) -> urllib.request.Request:
        """The HTTP request for one delivery attempt (exposed so tests and tools can see what is sent)."""
        url = message.url or self.url
        if url is None:
            raise DeliveryFailed(f"message {message.id} has no URL and its HttpSink none either")
        body = message.body.encode()
        headers = {**self.headers, "content-type": "application/json", "user-agent": "pgqueue-relay",
                   "webhook-id": str(message.delivery_id), "webhook-timestamp": str(message.claimed_at),
                   "pgqueue-topic": message.topic, "pgqueue-attempt": str(message.attempt)}
        if message.key is not None:
            headers["pgqueue-key"] = message.key
        if self.secret:
            headers["webhook-signature"] = sign(self.secret, str(message.delivery_id), message.claimed_at, body)
        return urllib.request.Request(url, data=body, headers=headers, method="POST")

    def _post(self, message: Message) -> None:
        request = self.request(message)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read(65536)
        except urllib.error.HTTPError as err:
            err.close()  # it is the response, and holds the socket
            raise DeliveryFailed(f"{request.full_url} answered HTTP {err.code}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DeliveryFailed(f"could not POST to {request.full_url}: {reason}") from None

    async def deliver(self, message: Message) -> None:
        await asyncio.to_thread(self._post, message)


SinkLike = Sink | Callable[[Message], Any] | Callable[[Message], Awaitable[Any]]


class Sinks:
    """The routing table: topic patterns to sinks, and the webhook sink for messages with their own URL."""

    def __init__(self) -> None:
        self._routes: dict[str, Sink] = {}
        self.webhooks: HttpSink | None = None

    def add(self, pattern: str, sink: SinkLike) -> None:
        if pattern != "*":
            check_topic(pattern[:-1] if pattern.endswith(".*") or pattern.endswith("*") else pattern)
        if isinstance(sink, Sink):
            self._routes[pattern] = sink
        elif callable(sink):
            self._routes[pattern] = CallableSink(sink)
        else:
            raise ValidationError(f"a sink is an HttpSink, a NotifySink, an object with async deliver(message), "
                                  f"or a function of the message; got {type(sink).__name__}")

    def route(self, message: Message) -> Sink | None:
        """The sink for ``message``, or None when none takes it."""
        if message.url is not None:
            if self.webhooks is None:
                self.webhooks = HttpSink()
            return self.webhooks
        exact = self._routes.get(message.topic)
        if exact is not None:
            return exact
        best: tuple[int, Sink] | None = None
        for pattern, sink in self._routes.items():
            matches = pattern.endswith("*") and message.topic.startswith(pattern[:-1])
            if matches and (best is None or len(pattern) > best[0]):
                best = (len(pattern), sink)
        return best[1] if best else None

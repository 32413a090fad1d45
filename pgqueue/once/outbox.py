"""The transactional outbox: messages written in the transaction whose effects they announce.

``app.publish(topic, payload, key=..., conn=conn)`` (or ``ctx.publish`` in a transactional handler) inserts a row
of ``pgqueue.outbox`` in that transaction: the message exists iff the transaction commits. The relay
(``pgqueue.once.relay``) delivers it to a sink at least once, one message of a key at a time, in order.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pgqueue.errors import PayloadTooLarge, ValidationError
from pgqueue.job import to_json
from pgqueue.once.conversation import Conversation

_TOPIC = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
MAX_KEY_LENGTH = 500
MAX_URL_LENGTH = 2000
STATES = ("pending", "delivered", "dead")


@dataclass(frozen=True)
class Message:
    """An outbox message, as the relay hands it to a sink and as ``app.outbox_messages()`` lists it.

    ``payload`` is the published value as JSON round-trips it; ``body`` the exact JSON text (what an HTTP
    sink posts and signs). ``delivery_id`` is the same on every attempt: receivers deduplicate on it.
    """

    id: int
    topic: str
    key: str | None
    body: str
    url: str | None
    delivery_id: uuid.UUID
    attempt: int
    created_at: datetime
    state: str = "pending"
    available_at: datetime | None = None
    finished_at: datetime | None = None
    last_error: str | None = None
    # Unix seconds of the database clock when the relay claimed it (the webhook-timestamp header).
    claimed_at: int = 0

    @property
    def payload(self) -> Any:
        return json.loads(self.body)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Message:
        """From the columns of outbox_get / outbox_list."""
        (id_, topic, key, body, url, delivery_id, state, attempt, available_at, created_at, finished_at,
         last_error) = row
        return cls(id=id_, topic=topic, key=key, body=body, url=url, delivery_id=delivery_id, attempt=attempt,
                   created_at=created_at, state=state, available_at=available_at, finished_at=finished_at,
                   last_error=last_error)

    @classmethod
    def from_claim(cls, row: tuple[Any, ...]) -> Message:
        """From the columns of outbox_claim."""
        id_, topic, key, body, url, delivery_id, attempt, created_at, claimed_at = row
        return cls(id=id_, topic=topic, key=key, body=body, url=url, delivery_id=delivery_id, attempt=attempt,
                   created_at=created_at, claimed_at=int(claimed_at))


@dataclass(frozen=True)
class Published:
    """What ``publish`` returns: the message's id and the delivery id receivers will see."""

    id: int
    delivery_id: uuid.UUID
    created_at: datetime


def check_topic(topic: Any) -> str:
    if not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
        raise ValidationError(f"invalid topic {topic!r}: use 1-200 letters, digits and _ . : - characters")
    return topic


def check_url(url: Any, what: str = "url") -> str:
    """An http(s) URL of reasonable length, or ValidationError naming ``what``."""
    if not isinstance(url, str) or not re.match(r"(?i)https?://[^\s/]", url) or len(url) > MAX_URL_LENGTH \
            or any(c.isspace() for c in url):
        raise ValidationError(f"{what} must be an http:// or https:// URL of at most {MAX_URL_LENGTH} characters, "
                              f"got {url!r}")
    return url


def check_key(key: Any, what: str = "key") -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH or "\x00" in key:
        raise ValidationError(f"{what} must be a string of 1-{MAX_KEY_LENGTH} characters (no NUL), got {key!r}")
    return key


def publish_params(topic: str, payload: Any, key: str | None, url: str | None, limit: int) -> dict[str, Any]:
    """Checked parameters of outbox_insert; raises ValidationError (or PayloadTooLarge) for bad input."""
    body = to_json(payload, "the message payload")
    size = len(body.encode())
    if size > limit:
        raise PayloadTooLarge(f"the message payload is {size} bytes, over the limit of {limit} bytes; "
                              "publish a reference to the data instead")
    return {"topic": check_topic(topic), "payload": body, "key": None if key is None else check_key(key),
            "url": None if url is None else check_url(url)}


def publish(params: dict[str, Any]) -> Conversation[Published]:
    """Insert one message (params from ``publish_params``)."""
    rows = yield "outbox_insert", params
    return Published(*rows[0])


def replay_params(ids: tuple[int, ...], topic: str | None, all_: bool) -> dict[str, Any]:
    if not (ids or topic or all_):
        raise ValidationError("say which dead messages to replay: ids, topic= or all=True")
    return {"ids": list(ids) or None, "topic": topic}


def check_state(state: str | None) -> str | None:
    if state is not None and state not in STATES:
        raise ValidationError(f"invalid outbox state {state!r}: use one of {', '.join(STATES)}")
    return state

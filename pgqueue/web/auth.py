"""API tokens and scopes.

A token is ``pgq_`` + 43 random URL-safe characters (256 bits). Only its SHA-256 is stored, with a clear
prefix to tell tokens apart. Scopes: ``read`` (every GET), ``enqueue`` (POST /jobs, /batches), ``admin`` (everything,
including every change of state). Requests carry ``Authorization: Bearer <token>``.

::

    token = create_token(dsn, "ci", ["enqueue"])      # or: pgqueue token create --scope enqueue --name ci

With ``pgqueue serve --local-read``, requests from the loopback address without a token may read (never
write): the dashboard then opens read-only on localhost without asking for a token.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from pgqueue.connection import connect, has_rows
from pgqueue.errors import ValidationError, from_psycopg
from pgqueue.queries import q

TOKEN_PREFIX = "pgq_"


class Scope(str, Enum):
    """What a token may do. ``admin`` includes the other two."""

    READ = "read"
    ENQUEUE = "enqueue"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token (by id) or an anonymous local reader (token_id None)."""

    token_id: int | None
    scopes: frozenset[str]

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN.value in self.scopes or scope.value in self.scopes


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def check_scopes(scopes: Sequence[str]) -> list[str]:
    known = {s.value for s in Scope}
    bad = sorted(set(scopes) - known)
    if bad or not scopes:
        raise ValidationError(f"invalid scope {', '.join(bad) or '(none)'}: use read, enqueue or admin")
    return sorted(set(scopes))


def _run(dsn: str, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    import psycopg

    with connect(dsn) as conn:
        try:
            cur = conn.execute(q(name), params)
            return cur.fetchall() if has_rows(cur) else []
        except psycopg.Error as err:
            raise from_psycopg(err) from err


def create_token(dsn: str, name: str, scopes: Sequence[str]) -> str:
    """Make a token with these scopes; returns it (the only time it is ever seen in clear)."""
    chosen = check_scopes(scopes)
    if not name or len(name) > 200:
        raise ValidationError("token name must be 1 to 200 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    _run(dsn, "token_insert", {"name": name, "hash": hash_token(token), "prefix": token[:12], "scopes": chosen})
    return token


def list_tokens(dsn: str) -> list[TokenInfo]:
    return [TokenInfo(*row) for row in _run(dsn, "token_list", {})]


def revoke_token(dsn: str, token_id: int) -> bool:
    return bool(_run(dsn, "token_revoke", {"id": token_id}))


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, or None."""
    if not header:
        return None
    kind, _, value = header.strip().partition(" ")
    if kind.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


Verify = Callable[[str], Awaitable[tuple[int, frozenset[str]] | None]]


async def authenticate(header: str | None, client_host: str | None, verify: Verify, *, local_read: bool
                       ) -> Principal | None:
    """The caller of a request, or None when it has no usable credentials."""
    token = bearer(header)
    if token is not None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        found = await verify(token)
        return Principal(token_id=found[0], scopes=found[1]) if found is not None else None
    if local_read and is_loopback(client_host):
        return Principal(token_id=None, scopes=frozenset({Scope.READ.value}))
    return None

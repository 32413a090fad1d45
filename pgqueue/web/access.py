"""Who may call what, and what a request handler can reach: the serve settings and its services.

::

    @router.post("/jobs/{job_id}/retry")
    async def retry(job_id: int, svc: Services = Depends(require(Scope.ADMIN))) -> ...:
        await svc.db.fetch(...)

Every route names the scope it needs; a request without a usable token gets 401, one whose token lacks the
scope gets 403, and nothing runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from pgqueue.once.relay import RelayConfig
from pgqueue.web.auth import Principal, Scope, authenticate, hash_token
from pgqueue.web.database import Database
from pgqueue.web.problems import ApiError

if TYPE_CHECKING:
    from pgqueue.app import App
    from pgqueue.web.events import Hub
    from pgqueue.web.metrics import Exporter
    from pgqueue.web.queues import Overview


@dataclass
class Settings:
    """How ``pgqueue serve`` runs. Times in seconds.

    ``local_read``: requests from the loopback address need no token to read. ``app``: the App whose tasks the
    API checks enqueues against (None: any valid task name). ``push_interval``: the least time between two
    pushes to browsers; ``tick``: how often aggregates are re-read when no notification comes. ``relay``: also
    deliver the outbox from this process (alert webhooks among it), as ``pgqueue relay`` does; None: leave it to
    the relays of workers.
    """

    dsn: str
    local_read: bool = False
    public_metrics: bool = False
    app: App | None = None
    max_payload_bytes: int = 1024 * 1024
    push_interval: float = 0.25
    tick: float = 1.0
    leader: bool = True
    sample_interval: float = 5.0
    alert_interval: float = 5.0
    sample_retention: float = 7 * 86400.0
    relay: RelayConfig | None = None


@dataclass
class Services:
    """What handlers reach through ``Depends``: settings, the pool, the live-update hub, the metrics exporter."""

    settings: Settings
    db: Database
    app: App
    hub: Hub
    exporter: Exporter
    overview: Overview
    extra: dict[str, Any] = field(default_factory=dict)

    async def verify(self, token: str) -> tuple[int, frozenset[str]] | None:
        """The id and scopes of a live token (its hash is what is looked up), or None."""
        rows = await self.db.fetch("token_verify", {"hash": hash_token(token)})
        return (int(rows[0][0]), frozenset(rows[0][1])) if rows else None


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def principal(request: Request) -> Principal | None:
    svc = services(request)
    host = request.client.host if request.client else None
    return await authenticate(request.headers.get("authorization"), host, svc.verify,
                              local_read=svc.settings.local_read)


def require(scope: Scope) -> Callable[[Request], Awaitable[Services]]:
    """A dependency that lets the request through only with ``scope`` (admin has every scope)."""

    async def check(request: Request) -> Services:
        who = await principal(request)
        if who is None or (who.token_id is None and not who.allows(scope)):
            raise ApiError(401, "unauthorized",
                           "this endpoint needs an API token: send Authorization: Bearer <token> "
                           "(make one with `pgqueue token create`)")
        if not who.allows(scope):
            raise ApiError(403, "forbidden", f"this endpoint needs a token with the {scope.value} scope")
        request.state.principal = who
        return services(request)

    return check

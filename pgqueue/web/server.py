"""The ASGI application of ``pgqueue serve``: REST API under /api/v1, its OpenAPI document at /openapi.json
and a docs page at /docs, the dashboard at /, Prometheus at /metrics; one process, everything read from
PostgreSQL.

::

    app = create_app(Settings(dsn="postgresql://localhost/mydb", local_read=True))
    # run it with any ASGI server; `pgqueue serve` uses uvicorn
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pgqueue import __version__
from pgqueue.app import App
from pgqueue.once.relay import Relay
from pgqueue.web import alerts, batches, charts, dashboard, jobs, metrics, queues, schedules, workers
from pgqueue.web.access import Services, Settings, principal, require
from pgqueue.web.auth import Scope as TokenScope
from pgqueue.web.database import Database
from pgqueue.web.events import Hub
from pgqueue.web.leader import Leader
from pgqueue.web.metrics import Exporter
from pgqueue.web.models import Whoami
from pgqueue.web.problems import ApiError, install, responses
from pgqueue.web.queues import Overview

log = logging.getLogger("pgqueue.web")

API_PREFIX = "/api/v1"


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with a 413 before the application reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _too_large(send, self.limit)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _too_large(send: Send, limit: int) -> None:
    body = (b'{"error":"too_large","message":"request body is over the limit of ' + str(limit).encode()
            + b' bytes","fields":[]}')
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _services(settings: Settings) -> Services:
    db = Database(settings.dsn)
    overview = Overview(db)
    hub = Hub(db, settings.dsn, overview, push_interval=settings.push_interval, tick=settings.tick)
    exporter = Exporter(db, hub)
    app = settings.app or App(dsn=settings.dsn, max_payload_bytes=settings.max_payload_bytes)
    return Services(settings=settings, db=db, app=app, hub=hub, exporter=exporter, overview=overview)


def shutting_down(app: FastAPI) -> None:
    """Call when the server begins to stop: live streams end at once instead of holding the shutdown up."""
    svc: Services | None = getattr(app.state, "services", None)
    if svc is not None:
        svc.hub.close()


def create_app(settings: Settings) -> FastAPI:
    """The whole web application for ``settings``; background duties start with its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = _services(settings)
        await svc.db.open()
        await svc.exporter.start()
        background = [asyncio.create_task(svc.hub.run(), name="pgqueue-web-hub")]
        leader = Leader(settings, svc.db, svc.app) if settings.leader else None
        if leader is not None:
            background.append(asyncio.create_task(leader.run(), name="pgqueue-web-leader"))
        svc.extra["leader"] = leader
        relay = Relay(svc.app, settings.relay) if settings.relay is not None else None
        stop_relay = asyncio.Event()
        relaying = None
        if relay is not None:  # it stands for election with every other relay; one delivers
            relaying = asyncio.create_task(relay.run(stop_relay), name="pgqueue-web-relay")
        svc.extra["relay"] = relay
        app.state.services = svc
        try:
            yield
        finally:
            stop_relay.set()  # a graceful stop: deliveries in flight finish or are handed back
            if relay is not None:
                relay.stop()  # and wakes it at once, wherever it waits
            for task in background:
                task.cancel()
            await asyncio.gather(*background, *([relaying] if relaying else []), return_exceptions=True)
            with contextlib.suppress(Exception):
                await svc.db.close()
            await asyncio.to_thread(svc.app.close)

    app = FastAPI(
        title="pgqueue", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        openapi_url="/openapi.json",
        description="REST API of pgqueue: enqueue (with idempotency keys), inspect, cancel and retry jobs; "
                    "batches; cron schedules; dead letters; queues; workers; queue figures and charts; alerts. "
                    "Send `Authorization: Bearer <token>` (`pgqueue token create --scope read|enqueue|admin`). "
                    "Errors are JSON: "
                    "`{error, message, fields: [{field, location, message}]}`.",
    )
    install(app)
    api = APIRouter(prefix=API_PREFIX)
    for router in (jobs.router, jobs.dead_router, queues.router, workers.router, schedules.router,
                   batches.router, charts.router, alerts.router):
        api.include_router(router)

    @api.get("/whoami", response_model=Whoami, tags=["auth"], summary="The scopes of the caller",
             responses=responses(401))
    async def whoami(request: Request) -> Whoami:
        who = await principal(request)
        if who is None:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
        return Whoami(scopes=sorted(who.scopes), anonymous=who.token_id is None)

    @api.get("/events", include_in_schema=False)
    async def events(svc: Annotated[Services, Depends(require(TokenScope.READ))]) -> StreamingResponse:
        """Server-sent events: ``snapshot`` frames with queues, workers and firing alerts."""
        return StreamingResponse(svc.hub.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.include_router(api)
    app.include_router(metrics.router)
    app.include_router(dashboard.router)
    app.mount("/static", dashboard.static_files(), name="static")
    app.add_middleware(BodyLimit, limit=body_limit(settings))
    return app


def body_limit(settings: Settings) -> int:
    """The largest request body read (a 413 beyond it): room for a payload at the limit, JSON-escaped."""
    return max(4 * 1024 * 1024, 2 * settings.max_payload_bytes + 64 * 1024)

"""Fixtures of the web tests: a real ``pgqueue serve`` application (uvicorn on a free port, in a thread) on the
run's test database, API tokens of each scope, and an HTTP client."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from pgqueue import App
from pgqueue.web.access import Settings
from pgqueue.web.auth import create_token
from pgqueue.web.server import create_app, shutting_down


@dataclass
class Live:
    """A running web application: its base URL and its FastAPI app (``app.state.services`` inside)."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread
    app: Any

    @property
    def services(self) -> Any:
        return self.app.state.services

    def stop(self) -> None:
        shutting_down(self.app)
        self.server.should_exit = True
        self.thread.join(10)


def start_server(settings: Settings) -> Live:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    app = create_app(settings)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)

    def run() -> None:
        asyncio.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, name="pgqueue-web-test", daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        if not thread.is_alive():
            raise RuntimeError("the web server did not start")
        threading.Event().wait(0.01)
    return Live(url=f"http://127.0.0.1:{sock.getsockname()[1]}", server=server, thread=thread, app=app)


def clean_web_tables(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgqueue.alert_events, pgqueue.alert_rules, pgqueue.queue_depth_samples")


@pytest.fixture
def serve(app: App, dsn: str) -> Iterator[Callable[..., Live]]:
    """Start the web application with Settings(**overrides); stopped when the test ends."""
    clean_web_tables(dsn)
    started: list[Live] = []

    def start(**overrides: Any) -> Live:
        settings = Settings(dsn=dsn, **{"leader": False, **overrides})
        live = start_server(settings)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


@pytest.fixture
def tokens(app: App, dsn: str) -> dict[str, str]:
    """One token per scope, made after the app fixture emptied every table."""
    return {scope: create_token(dsn, f"test-{scope}", [scope]) for scope in ("read", "enqueue", "admin")}


@pytest.fixture
def web(serve: Callable[..., Live]) -> Live:
    return serve()


@pytest.fixture
def client(web: Live, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    """An admin client of the default web application."""
    with httpx.Client(base_url=web.url + "/api/v1", headers={"Authorization": f"Bearer {tokens['admin']}"},
                      timeout=10) as http:
        yield http


def as_scope(web: Live, tokens: dict[str, str], scope: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {tokens[scope]}"} if scope else {}
    return httpx.Client(base_url=web.url + "/api/v1", headers=headers, timeout=10)

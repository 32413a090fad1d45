"""Fixtures of the effectively-once tests: clean tables, a user table for handlers' writes, an HTTP receiver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgqueue import App
from tests.conftest import ROOT

APP = "tests.once.apps:app"

TABLES = ("pgqueue.jobs, pgqueue.finished_jobs, pgqueue.job_errors, pgqueue.workers, pgqueue.outbox, "
          "pgqueue.idempotency_keys, pgqueue.enqueue_keys, pgqueue.job_callbacks, public.once_effects")


def clean(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.once_effects (job_id bigint, n integer, attempt integer, "
                     "made_at timestamptz DEFAULT clock_timestamp())")
        conn.execute(f"TRUNCATE {TABLES}")


@pytest.fixture
def app(dsn: str) -> Iterator[App]:
    """An App on the test database with every queue, outbox and key table empty (and public.once_effects)."""
    clean(dsn)
    application = App(dsn=dsn)
    yield application
    application.close()


@dataclass
class Arrival:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A local HTTP endpoint that records every POST and answers ``status(arrival)`` (default 200)."""

    url: str = ""
    arrivals: list[Arrival] = field(default_factory=list)
    status: Callable[[Arrival], int] = lambda arrival: 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            if len(body) < length:
                return  # the sender died mid-request (a test killed it): nothing was delivered, nothing to record
            arrival = Arrival(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
            with box.lock:
                box.arrivals.append(arrival)
            code = box.status(arrival)
            try:
                self.send_response(code)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass  # the sender is gone (a test killed it mid-delivery)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default 5 drops concurrent connects, which then wait a second to retry

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    box.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="test-receiver", daemon=True)
    thread.start()
    yield box
    server.shutdown()
    server.server_close()
    thread.join(5)


def effects(db: psycopg.Connection[Any]) -> list[tuple[int, int]]:
    """(job_id, n) of every row handlers wrote to public.once_effects."""
    return [(int(a), int(b)) for a, b in db.execute("SELECT job_id, n FROM public.once_effects ORDER BY 1, 2")]


class Processes:
    """``pgqueue`` processes (workers, relays) of the test app, killed if still alive when the test ends."""

    def __init__(self, dsn: str, runlog: Path, env: dict[str, str] | None = None) -> None:
        self.dsn = dsn
        self.runlog = runlog
        self.extra_env = dict(env or {})
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, command: str, *args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PGQUEUE_DSN": self.dsn, "PGQUEUE_TEST_RUNLOG": str(self.runlog), **self.extra_env}
        output = self.runlog / f"{command}-{len(self.procs)}.out"
        with output.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pgqueue", command, APP, "--log-level", "warning",
                                     *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        return proc

    def alive(self) -> list[subprocess.Popen[str]]:
        return [p for p in self.procs if p.poll() is None]

    def output(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text()}" for f in sorted(self.runlog.glob("*.out")))

    def log_lines(self) -> list[str]:
        return [line for f in sorted(self.runlog.glob("*.log")) for line in f.read_text().splitlines()]

    def stop_all(self) -> None:
        for proc in self.alive():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(dsn: str, app: App, tmp_path: Path) -> Iterator[Processes]:
    pool = Processes(dsn, tmp_path)
    yield pool
    pool.stop_all()

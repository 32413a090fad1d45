"""The web layer's commands as a user runs them: `pgqueue token ...` and `pgqueue serve` in real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from subprocess import CompletedProcess
from typing import Any

import httpx
import psycopg
import pytest

from pgqueue.once.relay import LEADER_LOCK
from tests.acceptance.conftest import run_cli
from tests.acceptance.test_cli import assert_one_line_error
from tests.conftest import ROOT, wait_for
from tests.web.conftest import Live

Cli = Callable[..., CompletedProcess[str]]


@pytest.fixture
def cli(dsn: str) -> Cli:
    return lambda *args, **kw: run_cli(dsn, *args, **kw)


def test_token_create_prints_the_token_alone_on_the_last_line(cli: Cli, web: Live) -> None:
    result = cli("token", "create", "--scope", "admin", "--name", "ops")
    assert result.returncode == 0, result.stderr
    token = result.stdout.splitlines()[-1]
    assert token.startswith("pgq_") and token.strip() == token and len(token) > 40
    me = httpx.get(web.url + "/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}).json()
    assert me == {"scopes": ["admin"], "anonymous": False}
    listing = cli("token", "list").stdout
    assert "ops" in listing and token[:12] in listing and token not in listing
    token_id = next(line.split()[0] for line in listing.splitlines() if " ops " in line)
    assert cli("token", "revoke", token_id).returncode == 0
    assert httpx.get(web.url + "/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert_one_line_error(cli("token", "revoke", token_id), "no live token")
    assert_one_line_error(cli("token", "create", "--scope", "root"), "invalid scope root")
    bad = cli("token", "create")
    assert bad.returncode == 2 and "--scope" in bad.stderr


@pytest.fixture
def served(dsn: str) -> Iterator[Callable[..., tuple[subprocess.Popen[str], str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen([sys.executable, "-m", "pgqueue", "serve", "--port", "0", "--log-level", "warning",
                                 *args], cwd=ROOT, env={**os.environ, "PGQUEUE_DSN": dsn},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "http://" in line, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        url = line.split("http://", 1)[1].split("/", 1)[0]
        return proc, "http://" + url

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # waits, and closes its pipes


def relay_leaders(db: psycopg.Connection[Any]) -> int:
    row = db.execute("""SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                        AND (classid::bigint << 32 | objid::bigint) = %s""", (LEADER_LOCK,)).fetchone()
    return int(row[0]) if row else 0


def test_serve_runs_one_process_and_stops_cleanly(served: Callable[..., tuple[subprocess.Popen[str], str]],
                                                  app: object, db: psycopg.Connection[Any]) -> None:
    proc, url = served("--local-read", "--public-metrics", "--relay")
    wait_for(lambda: relay_leaders(db) == 1, timeout=10, message="the relay of --relay to lead")
    assert httpx.get(url + "/openapi.json").json()["info"]["title"] == "pgqueue"
    assert "<title>pgqueue</title>" in httpx.get(url + "/").text
    assert "pgqueue API" in httpx.get(url + "/docs").text
    assert httpx.get(url + "/api/v1/queues").status_code == 200  # --local-read
    assert "pgqueue_workers" in httpx.get(url + "/metrics").text  # --public-metrics
    # A dashboard holding its event stream open must not hold the shutdown up.
    opened = threading.Event()

    def listen() -> None:
        try:
            with httpx.stream("GET", url + "/api/v1/events", timeout=None) as stream:
                for _ in stream.iter_lines():
                    opened.set()
        except httpx.HTTPError:
            pass

    threading.Thread(target=listen, daemon=True).start()
    assert opened.wait(10)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert "Traceback" not in proc.communicate()[1]


def test_serve_errors_are_one_line(cli: Cli, fresh_database: Callable[[], str], app: object) -> None:
    blank = fresh_database()
    result = run_cli(blank, "serve", "--port", "0")
    assert_one_line_error(result, "pgqueue migrate")
    assert result.returncode == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = cli("serve", "--port", str(taken.getsockname()[1]))
    assert_one_line_error(busy, "cannot listen", "--port")
    assert busy.returncode == 2


def test_serve_without_the_web_extra_names_it(dsn: str) -> None:
    code = "import sys; sys.modules['uvicorn'] = None; from pgqueue.cli import main; sys.exit(main(['serve']))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PGQUEUE_DSN": dsn},
                            capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, "pip install 'pgqueue[web]'", "uvicorn")
    assert result.returncode == 1

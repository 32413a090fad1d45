"""Tokens and scopes: no endpoint that changes state works without the right scope, nothing is written when
a request is refused, tokens are stored hashed, and --local-read lets localhost read and nothing more."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from pgqueue.errors import ValidationError
from pgqueue.web.auth import create_token, list_tokens, revoke_token
from tests.web.conftest import Live, as_scope

PATH_VALUES = {"job_id": "1", "worker_id": str(uuid.uuid4()), "rule_id": "1", "queue": "q", "name": "nightly",
               "batch_id": "1"}


# The writes an enqueue-scoped token may make; every other one needs admin.
ENQUEUE_SCOPE = {("POST", "/jobs"), ("POST", "/batches")}


def operations(web: Live) -> list[tuple[str, str]]:
    spec = httpx.get(web.url + "/openapi.json").json()
    out = []
    for path, methods in spec["paths"].items():
        concrete = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m[1]], path)
        out += [(method.upper(), concrete.removeprefix("/api/v1")) for method in methods]
    return out


def snapshot(db: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = db.execute("""SELECT (SELECT count(*) FROM pgqueue.jobs), (SELECT count(*) FROM pgqueue.finished_jobs),
                               (SELECT count(*) FROM pgqueue.alert_rules),
                               (SELECT count(*) FROM pgqueue.workers
                                WHERE requested_concurrency IS NOT NULL OR drain_requested_at IS NOT NULL)"""
                     ).fetchone()
    assert row is not None
    return tuple(row)


def test_every_change_of_state_needs_its_scope(web: Live, tokens: dict[str, str], db: psycopg.Connection[Any]) -> None:
    ops = operations(web)
    writes = [(m, p) for m, p in ops if m != "GET" and p != "/whoami"]
    assert len(writes) >= 8
    db.execute("""INSERT INTO pgqueue.workers (id, host, pid, concurrency) VALUES (%s, 'h', 1, 2)""",
               (PATH_VALUES["worker_id"],))
    before = snapshot(db)
    body = {"task": "t", "ids": [1], "concurrency": 3, "name": "r", "kind": "no_live_worker", "threshold": 1,
            "webhook_url": "http://127.0.0.1:9/", "enabled": False}
    for scope in (None, "read", "enqueue"):
        with as_scope(web, tokens, scope) as http:
            for method, path in writes:
                if scope == "enqueue" and (method, path) in ENQUEUE_SCOPE:
                    continue
                response = http.request(method, path, json=body)
                expected = 401 if scope is None else 403
                assert response.status_code == expected, (scope, method, path, response.text)
                assert response.json()["error"] in ("unauthorized", "forbidden")
    assert snapshot(db) == before
    with as_scope(web, tokens, "enqueue") as http:
        for method, path in ops:
            if method == "GET" and path != "/whoami":
                assert http.get(path).status_code == 403, path
        assert http.post("/jobs", json={"task": "t"}).status_code == 201
        assert http.post("/batches", json={"name": "b", "jobs": [{"task": "t"}]}).status_code == 201
    with as_scope(web, tokens, "read") as http:
        assert http.get("/jobs").status_code == 200
        assert http.get("/whoami").json() == {"scopes": ["read"], "anonymous": False}


@pytest.mark.parametrize("header", ["Bearer pgq_nope", "Bearer", "Basic dXNlcjpwdw==", "pgq_x", "Bearer " + "x" * 500])
def test_unknown_or_malformed_tokens_are_refused(web: Live, header: str) -> None:
    response = httpx.get(web.url + "/api/v1/jobs", headers={"Authorization": header})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_tokens_are_stored_hashed_and_can_be_revoked(web: Live, dsn: str, db: psycopg.Connection[Any]) -> None:
    token = create_token(dsn, "short-lived", ["read", "read"])
    stored = db.execute("SELECT token_hash, prefix, scopes FROM pgqueue.api_tokens WHERE name = 'short-lived'"
                        ).fetchone()
    assert stored is not None
    assert bytes(stored[0]) == hashlib.sha256(token.encode()).digest() and stored[2] == ["read"]
    assert token.startswith(stored[1]) and token not in str(db.execute("SELECT * FROM pgqueue.api_tokens").fetchall())
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(web.url + "/api/v1/queues", headers=headers).status_code == 200
    (info,) = [t for t in list_tokens(dsn) if t.name == "short-lived"]
    assert info.last_used_at is not None
    assert revoke_token(dsn, info.id) and not revoke_token(dsn, info.id)
    assert httpx.get(web.url + "/api/v1/queues", headers=headers).status_code == 401
    with pytest.raises(ValidationError, match="invalid scope"):
        create_token(dsn, "x", ["superuser"])
    with pytest.raises(ValidationError, match="invalid scope"):
        create_token(dsn, "x", [])


def test_local_read_lets_localhost_read_but_never_write(serve: Callable[..., Live],
                                                        db: psycopg.Connection[Any]) -> None:
    web = serve(local_read=True)
    with httpx.Client(base_url=web.url + "/api/v1") as http:
        assert http.get("/whoami").json() == {"scopes": ["read"], "anonymous": True}
        assert http.get("/jobs").status_code == 200
        assert http.get("/queues").status_code == 200
        assert http.post("/jobs", json={"task": "t"}).status_code == 401
        assert http.post("/dead-letters/retry", json={"all": True}).status_code == 401
    assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)


def test_metrics_need_read_unless_public(serve: Callable[..., Live], tokens: dict[str, str]) -> None:
    closed, public = serve(), serve(public_metrics=True)
    assert httpx.get(closed.url + "/metrics").status_code == 401
    assert httpx.get(closed.url + "/metrics", headers={"Authorization": f"Bearer {tokens['enqueue']}"}
                     ).status_code == 403
    assert httpx.get(closed.url + "/metrics", headers={"Authorization": f"Bearer {tokens['read']}"}
                     ).status_code == 200
    assert httpx.get(public.url + "/metrics").status_code == 200

"""Live updates and the control channel: a change reaches a listening browser within half a second, a flood of
notifications is batched, and workers obey requests to change concurrency or to drain."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import psycopg

from pgqueue import App, testing
from tests.conftest import wait_for
from tests.web.conftest import Live


class Snapshots:
    """Reads /api/v1/events on a thread; keeps every snapshot with the monotonic time it arrived."""

    def __init__(self, web: Live, token: str) -> None:
        self.received: list[tuple[float, dict[str, Any]]] = []
        self._url = web.url + "/api/v1/events"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with httpx.stream("GET", self._url, headers=self._headers, timeout=None) as response:
                event = None
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "snapshot":
                        self.received.append((time.monotonic(), json.loads(line[6:])))
        except httpx.HTTPError:
            pass  # the server stopped at the end of the test

    def queued(self, snapshot: dict[str, Any], queue: str) -> int:
        return next((q["queued"] for q in snapshot["queues"] if q["queue"] == queue), 0)

    def first_after(self, since: float, condition: Any) -> float | None:
        for at, snap in self.received:
            if at >= since and condition(snap):
                return at
        return None


def test_an_enqueue_reaches_the_browser_within_half_a_second(web: Live, client: httpx.Client,
                                                            tokens: dict[str, str]) -> None:
    events = Snapshots(web, tokens["read"])
    wait_for(lambda: events.received, message="the first snapshot")
    latencies = []
    for n in range(1, 6):
        before = time.monotonic()
        client.post("/jobs", json={"task": "t.live", "queue": "live"})
        seen = wait_for(lambda n=n, before=before: events.first_after(before,
                                                                      lambda s: events.queued(s, "live") == n),
                        timeout=5, message=f"a snapshot with {n} queued")
        latencies.append(seen - before)
        time.sleep(0.3)
    print(f"enqueue-to-browser latency: max {max(latencies) * 1000:.0f} ms, "
          f"mean {sum(latencies) / len(latencies) * 1000:.0f} ms")
    assert max(latencies) < 0.5


def test_a_flood_of_notifications_is_batched(web: Live, tokens: dict[str, str], db: psycopg.Connection[Any]) -> None:
    events = Snapshots(web, tokens["read"])
    wait_for(lambda: events.received, message="the first snapshot")
    hub = web.services.hub
    notified = hub.notifications
    start = time.monotonic()
    for _ in range(400):  # 400 statements, 400 notifications
        db.execute("SELECT pgqueue.enqueue('t.flood', '{}', queue => 'flood') FROM generate_series(1, 5)")
    wait_for(lambda: events.received and events.queued(events.received[-1][1], "flood") == 2000, timeout=10,
             message="the final count")
    elapsed = time.monotonic() - start
    pushed = [at for at, _ in events.received if at >= start]
    assert hub.notifications - notified >= 400
    # At most one push per 250 ms (plus the one in flight when the flood began).
    assert len(pushed) <= elapsed / 0.25 + 2, (len(pushed), elapsed)


def test_workers_change_concurrency_and_drain_on_request(app: App, client: httpx.Client) -> None:
    running, peak = 0, 0
    lock = threading.Lock()

    @app.task(name="t.hold")
    def hold() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.6)
        with lock:
            running -= 1

    with testing.running_worker(app, concurrency=1, lease=1.5) as worker:
        (listed,) = client.get("/workers").json()
        assert listed["id"] == str(worker.id) and listed["concurrency"] == 1
        accepted = client.post(f"/workers/{worker.id}/concurrency", json={"concurrency": 3})
        assert accepted.status_code == 202 and accepted.json()["requested_concurrency"] == 3
        wait_for(lambda: worker.config.concurrency == 3, timeout=5, message="the new concurrency")
        shown = wait_for(lambda: (w := client.get("/workers").json()[0])["requested_concurrency"] is None and w,
                         timeout=5, message="the request to be taken")
        assert shown["concurrency"] == 3
        jobs = hold.enqueue_many([(), (), ()])  # one statement: one claim takes all three if it may
        wait_for(lambda: all(app.job(j.id).state.value == "succeeded" for j in jobs), timeout=10)
        assert peak == 3

        assert client.post(f"/workers/{worker.id}/drain").status_code == 202
        wait_for(lambda: not client.get("/workers").json(), timeout=10, message="the worker to drain and leave")

    bad = client.post("/workers/not-a-uuid/drain")
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "worker_id"
    assert client.post(f"/workers/{worker.id}/concurrency", json={"concurrency": 2}).status_code == 404
    assert client.post(f"/workers/{worker.id}/drain").status_code == 404
    for body, field in [({}, "concurrency"), ({"concurrency": 0}, "concurrency"), ({"concurrency": "3"}, "concurrency"),
                        ({"concurrency": 2.5}, "concurrency"), ({"concurrency": 2, "drain": True}, "drain")]:
        response = client.post(f"/workers/{worker.id}/concurrency", json=body)
        assert response.status_code == 422 and response.json()["fields"][0]["field"] == field, body

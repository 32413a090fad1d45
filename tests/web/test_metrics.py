"""Figures read from the database: Prometheus /metrics (parsed as the text format), and the JSON series the
dashboard's charts draw (throughput, outcomes per queue, run-time histogram and percentiles, depth)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from pgqueue import App, Fatal, testing
from pgqueue.queries import q
from tests.conftest import wait_for
from tests.web.conftest import Live


def scrape(web: Live, token: str) -> dict[str, list[Any]]:
    text = httpx.get(web.url + "/metrics", headers={"Authorization": f"Bearer {token}"}).text
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    matches = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return float(matches[0])


def test_prometheus_metrics(app: App, web: Live, tokens: dict[str, str], db: psycopg.Connection[Any]) -> None:
    @app.task(name="t.ok", queue="work")
    def ok() -> None: ...

    @app.task(name="t.bad", queue="work", max_attempts=1)
    def bad() -> None:
        raise Fatal("no")

    ok.using(queue="later", delay=3600).enqueue()
    with testing.running_worker(app, concurrency=2, lease=1.5) as worker:
        jobs = [ok.enqueue() for _ in range(5)] + [bad.enqueue()]
        wait_for(lambda: all(app.job(j.id).state.finished for j in jobs), message="the jobs to finish")
        # A job whose worker vanished: the running worker's reaper takes it back.
        db.execute("""INSERT INTO pgqueue.jobs (queue, task, state, attempt, worker_id, started_at, lease_expires_at)
                      VALUES ('work', 't.ok', 'running', 1, gen_random_uuid(), now(), now() - interval '1 s')""")
        wait_for(lambda: worker.maintenance.reclaimed >= 1, message="the lease reclaim")
        wid = str(worker.id)

        def synced() -> dict[str, list[Any]] | None:
            samples = scrape(web, tokens["read"])
            counted = [s for s in samples.get("pgqueue_lease_reclaims_total", []) if s.labels["worker"] == wid]
            histogram = [s for s in samples.get("pgqueue_job_duration_seconds_count", [])
                         if s.labels["task"] == "t.ok" and s.value >= 6]
            return samples if counted and counted[0].value >= 1 and histogram else None

        samples = wait_for(synced, timeout=10, message="worker counters and the histogram to catch up")
    assert value(samples, "pgqueue_jobs", queue="later", state="scheduled") == 1
    assert value(samples, "pgqueue_jobs", queue="work", state="dead") == 1
    assert value(samples, "pgqueue_workers", state="running") == 1
    assert value(samples, "pgqueue_jobs_started_total", worker=wid) >= 7
    assert value(samples, "pgqueue_jobs_succeeded_total", worker=wid) >= 6
    assert value(samples, "pgqueue_jobs_failed_total", worker=wid) == 1
    assert value(samples, "pgqueue_jobs_dead_total", worker=wid) == 1
    assert value(samples, "pgqueue_notify_wakeups_total", worker=wid) >= 1
    assert value(samples, "pgqueue_oldest_queued_age_seconds", queue="work") == 0
    buckets = [s for s in samples["pgqueue_job_duration_seconds_bucket"] if s.labels["task"] == "t.ok"]
    assert [s.value for s in buckets] == sorted(s.value for s in buckets)  # cumulative
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == value(
        samples, "pgqueue_job_duration_seconds_count", task="t.ok")
    assert value(samples, "pgqueue_serve_notifications_total") >= 1


def _finished(db: psycopg.Connection[Any], rows: list[tuple[int, str, str, str, float, float]]) -> None:
    """(id, queue, task, state, seconds ago it finished, run time in seconds)"""
    for id_, queue, task, state, ago, took in rows:
        db.execute("""INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt,
                      max_attempts, scheduled_for, created_at, started_at, finished_at)
                      VALUES (%s, %s, %s, '[]', '{}', 0, %s, 1, 3, now(), now(),
                              now() - make_interval(secs => %s + %s), now() - make_interval(secs => %s))""",
                   (id_, queue, task, state, ago, took, ago))


def test_chart_series(client: httpx.Client, db: psycopg.Connection[Any]) -> None:
    rows = [(i, "mail", "t.send", "succeeded", 100 + i, 0.01 * i) for i in range(1, 101)]
    rows += [(500, "img", "t.resize", "dead", 1000, 2.0), (501, "img", "t.resize", "succeeded", 7200, 3.0)]
    _finished(db, rows)
    db.execute("""INSERT INTO pgqueue.job_errors (job_id, attempt, task, queue, kind, error_type, message, failed_at)
                  VALUES (500, 1, 't.resize', 'img', 'error', 'E', 'x', now() - interval '1000 s')""")

    tp = client.get("/metrics/throughput").json()
    assert tp["step_seconds"] == 10 and tp["queue"] is None
    assert sum(p["succeeded"] for p in tp["points"]) == 100  # the one from two hours ago is outside the window
    assert sum(p["dead"] for p in tp["points"]) == 1 and sum(p["failed"] for p in tp["points"]) == 1
    only_img = client.get("/metrics/throughput", params={"queue": "img"}).json()
    assert sum(p["succeeded"] for p in only_img["points"]) == 0

    outcomes = {o["queue"]: o for o in client.get("/metrics/outcomes").json()}
    assert outcomes["mail"] == {"queue": "mail", "succeeded": 100, "failed": 0, "dead": 0}
    assert outcomes["img"] == {"queue": "img", "succeeded": 0, "failed": 1, "dead": 1}

    durations = client.get("/metrics/durations", params={"task": "t.send"}).json()
    assert durations["count"] == 100
    assert abs(durations["p50"] - 0.505) < 0.01 and abs(durations["p99"] - 0.9901) < 0.01
    assert sum(b["count"] for b in durations["buckets"]) == 100 and durations["buckets"][-1]["le"] is None
    by_bound = {b["le"]: b["count"] for b in durations["buckets"]}
    assert by_bound[0.01] == 0 and by_bound[0.025] == 2 and by_bound[1.0] == 50  # 0.01-0.02; 0.5-0.99 (and 1.0)

    day = client.get("/metrics/durations", params={
        "from": (datetime.now().astimezone() - timedelta(hours=3)).isoformat(), "queue": "img"}).json()
    assert day["count"] == 1 and day["p50"] == 3.0

    db.execute("INSERT INTO pgqueue.jobs (queue, task) VALUES ('mail', 't.send'), ('mail', 't.send')")
    db.execute(q("web_depth_sample"))
    depth = client.get("/metrics/depth", params={"queue": "mail"}).json()
    assert depth[-1]["queued"] == 2
    month = client.get("/metrics/throughput", params={"from": (datetime.now().astimezone() - timedelta(days=40)
                                                               ).isoformat()}).json()
    assert month["step_seconds"] == 7200 and len(month["points"]) <= 500

    now = datetime.now().astimezone()
    for params, field in [({"from": now.isoformat(), "to": (now - timedelta(hours=1)).isoformat()}, "from"),
                          ({"from": "1700000000"}, "from"),
                          ({"from": "yesterday"}, "from"), ({"to": "2030-01-01T00:00:00"}, "to"),
                          ({"queue": "a b"}, "queue")]:
        response = client.get("/metrics/throughput", params=params)
        assert response.status_code == 422 and response.json()["fields"][0]["field"] == field, params


def test_json_metrics_mirror_queues_and_workers(client: httpx.Client) -> None:
    client.post("/jobs", json={"task": "t.x", "queue": "mirrored"})
    ignore_age = [{**q, "oldest_queued_age": None} for q in client.get("/metrics/queues").json()]
    assert ignore_age == [{**q, "oldest_queued_age": None} for q in client.get("/queues").json()]
    assert ignore_age[0]["queue"] == "mirrored"
    assert client.get("/metrics/workers").json() == []

"""``pgqueue demo`` / ``make demo``: a few hundred jobs of several kinds through real worker processes.

Some jobs fail and are retried, a few end in the dead-letter queue, some are delayed, some are urgent, a few
are cancelled before they run; a live progress line shows them move and a per-state summary ends the run.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

from pgqueue.app import App
from pgqueue.migrate import migrate
from pgqueue.task import Call, EnqueueOptions

app = App()


@app.task(name="demo.resize_image", queue="images")
def resize_image(image_id: int, width: int) -> dict[str, object]:
    time.sleep(random.uniform(0.005, 0.03))
    return {"image": image_id, "thumbnail": f"/thumbs/{image_id}-{width}.jpg"}


@app.task(name="demo.send_email", queue="emails")
async def send_email(to: str, subject: str) -> dict[str, str]:
    await asyncio.sleep(random.uniform(0.01, 0.04))
    return {"to": to, "status": "sent"}


@app.task(name="demo.charge_card", queue="payments", max_attempts=4, retry_base=0.2, retry_cap=1.0)
def charge_card(order_id: int, cents: int) -> dict[str, int]:
    if random.random() < 0.35:
        raise ConnectionError("payment gateway timed out")
    return {"order": order_id, "charged": cents}


@app.task(name="demo.sync_inventory", queue="inventory", max_attempts=3, retry_base=0.1, retry_cap=0.5)
def sync_inventory(sku: str) -> None:
    raise ValueError(f"supplier feed for {sku} is malformed")


@app.task(name="demo.page_oncall", queue="alerts", priority=10)
async def page_oncall(alert: str) -> str:
    await asyncio.sleep(0.005)
    return f"paged for {alert}"


@app.task(name="demo.nightly_report", queue="reports")
def nightly_report(day: str) -> dict[str, str]:
    time.sleep(0.02)
    return {"report": f"/reports/{day}.pdf"}


def enqueue_sample(total: int) -> list[int]:
    """Enqueue ``total`` jobs of every kind; returns their ids."""
    rng = random.Random(7)
    share = max(total // 10, 1)
    now = datetime.now(timezone.utc)
    ids: list[int] = []
    ids += [j.id for j in resize_image.enqueue_many([[i, rng.choice([128, 256, 512])] for i in range(share * 3)])]
    ids += [j.id for j in send_email.enqueue_many(
        [{"to": f"user{i}@example.com", "subject": "Welcome"} for i in range(share * 3)])]
    ids += [j.id for j in charge_card.enqueue_many([[1000 + i, rng.randint(100, 9999)] for i in range(share * 2)])]
    ids += [j.id for j in sync_inventory.enqueue_many([[f"SKU-{i}"] for i in range(max(share // 5, 2))])]
    ids += [j.id for j in page_oncall.enqueue_many([[f"disk full on db{i}"] for i in range(max(share // 3, 2))])]
    reports = nightly_report.enqueue_many([
        Call((f"2026-11-{(i % 28) + 1:02d}",), {}, EnqueueOptions(run_at=now + timedelta(seconds=2 + i % 3)))
        for i in range(total - len(ids))
    ])
    ids += [j.id for j in reports]
    for job in reports[:3]:  # changed our minds: these never run
        app.cancel(job.id)
    return ids


def _counts(ids: list[int]) -> Counter[str]:
    return Counter({state: int(n) for state, n in app._fetch("job_count_by_state", {"ids": ids})})


def _progress_line(counts: Counter[str], total: int, elapsed: float) -> str:
    finished = counts["succeeded"] + counts["dead"] + counts["cancelled"]
    width = 30
    filled = int(width * finished / total)
    bar = "#" * filled + "." * (width - filled)
    parts = " ".join(f"{s}={counts[s]}" for s in ("scheduled", "queued", "running", "succeeded", "dead",
                                                  "cancelled"))
    return f"[{bar}] {finished}/{total} {elapsed:4.1f}s  {parts}"


def run_demo(dsn: str, *, jobs: int = 300, processes: int = 2, timeout: float = 50.0) -> Counter[str]:
    app._dsn = dsn
    migrate(dsn)
    print(f"pgqueue demo: {jobs} jobs, {processes} worker processes, database {_where(dsn)}")
    ids = enqueue_sample(jobs)
    env = {**os.environ, "PGQUEUE_DSN": dsn}
    command = [sys.executable, "-m", "pgqueue", "work", "pgqueue.demo:app", "--concurrency", "16",
               "--promote-interval", "0.1", "--poll-interval", "1", "--log-level", "error"]
    workers = [subprocess.Popen(command, env=env) for _ in range(processes)]
    start = time.monotonic()
    counts: Counter[str] = Counter()
    tty = sys.stdout.isatty()
    last_print = 0.0
    try:
        while time.monotonic() - start < timeout:
            counts = _counts(ids)
            elapsed = time.monotonic() - start
            done = counts["succeeded"] + counts["dead"] + counts["cancelled"] == len(ids)
            if tty or done or elapsed - last_print >= 1.0:
                print(("\r" if tty else "") + _progress_line(counts, len(ids), elapsed), end="" if tty else "\n",
                      flush=True)
                last_print = elapsed
            if done:
                break
            if any(w.poll() is not None for w in workers):
                raise SystemExit("\na demo worker exited unexpectedly; see its output above")
            time.sleep(0.2)
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=15)
            except subprocess.TimeoutExpired:
                w.kill()
    if tty:
        print()
    _summary(ids, counts, time.monotonic() - start)
    if counts["succeeded"] + counts["dead"] + counts["cancelled"] != len(ids):
        raise SystemExit(f"demo did not finish within {timeout:.0f}s")
    app.close()
    return counts


def _summary(ids: list[int], counts: Counter[str], elapsed: float) -> None:
    rows = app._fetch("demo_summary", {"ids": ids})
    print(f"\nfinished in {elapsed:.1f}s. Per state:")
    for state in ("succeeded", "dead", "cancelled", "scheduled", "queued", "running"):
        if counts[state]:
            print(f"  {state:<10} {counts[state]:>6}")
    print("\nPer task:               jobs  succeeded  dead  cancelled  retried  mean attempts")
    for task, total, ok, dead, cancelled, retried, mean_attempts in rows:
        print(f"  {task:<20} {total:>6} {ok:>10} {dead:>5} {cancelled:>10} {retried:>8} {mean_attempts:>14.2f}")
    print("\nSee them: pgqueue stats | pgqueue jobs list | pgqueue dlq list | pgqueue jobs show <id>")


def _where(dsn: str) -> str:
    from pgqueue.connection import describe

    return describe(dsn)

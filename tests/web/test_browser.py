"""End to end in a real browser: Playwright drives Debian's Chromium (/usr/bin/chromium, installed by
`make install`) against a running server. Screenshots are saved in test-artifacts/ for people to look at."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from pgqueue import App, JobState, testing
from tests.conftest import ROOT, wait_for
from tests.web.conftest import Live

CHROMIUM = os.environ.get("PGQUEUE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
NO_TIME = "\u2013"  # what the dashboard shows for no time (an en dash)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium (or set PGQUEUE_CHROMIUM)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1440, "height": 900})
        try:
            yield context
        finally:
            context.close()


def sign_in(page: Page, web: Live, token: str) -> None:
    page.goto(web.url + "/")
    expect(page.locator("#token-dialog")).to_be_visible()
    page.fill("#token-input", token)
    page.click("#token-form button.primary")
    expect(page.locator("#who")).to_have_text("admin")
    expect(page.locator("#live-text")).to_have_text("live")


def bury(db: psycopg.Connection[Any], job_id: int) -> None:
    db.execute("""INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt,
                  max_attempts, scheduled_for, created_at, started_at, finished_at, error_type)
                  VALUES (%s, 'e2e', 'shop.charge', '[]', '{"order": 7}', 0, 'dead', 3, 3, now(), now(), now(),
                          now(), 'CardDeclined')""", (job_id,))
    db.execute("""INSERT INTO pgqueue.job_errors (job_id, attempt, task, queue, kind, error_type, message, traceback)
                  VALUES (%s, 3, 'shop.charge', 'e2e', 'error', 'CardDeclined', 'the bank said no',
                          'Traceback (most recent call last):\n  File "shop.py", line 9\nCardDeclined')""", (job_id,))


def test_counts_change_live_and_a_dead_job_is_retried_by_clicking(
        browser: BrowserContext, serve: Callable[..., Live], tokens: dict[str, str], app: App,
        db: psycopg.Connection[Any]) -> None:
    web = serve(leader=True, sample_interval=0.5)
    page = browser.new_page()
    sign_in(page, web, tokens["admin"])
    with httpx.Client(base_url=web.url + "/api/v1", headers={"Authorization": f"Bearer {tokens['admin']}"}) as api:
        api.post("/jobs", json={"task": "shop.charge", "queue": "e2e", "kwargs": {"order": 1}})
        queued = page.locator('#queues tr[data-queue="e2e"] td[data-field="queued"]')
        expect(queued).to_have_text("1")
        before = time.monotonic()
        api.post("/jobs", json={"task": "shop.charge", "queue": "e2e", "kwargs": {"order": 2}})
        expect(queued).to_have_text("2", timeout=5000)
        seen = time.monotonic() - before
    print(f"browser saw the new count {seen * 1000:.0f} ms after the API answered")
    assert seen < 1.0
    page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

    bury(db, 424242)
    page.click('nav a[data-tab="dead"]')
    row = page.locator('#dead tr[data-job="424242"]')
    expect(row).to_contain_text("CardDeclined")
    row.locator("td", has_text="shop.charge").click()  # the detail panel, with the traceback
    expect(page.locator("#dead-detail")).to_contain_text("the bank said no")
    page.screenshot(path=str(ARTIFACTS / "dead-letters.png"), full_page=True)
    row.locator("button[data-retry]").click()
    expect(page.locator("#toast")).to_contain_text("queued again")
    assert app.job(424242).state is JobState.QUEUED
    expect(page.locator('#dead tr[data-job="424242"]')).to_have_count(0)


def test_jobs_detail_and_worker_concurrency_from_the_page(
        browser: BrowserContext, web: Live, tokens: dict[str, str], app: App) -> None:
    @app.task(name="t.ok", queue="e2e")
    def ok(n: int) -> dict[str, int]:
        return {"doubled": n * 2}

    page = browser.new_page()
    sign_in(page, web, tokens["admin"])
    with testing.running_worker(app, concurrency=2, lease=1.5) as worker:
        job = ok.enqueue(21)
        wait_for(lambda: app.job(job.id).state is JobState.SUCCEEDED)
        page.click('nav a[data-tab="jobs"]')
        page.locator(f'#jobs tr[data-job="{job.id}"]').click()
        detail = page.locator("#job-detail")
        expect(detail).to_contain_text('"doubled": 42')
        expect(detail).to_contain_text("succeeded")
        page.screenshot(path=str(ARTIFACTS / "job-detail.png"), full_page=True)

        page.click('nav a[data-tab="workers"]')
        field = page.locator(f'input[data-concurrency="{worker.id}"]')
        expect(field).to_have_value("2")
        field.fill("5")
        page.locator(f'button[data-set-concurrency="{worker.id}"]').click()
        wait_for(lambda: worker.config.concurrency == 5, timeout=10, message="the worker to apply concurrency 5")
        expect(page.locator(f'#workers tr[data-worker="{worker.id}"]')).to_contain_text("/ 5")
        page.screenshot(path=str(ARTIFACTS / "workers.png"), full_page=True)


def test_schedules_panel_shows_ticks_and_pauses(browser: BrowserContext, web: Live, tokens: dict[str, str],
                                                app: App) -> None:
    with httpx.Client(base_url=web.url + "/api/v1", headers={"Authorization": f"Bearer {tokens['admin']}"}) as api:
        api.post("/schedules", json={"name": "nightly-report", "cron": "0 3 * * *", "task": "t.report",
                                     "timezone": "Europe/Paris", "missed": "all"})
        page = browser.new_page()
        sign_in(page, web, tokens["admin"])
        page.click('nav a[data-tab="schedules"]')
        row = page.locator('#schedules tr[data-schedule="nightly-report"]')
        expect(row).to_contain_text("0 3 * * *")
        expect(row).to_contain_text("Europe/Paris")
        expect(row).to_contain_text("run every one")
        expect(row.locator('td[data-field="state"]')).to_have_text("active")
        expect(row.locator('td[data-field="next"]')).not_to_have_text(NO_TIME)  # a time is shown
        page.screenshot(path=str(ARTIFACTS / "schedules.png"), full_page=True)
        row.locator("button[data-pause-schedule]").click()
        expect(row.locator('td[data-field="state"]')).to_have_text("paused")
        expect(row.locator('td[data-field="next"]')).to_have_text(NO_TIME)
        assert api.get("/schedules").json()[0]["paused"] is True

"""The web console in headless Chromium: real clicks on a real dev server.

`python -m shared.dev` runs in a subprocess on a database of this module's own, with its local
pipeline calling back over HTTP; Playwright drives Debian's chromium (never a browser build of
its own). Run with `scripts/test-browser` (installs requirements-browser.txt) or
`pytest tests/browser`. Screenshots (each test's last screen, and the click-through while a job
runs) are saved under tests/browser/artifacts/, kept out of git.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from shared.dev.embedded import with_database
from tests.dev_server import DevServer
from tests.helpers import create_database, drop_database

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TIMEOUT_MS = 15_000
START_BALANCE = 1000  # the dev server's demo credits


@pytest.fixture(scope="module")
def database(server_url: str, template_db: str) -> Iterator[str]:
    name = f"test_browser_{secrets.token_hex(4)}"
    create_database(server_url, name, template=template_db)
    url = with_database(server_url, name)
    # Kinds the demo seed lacks: one the demo user cannot afford, one whose pipeline is missing.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "insert into public.job_kinds (kind, cost, description) values ('film', 5000,"
            " 'costs more than the demo user has')"
        )
        # generate answers 503 pipeline_unavailable: the dev server has no PIPELINE_URL
        conn.execute(
            "insert into public.job_kinds (kind, cost, pipeline, description)"
            " values ('remote', 7, 'webhook', 'runs on a webhook pipeline nobody configured')"
        )
        # generate answers 429 too_many_active_jobs for a second one: no worker claims the first
        conn.execute(
            "insert into public.job_kinds (kind, cost, pipeline, max_active_per_user, description)"
            " values ('batch', 3, 'queue', 1, 'waits for a queue worker; one at a time per user')"
        )
    try:
        yield url
    finally:
        drop_database(server_url, name)


@pytest.fixture(scope="module")
def dev_server(database: str) -> Iterator[DevServer]:
    data_dir = Path(tempfile.mkdtemp(prefix="credit-jobs-browser-"))
    server = DevServer(data_dir, DATABASE_URL=database)
    try:
        yield server
    finally:
        server.kill()
        print(server.log())  # shown by pytest when a test failed
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM_PATH)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, dev_server: DevServer, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(dev_server.base_url + "/")
    yield page
    screenshot(page, request.node.name)
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    print(f"screenshot: {path}")
    return path


def sign_in(page: Page) -> None:
    page.click("#signin-demo")
    expect(page.locator("#who")).to_have_text("demo@credit-jobs.local")


def start(page: Page, kind: str) -> str:
    """Click the kind's button; the id of the job row that appears on top."""
    before = page.locator("#jobs tbody tr").count()
    page.click(f"button[data-kind={kind}]")
    expect(page.locator("#jobs tbody tr")).to_have_count(before + 1)
    return page.locator("#jobs tbody tr").first.get_attribute("data-job-id")


def row(page: Page, job_id: str):
    return page.locator(f'#jobs tr[data-job-id="{job_id}"]')


def test_generate_watch_progress_refund_and_cancel(page: Page):
    expect(page.locator("#health")).to_contain_text("API ok")
    kinds = page.locator("#kinds button")
    expect(kinds).to_have_count(6)
    expect(page.locator("button[data-kind=story]")).to_be_disabled()  # signed out
    sign_in(page)
    expect(page.locator("#balance")).to_have_text(str(START_BALANCE))
    expect(page.locator("button[data-kind=story]")).to_contain_text("10 credits")

    # a story: charged, then pending/processing, then completed with its result, no reload
    story = start(page, "story")
    expect(page.locator("#balance")).to_have_text(str(START_BALANCE - 10))
    expect(row(page, story)).to_have_attribute("data-status", "completed")
    expect(row(page, story).locator(".progress")).to_contain_text("100%")
    expect(row(page, story)).to_contain_text("Once upon a time there was a lighthouse keeper")

    # a voice-over reports 0 %, then 50 % a second later, then completes: the page follows
    voice = start(page, "voice")
    expect(row(page, voice)).to_have_attribute("data-status", "processing")
    expect(row(page, voice).locator("progress")).to_have_attribute("value", "50")
    screenshot(page, "console-job-running")
    expect(row(page, voice)).to_have_attribute("data-status", "completed")
    expect(page.locator("#balance")).to_have_text(str(START_BALANCE - 35))

    # the failing kind: failed, its price back, the refund marked in the ledger
    failing = start(page, "demo_fail")
    expect(row(page, failing)).to_have_attribute("data-status", "failed")
    expect(row(page, failing)).to_contain_text("↩ 5 refunded")
    expect(row(page, failing)).to_contain_text("always fails")
    refund = page.locator("#ledger tr[data-entry-type=refund]").first
    expect(refund).to_contain_text("+5")
    expect(refund).to_contain_text("↩ refund")
    expect(page.locator("#balance")).to_have_text(str(START_BALANCE - 35))

    # cancel a voice-over while it runs: cancelled, refunded, the button gone
    cancelled = start(page, "voice")
    expect(row(page, cancelled)).to_have_attribute("data-status", "processing")
    row(page, cancelled).locator("button.cancel").click()
    expect(row(page, cancelled)).to_have_attribute("data-status", "cancelled")
    expect(row(page, cancelled)).to_contain_text("↩ 25 refunded")
    expect(row(page, cancelled).locator("button.cancel")).to_have_count(0)
    expect(page.locator("#message")).to_have_text("voice cancelled: 25 credits refunded.")
    expect(page.locator("#balance")).to_have_text(str(START_BALANCE - 35))
    expect(page.locator("#ledger tr[data-entry-type=refund]").first).to_contain_text("+25")

    # the cancelled run's next report was refused: it stays cancelled
    page.wait_for_timeout(2500)
    expect(row(page, cancelled)).to_have_attribute("data-status", "cancelled")


def test_every_error_gets_a_clear_message(page: Page):
    sign_in(page)
    message = page.locator("#message")
    balance = page.locator("#balance")
    expect(balance).to_have_text(re.compile(r"^\d+$"))
    before = balance.inner_text()

    page.click("button[data-kind=film]")  # 402, from the real API
    expect(message).to_contain_text("Not enough credits: film costs 5000")
    expect(message).to_contain_text("Nothing was charged")
    expect(message).to_contain_text("HTTP 402 insufficient_credits")

    page.click("button[data-kind=remote]")  # 503: the pipeline refused, the job was refunded
    expect(message).to_contain_text("did not take the job")
    expect(message).to_contain_text("its 7 credits are back on your balance")
    expect(message).to_contain_text("HTTP 503 pipeline_unavailable")
    failed = page.locator("#jobs tbody tr").first
    expect(failed).to_have_attribute("data-status", "failed")
    expect(failed).to_contain_text("↩ 7 refunded")
    expect(balance).to_have_text(before)

    # 429, from the real API: one batch job at a time per user, and the first one waits for a
    # queue worker the dev server does not run
    expect(page.locator("button[data-kind=batch]")).to_contain_text("3 credits · 1 at a time")
    waiting = start(page, "batch")
    expect(row(page, waiting)).to_have_attribute("data-status", "pending")
    expect(balance).to_have_text(str(int(before) - 3))
    page.click("button[data-kind=batch]")
    expect(message).to_contain_text(
        "Too many jobs at once: you already have 1 active batch job (the limit)"
    )
    expect(message).to_contain_text("Nothing was charged (the API suggests trying again in 30 s)")
    expect(message).to_contain_text("HTTP 429 too_many_active_jobs")
    expect(balance).to_have_text(str(int(before) - 3))
    row(page, waiting).locator("button.cancel").click()  # its slot is free again
    expect(row(page, waiting)).to_have_attribute("data-status", "cancelled")
    expect(balance).to_have_text(before)

    # an invalid token: told to sign in again, and signed out
    page.click("#signout")
    page.fill("#token-input", "not.a.token")
    page.click("#use-token")
    expect(message).to_contain_text("Your sign-in is not valid any more")
    expect(message).to_contain_text("HTTP 401 unauthorized")
    expect(page.locator("#signin-demo")).to_be_visible()

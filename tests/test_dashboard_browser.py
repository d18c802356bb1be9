"""The dashboard in a real browser (Playwright driving the machine's Chromium) and a real server.

Set OUTBOX_SCREENSHOT=docs/dashboard.png to refresh the docs' screenshot.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from tests.helpers import free_port, serving, start_runner, stop, wait_for

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Chromium for the browser tests: .ci/run installs it")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def test_operator_sees_counts_filters_failed_jobs_and_retries_one(browser, dsn, ob, conn):
    for n in range(12):
        ob.enqueue(conn, "mail.send", {"to": f"user{n}@example.com"})
    ob.enqueue(conn, "reports.build", {"day": "2026-11-26"}, queue="slow", delay=3600)
    failed = [ob.enqueue(conn, "invoices.charge", {"invoice": n}, queue="billing") for n in (7, 8)]
    conn.execute(
        f"UPDATE \"{ob.schema}\".jobs SET state = 'failed', finished_at = now(), attempts = 20,"
        " last_error = 'CardDeclined: <do not render>', errors = jsonb_build_array("
        "jsonb_build_object('attempt', 20, 'at', now(), 'error', 'CardDeclined: <do not render>'))"
        " WHERE id = ANY(%s)",
        (failed,),
    )
    port = free_port()
    args = [
        sys.executable, "-m", "outbox.cli", "dashboard", "--port", str(port),
        "--schema", ob.schema,
    ]  # fmt: skip
    with serving(args, port, {"OUTBOX_DSN": dsn}) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(url + "/")
        assert page.locator("tfoot [data-state=pending]").inner_text() == "12"
        assert page.locator("tfoot [data-state=failed]").inner_text() == "2"
        if target := os.environ.get("OUTBOX_SCREENSHOT"):
            page.screenshot(path=target, full_page=True)

        page.locator("td.failed a").click()  # the failed count of invoices.charge
        assert "state=failed" in page.url
        rows = page.locator("table.jobs tbody tr")
        assert rows.count() == 2
        assert "<do not render>" in rows.first.inner_text()  # shown as text, not markup

        page.locator(f'a[href$="/jobs/{failed[0]}"]').click()
        assert page.locator("h1 .state").inner_text() == "failed"
        page.locator('button[value="retry"]').click()
        assert page.locator("h1 .state").inner_text() == "pending"
        assert "retry: 1 of 1" in page.locator(".done").inner_text()
    assert ob.get_job(conn, failed[0]).state == "pending"
    assert ob.get_job(conn, failed[1]).state == "failed"


def test_dashboard_works_with_javascript_off_for_reading(browser, dsn, ob, conn):
    job_id = ob.enqueue(conn, "mail.send", {"to": "ada@example.com"})
    port = free_port()
    args = [
        sys.executable, "-m", "outbox.cli", "dashboard", "--port", str(port),
        "--schema", ob.schema, "--read-only",
    ]  # fmt: skip
    with serving(args, port, {"OUTBOX_DSN": dsn}) as url:
        context = browser.new_context(java_script_enabled=False)
        page = context.new_page()
        page.goto(f"{url}/jobs?kind=mail.send")
        page.locator(f'a[href$="/jobs/{job_id}"]').click()
        assert "ada@example.com" in page.locator("pre.payload").inner_text()
        assert page.locator("button").count() == 0  # read-only: no actions
        context.close()


def test_operator_sees_live_runners_and_a_kind_nobody_handles(browser, dsn, ob, conn):
    ob.enqueue(conn, "emails.sned", {"to": "ada@example.com"})  # a typo nobody handles
    runner = start_runner(dsn, ob.schema, "--concurrency", "3")
    port = free_port()
    args = [
        sys.executable, "-m", "outbox.cli", "dashboard", "--port", str(port),
        "--schema", ob.schema, "--read-only",
    ]  # fmt: skip
    try:
        wait_for(lambda: ob.runners(conn), timeout=30, every=0.2)
        with serving(args, port, {"OUTBOX_DSN": dsn}) as url:
            page = browser.new_page()
            page.goto(url + "/")
            warning = page.locator("p.warning").inner_text()
            assert "emails.sned" in warning and "no live runner handles" in warning
            page.get_by_role("link", name="1 live runner").click()
            row = page.locator("table.counts tbody tr").first.inner_text()
            assert str(runner.pid) in row and "0 / 3" in row
    finally:
        assert stop(runner) == 0

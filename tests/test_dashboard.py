"""The dashboard over HTTP (in process): pages, filters, actions, CSRF, read-only, escaping."""

from __future__ import annotations

import re

import httpx
import pytest

from outbox import ConfigurationError
from outbox.dashboard import PAGE_SIZE, create_app
from outbox.dashboard.csrf import COOKIE


@pytest.fixture
async def client(dsn, ob):
    app = create_app(dsn=dsn, outbox=ob, allowed_hosts=["dash.test"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://dash.test"
    ) as http:
        yield http
    await app.state.database.close()


@pytest.fixture
async def read_only_client(dsn, ob):
    app = create_app(dsn=dsn, outbox=ob, read_only=True, allowed_hosts=["dash.test"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://dash.test"
    ) as http:
        yield http
    await app.state.database.close()


def fail(conn, schema: str, job_id: int, error: str = "boom") -> None:
    conn.execute(
        f"UPDATE \"{schema}\".jobs SET state = 'failed', finished_at = now(), attempts = 1,"
        " last_error = %s, errors = jsonb_build_array(jsonb_build_object("
        "'attempt', 1, 'at', now(), 'error', %s::text)) WHERE id = %s",
        (error, error, job_id),
    )


def token(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, "the page has no form"
    return found.group(1)


async def test_overview_counts_live_and_failed_jobs_per_queue_and_kind(client, ob, conn):
    for _ in range(3):
        ob.enqueue(conn, "mail.send")
    ob.enqueue(conn, "mail.send", delay=3600)
    fail(conn, ob.schema, ob.enqueue(conn, "report.build", queue="slow"))
    page = await client.get("/")
    assert page.status_code == 200
    rows = re.findall(r"<tr>\s*<td>(\w+)</td><td>([\w.]+)</td>(.*?)</tr>", page.text, re.S)
    counts = {(q, k): re.findall(r">([\d,]+)<", cells) for q, k, cells in rows}
    # pending, scheduled, running, failed, discarded, cancelled
    assert counts[("default", "mail.send")][:6] == ["3", "1", "0", "0", "0", "0"]
    assert counts[("slow", "report.build")][:6] == ["0", "0", "0", "1", "0", "0"]
    assert 'http-equiv="refresh"' in page.text  # reloads itself, no JavaScript needed


async def test_job_list_filters_and_pages_with_a_keyset(client, ob, conn):
    ids = [ob.enqueue(conn, "k") for _ in range(PAGE_SIZE + 5)]
    first = await client.get("/jobs", params={"state": "pending", "kind": "k"})
    shown = [int(i) for i in re.findall(r'/jobs/(\d+)">', first.text)]
    assert shown == sorted(ids, reverse=True)[:PAGE_SIZE]
    next_url = re.search(r'rel="next" href="([^"]+)"', first.text).group(1).replace("&amp;", "&")
    second = await client.get(next_url)
    assert [int(i) for i in re.findall(r'/jobs/(\d+)">', second.text)] == sorted(ids)[:5][::-1]
    assert 'rel="next"' not in second.text
    none = await client.get("/jobs", params={"state": "failed"})
    assert "No jobs match." in none.text


async def test_job_page_shows_payload_history_and_result(client, ob, conn):
    job_id = ob.enqueue(conn, "k", {"order": 42})
    fail(conn, ob.schema, job_id, "ValueError: bad order")
    page = await client.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    assert "&#34;order&#34;: 42" in page.text or '"order": 42' in page.text
    assert "ValueError: bad order" in page.text
    assert 'value="retry"' in page.text


async def test_payload_and_error_text_are_escaped(client, ob, conn):
    job_id = ob.enqueue(conn, "k", {"name": "<script>alert(1)</script>"})
    fail(conn, ob.schema, job_id, "<img src=x onerror=alert(2)>")
    for url in (f"/jobs/{job_id}", "/jobs?state=failed"):
        page = await client.get(url)
        assert "<script>alert(1)</script>" not in page.text
        assert "<img src=x" not in page.text
        assert "&lt;img src=x onerror=alert(2)&gt;" in page.text
    page = await client.get(f"/jobs/{job_id}")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]


async def test_limits_and_blocked_keys_page_shows_what_holds_jobs_back(client, ob, conn):
    ob.set_limit(conn, kind="partner.api", max_running=5)
    head = ob.enqueue(conn, "k", ordering_key="<b>order-42</b>", tenant="acme")
    ob.enqueue(conn, "k", ordering_key="<b>order-42</b>")
    fail(conn, ob.schema, head, "E: down")
    conn.execute(
        f"UPDATE \"{ob.schema}\".jobs SET state = 'pending', finished_at = NULL WHERE id = %s",
        (head,),
    )
    page = await client.get("/flow")
    assert page.status_code == 200
    assert "partner.api" in page.text
    assert "&lt;b&gt;order-42&lt;/b&gt;" in page.text and "<b>order-42" not in page.text
    assert f"/jobs/{head}" in page.text
    job = await client.get(f"/jobs/{head}")
    assert "acme" in job.text


async def test_retry_from_the_job_page_makes_it_pending(client, ob, conn):
    job_id = ob.enqueue(conn, "k")
    fail(conn, ob.schema, job_id)
    page = await client.get(f"/jobs/{job_id}")
    done = await client.post(
        "/actions", data={"csrf_token": token(page), "job_id": job_id, "action": "retry"}
    )
    assert done.status_code == 303
    assert done.headers["location"].startswith(f"http://dash.test/jobs/{job_id}?done=")
    assert ob.get_job(conn, job_id).state == "pending"


async def test_bulk_actions_apply_to_every_selected_job(client, ob, conn):
    ids = [ob.enqueue(conn, "k") for _ in range(3)]
    page = await client.get("/jobs")
    done = await client.post(
        "/actions",
        data={"csrf_token": token(page), "job_id": ids[:2], "action": "cancel", "back": "list"},
    )
    assert done.status_code == 303 and "cancel%3A+2+of+2" in done.headers["location"]
    assert [ob.get_job(conn, i).state for i in ids] == ["cancelled", "cancelled", "pending"]


@pytest.mark.parametrize(
    "forge",
    [
        {"csrf_token": None},
        {"csrf_token": "x" * 43},
        {"origin": "https://evil.example"},
        {"cookie": None},
    ],
    ids=["no token", "wrong token", "foreign origin", "no cookie"],
)
async def test_a_post_without_the_csrf_token_is_refused(client, ob, conn, forge):
    job_id = ob.enqueue(conn, "k")
    page = await client.get(f"/jobs/{job_id}")
    data = {"csrf_token": token(page), "job_id": job_id, "action": "discard"}
    headers = {}
    if "csrf_token" in forge:
        data["csrf_token"] = forge["csrf_token"]
        data = {k: v for k, v in data.items() if v is not None}
    if "origin" in forge:
        headers["origin"] = forge["origin"]
    if "cookie" in forge:
        client.cookies.delete(COOKIE)
    refused = await client.post("/actions", data=data, headers=headers)
    assert refused.status_code == 403
    assert ob.get_job(conn, job_id).state == "pending"


async def test_read_only_shows_no_actions_and_refuses_posts(read_only_client, ob, conn):
    job_id = ob.enqueue(conn, "k")
    page = await read_only_client.get(f"/jobs/{job_id}")
    assert "read-only" in page.text and 'name="action"' not in page.text
    listing = await read_only_client.get("/jobs")
    assert 'type="checkbox"' not in listing.text
    refused = await read_only_client.post(
        "/actions", data={"csrf_token": "x" * 43, "job_id": job_id, "action": "cancel"}
    )
    assert refused.status_code == 403
    assert ob.get_job(conn, job_id).state == "pending"


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/jobs/999999", 404),
        ("/jobs/abc", 400),
        ("/jobs?state=nonsense", 400),
        ("/jobs?kind=Bad%20Kind!", 400),
        ("/jobs?after=-1", 400),
        ("/actions", 405),
    ],
)
async def test_bad_requests_get_a_clear_page_not_a_traceback(client, url, status):
    page = await client.get(url)
    assert page.status_code == status
    assert "That did not work" in page.text


def test_the_dashboard_needs_a_dsn_or_a_pool():
    from outbox import ConfigurationError

    with pytest.raises(ConfigurationError, match="dsn or a pool"):
        create_app()


async def test_a_dns_rebinding_request_is_refused_and_changes_nothing(client, ob, conn):
    job_id = ob.enqueue(conn, "k", {"secret": "payload"})
    page = await client.get(f"/jobs/{job_id}")
    evil = {"host": "rebind.evil.example", "origin": "http://rebind.evil.example"}
    read = await client.get(f"/jobs/{job_id}", headers=evil)
    assert read.status_code == 400 and "payload" not in read.text
    cancel = await client.post(
        "/actions",
        data={"csrf_token": token(page), "job_id": job_id, "action": "cancel", "back": "job"},
        headers=evil,
    )
    assert cancel.status_code == 400
    assert ob.get_job(conn, job_id).state == "pending"


async def test_pages_with_job_data_are_never_cached(client, ob, conn):
    job_id = ob.enqueue(conn, "k")
    for url in ("/", "/jobs", f"/jobs/{job_id}", "/flow", "/runners"):
        assert (await client.get(url)).headers["cache-control"] == "no-store", url


async def test_a_dashboard_whose_database_is_down_answers_503_quickly():
    import time

    app = create_app(dsn="postgresql://postgres@127.0.0.1:1/none", allowed_hosts=["dash.test"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://dash.test"
    ) as http:
        started = time.monotonic()
        page = await http.get("/")
    assert page.status_code == 503
    assert "cannot reach its database" in page.text
    assert time.monotonic() - started < 6


def test_allowed_hosts_must_be_names():
    for bad in ("localhost", [], [""], [None]):
        with pytest.raises(ConfigurationError, match="allowed_hosts"):
            create_app(dsn="postgresql://x@127.0.0.1/x", allowed_hosts=bad)

"""The example web apps, served by real servers and called over real HTTP."""

from __future__ import annotations

import sys
import time

import httpx
import psycopg
import pytest

from tests.helpers import free_port, serving

pytestmark = pytest.mark.slow


def wait_for_state(client: httpx.Client, job_id: int, state: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (got := client.get(f"/jobs/{job_id}").json()["state"]) != state:
        assert time.monotonic() < deadline, f"job {job_id} is {got}, not {state}"
        time.sleep(0.05)


def count(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def check_app(url: str, dsn: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        placed = client.post("/orders", json={"email": "ada@example.com"})
        assert placed.status_code == 201, placed.text
        wait_for_state(client, placed.json()["job_id"], "succeeded")
        assert count(dsn, "SELECT count(*) FROM receipts") == 1

        jobs_before = count(dsn, "SELECT count(*) FROM outbox.jobs")
        failed = client.post(
            "/orders", json={"email": "bob@example.com", "fail_after_enqueue": True}
        )
        assert failed.status_code == 500
        assert count(dsn, "SELECT count(*) FROM outbox.jobs") == jobs_before
        assert count(dsn, "SELECT count(*) FROM orders WHERE email = 'bob@example.com'") == 0


def test_fastapi_app_runs_jobs_in_its_lifespan_and_rolled_back_requests_leave_none(scratch_dsn):
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", str(port)]
    with serving(args, port, {"OUTBOX_DSN": scratch_dsn}) as url:
        check_app(url, scratch_dsn)


def test_flask_app_runs_jobs_in_a_background_thread_and_rolled_back_requests_leave_none(
    scratch_dsn,
):
    port = free_port()
    args = [sys.executable, "examples/flask_app.py", str(port)]
    with serving(args, port, {"OUTBOX_DSN": scratch_dsn}) as url:
        check_app(url, scratch_dsn)

"""Through a real PgBouncer in transaction mode: the README's quickstart, enqueue, a runner under
the flow rules, and the dashboard."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import psycopg
import pytest

from outbox import HandlerMux, Job, NewJob, Runner
from outbox.dashboard import create_app
from tests.helpers import ROOT, eventually, running
from tests.pgbouncer import pgbouncer


@pytest.fixture(scope="module")
def bouncer(dsn):
    with pgbouncer(dsn) as through:
        yield through


def test_the_readme_quickstart_runs_through_pgbouncer(bouncer, scratch_dsn):
    with pgbouncer(scratch_dsn) as through:
        env = {**os.environ, "OUTBOX_DSN": through}
        done = subprocess.run(
            [sys.executable, "examples/quickstart.py"], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "succeeded" in done.stdout


async def test_a_runner_and_enqueue_work_through_pgbouncer(bouncer, dsn, ob, conn):
    ob.set_limit(conn, kind="k", max_running=20)  # the fair lease too: its lock and cursor
    with psycopg.connect(bouncer, autocommit=True, prepare_threshold=None) as c:
        for i in range(30):  # one statement, many times: nothing may be prepared on the server
            with c.transaction():
                ob.enqueue(c, "k", {"i": i}, tenant=f"t{i % 3}")
        ids = ob.enqueue_many(c, [NewJob("k", tenant="t9") for _ in range(300)])
    done: set[int] = set()
    mux = HandlerMux()

    @mux.register("k")
    async def k(job: Job) -> None:
        done.add(job.id)

    runner = Runner(mux, dsn=bouncer, outbox=ob, pgbouncer=True, listen_dsn=dsn, concurrency=20)
    async with running(runner):
        await eventually(lambda: len(done) == 330, timeout=60)
        late = ob.enqueue(conn, "k")  # LISTEN on the direct DSN wakes the runner
        await eventually(lambda: late in done, timeout=5)
    assert set(ids) <= done
    assert ob.count(conn, state="succeeded") == 331


async def test_a_runner_without_a_listen_dsn_polls_through_pgbouncer(bouncer, ob, conn):
    done: set[int] = set()
    mux = HandlerMux()

    @mux.register("k")
    async def k(job: Job) -> None:
        done.add(job.id)

    runner = Runner(mux, dsn=bouncer, outbox=ob, pgbouncer=True, poll_interval=0.2)
    async with running(runner):
        job_id = ob.enqueue(conn, "k")
        await eventually(lambda: job_id in done, timeout=10)


async def test_the_dashboard_works_through_pgbouncer(bouncer, ob, conn):
    job_id = ob.enqueue(conn, "k", {"n": 1})
    app = create_app(dsn=bouncer, outbox=ob, pgbouncer=True, allowed_hosts=["dash.test"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://dash.test"
    ) as http:
        for _ in range(3):  # repeated statements on pooled connections
            for url in ("/", "/jobs", f"/jobs/{job_id}", "/flow", "/runners"):
                assert (await http.get(url)).status_code == 200, url
    await app.state.database.close()


def test_the_cli_works_through_pgbouncer(bouncer, ob, conn):
    ob.enqueue(conn, "k")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    for args in (["status", "--json"], ["limits"], ["runners"]):
        done = subprocess.run(
            [sys.executable, "-m", "outbox.cli", *args, "--dsn", bouncer, "--schema", ob.schema],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, (args, done.stderr)

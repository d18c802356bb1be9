"""run_at is finite and in [1970, 9000): refused on the way in everywhere, and a bad row already
in the table (from before the CHECK) breaks no reader."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from psycopg import errors as pg_errors

from outbox import HandlerMux, InvalidOptionError, Job, NewJob, Runner
from outbox.dashboard import create_app
from outbox.metrics import QueueCollector
from tests.helpers import ROOT, eventually, running

TOO_FAR = [
    datetime(1, 1, 1, tzinfo=timezone.utc),
    datetime(1969, 12, 31, 23, 59, tzinfo=timezone.utc),
    datetime(9000, 1, 1, tzinfo=timezone.utc),
    datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-12))),  # past 9999 in UTC
]


@pytest.mark.parametrize("run_at", TOO_FAR, ids=str)
def test_a_run_at_out_of_range_is_refused_before_anything_is_sent(ob, conn, run_at):
    with pytest.raises(InvalidOptionError, match="run_at must be from 1970"):
        ob.enqueue(conn, "k", run_at=run_at)
    with pytest.raises(InvalidOptionError, match="run_at must be from 1970"):
        ob.enqueue_many(conn, [NewJob("k", run_at=run_at)])
    assert ob.count(conn, state="pending") == 0


@pytest.mark.parametrize("value", ["-infinity", "infinity", "10000-01-01", "1969-01-01"])
def test_the_sql_function_and_the_table_refuse_a_run_at_out_of_range(ob, conn, value):
    with pytest.raises(pg_errors.InvalidParameterValue, match="run_at must be from 1970"):
        conn.execute(f"SELECT \"{ob.schema}\".enqueue('k', run_at => %s::timestamptz)", (value,))
    with pytest.raises(pg_errors.CheckViolation):
        conn.execute(
            f"INSERT INTO \"{ob.schema}\".jobs (kind, run_at) VALUES ('k', %s::timestamptz)",
            (value,),
        )


@pytest.fixture
def bad_rows(ob, conn) -> list[int]:
    """Rows with run_at -infinity and year 10000, as a table from before the CHECK may hold."""
    conn.execute(f'ALTER TABLE "{ob.schema}".jobs DROP CONSTRAINT jobs_run_at_bounded')
    return [
        conn.execute(
            f"INSERT INTO \"{ob.schema}\".jobs (kind, run_at) VALUES ('k', %s) RETURNING id",
            (value,),
        ).fetchone()[0]
        for value in ("-infinity", "10000-01-01")
    ]


def test_a_bad_row_breaks_no_status_function(ob, conn, bad_rows):
    low, high = bad_rows
    assert ob.get_job(conn, low).run_at.year == 1970
    assert ob.get_job(conn, high).run_at.year == 9000
    assert {j.id for j in ob.list_jobs(conn)} == {low, high}
    assert ob.stats(conn).totals["pending"] == 2
    assert ob.overview(conn) is not None
    assert ob.unhandled_kinds(conn)[0].kind == "k"


def test_a_bad_row_breaks_no_command(dsn, ob, conn, bad_rows):
    env = {"OUTBOX_DSN": dsn, "OUTBOX_SCHEMA": ob.schema, "PATH": ""}
    for args in (["status", "--json"], ["status"], ["inspect", str(bad_rows[0])]):
        done = subprocess.run(
            [sys.executable, "-m", "outbox.cli", *args], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, (args, done.stderr)
    status = subprocess.run(
        [sys.executable, "-m", "outbox.cli", "status", "--json"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert json.loads(status.stdout)["totals"]["pending"] == 2


async def test_a_bad_row_breaks_no_page_or_metric(dsn, ob, bad_rows):
    app = create_app(dsn=dsn, outbox=ob, allowed_hosts=["dash.test"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://dash.test"
    ) as http:
        for url in ("/", "/jobs", f"/jobs/{bad_rows[0]}", "/flow", "/runners"):
            assert (await http.get(url)).status_code == 200, url
    await app.state.database.close()
    families = {f.name: f for f in QueueCollector(dsn, schema=ob.schema, cache_seconds=0).collect()}
    assert families["outbox_collector_up"].samples[0].value == 1.0
    assert families["outbox_oldest_pending_age_seconds"].samples[0].value > 0


async def test_jobs_leased_beside_a_bad_row_keep_their_attempts(dsn, ob, conn, bad_rows):
    good = ob.enqueue_many(conn, [NewJob("k") for _ in range(3)])
    mux = HandlerMux()
    ran: list[int] = []

    @mux.register("k")
    async def k(job: Job) -> None:
        ran.append(job.id)

    async with running(Runner(mux, dsn=dsn, outbox=ob)):
        await eventually(lambda: set(good) | {bad_rows[0]} <= set(ran), timeout=20)
    for job_id in good:
        job = ob.get_job(conn, job_id)
        assert (job.state, job.attempts) == ("succeeded", 1)

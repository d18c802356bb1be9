"""Nothing is lost and nothing recorded twice: crashes at the worst moment, many runners racing
while clients keep enqueueing, handlers that enqueue, concurrent migrations and unique keys."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import uuid

import psycopg
import pytest

from outbox import NewJob, Outbox
from outbox.migrations import LATEST_VERSION
from tests.helpers import ROOT, start_runner, states, stop, wait_for

pytestmark = pytest.mark.slow


def test_kill_between_handler_and_record_reruns_the_job_and_records_it_once(
    dsn, schema, ob, conn, effects
):
    job_id = ob.enqueue(conn, "effect", {"die_after_effect": True})
    victim = start_runner(dsn, schema, "--lease", "1")
    assert victim.wait(20) == -9  # it killed itself after the effect, before recording
    stop(victim)
    assert ob.get_job(conn, job_id).state == "running"
    rescuer = start_runner(dsn, schema, "--lease", "1")
    try:
        wait_for(lambda: ob.get_job(conn, job_id).state == "succeeded", timeout=20)
    finally:
        assert stop(rescuer) == 0
    job = ob.get_job(conn, job_id)
    assert job.attempts == 2  # the crashed attempt counts
    assert job.errors[0]["error"].startswith("LeaseExpired")
    # At least once: the effect ran twice; the outcome was recorded once.
    runs = conn.execute(f'SELECT runs FROM "{schema}".effects').fetchone()[0]
    assert runs == 2


def test_runners_drain_50000_jobs_while_clients_keep_enqueueing(dsn, schema, ob, conn, effects):
    ob.enqueue_many(conn, [NewJob("effect") for _ in range(40_000)])
    runners = [start_runner(dsn, schema, "--concurrency", "50") for _ in range(3)]
    producers_done = threading.Event()

    def produce() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            for _ in range(100):
                with c.transaction():
                    for _ in range(50):
                        ob.enqueue(c, "effect")
        producers_done.set()

    producers = [threading.Thread(target=produce) for _ in range(2)]
    for t in producers:
        t.start()
    try:
        for t in producers:
            t.join(300)
        assert producers_done.is_set()
        wait_for(lambda: states(dsn, schema) == {"succeeded": 50_000}, timeout=300, every=1)
    finally:
        codes = [stop(r) for r in runners]
    assert codes == [0, 0, 0]
    count, distinct, runs = conn.execute(
        f'SELECT count(*), count(DISTINCT job_id), sum(runs) FROM "{schema}".effects'
    ).fetchone()
    assert count == distinct == runs == 50_000
    stuck = conn.execute(
        f"SELECT count(*) FROM \"{schema}\".jobs WHERE state = 'running'"
    ).fetchone()[0]
    assert stuck == 0


def test_a_handler_can_enqueue_more_jobs_in_its_own_transaction(dsn, schema, ob, conn, effects):
    ob.enqueue(conn, "fan_out", {"children": 25})
    runner = start_runner(dsn, schema)
    try:
        wait_for(lambda: states(dsn, schema) == {"succeeded": 26}, timeout=30)
    finally:
        assert stop(runner) == 0
    assert conn.execute(f'SELECT count(*) FROM "{schema}".effects').fetchone()[0] == 25


def test_two_migrate_commands_at_once_apply_the_schema_once(dsn, conn):
    schema = f"m_{uuid.uuid4().hex[:10]}"
    env = {"OUTBOX_DSN": dsn, "PATH": ""}
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "outbox.cli", "migrate", "--schema", schema],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        said = sorted(out for out, _ in outputs)
        assert "applied migrations 1" in said[0]
        assert "up to date" in said[1]
        versions = conn.execute(f'SELECT version FROM "{schema}".migrations ORDER BY 1').fetchall()
        assert versions == [(v,) for v in range(1, LATEST_VERSION + 1)]
    finally:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_unique_key_racing_from_many_connections_yields_one_job(dsn, ob, conn):
    async def one() -> int:
        async with (
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c,
            c.transaction(),
        ):
            job_id = await ob.enqueue(c, "charge", {"order": 7}, unique_key="order-7")
            await asyncio.sleep(0.01)
            return job_id

    ids = await asyncio.gather(*(one() for _ in range(20)))
    assert len(set(ids)) == 1
    rows = conn.execute(f'SELECT count(*) FROM "{ob.schema}".jobs').fetchone()[0]
    assert rows == 1


def test_outbox_in_other_schema_is_untouched(dsn, ob, conn):
    other = Outbox(schema=f"o_{uuid.uuid4().hex[:10]}")
    try:
        other.migrate(conn)
        other.enqueue(conn, "effect")
        assert states(dsn, ob.schema) == {}
        assert states(dsn, other.schema) == {"pending": 1}
    finally:
        conn.execute(f'DROP SCHEMA IF EXISTS "{other.schema}" CASCADE')

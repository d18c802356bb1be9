"""Faults in the middle of a run: connections cut, the database restarted.

After each, the runner reconnects by itself, every job reaches a final state, none is lost and
none is recorded twice.
"""

from __future__ import annotations

import asyncio
import collections

import psycopg
import pytest

from outbox import Backoff, HandlerMux, Job, NewJob, Runner
from tests.helpers import eventually, running, states

pytestmark = pytest.mark.slow


def terminate_runner_backends(dsn: str, runner: Runner) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"outbox {runner.runner_id}",),
        ).fetchall()
    return len(rows)


def counting_mux(calls: collections.Counter) -> HandlerMux:
    mux = HandlerMux()

    @mux.register("work")
    async def work(job: Job) -> int:
        calls[job.id] += 1
        await asyncio.sleep(0.005)
        return job.id

    return mux


def runner_with_work(dsn, ob, conn, total) -> tuple[Runner, collections.Counter]:
    """Enqueue ``total`` jobs and return a runner for them, with its per-job call counter."""
    ob.enqueue_many(conn, [NewJob("work") for _ in range(total)])
    calls: collections.Counter = collections.Counter()
    runner = Runner(
        counting_mux(calls), dsn=dsn, outbox=ob, concurrency=10, poll_interval=0.1,
        lease_seconds=2, backoff=Backoff(0.01, 0.05),
    )  # fmt: skip
    return runner, calls


def assert_all_done_once(dsn, ob, conn, total):
    assert states(dsn, ob.schema) == {"succeeded": total}
    # The recorded result is each job's own: recorded once, by the attempt that holds the lease.
    mismatched = conn.execute(
        f'SELECT count(*) FROM "{ob.schema}".jobs WHERE result::bigint <> id'
    ).fetchone()[0]
    assert mismatched == 0


async def test_runner_survives_its_connections_being_terminated(dsn, ob, conn):
    total = 600
    runner, calls = runner_with_work(dsn, ob, conn, total)
    async with running(runner):
        for _ in range(3):
            await eventually(lambda: len(calls) > 50)
            assert terminate_runner_backends(dsn, runner) >= 1
            await asyncio.sleep(0.3)
        await eventually(lambda: states(dsn, ob.schema) == {"succeeded": total}, timeout=60)
    assert_all_done_once(dsn, ob, conn, total)
    # Jobs re-run only where an outcome could not be written in time: a handful at most.
    assert sum(calls.values()) - total <= 3 * runner.concurrency


async def test_runner_survives_a_database_restart(pg_server, dsn, ob, conn):
    if pg_server.restart is None:
        pytest.skip("this test server cannot be restarted from here")
    total = 400
    runner, calls = runner_with_work(dsn, ob, conn, total)
    async with running(runner):
        await eventually(lambda: len(calls) > 50)
        await asyncio.to_thread(pg_server.restart)
        with psycopg.connect(dsn) as fresh:
            await eventually(
                lambda: states(dsn, ob.schema) == {"succeeded": total}, timeout=90, every=0.2
            )
            assert_all_done_once(dsn, ob, fresh, total)

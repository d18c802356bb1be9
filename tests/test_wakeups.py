"""Enqueues notify only while a runner waits for work: Postgres serializes the commits of every
transaction that sent a NOTIFY, so a notification nobody needs costs every concurrent enqueuer.
A runner with free slots and nothing to run asks for notifications (listen_for) two poll
intervals ahead; once it had stopped asking, it also leases again shortly after asking anew,
for the transactions that enqueued in between."""

from __future__ import annotations

import asyncio
import time

import psycopg

from outbox import Backoff, HandlerMux, Job, Runner
from outbox.clock import SystemClock
from tests.helpers import eventually, running


def make_runner(dsn, ob, mux, **options) -> Runner:
    return Runner(mux, dsn=dsn, outbox=ob, backoff=Backoff(0.01, 0.05), lease_seconds=3, **options)


class JumpingClock(SystemClock):
    """The real clock, whose monotonic time can jump ahead (waits stay real)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def monotonic(self) -> float:
        return super().monotonic() + self.ahead


def _deadline(conn, schema: str) -> int:
    return conn.execute(f'SELECT last_value FROM "{schema}".listened_until').fetchone()[0]


def _notified(listener: psycopg.Connection, timeout: float = 0.3) -> int:
    return len(list(listener.notifies(timeout=timeout)))


def test_an_enqueue_notifies_only_while_a_runner_waits(dsn, ob, conn):
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{ob.schema}_jobs"')

        ob.enqueue(conn, "k")
        assert _notified(listener) == 0  # no runner asked: the commit took no notify lock

        conn.execute(f'SELECT "{ob.schema}".listen_for(60)')
        ob.enqueue(conn, "k")
        assert _notified(listener) == 1

        conn.execute(f"SELECT setval('\"{ob.schema}\".listened_until', 0)")  # the deadline passed
        ob.enqueue(conn, "k")
        assert _notified(listener) == 0


def test_listen_for_only_moves_the_deadline_forward(conn, schema):
    conn.execute(f'SELECT "{schema}".listen_for(600)')
    [(far,)] = conn.execute(f'SELECT last_value FROM "{schema}".listened_until').fetchall()
    conn.execute(f'SELECT "{schema}".listen_for(1)')
    [(after,)] = conn.execute(f'SELECT last_value FROM "{schema}".listened_until').fetchall()
    assert after == far


async def test_an_idle_runner_keeps_enqueuers_notifying(dsn, ob, conn):
    mux = HandlerMux()
    mux.register("ping", lambda job: None)
    async with running(make_runner(dsn, ob, mux, poll_interval=0.5)):
        # Several poll intervals idle: the runner renews the deadline before it lapses, so
        # each job is started by its notification, well before a poll would find it.
        for _ in range(3):
            await asyncio.sleep(0.6)
            started = time.monotonic()
            job_id = ob.enqueue(conn, "ping")
            await eventually(lambda j=job_id: ob.get_job(conn, j).state == "succeeded", every=0.005)
            assert time.monotonic() - started < 0.4


async def test_a_job_committed_while_every_runner_was_busy_starts_when_one_frees(dsn, ob, conn):
    # The runner is busy for longer than its deadline (2 poll intervals, on a clock that jumps),
    # so enqueues stop notifying; a transaction enqueues, and commits just after the runner ran
    # out of work and asked anew. Its job starts at the runner's next lease, not a poll later.
    mux = HandlerMux()
    release = asyncio.Event()
    ran: dict[str, float] = {}

    @mux.register("long")
    async def long(job: Job) -> None:
        await release.wait()

    @mux.register("next")
    async def next_(job: Job) -> None:
        ran["next"] = time.monotonic()

    clock = JumpingClock()
    runner = make_runner(dsn, ob, mux, poll_interval=1.0, concurrency=1, clock=clock)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{ob.schema}_jobs"')
        async with running(runner):
            long_id = ob.enqueue(conn, "long")
            await eventually(lambda: ob.get_job(conn, long_id).state == "running")
            # Two poll intervals pass for the runner, and the database's deadline with them.
            clock.ahead += 2.5
            conn.execute(f"SELECT setval('\"{ob.schema}\".listened_until', 0)")
            with psycopg.connect(dsn) as other:
                next_id = ob.enqueue(other, "next")  # sends no notification: nobody waits
                release.set()
                # The runner runs out of work and asks anew; then the transaction commits.
                await eventually(lambda: _deadline(conn, ob.schema) > 0, every=0.005)
                other.commit()
                committed = time.monotonic()
            await eventually(lambda: "next" in ran, timeout=5)
        assert ob.get_job(conn, next_id).state == "succeeded"
        assert ran["next"] - committed < 0.5  # a poll interval would be 1 s
        drained = list(listener.notifies(timeout=0.05))
        assert len(drained) <= 1  # the first enqueue's, while the runner waited at start

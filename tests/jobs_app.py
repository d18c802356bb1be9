"""Handlers for the real-process runner tests: ``outbox run tests.jobs_app:mux``.

The database and schema come from OUTBOX_DSN and OUTBOX_SCHEMA, as for the CLI itself.
"""

from __future__ import annotations

import asyncio
import os
import signal

import psycopg
from psycopg_pool import AsyncConnectionPool

from outbox import HandlerMux, Job, Outbox

mux = HandlerMux()
_pool: AsyncConnectionPool | None = None


async def _connection_pool() -> AsyncConnectionPool:
    global _pool
    if _pool is None:
        # The effects table is the test's own bookkeeping: it need not wait for fsync.
        _pool = AsyncConnectionPool(
            os.environ["OUTBOX_DSN"],
            min_size=1,
            max_size=4,
            open=False,
            kwargs={"autocommit": True, "options": "-c synchronous_commit=off"},
        )
        await _pool.open()
    return _pool


@mux.register("effect")
async def effect(job: Job) -> None:
    """Sleep as the payload says, then write this job's side effect (unique per job).

    With ``"die_after_effect": true`` the first attempt kills its own process (kill -9) after
    the effect and before the outcome is recorded.
    """
    await asyncio.sleep(job.payload.get("sleep", 0))
    pool = await _connection_pool()
    schema = os.environ["OUTBOX_SCHEMA"]
    async with pool.connection() as conn:
        await conn.execute(
            f'INSERT INTO "{schema}".effects (job_id, attempt) VALUES (%s, %s)'
            " ON CONFLICT (job_id) DO UPDATE SET runs = effects.runs + 1",
            (job.id, job.attempts),
        )
    if job.payload.get("die_after_effect") and job.attempts == 1:
        os.kill(os.getpid(), signal.SIGKILL)


@mux.register("fan_out")
async def fan_out(job: Job) -> None:
    """Enqueue ``children`` effect jobs in the handler's own transaction."""
    pool = await _connection_pool()
    ob = Outbox(schema=os.environ["OUTBOX_SCHEMA"])
    async with pool.connection() as conn, conn.transaction():
        for _ in range(job.payload["children"]):
            await ob.enqueue(conn, "effect", {"parent": job.id})


@mux.register("effect_direct")
async def effect_direct(job: Job) -> None:
    """``effect`` on a connection of its own (no pool): for outage tests, where a pool's
    reconnection backoff would measure the pool rather than the runner."""
    await asyncio.sleep(job.payload.get("sleep", 0))
    schema = os.environ["OUTBOX_SCHEMA"]
    async with await psycopg.AsyncConnection.connect(
        os.environ["OUTBOX_DSN"], autocommit=True, connect_timeout=5
    ) as conn:
        await conn.execute(
            f'INSERT INTO "{schema}".effects (job_id, attempt) VALUES (%s, %s)'
            " ON CONFLICT (job_id) DO UPDATE SET runs = effects.runs + 1",
            (job.id, job.attempts),
        )


def broken_factory() -> HandlerMux:
    """A factory that fails: `outbox run` reports it in one line."""
    raise RuntimeError("no mux today")


@mux.register("maybe_fail")
async def maybe_fail(job: Job) -> None:
    """Fails when the payload says so (for `outbox run --once` exit codes)."""
    if job.payload and job.payload.get("fail"):
        raise ValueError("told to fail")

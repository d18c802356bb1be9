"""Handlers for the soak run: ``outbox run benchmarks.soak_app:mux``.

Each attempt records (job id, attempt) in a table whose primary key makes a second run of the
same lease impossible to hide; then it fails at random, or sleeps a little and succeeds.
"""

from __future__ import annotations

import asyncio
import os
import random

from psycopg_pool import AsyncConnectionPool

from outbox import Backoff, HandlerMux, Job

mux = HandlerMux()
_pool: AsyncConnectionPool | None = None


async def _connection_pool() -> AsyncConnectionPool:
    global _pool
    if _pool is None:
        _pool = AsyncConnectionPool(os.environ["OUTBOX_DSN"], min_size=1, max_size=3, open=False)
        await _pool.open()
    return _pool


@mux.register("soak.work", backoff=Backoff(base=0.05, cap=1.0), timeout=10)
async def work(job: Job) -> None:
    pool = await _connection_pool()
    schema = os.environ["OUTBOX_SCHEMA"]
    async with pool.connection() as conn:
        await conn.execute(
            f'INSERT INTO "{schema}".soak_runs (job_id, attempt) VALUES (%s, %s)'
            " ON CONFLICT (job_id, attempt) DO UPDATE SET dup = soak_runs.dup + 1",
            (job.id, job.attempts),
        )
    await asyncio.sleep(random.uniform(0, job.payload["max_sleep"]))
    if random.random() < job.payload["fail_p"]:
        raise RuntimeError("injected handler failure")

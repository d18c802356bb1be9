"""Handlers for the flow-control tests with real processes: ``outbox run tests.flow_app:mux``.

Each writes what it did to a table of the test's schema, stamped with the database's clock, so
the test can check order, overlap and rate across processes.
"""

from __future__ import annotations

import asyncio
import os
import random

import psycopg

from outbox import Backoff, HandlerMux, Job, RetryableError

mux = HandlerMux()
_conn: psycopg.AsyncConnection | None = None


async def _db() -> psycopg.AsyncConnection:
    global _conn
    if _conn is None or _conn.closed:
        _conn = await psycopg.AsyncConnection.connect(
            os.environ["OUTBOX_DSN"], autocommit=True, options="-c synchronous_commit=off"
        )
    return _conn


_lock = asyncio.Lock()  # one connection per process: one statement at a time


async def _write(sql: str, params: tuple[object, ...]) -> None:
    async with _lock:
        await (await _db()).execute(sql.format(schema=os.environ["OUTBOX_SCHEMA"]), params)


@mux.register("ordered", backoff=Backoff(0.01, 0.05))
async def ordered(job: Job) -> None:
    """Sleep a random few ms; fail one first attempt in ten (before any effect); else record
    the effect (key, seq) in the order effects happen."""
    await asyncio.sleep(random.uniform(0.001, 0.005))
    if job.attempts == 1 and random.random() < 0.1:
        raise RetryableError("a first attempt that fails", retry_after=0.02)
    await _write(
        'INSERT INTO "{schema}".effects (job_id, ordering_key, seq) VALUES (%s, %s, %s)'
        " ON CONFLICT (job_id) DO UPDATE SET runs = effects.runs + 1",
        (job.id, job.ordering_key, job.payload["seq"]),
    )


@mux.register("limited")
async def limited(job: Job) -> None:
    """Record when this attempt started and ended (the database's clock)."""
    await _write(
        'INSERT INTO "{schema}".spans (job_id, pid, started) VALUES (%s, %s, clock_timestamp())',
        (job.id, os.getpid()),
    )
    await asyncio.sleep(random.uniform(0.02, 0.05))
    await _write(
        'UPDATE "{schema}".spans SET ended = clock_timestamp() WHERE job_id = %s AND pid = %s'
        " AND ended IS NULL",
        (job.id, os.getpid()),
    )


@mux.register("rated")
async def rated(job: Job) -> None:
    """Record when this attempt started (the database's clock)."""
    await _write(
        'INSERT INTO "{schema}".starts (job_id, at) VALUES (%s, clock_timestamp())', (job.id,)
    )

"""``outbox demo``: orders and their receipt jobs written in one transaction, then run.

Without a DSN it starts an embedded Postgres (``pip install 'outbox-runner[embedded]'``). With one,
it works in the schema ``outbox_demo``, which it creates and leaves for you to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psycopg
import typer
from psycopg_pool import AsyncConnectionPool

from outbox.client import Outbox
from outbox.errors import OutboxError, RetryableError
from outbox.models import FINAL_STATES, Job, JobState
from outbox.mux import HandlerMux
from outbox.runner import Runner

__all__ = ["main"]

SCHEMA = "outbox_demo"
ORDERS = 5

_CREATE_ORDERS = b"""
CREATE TABLE IF NOT EXISTS outbox_demo.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL,
    total_cents integer NOT NULL,
    receipt_sent_at timestamptz
)"""
_INSERT_ORDER = b"INSERT INTO outbox_demo.orders (email, total_cents) VALUES (%s, %s) RETURNING id"
_MARK_SENT = b"UPDATE outbox_demo.orders SET receipt_sent_at = now() WHERE id = %s"


def _say(message: str) -> None:
    typer.echo(message)


def _mux(pool: AsyncConnectionPool[Any]) -> HandlerMux:
    mux = HandlerMux()
    tries: dict[int, int] = {}

    @mux.register("orders.send_receipt")
    async def send_receipt(job: Job) -> dict[str, Any]:
        order_id = job.payload["order_id"]
        tries[order_id] = tries.get(order_id, 0) + 1
        if order_id % 3 == 0 and tries[order_id] == 1:
            # A flaky mail server: the first attempt fails and is retried shortly.
            raise RetryableError("mail server busy", retry_after=0.2)
        async with pool.connection() as conn:
            await conn.execute(_MARK_SENT, (order_id,))
        _say(f"  handler: receipt for order {order_id} sent to {job.payload['email']}")
        return {"sent_to": job.payload["email"], "attempt": job.attempts}

    return mux


async def _place_orders(conn: psycopg.AsyncConnection[Any], ob: Outbox) -> list[int]:
    ids = []
    for n in range(1, ORDERS + 1):
        email = f"customer{n}@example.com"
        async with conn.transaction():
            cursor = await conn.execute(_INSERT_ORDER, (email, 1000 * n))
            row = await cursor.fetchone()
            assert row is not None
            job_id = await ob.enqueue(
                conn, "orders.send_receipt", {"order_id": row[0], "email": email}
            )
        _say(f"order {row[0]} and job {job_id} committed in one transaction")
        ids.append(job_id)
    with contextlib.suppress(ValueError):
        async with conn.transaction():
            cursor = await conn.execute(_INSERT_ORDER, ("nobody@example.com", 1))
            row = await cursor.fetchone()
            assert row is not None
            await ob.enqueue(conn, "orders.send_receipt", {"order_id": row[0], "email": "-"})
            raise ValueError("payment declined")
    _say("a declined order was rolled back: neither the order nor its job exists")
    return ids


async def _demo(dsn: str) -> None:
    ob = Outbox(schema=SCHEMA)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await ob.migrate(conn)
        await conn.execute(_CREATE_ORDERS)
        ids = await _place_orders(conn, ob)
        async with AsyncConnectionPool(dsn, min_size=1, max_size=4, open=False) as pool:
            runner = Runner(_mux(pool), pool=pool, outbox=ob, concurrency=4, lease_seconds=5)
            task = asyncio.create_task(runner.run())
            _say("runner started")
            deadline = time.monotonic() + 30
            jobs: list[Job] = []
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                # This run's jobs only: an earlier run's may share the schema.
                jobs = [job for i in ids if (job := await ob.get_job(conn, i)) is not None]
                if len(jobs) == len(ids) and all(j.state in FINAL_STATES for j in jobs):
                    break
            runner.stop()
            await task
    _say("\njob  state      attempts  result")
    for job in jobs:
        _say(f"{job.id:<4} {job.state.value:<10} {job.attempts:<9} {job.result}")
    unfinished = [job.id for job in jobs if job.state != JobState.SUCCEEDED]
    if unfinished or len(jobs) != len(ids):
        raise OutboxError(
            f"the demo's jobs did not all succeed within 30 s (not succeeded: {unfinished}); "
            "its runner's log above says why"
        )


def main(dsn: str | None) -> None:
    """Run the demo against ``dsn``, or an embedded Postgres when it is None."""
    with contextlib.ExitStack() as stack:
        if not dsn:
            from outbox.embedded import embedded_postgres

            _say("no OUTBOX_DSN given: starting an embedded Postgres")
            dsn = stack.enter_context(embedded_postgres())
        asyncio.run(_demo(dsn))

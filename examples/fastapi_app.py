"""A FastAPI app that runs its outbox runner in its own event loop, sharing the app's pool.

``POST /orders`` writes an order and enqueues its receipt job in one transaction: if the
request fails after the enqueue, both roll back and no job exists.

Run it (the schema is migrated at start-up; OUTBOX_DSN names the database)::

    OUTBOX_DSN=postgresql://postgres@127.0.0.1:5432/postgres uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, HTTPException, Request
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

import outbox

DSN = os.environ.get("OUTBOX_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

mux = outbox.HandlerMux()


class Receipt(BaseModel):
    """The receipt job's payload."""

    order_id: int
    email: str


@mux.register("orders.send_receipt", payload=Receipt, timeout=30)
async def send_receipt(job: outbox.Job) -> None:
    receipt: Receipt = job.payload
    # Talk to the mail server here; this example records what it would have sent.
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO receipts (order_id, email) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (receipt.order_id, receipt.email),
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with AsyncConnectionPool(DSN, open=False) as pool:
        async with pool.connection() as conn:  # commits when the block ends
            await outbox.migrate(conn)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, email text NOT NULL);"
                "CREATE TABLE IF NOT EXISTS receipts (order_id int PRIMARY KEY, email text)"
            )
        app.state.pool = pool
        # The runner borrows from the app's pool; leaving the block stops it gracefully.
        async with outbox.Runner(mux, pool=pool, concurrency=10).running():
            yield


app = FastAPI(lifespan=lifespan)


class NewOrder(BaseModel):
    """The body of POST /orders."""

    email: str
    fail_after_enqueue: bool = False


@app.post("/orders", status_code=201)
async def place_order(order: NewOrder, request: Request) -> dict[str, int]:
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "INSERT INTO orders (email) VALUES (%s) RETURNING id", (order.email,)
        )
        row = await cur.fetchone()
        assert row is not None
        job_id = await outbox.enqueue(
            conn, "orders.send_receipt", Receipt(order_id=row[0], email=order.email)
        )
        if order.fail_after_enqueue:
            # The exception rolls the transaction back: the order and its job vanish together.
            raise HTTPException(status_code=500, detail="failed after the enqueue")
    return {"order_id": row[0], "job_id": job_id}


@app.get("/jobs/{job_id}")
async def job_status(job_id: int, request: Request) -> dict[str, object]:
    async with request.app.state.pool.connection() as conn:
        job = await outbox.get_job(conn, job_id)
    if job is None:
        raise HTTPException(status_code=404, detail="no such job")
    return {"id": job.id, "state": job.state, "attempts": job.attempts}

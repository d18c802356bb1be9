"""The README's example: an order and its job in one transaction, then a runner runs the job.

Run it with `python examples/quickstart.py` (OUTBOX_DSN, or an embedded Postgres).
"""

import asyncio
import contextlib
import os

import psycopg

import outbox
from outbox.embedded import embedded_postgres

mux = outbox.HandlerMux()


@mux.register("orders.send_receipt")
async def send_receipt(job: outbox.Job) -> dict:
    # Talk to the mail server here. Raise to retry; raise outbox.PermanentError to give up.
    return {"sent_to": job.payload["email"]}


def place_order(conn: psycopg.Connection, email: str) -> int:
    with conn.transaction():  # the order and its job commit together, or not at all
        conn.execute("INSERT INTO orders (email) VALUES (%s)", (email,))
        return outbox.enqueue(conn, "orders.send_receipt", {"email": email})


async def run_until_done(dsn: str, job_id: int) -> outbox.Job:
    runner = outbox.Runner(mux, dsn=dsn)
    task = asyncio.create_task(runner.run())
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while (job := await outbox.get_job(conn, job_id)).state not in outbox.FINAL_STATES:
            await asyncio.sleep(0.05)
    runner.stop()
    await task
    return job


def main(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        outbox.migrate(conn)
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, email text)")
        job_id = place_order(conn, "ada@example.com")
    job = asyncio.run(run_until_done(dsn, job_id))
    print(f"job {job.id}: {job.state}, result {job.result}")


if __name__ == "__main__":
    with contextlib.ExitStack() as stack:
        dsn = os.environ.get("OUTBOX_DSN") or stack.enter_context(embedded_postgres())
        main(dsn)

"""A Flask app whose outbox runner lives in a background thread of the same process.

``POST /orders`` writes an order and enqueues its receipt job in one transaction: if the
request fails after the enqueue, both roll back and no job exists.

Run it (the schema is migrated at start-up; OUTBOX_DSN names the database)::

    OUTBOX_DSN=postgresql://postgres@127.0.0.1:5432/postgres python examples/flask_app.py

Under gunicorn or uWSGI with several worker processes, start the runner in each worker after
the fork (gunicorn's ``post_fork`` hook), never in the master before it.
"""

from __future__ import annotations

import atexit
import os
import sys

import psycopg
from flask import Flask, abort, request
from psycopg_pool import ConnectionPool

import outbox

DSN = os.environ.get("OUTBOX_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

mux = outbox.HandlerMux()


@mux.register("orders.send_receipt", timeout=30)
def send_receipt(job: outbox.Job) -> None:
    # A plain def runs in a worker thread. Talk to the mail server here; this example
    # records what it would have sent.
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO receipts (order_id, email) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (job.payload["order_id"], job.payload["email"]),
        )


def create_app() -> Flask:
    """Build the app, migrate, and start the runner thread (stopped when the process exits)."""
    pool = ConnectionPool(DSN, open=True)
    with pool.connection() as conn:  # commits when the block ends
        outbox.migrate(conn)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, email text NOT NULL);"
            "CREATE TABLE IF NOT EXISTS receipts (order_id int PRIMARY KEY, email text)"
        )
    runner = outbox.Runner(mux, dsn=DSN, concurrency=10)
    runner.start_in_thread()  # raises here if the database is unreachable or not migrated
    atexit.register(pool.close)
    atexit.register(runner.stop)  # atexit runs last-in first-out: the runner stops first

    app = Flask(__name__)

    @app.post("/orders")
    def place_order() -> tuple[dict[str, int], int]:
        body = request.get_json()
        with pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO orders (email) VALUES (%s) RETURNING id", (body["email"],)
            ).fetchone()
            assert row is not None
            job_id = outbox.enqueue(
                conn, "orders.send_receipt", {"order_id": row[0], "email": body["email"]}
            )
            if body.get("fail_after_enqueue"):
                # The exception rolls the transaction back: the order and its job vanish.
                abort(500)
        return {"order_id": row[0], "job_id": job_id}, 201

    @app.get("/jobs/<int:job_id>")
    def job_status(job_id: int) -> dict[str, object]:
        with pool.connection() as conn:
            job = outbox.get_job(conn, job_id)
        if job is None:
            abort(404)
        return {"id": job.id, "state": job.state, "attempts": job.attempts}

    return app


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    create_app().run(port=port, use_reloader=False)

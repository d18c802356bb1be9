"""Publishing events to NATS JetStream, end to end (docs/publishing.md).

Orders and their ``orders.placed`` events are written in one transaction (one transaction is
rolled back: its event never leaves); a runner relays the events to JetStream; a consumer reads
them and handles each event once, recording its id in the same transaction as its effect.
Run it with `python examples/publishing_nats.py` (OUTBOX_DSN, and
NATS with JetStream at 127.0.0.1:4222).
"""

import asyncio
import json
import os

import nats
import psycopg

import outbox
from outbox import relay

mux = outbox.HandlerMux()
# Nats-Msg-Id carries the event's id: JetStream drops a repeat inside the duplicate window.
mux.relay("orders.placed", relay.nats("nats://127.0.0.1:4222", subject="shop.{kind}"))


def place_order(conn: psycopg.Connection, email: str, total: int) -> None:
    with conn.transaction():  # the order and its event commit together, or not at all
        row = conn.execute(
            "INSERT INTO orders (email, total) VALUES (%s, %s) RETURNING id", (email, total)
        ).fetchone()
        outbox.enqueue(conn, "orders.placed", {"order_id": row[0], "total": total})


def handle_once(conn: psycopg.Connection, event_id: str, event: dict) -> bool:
    """The consumer's side: the effect and the event's id commit together; a repeat is a no-op."""
    with conn.transaction():
        first = conn.execute(
            "INSERT INTO processed_events (id) VALUES (%s) ON CONFLICT DO NOTHING", (event_id,)
        ).rowcount
        if first:
            conn.execute(
                "INSERT INTO invoices (order_id, total) VALUES (%s, %s)",
                (event["order_id"], event["total"]),
            )
    return bool(first)


async def consume(js: nats.js.JetStreamContext, conn: psycopg.Connection) -> None:
    sub = await js.pull_subscribe("shop.orders.placed", durable="billing")
    for msg in await sub.fetch(10, timeout=5):
        handle_once(conn, msg.headers["Nats-Msg-Id"], json.loads(msg.data))
        await msg.ack()  # after the commit: a crash before it redelivers, handle_once drops it


async def main(dsn: str) -> None:
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    await js.add_stream(name="shop", subjects=["shop.>"])  # the stream holds the events
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            outbox.migrate(conn)
            conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, email text, total int)")
            conn.execute("CREATE TABLE processed_events (id text PRIMARY KEY)")  # the consumer's
            conn.execute("CREATE TABLE invoices (order_id int PRIMARY KEY, total int)")
            place_order(conn, "ada@example.com", 30)
            place_order(conn, "grace@example.com", 12)
            try:
                with conn.transaction():
                    place_order(conn, "nobody@example.com", 99)
                    raise RuntimeError("payment declined")  # rolled back: no order, no event
            except RuntimeError:
                pass
        summary = await outbox.Runner(mux, dsn=dsn).run_once(until_empty=True, max_seconds=30)
        assert summary.ok, summary
        with psycopg.connect(dsn, autocommit=True) as conn:
            await consume(js, conn)
            invoices = conn.execute("SELECT total FROM invoices ORDER BY total").fetchall()
        print("invoiced", [total for (total,) in invoices])
    finally:
        await js.delete_stream("shop")
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main(os.environ["OUTBOX_DSN"]))

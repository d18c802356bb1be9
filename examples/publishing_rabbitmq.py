"""Publishing events to RabbitMQ, end to end (docs/publishing.md).

Orders and their ``orders.placed`` events are written in one transaction (one transaction is
rolled back: its event never leaves); a runner relays the events to a durable queue under
publisher confirms; a consumer handles each event once, recording its ``message_id`` in the same
transaction as its effect. Run it with `python examples/publishing_rabbitmq.py` (OUTBOX_DSN,
and RabbitMQ at 127.0.0.1:5672, guest/guest).
"""

import asyncio
import json
import os

import aio_pika
import psycopg

import outbox
from outbox import relay

AMQP = "amqp://guest:guest@127.0.0.1:5672/"

mux = outbox.HandlerMux()
# Persistent, mandatory (no queue for the routing key is a failure, retried), done on the confirm.
mux.relay("orders.placed", relay.rabbitmq(AMQP, routing_key="billing.orders"))


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


async def consume(queue: aio_pika.abc.AbstractQueue, conn: psycopg.Connection) -> None:
    while (message := await queue.get(fail=False, timeout=5)) is not None:
        handle_once(conn, message.message_id, json.loads(message.body))
        await message.ack()  # after the commit: a crash before it redelivers, handle_once drops it


async def main(dsn: str) -> None:
    connection = await aio_pika.connect_robust(AMQP)
    channel = await connection.channel()
    queue = await channel.declare_queue("billing.orders", durable=True)  # survives a restart
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
            await consume(queue, conn)
            invoices = conn.execute("SELECT total FROM invoices ORDER BY total").fetchall()
        print("invoiced", [total for (total,) in invoices])
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()


if __name__ == "__main__":
    asyncio.run(main(os.environ["OUTBOX_DSN"]))

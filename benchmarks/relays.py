"""Relay throughput per destination, beside a raw publish loop to the same broker, one run.

    python benchmarks/relays.py --dsn postgresql://postgres@127.0.0.1:5432/bench [--n 5000]

For each destination: N jobs are enqueued, then one runner (concurrency 100) is started and
timed until every job has succeeded (start-up inside the clock). The raw loop publishes N
messages with the same acknowledgement (JetStream PubAck, publisher confirm, HTTP 2xx), at the
same concurrency (100 in flight), from the same process. Needs NATS (4222, JetStream) and
RabbitMQ (5672) on this machine.

Batching, measured: nats-py already writes every publish made in one event-loop tick with one
flush (its flusher task) and matches the PubAcks on one shared inbox, and aio-pika pipelines
publishes under confirms (the broker acknowledges several at once with ``multiple``). The
``publish_async`` rows check whether JetStream's async publish (a future per message, no
request round per publish) pays anyway: the same relay with ``js.publish_async`` in place of
``js.publish``, and the raw loop likewise. The no-op row is the runner alone (lease, run,
record, no publish): the ceiling any relay shares.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import threading
import time
import uuid

import psycopg

from outbox import HandlerMux, NewJob, Outbox, Runner, relay
from outbox.relay import Message, Template
from outbox.relay.jetstream import NatsDestination


class _NatsPublishAsync(NatsDestination):
    """The NATS destination with JetStream's async publish: each job awaits its own PubAck."""

    def __init__(self, subject: str) -> None:
        super().__init__(["nats://127.0.0.1:4222"], subject=Template(subject), timeout=5)

    async def publish(self, message: Message) -> None:
        js = await self._jetstream()
        headers = {**message.headers, "Nats-Msg-Id": message.id}
        future = await js.publish_async(message.target, message.body, headers=headers)
        await asyncio.wait_for(future, 5)


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 512  # 100 connections at once: the default backlog (5) resets them
    daemon_threads = True


async def _bounded(n: int, publish, concurrency: int = 100) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await publish(i)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - started


async def _noop(job: object) -> None:
    pass


async def _relay(dsn: str, n: int, destination, name: str) -> float:
    ob = Outbox(schema=f"bench_relay_{name}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {ob.schema} CASCADE")
        ob.migrate(conn)
        ob.enqueue_many(conn, [NewJob("event", {"n": i}) for i in range(n)])
        mux = HandlerMux()
        if destination is None:  # the runner's own ceiling: lease, run, record, no publish
            mux.register("event", _noop)
        else:
            mux.relay("event", destination)
        runner = Runner(mux, dsn=dsn, outbox=ob, concurrency=100)
        started = time.perf_counter()
        task = asyncio.create_task(runner.run())
        while ob.count(conn, state="succeeded") < n:
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
        runner.stop()
        await task
        conn.execute(f"DROP SCHEMA {ob.schema} CASCADE")
    return seconds


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    n = args.n
    rows = []
    rows.append(("no publish (async no-op handler)", await _relay(args.dsn, n, None, "noop"), None))

    import nats

    stream = f"bench{uuid.uuid4().hex[:6]}"
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{stream}.>"])
    raw = await _bounded(n, lambda i: js.publish(f"{stream}.raw", b'{"n": 1}',
                                                 headers={"Nats-Msg-Id": f"raw-{i}"}))  # fmt: skip
    ours = await _relay(args.dsn, n, relay.nats(subject=stream + ".{kind}"), "nats")
    rows.append(("NATS JetStream (PubAck)", ours, raw))

    async def publish_async(i: int) -> None:
        headers = {"Nats-Msg-Id": f"raw-async-{i}"}
        await asyncio.wait_for(
            await js.publish_async(f"{stream}.raw", b'{"n": 1}', headers=headers), 5
        )

    raw = await _bounded(n, publish_async)
    ours = await _relay(args.dsn, n, _NatsPublishAsync(stream + ".{kind}"), "nats_async")
    rows.append(("NATS JetStream, publish_async (PubAck per job)", ours, raw))
    await js.delete_stream(stream)
    await nc.close()

    import aio_pika

    queue_name = f"bench{uuid.uuid4().hex[:6]}"
    connection = await aio_pika.connect_robust("amqp://guest:guest@127.0.0.1:5672/")
    channel = await connection.channel(publisher_confirms=True)
    queue = await channel.declare_queue(queue_name, auto_delete=False)

    async def rabbit(i: int) -> None:
        await channel.default_exchange.publish(
            aio_pika.Message(b'{"n": 1}', message_id=f"raw-{i}",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue_name, mandatory=True,
        )  # fmt: skip

    raw = await _bounded(n, rabbit)
    ours = await _relay(args.dsn, n, relay.rabbitmq(routing_key=queue_name), "rabbit")
    await queue.delete(if_unused=False, if_empty=False)
    await connection.close()
    rows.append(("RabbitMQ (publisher confirms, persistent)", ours, raw))

    import httpx

    server = _Server(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    async with httpx.AsyncClient() as client:
        raw = await _bounded(n, lambda i: client.post(url, content=b'{"n": 1}'))
    ours = await _relay(
        args.dsn, n, relay.webhook(url, secret="whsec_" + "MTIzNDU2Nzg5MDEy"), "hook"
    )
    server.shutdown()
    rows.append(("webhook (local HTTP server, signed)", ours, raw))

    print(f"| destination ({n:,} events) | outbox relay, start-up included | raw loop | ratio |")
    print("| --- | --- | --- | --- |")
    for name, ours, raw in rows:
        if raw is None:
            print(f"| {name} | {n / ours:,.0f}/s | | |")
        else:
            print(f"| {name} | {n / ours:,.0f}/s | {n / raw:,.0f}/s | {raw / ours:.2f}x |")


if __name__ == "__main__":
    asyncio.run(main())

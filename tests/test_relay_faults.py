"""Relays under faults, with real processes, the machine's NATS JetStream and RabbitMQ, and a
webhook receiver process: a runner killed with kill -9 and the broker (or receiver) restarted
mid-run lose nothing; NATS publishes nothing twice, RabbitMQ and webhooks repeat an event only
with its id (run with -s to see the counts); ordering keys keep their order at the consumer.

``OUTBOX_TEST_RELAY_EVENTS`` (default 3,000) sets the size of each fault test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest

from outbox import Backoff, HandlerMux, NewJob, Runner, relay
from tests.helpers import (
    ROOT,
    eventually,
    free_port,
    running,
    start_runner,
    states,
    stop,
    wait_for,
)

pytestmark = pytest.mark.slow


def _nats_cmdline() -> list[str]:
    """The running nats-server's command line (to start it again the same way)."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = [a.decode() for a in f.read().split(b"\0") if a]
            except OSError:
                continue
            if args and os.path.basename(args[0]) == "nats-server" and "-js" in args:
                return [*args, f"--pid-of-{pid}"]
    pytest.fail("no nats-server with JetStream is running (.ci/run starts one)")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _restart_nats(cmdline: list[str]) -> None:
    *args, pid_flag = cmdline
    os.kill(int(pid_flag.removeprefix("--pid-of-")), signal.SIGTERM)
    wait_for(lambda: not _port_open(4222), timeout=20, every=0.05)
    # setsid -f: the server outlives the test, as the machine's own did, and is nobody's child.
    subprocess.run(
        ["setsid", "-f", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )
    wait_for(lambda: _port_open(4222), timeout=30, every=0.05)


async def _stream(prefix: str) -> tuple[object, object]:
    import nats

    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    await js.add_stream(name=prefix, subjects=[f"{prefix}.>"])
    return nc, js


async def _read_all(prefix: str, subject: str, count: int) -> list[tuple[str, dict]]:
    import nats

    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, durable=None)
    events: list[tuple[str, dict]] = []
    while True:  # past the count too: a repeat the stream kept would show
        try:
            batch = await sub.fetch(500, timeout=2 if len(events) >= count else 10)
        except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either
            if len(events) >= count:
                break
            raise
        for m in batch:  # unacknowledged, a consumer stops at 1,000 in flight
            events.append((m.headers["Nats-Msg-Id"], json.loads(m.data)))
            await m.ack()
    await nc.close()
    return events


EVENTS = int(os.environ.get("OUTBOX_TEST_RELAY_EVENTS", "3000"))
"""Events per fault test, 9 in 10 committed. 3,000 keeps the suite short (the webhook receiver
takes about 300 a second); OUTBOX_TEST_RELAY_EVENTS=10000 is the size docs/relays.md reports."""


def _enqueue_in_business_transactions(conn, ob, schema: str) -> list[int]:
    """Orders and their events, 100 to a transaction; every tenth transaction rolls back."""
    conn.execute(f'CREATE TABLE "{schema}".orders (id serial PRIMARY KEY, n int)')
    committed = []
    for n in range(EVENTS // 100):
        try:
            with conn.transaction():
                for i in range(100):
                    conn.execute(f'INSERT INTO "{schema}".orders (n) VALUES (%s)', (n * 100 + i,))
                    ob.enqueue(conn, "event", {"n": n * 100 + i}, max_attempts=100)
                if n % 10 == 9:
                    raise RuntimeError("rolled back")
                committed.extend(range(n * 100, n * 100 + 100))
        except RuntimeError:
            pass
    return committed


def _relay_through_faults(
    dsn: str, schema: str, committed: list[int], env: dict[str, str], restart: Callable[[], None]
) -> None:
    """Two runners relay; one is killed with kill -9 at 20 %, the other side restarted at 40 %."""
    runners = [
        start_runner(dsn, schema, "--concurrency", "50", "--lease", "2",
                     target="tests.relay_app:mux", env=env)
        for _ in range(2)
    ]  # fmt: skip
    try:
        wait_for(lambda: states(dsn, schema).get("succeeded", 0) >= EVENTS // 5, timeout=120)
        assert stop(runners.pop(), signal.SIGKILL) == -signal.SIGKILL
        wait_for(lambda: states(dsn, schema).get("succeeded", 0) >= 2 * EVENTS // 5, timeout=120)
        restart()
        wait_for(
            lambda: states(dsn, schema) == {"succeeded": len(committed)}, timeout=300, every=0.5
        )
    finally:
        codes = [stop(r) for r in runners]
    assert codes == [0]


def _duplicates(received: list[tuple[str, int]], committed: list[int], where: str) -> int:
    """Check what the consumer got, as (dedup id, event) pairs; return how many were repeats.

    Every committed event arrives, none rolled back; a repeat carries its first copy's id.
    """
    ids: dict[int, set[str]] = {}
    for msg_id, n in received:
        ids.setdefault(n, set()).add(msg_id)
    assert sorted(ids) == committed  # every committed event; none rolled back
    assert all(len(v) == 1 for v in ids.values())  # a repeat carries the same id
    assert len({i for v in ids.values() for i in v}) == len(committed)  # ids are unique
    repeats = len(received) - len(committed)
    print(f"\nrelay faults ({where}): {len(committed)} events, {repeats} duplicates (same id)")
    return repeats


async def test_kill_9_and_a_broker_restart_lose_nothing_and_publish_nothing_twice(
    dsn, schema, ob, conn
):
    prefix = f"faults{uuid.uuid4().hex[:8]}"
    nc, _js = await _stream(prefix)
    await nc.close()
    committed = _enqueue_in_business_transactions(conn, ob, schema)
    cmdline = _nats_cmdline()
    _relay_through_faults(
        dsn, schema, committed, {"OUTBOX_TEST_SUBJECT": prefix}, lambda: _restart_nats(cmdline)
    )
    events = await _read_all(prefix, f"{prefix}.events", len(committed))
    await _delete_stream(prefix)
    received = [(msg_id, event["n"]) for msg_id, event in events]
    assert _duplicates(received, committed, "NATS JetStream") == 0  # the server dropped repeats
    retried = conn.execute(f'SELECT count(*) FROM "{schema}".jobs WHERE attempts > 1').fetchone()[0]
    print(f"relay faults (NATS JetStream): {retried} jobs retried")


def _restart_rabbitmq() -> None:
    """Stop and start the broker's application (the Erlang node stays up): every connection
    drops, and publishes in flight get no confirm."""
    subprocess.run(["rabbitmqctl", "stop_app"], capture_output=True, check=True, timeout=60)
    subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, check=True, timeout=120)
    wait_for(lambda: _port_open(5672), timeout=60, every=0.1)


async def test_kill_9_and_a_rabbitmq_restart_lose_nothing_and_repeat_only_with_the_same_id(
    dsn, schema, ob, conn
):
    import aio_pika

    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is not on PATH: the test restarts RabbitMQ with it")
    queue_name = f"faults{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    channel = await connection.channel()
    await channel.declare_queue(queue_name, durable=True)  # survives the restart
    await connection.close()
    committed = _enqueue_in_business_transactions(conn, ob, schema)
    env = {"OUTBOX_TEST_RELAY": "rabbitmq", "OUTBOX_TEST_QUEUE": queue_name}
    _relay_through_faults(dsn, schema, committed, env, _restart_rabbitmq)
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True)
        received = []
        while (message := await queue.get(no_ack=True, fail=False, timeout=10)) is not None:
            received.append((message.message_id, json.loads(message.body)["n"]))
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
    _duplicates(received, committed, "RabbitMQ")


async def test_kill_9_and_a_webhook_server_restart_lose_nothing_and_repeat_only_with_the_same_id(
    dsn, schema, ob, conn, tmp_path
):
    port = free_port()
    log = tmp_path / "received.jsonl"
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    args = [sys.executable, "-m", "tests.webhook_receiver", str(port), str(log), secret]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, cwd=ROOT)
        wait_for(lambda: _port_open(port), timeout=30, every=0.05)
        return proc

    receiver = start()

    def restart() -> None:  # a crash: requests in flight get no answer
        nonlocal receiver
        receiver.kill()
        receiver.wait()
        receiver = start()

    committed = _enqueue_in_business_transactions(conn, ob, schema)
    url = f"http://127.0.0.1:{port}/hook"
    env = {"OUTBOX_TEST_RELAY": "webhook", "OUTBOX_TEST_URL": url, "OUTBOX_TEST_SECRET": secret}
    try:
        _relay_through_faults(dsn, schema, committed, env, restart)
    finally:
        receiver.kill()
        receiver.wait()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    received = [(r["id"], json.loads(r["body"])["n"]) for r in lines]
    _duplicates(received, committed, "webhook")


async def _delete_stream(prefix: str) -> None:
    import nats

    nc = await nats.connect("nats://127.0.0.1:4222")
    await nc.jetstream().delete_stream(prefix)
    await nc.close()


async def test_ordering_keys_keep_their_order_at_the_consumer(dsn, ob, conn):
    prefix = f"order{uuid.uuid4().hex[:8]}"
    nc, js = await _stream(prefix)
    try:
        ob.enqueue_many(
            conn,
            [
                NewJob("event", {"key": k, "seq": s}, ordering_key=f"k{k}")
                for s in range(50)
                for k in range(200)
            ],
        )
        mux = HandlerMux()
        mux.relay(
            "event", relay.nats(subject=prefix + ".{ordering_key}"), backoff=Backoff(0.01, 0.1)
        )
        async with running(Runner(mux, dsn=dsn, outbox=ob, concurrency=100, poll_interval=0.05)):
            await eventually(lambda: ob.count(conn, state="succeeded") == 10_000, timeout=240)
        events = await _read_all(prefix, f"{prefix}.>", 10_000)
    finally:
        await js.delete_stream(prefix)
        await nc.close()
    by_key: dict[int, list[int]] = {}
    for _, e in events:  # the stream's order is the order the broker received them
        by_key.setdefault(e["key"], []).append(e["seq"])
    assert len(by_key) == 200
    assert all(seqs == list(range(50)) for seqs in by_key.values())

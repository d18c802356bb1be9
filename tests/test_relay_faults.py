"""Relays under faults, with real processes and a real NATS JetStream: a runner killed with
kill -9 and the broker restarted mid-run lose nothing and publish nothing twice; ordering keys
keep their order at the consumer."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import uuid

import pytest

from outbox import Backoff, HandlerMux, NewJob, Runner, relay
from tests.helpers import eventually, running, start_runner, states, stop, wait_for

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


async def _read_all(prefix: str, subject: str, count: int) -> list[dict]:
    import nats

    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, durable=None)
    events: list[dict] = []
    while len(events) < count:
        batch = await sub.fetch(min(500, count - len(events)), timeout=10)
        for m in batch:  # unacknowledged, a consumer stops at 1,000 in flight
            events.append(json.loads(m.data))
            await m.ack()
    await nc.close()
    return events


async def test_kill_9_and_a_broker_restart_lose_nothing_and_publish_nothing_twice(
    dsn, schema, ob, conn
):
    prefix = f"faults{uuid.uuid4().hex[:8]}"
    nc, _js = await _stream(prefix)
    await nc.close()
    conn.execute(f'CREATE TABLE "{schema}".orders (id serial PRIMARY KEY, n int)')
    committed = []
    for n in range(10_000 // 100):  # business transactions, some rolled back
        try:
            with conn.transaction():
                for i in range(100):
                    conn.execute(f'INSERT INTO "{schema}".orders (n) VALUES (%s)', (n * 100 + i,))
                    ob.enqueue(conn, "event", {"n": n * 100 + i})
                if n % 10 == 9:
                    raise RuntimeError("rolled back")
                committed.extend(range(n * 100, n * 100 + 100))
        except RuntimeError:
            pass
    env = {"OUTBOX_TEST_SUBJECT": prefix}
    runners = [
        start_runner(dsn, schema, "--concurrency", "50", "--lease", "2",
                     target="tests.relay_app:mux", env=env)
        for _ in range(2)
    ]  # fmt: skip
    try:
        wait_for(lambda: states(dsn, schema).get("succeeded", 0) >= 2000, timeout=120)
        assert stop(runners.pop(), signal.SIGKILL) == -signal.SIGKILL
        wait_for(lambda: states(dsn, schema).get("succeeded", 0) >= 4000, timeout=120)
        _restart_nats(_nats_cmdline())
        wait_for(
            lambda: states(dsn, schema) == {"succeeded": len(committed)}, timeout=240, every=0.5
        )
    finally:
        codes = [stop(r) for r in runners]
    assert codes == [0]
    events = await _read_all(prefix, f"{prefix}.events", len(committed))
    seen = [e["n"] for e in events]
    assert sorted(seen) == committed  # every committed event, once; none rolled back
    await _delete_stream(prefix)
    retried = conn.execute(f'SELECT count(*) FROM "{schema}".jobs WHERE attempts > 1').fetchone()[0]
    print(f"relay faults: {len(committed)} events, {retried} jobs retried, 0 duplicates")


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
    for e in events:  # the stream's order is the order the broker received them
        by_key.setdefault(e["key"], []).append(e["seq"])
    assert len(by_key) == 200
    assert all(seqs == list(range(50)) for seqs in by_key.values())

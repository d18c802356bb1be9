"""Relays against real servers: a webhook receiver (HTTP), NATS JetStream and RabbitMQ.

.ci/run starts NATS (4222, JetStream) and RabbitMQ (5672) when they are down."""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from collections.abc import Iterator

import pytest
import standardwebhooks

from outbox import Backoff, ConfigurationError, HandlerMux, NewJob, Runner, relay
from outbox.relay import Template
from outbox.relay.webhooks import retry_after
from tests.helpers import eventually, running

FAST = Backoff(0.01, 0.05)
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


# -- templates and envelopes ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "orders.{nope}", "orders.{kind", "{payload.__class__}x{y}"])
def test_a_bad_template_is_refused_at_registration(text):
    with pytest.raises(ConfigurationError):
        Template(text)


def test_retry_after_takes_seconds_or_a_date_and_is_bounded():
    assert retry_after("7") == 7.0
    assert retry_after("999999999") == 86_400.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 10) == 10.0
    assert retry_after("soon") is None and retry_after(None) is None


# -- webhooks ------------------------------------------------------------------------------------


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver: /flaky answers 500 (Retry-After: 0) to its first ``fail`` requests,
    /gone answers 410; every request is kept."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with self.server.lock:
            self.server.received.append((self.path, dict(self.headers.items()), body))
            failing = self.path == "/flaky" and self.server.fail > 0
            if failing:
                self.server.fail -= 1
        status = 410 if self.path == "/gone" else 500 if failing else 200
        self.send_response(status)
        self.send_header("retry-after", "0")
        self.end_headers()
        self.wfile.write(b"gone for good" if status == 410 else b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(fail=4)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_a_webhook_that_fails_for_a_while_gets_every_event_signed(dsn, ob, conn, receiver):
    mux = HandlerMux()
    mux.relay("orders.placed", relay.webhook(receiver.url + "/flaky", secret=SECRET), backoff=FAST)
    ids = ob.enqueue_many(conn, [NewJob("orders.placed", {"order": n}) for n in range(5)])
    async with running(Runner(mux, dsn=dsn, outbox=ob)):
        await eventually(lambda: ob.count(conn, state="succeeded") == 5, timeout=20)
    delivered = [(h, b) for path, h, b in receiver.received if path == "/flaky"]
    assert len(delivered) == 9  # 4 answered 500, then each of the 5 once
    verifier = standardwebhooks.Webhook(SECRET)
    orders = set()
    for headers, body in delivered:
        verifier.verify(body, headers)  # the reference algorithm accepts our signature
        orders.add(json.loads(body)["order"])
    assert orders == set(range(5))
    ids_sent = {h["webhook-id"] for h, _ in delivered}
    assert len(ids_sent) == 5  # a retry carries the same id: receivers can drop repeats
    assert all(ob.get_job(conn, i).state == "succeeded" for i in ids)


async def test_a_webhook_answering_410_discards_the_job_with_the_status(dsn, ob, conn, receiver):
    mux = HandlerMux()
    mux.relay("orders.placed", relay.webhook(receiver.url + "/gone"), backoff=FAST)
    job_id = ob.enqueue(conn, "orders.placed", {"order": 1})
    async with running(Runner(mux, dsn=dsn, outbox=ob)):
        await eventually(lambda: ob.get_job(conn, job_id).state == "discarded", timeout=20)
    job = ob.get_job(conn, job_id)
    assert "410" in job.last_error and "gone for good" in job.last_error
    assert job.attempts == 1


# -- NATS JetStream ------------------------------------------------------------------------------


async def test_nats_gets_each_event_once_with_its_dedup_id(dsn, ob, conn):
    import nats

    prefix = f"t{uuid.uuid4().hex[:8]}"
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    await js.add_stream(name=prefix, subjects=[f"{prefix}.>"])
    try:
        mux = HandlerMux()
        destination = relay.nats(subject=prefix + ".{kind}.{payload[region]}")
        mux.relay(
            ["orders.placed", "orders.paid"], destination, envelope="cloudevents", backoff=FAST
        )
        jobs = [NewJob("orders.placed", {"region": "eu", "n": n}) for n in range(10)]
        jobs += [NewJob("orders.paid", {"region": "us", "n": n}) for n in range(10)]
        ob.enqueue_many(conn, jobs)
        async with running(Runner(mux, dsn=dsn, outbox=ob)):
            await eventually(lambda: ob.count(conn, state="succeeded") == 20, timeout=20)
        # A publish repeated (a runner that died before recording its outcome) is dropped.
        job = ob.list_jobs(conn, kind="orders.placed", limit=1)[0]
        from outbox.relay import message_for

        again = message_for(job, f"{prefix}.orders.placed.eu", "cloudevents")
        await destination.publish(again)
        await destination.close()
        info = await js.stream_info(prefix)
        assert info.state.messages == 20
        sub = await js.pull_subscribe(f"{prefix}.orders.paid.us", durable=None)
        msgs = await sub.fetch(10, timeout=5)
        event = json.loads(msgs[0].data)
        assert (event["type"], event["specversion"], event["source"]) == (
            "orders.paid",
            "1.0",
            "outbox",
        )
        assert msgs[0].headers["Nats-Msg-Id"] == event["id"]
    finally:
        await js.delete_stream(prefix)
        await nc.close()


async def test_nats_without_a_stream_for_the_subject_fails_and_retries(dsn, ob, conn):
    mux = HandlerMux()
    mux.relay("k", relay.nats(subject=f"nostream{uuid.uuid4().hex[:8]}.x"), backoff=FAST)
    job_id = ob.enqueue(conn, "k", max_attempts=2)
    async with running(Runner(mux, dsn=dsn, outbox=ob)):
        await eventually(lambda: ob.get_job(conn, job_id).state == "failed", timeout=30)
    assert "no JetStream stream takes subject" in ob.get_job(conn, job_id).last_error


# -- RabbitMQ ------------------------------------------------------------------------------------


async def test_rabbitmq_gets_persistent_messages_with_ids_and_refuses_unroutable(dsn, ob, conn):
    import aio_pika

    queue_name = f"q{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect_robust("amqp://guest:guest@127.0.0.1:5672/")
    channel = await connection.channel()
    queue = await channel.declare_queue(queue_name, auto_delete=True)
    try:
        mux = HandlerMux()
        mux.relay("orders.placed", relay.rabbitmq(routing_key=queue_name), backoff=FAST)
        mux.relay("lost", relay.rabbitmq(routing_key=f"nobody-{queue_name}"), backoff=FAST)
        ob.enqueue_many(conn, [NewJob("orders.placed", {"n": n}) for n in range(10)])
        lost = ob.enqueue(conn, "lost", max_attempts=2)
        async with running(Runner(mux, dsn=dsn, outbox=ob)):
            await eventually(lambda: ob.count(conn, state="succeeded") == 10, timeout=20)
            await eventually(lambda: ob.get_job(conn, lost).state == "failed", timeout=20)
        assert "no queue takes routing key" in ob.get_job(conn, lost).last_error
        got = []
        for _ in range(10):
            message = await queue.get(timeout=5)
            got.append(message)
            await message.ack()
        assert len({m.message_id for m in got}) == 10
        assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in got)
        assert sorted(json.loads(m.body)["n"] for m in got) == list(range(10))
    finally:
        await connection.close()


def test_relays_refuse_bad_settings_at_registration():
    with pytest.raises(ConfigurationError):
        relay.webhook("ftp://example.com")
    with pytest.raises(ConfigurationError):
        relay.webhook("https://example.com", secret="whsec_not base64!")
    with pytest.raises(ConfigurationError):
        relay.nats(subject="orders.{nope}")
    with pytest.raises(ConfigurationError):
        HandlerMux().relay("k", relay.nats(subject="x"), envelope="xml")  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern", ["orders.*", "orders.>", ["orders.placed", "orders.?"]])
def test_a_kind_pattern_is_refused_at_registration_with_the_kinds_to_list(pattern):
    mux = HandlerMux()
    with pytest.raises(ConfigurationError, match=r"kind patterns .* are not supported"):
        mux.relay(pattern, relay.nats(subject="x"))
    assert len(mux) == 0  # nothing half-registered

"""Error events: binary-mode CloudEvents POSTed to a real HTTP sink, and sinks that misbehave."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from outbox import (
    Backoff,
    ConfigurationError,
    HandlerMux,
    Job,
    JobEvent,
    NewJob,
    PermanentError,
    Runner,
)
from outbox.events import ERROR_EVENT_TYPE, CloudEventsSink
from tests.helpers import eventually, free_port, running, states

FAST = Backoff(base=0.01, cap=0.02)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Sink:
    """A tiny HTTP server that records requests and answers ``status`` (or hangs)."""

    status: int = 202
    hang: bool = False
    requests: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                sink.requests.append(Received("POST", self.path, headers, body))
                if sink.hang:
                    sink.release.wait(30)
                    return
                self.send_response(sink.status)
                if 300 <= sink.status < 400:
                    self.send_header("location", "/elsewhere")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def make_sink() -> Iterator[Any]:
    started: list[tuple[Sink, ThreadingHTTPServer, threading.Thread]] = []

    def make(status: int = 202, hang: bool = False) -> Sink:
        sink = Sink(status=status, hang=hang)
        server = ThreadingHTTPServer(("127.0.0.1", 0), sink.handler())
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        sink.url = f"http://127.0.0.1:{server.server_address[1]}/events"
        started.append((sink, server, thread))
        return sink

    yield make
    for sink, server, thread in started:
        sink.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def failing_mux() -> HandlerMux:
    mux = HandlerMux()

    @mux.register("ok")
    async def ok(job: Job) -> None:
        pass

    @mux.register("doomed")
    async def doomed(job: Job) -> None:
        raise RuntimeError(f"no luck on attempt {job.attempts}")

    @mux.register("bad")
    async def bad(job: Job) -> None:
        raise PermanentError("malformed order")

    return mux


def make_runner(dsn, ob, observer) -> Runner:
    return Runner(
        failing_mux(), dsn=dsn, outbox=ob, poll_interval=0.1, backoff=FAST, observer=observer
    )


def enqueue_mix(ob, conn) -> dict[str, int]:
    ids = ob.enqueue_many(
        conn,
        [NewJob("ok"), NewJob("ok"), NewJob("doomed", max_attempts=2), NewJob("bad", queue="mail")],
    )
    return {"ok": ids[0], "doomed": ids[2], "bad": ids[3]}


MIX_DONE = {"succeeded": 2, "failed": 1, "discarded": 1}


async def test_error_outcomes_arrive_as_binary_mode_cloudevents(dsn, ob, conn, make_sink):
    sink = make_sink()
    events = CloudEventsSink(sink.url, source="test/runner")
    ids = enqueue_mix(ob, conn)
    async with running(make_runner(dsn, ob, events)):
        await eventually(lambda: states(dsn, ob.schema) == MIX_DONE)
    assert events.close(10)
    assert (events.delivered, events.failed, events.dropped) == (3, 0, 0)

    by_action = {r.json()["action"]: r for r in sink.requests}
    assert sorted(by_action) == ["dead_lettered", "discarded", "retried"]
    assert len(sink.requests) == 3  # successes send nothing
    for request in sink.requests:
        assert request.method == "POST" and request.path == "/events"
        h = request.headers
        assert h["ce-specversion"] == "1.0"
        assert h["ce-type"] == ERROR_EVENT_TYPE == "dev.outbox.job.error.v1"
        assert h["ce-source"] == "test/runner"
        assert h["content-type"] == "application/json"
        assert h["ce-subject"] == str(request.json()["job_id"])
        uuid.UUID(h["ce-id"])
        sent = datetime.fromisoformat(h["ce-time"].replace("Z", "+00:00"))
        assert sent.tzinfo is not None
        assert abs(datetime.now(timezone.utc) - sent) < timedelta(minutes=1)
    assert len({r.headers["ce-id"] for r in sink.requests}) == 3

    assert by_action["retried"].json() == {
        "job_id": ids["doomed"], "kind": "doomed", "queue": "default", "attempt": 1,
        "max_attempts": 2, "action": "retried",
        "error": "RuntimeError: no luck on attempt 1",
    }  # fmt: skip
    assert by_action["dead_lettered"].json() == {
        "job_id": ids["doomed"], "kind": "doomed", "queue": "default", "attempt": 2,
        "max_attempts": 2, "action": "dead_lettered",
        "error": "RuntimeError: no luck on attempt 2",
    }  # fmt: skip
    assert by_action["discarded"].json() == {
        "job_id": ids["bad"], "kind": "bad", "queue": "mail", "attempt": 1,
        "max_attempts": 20, "action": "discarded",
        "error": "PermanentError: malformed order",
    }  # fmt: skip


@pytest.mark.parametrize("trouble", ["unreachable", "answers_500", "redirects", "hangs"])
async def test_a_failing_sink_changes_no_job_outcome_and_the_runner_keeps_going(
    dsn, ob, conn, make_sink, trouble
):
    if trouble == "unreachable":
        url = f"http://127.0.0.1:{free_port()}/events"  # nothing listens
    else:
        sink = make_sink(status=307 if trouble == "redirects" else 500, hang=trouble == "hangs")
        url = sink.url
    events = CloudEventsSink(url, timeout=0.3)
    enqueue_mix(ob, conn)
    async with running(make_runner(dsn, ob, events)):
        await eventually(lambda: states(dsn, ob.schema) == MIX_DONE)
        # The runner keeps going: later jobs run while deliveries fail or hang.
        ob.enqueue_many(conn, [NewJob("ok") for _ in range(5)] + [NewJob("bad")])
        await eventually(
            lambda: states(dsn, ob.schema) == {**MIX_DONE, "succeeded": 7, "discarded": 2}
        )
    assert events.close(10)
    assert events.delivered == 0
    assert events.failed == 4
    assert events.dropped == 0


def error_event(job_id: int = 1, outcome: str = "retried") -> JobEvent:
    return JobEvent(
        kind="k", queue="default", outcome=outcome, duration=0.01, lag=0.0,  # type: ignore[arg-type]
        job_id=job_id, attempt=1, max_attempts=3, error="RuntimeError: boom",
    )  # fmt: skip


@pytest.mark.parametrize("url", [None, ""])
def test_no_url_is_a_no_op(url):
    events = CloudEventsSink(url)
    assert not events.enabled
    for outcome in ("retried", "failed", "discarded"):
        events(error_event(outcome=outcome))
    assert events._thread is None
    assert (events.delivered, events.failed, events.dropped) == (0, 0, 0)
    assert events.close(0)


def test_successes_and_other_outcomes_send_nothing(make_sink):
    sink = make_sink()
    events = CloudEventsSink(sink.url)
    for outcome in ("succeeded", "cancelled", "released"):
        events(error_event(outcome=outcome))
    events(error_event(outcome="failed"))
    assert events.close(10)
    assert [r.json()["action"] for r in sink.requests] == ["dead_lettered"]


def test_a_full_queue_drops_without_blocking_and_warns_once_a_minute(make_sink):
    sink = make_sink(hang=True)
    events = CloudEventsSink(sink.url, timeout=0.5, max_queued=10)
    warnings: list[dict[str, Any]] = []

    class Recorder:
        def warning(self, event: str, **fields: Any) -> None:
            warnings.append({"event": event, **fields})

    events._log = Recorder()  # type: ignore[assignment]
    started = time.monotonic()
    for i in range(1000):
        events(error_event(job_id=i))
    assert time.monotonic() - started < 0.5  # no call waits for the sink
    # One event may already be with the delivery thread; the rest beyond the bound are dropped.
    assert 1000 - 11 <= events.dropped <= 1000 - 10
    assert [w["event"] for w in warnings] == ["events.dropped"]
    sink.release.set()


def test_close_sends_what_is_queued_then_drops_later_events(make_sink):
    sink = make_sink()
    events = CloudEventsSink(sink.url)
    for i in range(50):
        events(error_event(job_id=i))
    assert events.close(10)
    assert events.delivered == 50
    assert sorted(r.json()["job_id"] for r in sink.requests) == list(range(50))
    assert not events._thread.is_alive()
    events(error_event(job_id=99))
    assert events.dropped == 1


def test_close_gives_up_after_its_timeout_on_a_hanging_sink(make_sink):
    sink = make_sink(hang=True)
    events = CloudEventsSink(sink.url, timeout=5)
    events(error_event())
    started = time.monotonic()
    assert not events.close(0.2)
    assert time.monotonic() - started < 2


def test_header_values_are_percent_encoded(make_sink):
    sink = make_sink()
    events = CloudEventsSink(sink.url, source='my source\r\nX-Evil: 1 "100%"')
    events(error_event())
    assert events.close(10)
    (request,) = sink.requests
    assert request.headers["ce-source"] == "my%20source%0D%0AX-Evil:%201%20%22100%25%22"
    assert "x-evil" not in request.headers


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/", "example.com/events"])
def test_only_http_urls_are_accepted(url):
    with pytest.raises(ConfigurationError, match="http"):
        CloudEventsSink(url)

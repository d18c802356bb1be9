"""OpenTelemetry: the trace context at enqueue travels with the job to a linked handler span."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from outbox import HandlerMux, Job, NewJob, Runner
from tests.helpers import eventually, running

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider():
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)  # global and set-once: this module is its only user
    return provider


@pytest.fixture(autouse=True)
def clear_spans():
    EXPORTER.clear()


tracer = trace.get_tracer("tests")


def test_enqueue_inside_a_span_stores_its_trace_context(ob, conn):
    with tracer.start_as_current_span("request") as span:
        job_id = ob.enqueue(conn, "k")
    trace_id = format(span.get_span_context().trace_id, "032x")
    stored = ob.get_job(conn, job_id).metadata["trace"]
    assert stored["traceparent"].split("-")[1] == trace_id


def test_enqueue_outside_any_span_stores_no_metadata(ob, conn):
    assert ob.get_job(conn, ob.enqueue(conn, "k")).metadata is None


@pytest.mark.parametrize("unique", [False, True], ids=["copy", "insert"])
def test_bulk_enqueue_stores_the_trace_context_on_every_job(ob, conn, unique):
    jobs = [NewJob("k", unique_key=f"u{i}" if unique else None) for i in range(3)]
    with tracer.start_as_current_span("request"):
        ids = ob.enqueue_many(conn, jobs)
    assert all("traceparent" in ob.get_job(conn, i).metadata["trace"] for i in ids)


async def test_handler_runs_in_a_consumer_span_linked_to_the_enqueue(dsn, ob, conn):
    mux = HandlerMux()

    @mux.register("traced")
    def traced(job: Job) -> None:
        # A plain def runs in a thread: its spans still nest under the job's span.
        with tracer.start_as_current_span("inside the handler"):
            pass

    with tracer.start_as_current_span("request") as request_span:
        job_id = ob.enqueue(conn, "traced")
    async with running(Runner(mux, dsn=dsn, outbox=ob, poll_interval=0.1)):
        await eventually(lambda: ob.get_job(conn, job_id).state == "succeeded")

    spans = {span.name: span for span in EXPORTER.get_finished_spans()}
    job_span = spans["outbox.job traced"]
    assert job_span.kind == trace.SpanKind.CONSUMER
    assert [link.context.span_id for link in job_span.links] == [
        request_span.get_span_context().span_id
    ]
    assert job_span.attributes["messaging.message.id"] == str(job_id)
    assert spans["inside the handler"].parent.span_id == job_span.context.span_id


async def test_a_failing_attempt_marks_its_span_as_an_error(dsn, ob, conn):
    mux = HandlerMux()

    @mux.register("broken")
    async def broken(job: Job) -> None:
        raise RuntimeError("no")

    job_id = ob.enqueue(conn, "broken", max_attempts=1)
    async with running(Runner(mux, dsn=dsn, outbox=ob, poll_interval=0.1)):
        await eventually(lambda: ob.get_job(conn, job_id).state == "failed")
    (span,) = [s for s in EXPORTER.get_finished_spans() if s.name == "outbox.job broken"]
    assert span.status.status_code == trace.StatusCode.ERROR

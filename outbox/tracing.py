"""OpenTelemetry: the trace context active at enqueue travels with the job to its handler.

Optional: with ``opentelemetry-api`` installed (the ``otel`` extra) enqueue stores the active
W3C trace context in the job's ``metadata`` and the runner runs each handler in a consumer span
*linked* to it (a job may run long after, and many times; a link says "caused by" without
stretching the enqueuing trace). Without it, both are no-ops. No tracer is configured here:
the application's OpenTelemetry set-up decides where spans go.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from outbox.safety import safe_label

if TYPE_CHECKING:
    from outbox.models import Job

try:
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - the otel extra is not installed
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]

__all__ = ["ENABLED", "current_metadata", "job_span", "recording"]

ENABLED = trace is not None
"""Whether opentelemetry-api is installed."""


def recording() -> bool:
    """Whether the application has set a tracer provider (else every span is a no-op).

    Checked per job: without an SDK a span costs the runner about a fifth of its throughput on
    no-op handlers, for nothing.
    """
    if trace is None:
        return False
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def current_metadata() -> str | None:
    """The job metadata to store for the trace context active now (JSON text), or None."""
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return orjson.dumps({"trace": carrier}).decode() if carrier else None


@contextlib.contextmanager
def job_span(job: Job) -> Iterator[Any]:
    """Run a job's attempt inside a consumer span linked to its enqueue's trace context."""
    if trace is None:
        yield None
        return
    links = []
    carrier = (job.metadata or {}).get("trace")
    if isinstance(carrier, dict):
        context = trace.get_current_span(propagate.extract(carrier)).get_span_context()
        if context.is_valid:
            links.append(trace.Link(context))
    tracer = trace.get_tracer("outbox")
    kind = safe_label(job.kind)
    with tracer.start_as_current_span(
        f"outbox.job {kind}",
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "outbox",
            "messaging.operation.type": "process",
            "messaging.destination.name": safe_label(job.queue),
            "messaging.message.id": str(job.id),
            "outbox.job.kind": kind,
            "outbox.job.attempt": job.attempts,
        },
    ) as span:
        yield span

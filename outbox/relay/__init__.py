"""Relays: handlers that publish what the outbox holds to a broker or a webhook, at least once.

A relay is a handler registered for a kind, with the publisher's hard parts already right::

    from outbox import relay

    mux.relay("orders.placed", relay.nats(subject="orders.{kind}"))
    mux.relay("orders.placed", relay.webhook("https://partner.example/hooks", secret=SECRET))

Each message carries a dedup id derived from the job (``Message.id``, the same on every
attempt): NATS JetStream drops a repeat within its duplicate window, RabbitMQ consumers and
webhook receivers can drop it by id. A publish succeeds only on the broker's acknowledgement (a
PubAck, a publisher confirm, a 2xx), so a job ends ``succeeded`` only once its event is held by
the other side. A destination keeps one long-lived connection per runner and reconnects on its
own. Order: jobs with one ``ordering_key`` run one at a time in enqueue order, so their events
are published in that order; other events may be published in any order.
"""

from __future__ import annotations

import importlib
import string
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

import orjson

from outbox.errors import ConfigurationError, PermanentError
from outbox.models import Job

__all__ = [
    "Destination",
    "Envelope",
    "Message",
    "Template",
    "dedup_id",
    "message_for",
    "nats",
    "rabbitmq",
    "relay_handler",
    "require",
    "webhook",
]

Envelope = Literal["raw", "cloudevents", "cloudevents-binary"]
"""How the payload travels: as is (JSON), as a structured CloudEvent, or as a binary-mode
CloudEvent (the payload as the body, the attributes as ``ce-`` headers)."""

_FIELDS = frozenset({"kind", "id", "queue", "tenant", "ordering_key", "payload"})


class Template:
    """A subject, routing key or URL template, checked when it is made.

    It may name ``{kind}``, ``{id}``, ``{tenant}``, ``{ordering_key}``, ``{queue}`` or
    ``{payload[field]}``.
    """

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text:
            raise ConfigurationError(f"a relay template must be a non-empty str, got {text!r}")
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
        except ValueError as exc:
            raise ConfigurationError(f"bad relay template {text!r}: {exc}") from None
        for name in names:
            root = name.split("[", 1)[0].split(".", 1)[0]
            if root not in _FIELDS:
                raise ConfigurationError(
                    f"relay template {text!r} names {{{name}}}: use {sorted(_FIELDS)}"
                )
        self.text = text
        self.fixed = not names

    def render(self, job: Job) -> str:
        """The template for this job; a missing payload field makes the job fail for good."""
        if self.fixed:
            return self.text
        try:
            return self.text.format(
                kind=job.kind, id=job.id, queue=job.queue, tenant=job.tenant or "",
                ordering_key=job.ordering_key or "", payload=job.payload,
            )  # fmt: skip
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise PermanentError(
                f"relay template {self.text!r} cannot be filled from job {job.id}: {exc!r}"
            ) from None


@dataclass(frozen=True, slots=True)
class Message:
    """One event, ready for a destination."""

    id: str
    """The dedup id: the same on every attempt of the job, unique across jobs."""
    target: str
    """The rendered subject, routing key or URL."""
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)
    time: datetime | None = None


class Destination(Protocol):
    """Where a relay publishes.

    Raise ``RetryableError`` (optionally with ``retry_after``) for what may pass,
    ``PermanentError`` for what will not; anything else is retried too.
    """

    template: Template

    async def publish(self, message: Message) -> None:
        """Publish one message and return once the other side holds it."""
        ...

    async def close(self) -> None:
        """Close the connection (the next publish opens a new one)."""
        ...


def require(module: str, what: str, extra: str, timeout: float) -> None:
    """Refuse, at registration, a destination whose library is missing or whose timeout is bad."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"{what} relays need {module}: pip install 'outbox-runner[{extra}]'"
        ) from exc
    if not timeout > 0:
        raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout!r}")


def dedup_id(job: Job) -> str:
    """A stable id for the job's event: its id and creation time (ids restart after a reset)."""
    return f"outbox-{job.id}-{int(job.created_at.timestamp() * 1_000_000)}"


def message_for(
    job: Job, target: str, envelope: Envelope = "raw", source: str = "outbox"
) -> Message:
    """The message a relay sends for ``job``."""
    msg_id = dedup_id(job)
    data = (
        job.payload.model_dump(mode="json") if hasattr(job.payload, "model_dump") else job.payload
    )
    trace = (job.metadata or {}).get("trace") or {}
    extra = {k: str(v) for k, v in trace.items() if k in ("traceparent", "tracestate")}
    time = job.created_at
    if envelope == "raw":
        return Message(msg_id, target, orjson.dumps(data), "application/json", extra, time)
    attributes = {
        "specversion": "1.0", "id": msg_id, "source": source, "type": job.kind,
        "time": time.isoformat(), **extra,
    }  # fmt: skip
    if envelope == "cloudevents":
        event = {**attributes, "datacontenttype": "application/json", "data": data}
        return Message(
            msg_id, target, orjson.dumps(event), "application/cloudevents+json", {}, time
        )
    headers = {f"ce-{k}": v for k, v in attributes.items() if k not in extra}
    return Message(
        msg_id, target, orjson.dumps(data), "application/json", {**headers, **extra}, time
    )


def relay_handler(
    destination: Destination, *, envelope: Envelope = "raw", source: str = "outbox"
) -> Callable[[Job], Awaitable[None]]:
    """The handler that publishes each job's event to ``destination``."""
    if envelope not in ("raw", "cloudevents", "cloudevents-binary"):
        raise ConfigurationError(
            f"envelope must be 'raw', 'cloudevents' or 'cloudevents-binary', got {envelope!r}"
        )

    async def publish(job: Job) -> None:
        message = message_for(job, destination.template.render(job), envelope, source)
        await destination.publish(message)

    publish.__name__ = f"relay_to_{type(destination).__name__.lower()}"
    return publish


def nats(
    servers: str | Sequence[str] = "nats://127.0.0.1:4222", *, subject: str, timeout: float = 5.0
) -> Destination:
    """NATS JetStream (``outbox-runner[nats]``).

    Publishes to ``subject`` (a template) with ``Nats-Msg-Id`` set to the dedup id; succeeds
    on the stream's PubAck.
    """
    from outbox.relay.jetstream import NatsDestination

    return NatsDestination(servers, subject=Template(subject), timeout=timeout)


def rabbitmq(
    url: str = "amqp://guest:guest@127.0.0.1:5672/",
    *,
    routing_key: str,
    exchange: str = "",
    timeout: float = 5.0,
) -> Destination:
    """RabbitMQ (``outbox-runner[rabbitmq]``).

    Publishes a persistent message with ``message_id`` set to the dedup id, ``mandatory`` (an
    unroutable message is a failure), and succeeds on the publisher confirm.
    """
    from outbox.relay.amqp import RabbitDestination

    return RabbitDestination(
        url, routing_key=Template(routing_key), exchange=exchange, timeout=timeout
    )


def webhook(
    url: str,
    *,
    secret: str | None = None,
    timeout: float = 10.0,
    headers: Mapping[str, str] | None = None,
) -> Destination:
    """An HTTP webhook (``outbox-runner[webhooks]``).

    POSTs with the Standard Webhooks headers (``webhook-id``, ``webhook-timestamp``, and
    ``webhook-signature`` when a ``secret`` is given: ``whsec_…`` base64, or any other string
    as its bytes). 2xx succeeds; 408, 429 and 5xx retry (honouring ``Retry-After``); any other
    status discards the job with the status and the start of the body.
    """
    from outbox.relay.webhooks import WebhookDestination

    return WebhookDestination(
        Template(url), secret=secret, timeout=timeout, headers=dict(headers or {})
    )

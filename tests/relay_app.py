"""A relay for the real-process relay tests: ``outbox run tests.relay_app:mux``.

Events of kind ``event`` go where ``$OUTBOX_TEST_RELAY`` says:

- ``nats`` (the default): JetStream, subject ``$OUTBOX_TEST_SUBJECT.events``;
- ``rabbitmq``: the default exchange, routing key ``$OUTBOX_TEST_QUEUE``;
- ``webhook``: a POST to ``$OUTBOX_TEST_URL``, signed with ``$OUTBOX_TEST_SECRET``.
"""

from __future__ import annotations

import os

from outbox import Backoff, HandlerMux, relay
from outbox.relay import Destination


def _destination() -> Destination:
    where = os.environ.get("OUTBOX_TEST_RELAY", "nats")
    if where == "rabbitmq":
        return relay.rabbitmq(routing_key=os.environ["OUTBOX_TEST_QUEUE"], timeout=2)
    if where == "webhook":
        return relay.webhook(
            os.environ["OUTBOX_TEST_URL"], secret=os.environ.get("OUTBOX_TEST_SECRET"), timeout=2
        )
    return relay.nats(
        subject=os.environ.get("OUTBOX_TEST_SUBJECT", "outbox-test") + ".events", timeout=2
    )


mux = HandlerMux()
mux.relay("event", _destination(), backoff=Backoff(0.05, 0.5))

"""A relay for the real-process relay tests: ``outbox run tests.relay_app:mux``.

Events of kind ``event`` go to NATS JetStream, subject ``$OUTBOX_TEST_SUBJECT.<ordering key or
'none'>``."""

from __future__ import annotations

import os

from outbox import Backoff, HandlerMux, relay

mux = HandlerMux()
mux.relay(
    "event",
    relay.nats(subject=os.environ.get("OUTBOX_TEST_SUBJECT", "outbox-test") + ".events", timeout=2),
    backoff=Backoff(0.05, 0.5),
)

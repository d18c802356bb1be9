"""The listener: LISTENs for new jobs and wakes the dispatchers.

It holds one connection of its own. When that connection drops it reconnects with backoff and
wakes every lane at once, since notifications sent while no one listened are lost. Runners
also poll, so a listener that cannot connect only makes new jobs start a poll interval later.
While it listens, idle dispatchers ask enqueuers to notify (``Store.listen_for``); enqueues
send no notification otherwise.
"""

from __future__ import annotations

from typing import Any

from outbox.backoff import Backoff
from outbox.clock import Clock
from outbox.errors import DatabaseError
from outbox.runner.state import Shared
from outbox.safety import safe_failure_message
from outbox.store import Store

__all__ = ["LISTEN_BACKOFF", "Listener"]

LISTEN_BACKOFF = Backoff(base=0.1, cap=2.0)
"""Waits between tries to LISTEN again after the connection dropped."""


class Listener:
    """Wakes the lanes on each notification."""

    name = "listener"

    def __init__(self, shared: Shared, *, store: Store, clock: Clock, log: Any) -> None:
        self._shared = shared
        self._store = store
        self._clock = clock
        self._log = log

    async def run(self) -> None:
        """Listen until cancelled, reconnecting when the connection drops."""
        failures = 0
        try:
            while True:
                try:
                    async for _ in self._store.notifications():
                        failures = 0
                        self._shared.listening = True
                        self._shared.wake_all()
                except DatabaseError as exc:
                    self._shared.listening = False
                    failures += 1
                    self._log.warning("runner.listen_failed", error=safe_failure_message(exc))
                    await self._clock.sleep(LISTEN_BACKOFF.delay(failures))
        finally:
            self._shared.listening = False

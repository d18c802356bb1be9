"""Maintenance services: the rescuer (expired leases) and the pruner (old finished jobs).

Any number of runners may rescue at once: each statement locks its rows with
``FOR UPDATE SKIP LOCKED``. One runner a round prunes: the first to claim it. A round that fails
(the database is away) is simply tried again at the next one. (The vacuumer, which keeps the
table small between autovacuum's visits, is ``outbox.runner.vacuum``.)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from outbox.clock import Clock
from outbox.errors import DatabaseError
from outbox.runner.state import Shared
from outbox.safety import safe_failure_message
from outbox.store import Store

__all__ = ["PRUNE_EVERY", "RESCUE_BATCH", "Pruner", "Rescuer"]

RESCUE_BATCH = 1000
"""Expired leases recovered per statement."""

PRUNE_EVERY = 60.0
"""Seconds between pruning rounds."""


class Rescuer:
    """Every third of a lease, retries (or fails, on their last attempt) jobs whose runner died.

    It never rescues the jobs this runner still holds: after an outage their leases may have
    lapsed while their handlers ran, and their outcomes are on their way.
    """

    name = "rescuer"

    def __init__(
        self, shared: Shared, *, store: Store, lease_seconds: float, clock: Clock, log: Any
    ) -> None:
        self._shared = shared
        self._store = store
        self._every = lease_seconds / 3
        self._clock = clock
        self._log = log

    async def run(self) -> None:
        """Rescue expired leases until cancelled."""
        while True:
            held = [job_id for job_id, _ in self._shared.held]
            try:
                rescued = await self._store.rescue(RESCUE_BATCH, held)
            except DatabaseError as exc:
                self._log.warning("runner.rescue_failed", error=safe_failure_message(exc))
            else:
                if rescued:
                    self._log.info("runner.rescued", jobs=rescued)
                    self._shared.wake_all()
            await self._clock.sleep(self._every)


class Pruner:
    """Every PRUNE_EVERY seconds, deletes jobs that finished longer than ``retention`` ago.

    Of all the runners on one schema, one prunes a round: the first to ask (the others skip it).
    """

    name = "pruner"

    def __init__(self, *, store: Store, retention: timedelta, clock: Clock, log: Any) -> None:
        self._store = store
        self._retention = retention.total_seconds()
        self._clock = clock
        self._log = log

    async def run(self) -> None:
        """Prune until cancelled."""
        while True:
            await self.round()
            await self._clock.sleep(PRUNE_EVERY)

    async def round(self) -> None:
        """Prune, unless another runner has this round."""
        try:
            pruned = await self._store.prune(self._retention, once_per=PRUNE_EVERY * 0.9)
        except DatabaseError as exc:
            self._log.warning("runner.prune_failed", error=safe_failure_message(exc))
        else:
            if pruned:
                self._log.info("runner.pruned", jobs=pruned)

"""Maintenance services: the rescuer (expired leases) and the pruner (old finished jobs).

Any number of runners may rescue at once: each statement locks its rows with
``FOR UPDATE SKIP LOCKED``. One runner a round prunes: the first to claim it. Every VACUUM_EVERY
seconds each runner looks whether autovacuum has fallen far behind, and vacuums the jobs table
if so (``vacuum``; a vacuum that another holds is skipped). A round that fails (the database is
away) is simply tried again at the next one.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from outbox.clock import Clock
from outbox.errors import DatabaseError
from outbox.runner.state import Shared
from outbox.runner.vacuum import Vacuumer
from outbox.safety import safe_failure_message
from outbox.store import Store, VacuumingStore

__all__ = ["PRUNE_EVERY", "RESCUE_BATCH", "VACUUM_EVERY", "Pruner", "Rescuer"]

RESCUE_BATCH = 1000
"""Expired leases recovered per statement."""

PRUNE_EVERY = 60.0
"""Seconds between pruning rounds."""

VACUUM_EVERY = 2.5
"""Seconds between looks at the jobs table's dead rows (one cheap statistics query). Dead rows
come from every lease and outcome, not only from pruning: at thousands of jobs a second a
minute's wait (autovacuum's default naptime) lets a million pile up."""


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
    With ``vacuum`` (and a store that can, ``VacuumingStore``) it also looks every VACUUM_EVERY
    seconds, and vacuums the jobs table when ``vacuum.vacuum_due`` says so.
    """

    name = "pruner"

    def __init__(
        self, *, store: Store, retention: timedelta, clock: Clock, log: Any, vacuum: bool = True
    ) -> None:
        self._store = store
        self._retention = retention.total_seconds()
        self._clock = clock
        self._log = log
        self._vacuumer = (
            Vacuumer(store, log=log) if vacuum and isinstance(store, VacuumingStore) else None
        )
        self._pruned_at = -math.inf

    async def run(self) -> None:
        """Prune until cancelled."""
        while True:
            await self.round()
            every = PRUNE_EVERY if self._vacuumer is None else min(PRUNE_EVERY, VACUUM_EVERY)
            await self._clock.sleep(every)

    async def round(self) -> None:
        """Prune when due (unless another runner pruned this round); vacuum if the table needs."""
        now = self._clock.monotonic()
        if now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            try:
                pruned = await self._store.prune(self._retention, once_per=PRUNE_EVERY * 0.9)
            except DatabaseError as exc:
                self._log.warning("runner.prune_failed", error=safe_failure_message(exc))
                return  # the database is away: no use looking at its statistics either
            if pruned:
                self._log.info("runner.pruned", jobs=pruned)
        if self._vacuumer is not None:
            # Whoever vacuumed last (autovacuum, this runner or another), not again so soon.
            await self._vacuumer.round(quiet=min(PRUNE_EVERY, VACUUM_EVERY))

"""The periodic enqueuer: enqueues the job of each due tick of the mux's schedules.

Any number of runners with the same schedules enqueue exactly one job per tick between them
(``Store.fire_periodic``). It sleeps until the next tick, at most PERIODIC_MAX_SLEEP so that a
schedule changed in the database is seen soon; after downtime it logs the ticks it skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from outbox.clock import Clock
from outbox.errors import DatabaseError
from outbox.periodic import Schedule
from outbox.safety import safe_failure_message
from outbox.store import Store

__all__ = ["PERIODIC_MAX_SLEEP", "PeriodicEnqueuer"]

PERIODIC_MAX_SLEEP = 30.0
"""Longest wait between looks at the periodic schedules (a changed row is seen this soon)."""


class PeriodicEnqueuer:
    """Fires the mux's schedules."""

    name = "periodic"

    def __init__(
        self, *, store: Store, schedules: Sequence[Schedule], clock: Clock, log: Any
    ) -> None:
        self._store = store
        self._schedules = list(schedules)
        self._clock = clock
        self._log = log

    async def run(self) -> None:
        """Register the schedules, then fire their ticks, until cancelled."""
        registered = False
        while True:
            pause = PERIODIC_MAX_SLEEP
            try:
                if not registered:
                    await self._store.register_periodic(self._schedules)
                    registered = True
                fired, upcoming = await self._store.fire_periodic(self._schedules)
            except DatabaseError as exc:
                self._log.warning("runner.periodic_failed", error=safe_failure_message(exc))
            else:
                for tick in fired:
                    self._log.debug("periodic.enqueued", schedule=tick.name, job_id=tick.job_id)
                    if tick.missed:
                        self._log.warning(
                            "periodic.missed_ticks", schedule=tick.name, missed=tick.missed,
                            advice="no runner with this schedule was up: the latest missed "
                            "tick ran once, the earlier ones were skipped",
                        )  # fmt: skip
                until = (upcoming - self._clock.now()).total_seconds()
                # Clocks differ a little between hosts: look again just after the tick.
                pause = min(max(until + 0.01, 0.05), PERIODIC_MAX_SLEEP)
            await self._clock.sleep(pause)

"""The completer: writes the outcomes of finished attempts, many per statement.

It takes every outcome queued since its last write and writes them in one call while the
dispatchers lease the next jobs. A write that fails (the database is away) keeps the outcomes,
in order, for the next try, with backoff; ``Shared.writes_failing_since`` tells the heartbeat
how long writes have been failing, so that leases are not renewed for outcomes that cannot be
written. When the database returns, each outcome is written if its lease (id, attempts,
runner) still holds; one whose job another runner rescued meanwhile is dropped and logged as
``job.lease_lost``.
"""

from __future__ import annotations

from typing import Any

from outbox.backoff import Backoff
from outbox.clock import Clock
from outbox.errors import DatabaseError
from outbox.runner.state import Shared
from outbox.safety import safe_failure_message
from outbox.store import Store

__all__ = ["RECORD_BACKOFF", "Completer"]

RECORD_BACKOFF = Backoff(base=0.05, cap=2.0)
"""Waits between tries to write outcomes while the database is away."""


class Completer:
    """Records finished attempts in batches."""

    name = "completer"

    def __init__(
        self, shared: Shared, *, store: Store, runner_id: str, clock: Clock, log: Any
    ) -> None:
        self._shared = shared
        self._store = store
        self._runner_id = runner_id
        self._clock = clock
        self._log = log

    async def run(self) -> None:
        """Write outcomes as they come, until cancelled."""
        shared = self._shared
        failures = 0
        while True:
            if not shared.outcomes:
                await shared.outcome_ready.wait()
                shared.outcome_ready.clear()
                continue
            batch, shared.outcomes = shared.outcomes, []
            try:
                written = await self._store.record(self._runner_id, [w for _, w in batch])
            except DatabaseError as exc:
                shared.outcomes[:0] = batch  # kept, in order, for the next try
                if shared.writes_failing_since is None:
                    shared.writes_failing_since = self._clock.monotonic()
                failures += 1
                self._log.warning(
                    "runner.record_failed", error=safe_failure_message(exc), outcomes=len(batch)
                )
                await self._clock.sleep(RECORD_BACKOFF.delay(failures))
                continue
            except BaseException:
                shared.outcomes[:0] = batch  # a restarted completer writes them
                raise
            if failures:
                self._log.info("runner.record_resumed", outcomes=len(batch))
            failures = 0
            shared.writes_failing_since = None
            for held, outcome in batch:
                if outcome.id not in written:
                    self._log.warning("job.lease_lost", job_id=outcome.id, attempt=outcome.attempts)
                shared.forget(held)
            shared.unwritten -= len(batch)
            shared.room.set()

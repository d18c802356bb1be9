"""The dispatcher: one per lane, it leases jobs for the lane's free slots and starts them.

It leases ``min(free slots, batch_size)`` jobs in one statement whenever the lane has free
slots and is woken (a notification, a freed slot, a rescue) or the poll interval passes. With
a backlog and slots freeing one by one, it gathers a few before leasing rather than issuing a
statement per freed slot. A failed lease (the database is away) is retried with backoff.

In a one-shot run (``once=True``) it returns once nothing is due and every job it started has
its outcome written; with ``until`` (a monotonic deadline) it first waits for pending jobs,
retries among them, that fall due before then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from outbox import tracing
from outbox.backoff import Backoff
from outbox.clock import Clock
from outbox.errors import DatabaseError
from outbox.runner.state import Lane, Shared
from outbox.safety import safe_failure_message
from outbox.store import Leased, Store

__all__ = ["GATHER_SECONDS", "LEASE_BACKOFF", "RECHECK_SECONDS", "Dispatcher"]

GATHER_SECONDS = 0.002
"""With a backlog, how long a lane waits for more free slots before leasing a small batch."""

RECHECK_SECONDS = (0.005, 0.02, 0.05, 0.1, 0.2)
"""After a runner asks enqueuers to notify again (it had not asked for two poll intervals: it
was busy), the waits before its next leases. A transaction that enqueued before the request
reached Postgres sent no notification; one that commits within these waits is still found at
once, and one that commits later within a poll interval."""

LEASE_BACKOFF = Backoff(base=0.1, cap=2.0)
"""Waits between tries to lease while the database is away."""


class Dispatcher:
    """Leases the jobs of one lane and hands them to ``start``."""

    def __init__(
        self,
        shared: Shared,
        lane: Lane,
        *,
        name: str,
        store: Store,
        start: Callable[[Lane, Sequence[Leased]], None],
        runner_id: str,
        kinds: Sequence[str],
        lease_seconds: float,
        poll_interval: float,
        clock: Clock,
        log: Any,
        once: bool = False,
        until: float | None = None,
    ) -> None:
        self.name = name
        self._once = once
        self._until = until
        self._shared = shared
        self._lane = lane
        self._store = store
        self._start = start
        self._runner_id = runner_id
        self._kinds = list(kinds)
        self._lease_seconds = lease_seconds
        self._poll_interval = poll_interval
        self._clock = clock
        self._log = log
        self._rechecks: list[float] = []

    async def run(self) -> None:
        """Lease and start jobs until the runner stops."""
        shared, lane = self._shared, self._lane
        failures = 0
        backlog = False
        while not shared.stopping.is_set():
            lane.wake.clear()
            batch = min(lane.limit, shared.batch_size)
            if backlog and 0 < lane.limit - lane.busy < batch // 4:
                # Jobs are waiting and slots free up one by one: gather a few before leasing.
                await asyncio.sleep(GATHER_SECONDS)
            want = min(lane.limit - lane.busy, shared.batch_size)
            got = 0
            if want > 0:
                try:
                    rows = await self._store.lease(
                        self._runner_id, self._kinds, lane.queues, want, self._lease_seconds
                    )
                except DatabaseError as exc:
                    failures += 1
                    self._log.warning("runner.lease_failed", error=safe_failure_message(exc))
                    await self._clock.wait(shared.stopping, LEASE_BACKOFF.delay(failures))
                    continue
                if failures:
                    self._log.info("runner.lease_resumed", after_failures=failures)
                failures = 0
                got = len(rows)
                # Per batch, not per job: asking OpenTelemetry costs microseconds.
                shared.tracing = tracing.ENABLED and tracing.recording()
                if got:
                    self._start(lane, rows)
                    self._log.debug("runner.leased", jobs=got, queues=lane.queues)
                # A full batch means more are probably waiting; a short one, that none are.
                backlog = got == want
                if got:
                    self._rechecks.clear()
            if got and got == want:
                continue
            if self._once and not got and not lane.busy:
                pause = await self._idle_pause()
                if pause is None:
                    return
                await self._clock.wait(lane.wake, pause)
                continue
            if want > 0 and await self._listen_for_work():
                continue  # lease again: jobs may have committed before the request
            wait = self._rechecks.pop(0) if self._rechecks else self._poll_interval
            await self._clock.wait(lane.wake, wait)

    async def _listen_for_work(self) -> bool:
        """With free slots and no work: keep enqueuers notifying for two poll intervals more.

        Returns True when they may have stopped (this runner had not asked for that long): jobs
        enqueued meanwhile sent no notification, so the lane leases again now, and again after
        each of RECHECK_SECONDS.
        """
        shared = self._shared
        now = self._clock.monotonic()
        if not shared.listening or now - shared.listened_at < self._poll_interval / 2:
            return False
        # Two poll intervals ahead, renewed after half of one: an idle lane wakes at least
        # every poll interval, so the deadline never lapses while it waits.
        lapsed = now - shared.listened_at >= 2 * self._poll_interval
        try:
            await self._store.listen_for(2 * self._poll_interval)
        except DatabaseError as exc:
            self._log.warning("runner.listen_failed", error=safe_failure_message(exc))
            return False
        shared.listened_at = now
        if lapsed:
            self._rechecks = list(RECHECK_SECONDS)
        return lapsed

    async def _idle_pause(self) -> float | None:
        """In a one-shot run with nothing due: how long to wait for more, or None to end."""
        if any(h.lane is self._lane for h in self._shared.held.values()):
            return self._poll_interval  # outcomes still being written: a retry may follow
        if self._until is None:
            return None
        left = self._until - self._clock.monotonic()
        try:
            due = await self._store.seconds_until_due(self._kinds, self._lane.queues)
        except DatabaseError as exc:
            self._log.warning("runner.lease_failed", error=safe_failure_message(exc))
            return self._poll_interval
        if due is None or due > left:
            return None
        if due <= 0:  # due, yet not leased: held back by a limit, a key's head or a lock
            return self._poll_interval
        return min(max(due, 0.01), self._poll_interval)

"""What the runner's services share: the jobs held, the lanes, the outcomes waiting to be written.

Every service imports this module and no service imports another: they talk through this
state (events, the held table, the outcome queue), and only the runner knows them all.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Literal

from outbox.models import Job
from outbox.mux import Route
from outbox.store import LeaseKey, Outcome

__all__ = ["Held", "Lane", "Shared", "StopReason"]

StopReason = Literal["shutdown", "cancelled"]


@dataclass(eq=False)
class Lane:
    """A concurrency pool: the queues it serves and how many of their jobs may run at once."""

    queues: list[str] | None
    limit: int
    busy: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False, slots=True)
class Held:
    """A job this runner holds a lease on, from lease until its outcome is written."""

    job: Job
    lane: Lane
    route: Route
    key: LeaseKey
    """(id, attempts): the lease, as every write after it names it."""
    task: asyncio.Task[None] | None = None
    stop_reason: StopReason | None = None
    """Why the runner cancelled the handler."""
    slot_freed: bool = False
    """Its lane slot is free again (the outcome is with the completer, or there is none)."""
    outcome_queued: bool = False
    """The handler ended and its outcome waits to be written."""


class Shared:
    """The state of one run of a runner; made on its event loop when the run starts."""

    def __init__(self, lanes: list[Lane], batch_size: int) -> None:
        self.lanes = lanes
        self.batch_size = batch_size
        self.held: dict[LeaseKey, Held] = {}
        self.outcomes: list[tuple[Held, Outcome]] = []
        self.outcome_ready = asyncio.Event()
        self.room = asyncio.Event()
        self.unwritten = 0
        """Outcomes handed to the completer and not yet written."""
        self.stopping = asyncio.Event()
        self.stop_now = False
        self.writes_failing_since: float | None = None
        """Monotonic time of the first failed write of outcomes still unwritten, else None."""
        self.tracing = False
        self.listening = False
        """The listener holds a LISTEN: notifications reach this runner."""
        self.listened_at = -math.inf
        """Monotonic time this runner last asked enqueuers to notify (Store.listen_for)."""
        for lane in lanes:
            lane.wake = asyncio.Event()
            lane.busy = 0

    def wake_all(self) -> None:
        """Make every lane look for jobs now."""
        for lane in self.lanes:
            lane.wake.set()

    def free_slot(self, held: Held) -> None:
        """Give the job's lane slot back (once)."""
        if not held.slot_freed:
            held.slot_freed = True
            held.lane.busy -= 1
            held.lane.wake.set()

    def forget(self, held: Held) -> None:
        """The job is no longer ours: its outcome was written, or it was lost or cancelled."""
        if self.held.get(held.key) is held:
            del self.held[held.key]
        self.free_slot(held)
        held.lane.wake.set()  # a one-shot run waits for the last outcome before it ends

    def snapshot(self) -> list[Held]:
        """The held jobs, safe to call from another thread (the heartbeat's)."""
        while True:
            try:
                return list(self.held.values())
            except RuntimeError:  # the dict changed size under us: read again
                continue

    def renewable(self, now: float, lease_seconds: float) -> list[LeaseKey] | None:
        """The leases to renew now; None when renewal must pause (see below).

        A lease is renewed while its handler runs or its outcome waits to be written, and only
        while outcomes can be written: once writes have failed for longer than a lease, the
        runner lets its leases expire, so that a healthy runner may rescue those jobs.
        """
        since = self.writes_failing_since
        if since is not None and now - since > lease_seconds:
            return None
        return [
            held.key
            for held in self.snapshot()
            # No task yet: the handler is starting (an eager task runs before it is returned).
            if held.outcome_queued or held.task is None or not held.task.done()
        ]

"""Time, as the runner and the in-memory store see it: injectable, so tests advance it.

Every wait the runner makes (retry backoff, lease renewal, maintenance rounds, periodic ticks,
restarts of a failed service) goes through a :class:`Clock`. ``SystemClock`` is the real one;
``outbox.testing.FakeClock`` moves only when a test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from datetime import datetime, timezone
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time and of waits on it."""

    def now(self) -> datetime:
        """The wall-clock time, timezone-aware (UTC)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: for intervals."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` pass; return whether it was set."""

    def wait_in_thread(self, event: threading.Event, seconds: float) -> bool:
        """``wait`` for a thread (the heartbeat's): block until ``event`` is set or time passes."""


class SystemClock:
    """The real clock: ``time.monotonic``, ``datetime.now(UTC)`` and asyncio's timers."""

    def now(self) -> datetime:
        """The wall-clock time in UTC."""
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(max(seconds, 0.0))

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait for ``event`` with a timeout."""
        if event.is_set():
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), max(seconds, 0.0))
        return event.is_set()

    def wait_in_thread(self, event: threading.Event, seconds: float) -> bool:
        """``threading.Event.wait``."""
        return event.wait(max(seconds, 0.0))


SYSTEM_CLOCK = SystemClock()
"""The clock everything uses unless given another."""

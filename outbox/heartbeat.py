"""Lease renewal from a thread of its own.

Heartbeats run on their own thread (and, for PgStore, connection), not on the event loop, so an
``async def`` handler that blocks the loop (sync I/O, a long computation) cannot make its runner
lose every lease it holds. The thread also notices when the loop stops answering and says so.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from outbox.errors import OutboxError
from outbox.safety import safe_failure_message

__all__ = ["HeartbeatThread"]


class HeartbeatThread:
    """Every third of a lease, extend the leases of the jobs a runner holds."""

    def __init__(
        self,
        *,
        renew: Callable[[list[int], float], set[int]],
        lease_seconds: float,
        held: Callable[[], list[int]],
        on_lost: Callable[[set[int]], None],
        blocking_kinds: Callable[[], list[str]],
        loop: asyncio.AbstractEventLoop,
        log: Any,
    ) -> None:
        self._renew = renew
        self._lease = lease_seconds
        self._held = held
        self._on_lost = on_lost
        self._blocking_kinds = blocking_kinds
        self._loop = loop
        self._log = log
        self._stopping = threading.Event()
        self._loop_seen = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="outbox-heartbeat", daemon=True)

    def start(self) -> None:
        """Start renewing."""
        self._thread.start()

    async def stop(self) -> None:
        """Stop renewing and wait for the thread (without blocking the loop)."""
        self._stopping.set()
        await asyncio.to_thread(self._thread.join)

    def _touch(self) -> None:
        self._loop_seen = time.monotonic()

    def _check_loop(self, interval: float) -> None:
        stalled = time.monotonic() - self._loop_seen
        if stalled > interval * 1.5:
            self._log.warning(
                "runner.event_loop_blocked",
                seconds=round(stalled, 1),
                running_async_kinds=self._blocking_kinds(),
                advice="an async def handler is blocking the event loop: leases are still "
                "renewed, but nothing else runs. Await in it, or make it a plain def.",
            )
        try:
            self._loop.call_soon_threadsafe(self._touch)
        except RuntimeError:  # the loop is closed: the runner is going away
            self._stopping.set()

    def _run(self) -> None:
        interval = self._lease / 3
        while not self._stopping.wait(interval):
            self._check_loop(interval)
            ids = self._held()
            if not ids:
                continue
            try:
                alive = self._renew(ids, self._lease)
            except OutboxError as exc:
                self._log.warning("runner.heartbeat_failed", error=safe_failure_message(exc))
                continue
            lost = set(ids) - alive
            if lost:
                try:
                    self._loop.call_soon_threadsafe(self._on_lost, lost)
                except RuntimeError:  # the loop is closed: the runner is going away
                    return

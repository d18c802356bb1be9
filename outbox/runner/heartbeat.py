"""The heartbeat: renews the leases of the jobs held, from a thread of its own.

Heartbeats run on their own thread (and, for PgStore, connection), not on the event loop, so an
``async def`` handler that blocks the loop (sync I/O, a long computation) cannot make its runner
lose every lease it holds. The thread also notices when the loop stops answering and says so.

Every third of a lease it renews the leases ``Shared.renewable`` names: jobs whose handler
runs or whose outcome waits to be written, and none while outcomes have failed to be written
for longer than a lease (``runner.renewal_paused``), so that a healthy runner may rescue them.
Leases found lost (cancelled, or taken over after expiry) have their handlers stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

from outbox.clock import Clock
from outbox.errors import DatabaseError
from outbox.runner.state import Shared
from outbox.safety import safe_failure_message, safe_label
from outbox.store import LeaseKey

__all__ = ["Heartbeat"]


class Heartbeat:
    """Renews leases every third of ``lease_seconds``; a service whose loop is a thread."""

    name = "heartbeat"

    def __init__(
        self,
        shared: Shared,
        *,
        renew: Callable[[Sequence[LeaseKey], float], set[LeaseKey]],
        lease_seconds: float,
        clock: Clock,
        log: Any,
    ) -> None:
        self._shared = shared
        self._renew = renew
        self._lease = lease_seconds
        self._clock = clock
        self._log = log
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_seen = 0.0
        self._paused = False

    async def run(self) -> None:
        """Renew from a new thread until cancelled; a crash of the thread ends this too."""
        loop = self._loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        stopping = threading.Event()

        def target() -> None:
            try:
                self._beat(stopping)
            except BaseException as exc:
                self._settle(done, exc)
            else:
                self._settle(done, None)

        self._loop_seen = self._clock.monotonic()
        thread = threading.Thread(target=target, name="outbox-heartbeat", daemon=True)
        thread.start()
        try:
            await asyncio.shield(done)
        finally:
            stopping.set()
            await asyncio.to_thread(thread.join)

    def _settle(self, done: asyncio.Future[None], exc: BaseException | None) -> None:
        def settle() -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: the runner is gone
            self._loop.call_soon_threadsafe(settle)

    def _beat(self, stopping: threading.Event) -> None:
        interval = self._lease / 3
        while not self._clock.wait_in_thread(stopping, interval):
            self._check_loop(interval)
            leases = self._shared.renewable(self._clock.monotonic(), self._lease)
            if leases is None:
                if not self._paused:
                    self._paused = True
                    self._log.error(
                        "runner.renewal_paused",
                        advice="outcomes have not been written for longer than a lease: "
                        "leases are left to expire so that another runner can rescue the jobs",
                    )
                continue
            if self._paused:
                self._paused = False
                self._log.info("runner.renewal_resumed")
            if not leases:
                continue
            try:
                alive = self._renew(leases, self._lease)
            except DatabaseError as exc:
                self._log.warning("runner.heartbeat_failed", error=safe_failure_message(exc))
                continue
            lost = set(leases) - alive
            if lost and self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self._stop_lost, lost)
                except RuntimeError:  # the loop is closed: the runner is going away
                    return

    def _check_loop(self, interval: float) -> None:
        stalled = self._clock.monotonic() - self._loop_seen
        if stalled > interval * 1.5:
            self._log.warning(
                "runner.event_loop_blocked",
                seconds=round(stalled, 1),
                running_async_kinds=self._async_kinds_running(),
                advice="an async def handler is blocking the event loop: leases are still "
                "renewed, but nothing else runs. Await in it, or make it a plain def.",
            )
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: the runner is going away
            self._loop.call_soon_threadsafe(self._touch)

    def _touch(self) -> None:
        self._loop_seen = self._clock.monotonic()

    def _async_kinds_running(self) -> list[str]:
        held = self._shared.snapshot()
        kinds = {
            h.job.kind
            for h in held
            if h.route.is_async and (h.task is None or not h.task.done())  # None: starting
        }
        return sorted(safe_label(kind) for kind in kinds)

    def _stop_lost(self, lost: set[LeaseKey]) -> None:
        """Stop the handlers of jobs whose lease is gone: cancelled, or taken over."""
        for key in lost:
            held = self._shared.held.get(key)
            if held is None or held.task is None or held.task.done():
                continue
            held.stop_reason = "cancelled"
            held.task.cancel()

"""The supervisor: starts the runner's services, watches them, restarts one that ends.

A service is an object with a ``name`` and an ``async run()`` that loops until cancelled. When
``run`` ends while the runner is not stopping (it raised, or returned), the supervisor logs
``runner.service_failed`` with the service's name and the bounded error, waits a jittered
backoff and starts it again (``runner.service_restarted``). Database errors never count
against a service: an outage of any length is waited out. Any other failure counts, and a
service that fails more than SERVICE_MAX_FAILURES times in a row (each time within
SERVICE_HEALTHY_AFTER seconds of its start) makes the supervisor give up: it logs
``runner.service_gave_up`` and calls ``on_give_up``, which stops the runner with
``RunnerFailedError``, so that systemd or Kubernetes restart the process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from outbox.backoff import Backoff
from outbox.clock import Clock
from outbox.errors import DatabaseError
from outbox.safety import safe_failure_message

__all__ = [
    "CANCEL_TIMEOUT",
    "SERVICE_HEALTHY_AFTER",
    "SERVICE_MAX_FAILURES",
    "Service",
    "Supervisor",
    "cancel_and_wait",
]

SERVICE_MAX_FAILURES = 5
"""Failures in a row (other than database errors) after which a service is given up on."""

SERVICE_HEALTHY_AFTER = 60.0
"""Seconds a service must run before its next failure counts as the first again."""

RESTART_BACKOFF = Backoff(base=0.2, cap=10.0)
"""Delays before restarting a failed service: full jitter, at most 10 s."""

CANCEL_TIMEOUT = 5.0
"""How long stopping keeps cancelling a task that will not end before leaving it behind."""


class Service(Protocol):
    """One loop of the runner, started, watched and stopped by the supervisor."""

    name: str

    async def run(self) -> None:
        """Do the service's work until cancelled."""


@dataclass(eq=False)
class _Watched:
    service: Service
    task: asyncio.Task[None]
    failures: int = 0
    last_error: str | None = None


class Supervisor:
    """Runs services, restarts those that end, and gives up loudly on one that keeps failing."""

    def __init__(
        self,
        *,
        clock: Clock,
        log: Any,
        stopping: asyncio.Event,
        on_give_up: Callable[[str, BaseException | None], None],
        max_failures: int = SERVICE_MAX_FAILURES,
        healthy_after: float = SERVICE_HEALTHY_AFTER,
        backoff: Backoff = RESTART_BACKOFF,
    ) -> None:
        self._clock = clock
        self._log = log
        self._stopping = stopping
        self._on_give_up = on_give_up
        self._max_failures = max_failures
        self._healthy_after = healthy_after
        self._backoff = backoff
        self._watched: dict[str, _Watched] = {}
        self.gave_up: str | None = None
        """The name of the service given up on, if any."""

    def start(self, service: Service) -> None:
        """Run ``service`` under watch."""
        if service.name in self._watched:
            raise ValueError(f"a service named {service.name!r} is already supervised")
        task = asyncio.create_task(self._watch(service), name=f"outbox-{service.name}")
        self._watched[service.name] = _Watched(service, task)

    def services(self) -> dict[str, str]:
        """Each service's state: 'running', 'restarting' (with its last error) or 'failed'."""
        states = {}
        for name, watched in self._watched.items():
            if watched.task.done():
                states[name] = "failed" if name == self.gave_up else "stopped"
            elif watched.last_error is not None:
                states[name] = f"restarting after: {watched.last_error}"
            else:
                states[name] = "running"
        return states

    async def stop(self, names: Sequence[str] | None = None, *, grace: float = 0.0) -> None:
        """Stop these services (all when None) and wait for them to end.

        Those that end by themselves within ``grace`` seconds (a dispatcher finishing the lease
        it is waiting on, once the runner is stopping) are not cancelled.
        """
        chosen = [w for n, w in self._watched.items() if names is None or n in names]
        await cancel_and_wait([w.task for w in chosen], grace=grace)

    async def _watch(self, service: Service) -> None:
        watched = self._watched[service.name]
        while True:
            started = self._clock.monotonic()
            error: BaseException | None = None
            try:
                await service.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            if self._stopping.is_set():
                return
            if self._clock.monotonic() - started >= self._healthy_after:
                watched.failures = 0
            if not isinstance(error, DatabaseError):
                watched.failures += 1
            reason = safe_failure_message(error) if error else "the service returned"
            watched.last_error = reason
            self._log.error(
                "runner.service_failed",
                service=service.name,
                error=reason,
                failures=watched.failures,
                limit=self._max_failures,
            )
            if watched.failures > self._max_failures:
                self.gave_up = service.name
                self._log.critical(
                    "runner.service_gave_up",
                    service=service.name,
                    error=reason,
                    advice="the runner stops so that its supervisor (systemd, Kubernetes) "
                    "restarts the process",
                )
                self._on_give_up(service.name, error)
                return
            delay = self._backoff.delay(max(watched.failures, 1))
            await self._clock.sleep(delay)
            if self._stopping.is_set():
                return
            self._log.info("runner.service_restarted", service=service.name, after=round(delay, 3))
            watched.last_error = None


async def cancel_and_wait(
    tasks: Sequence[asyncio.Task[Any]], *, grace: float = 0.0
) -> set[asyncio.Task[Any]]:
    """Let ``tasks`` end within ``grace`` seconds, then cancel them until they have ended.

    One ``cancel()`` is not enough: before Python 3.12, ``asyncio.wait_for`` (which psycopg
    uses while it waits on the socket) drops a cancellation that arrives just as what it waits
    for completes, and a handler may catch ``CancelledError``. So cancel again until the task
    ends, for up to CANCEL_TIMEOUT seconds; return the tasks that outlived that.
    """
    pending = {task for task in tasks if not task.done()}
    if pending and grace > 0:
        _, pending = await asyncio.wait(pending, timeout=grace)
    deadline = time.monotonic() + CANCEL_TIMEOUT
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a failure was logged where it happened
    return pending

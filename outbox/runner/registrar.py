"""The registrar: keeps this runner's row in ``<schema>.runners`` fresh; names unhandled kinds.

Every REGISTER_EVERY seconds it refreshes the row (kinds, queues, concurrency, jobs held now)
and deletes the rows of runners that stopped refreshing theirs. At start and every
UNHANDLED_EVERY seconds it asks which runnable kinds no live runner serves, and logs
``runner.unhandled_kind`` once per kind when it appears. The row is removed on a clean stop.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from outbox.clock import Clock
from outbox.errors import DatabaseError
from outbox.runner.state import Shared
from outbox.runners import RUNNER_STALE_SECONDS
from outbox.safety import safe_failure_message, safe_label
from outbox.store import RunnerRow, Store

__all__ = ["REGISTER_EVERY", "UNHANDLED_EVERY", "Registrar", "package_version"]

REGISTER_EVERY = 10.0
"""Seconds between refreshes of the runner's row (stale after RUNNER_STALE_SECONDS)."""

UNHANDLED_EVERY = 60.0
"""Seconds between looks for kinds nobody handles (one pass over the pending jobs)."""


def package_version() -> str:
    """The installed outbox-runner version, or 0+unknown from a bare source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("outbox-runner")
    except PackageNotFoundError:
        return "0+unknown"


class Registrar:
    """Registers the runner and reports unhandled kinds."""

    name = "registrar"

    def __init__(
        self, shared: Shared, *, store: Store, row: RunnerRow, clock: Clock, log: Any
    ) -> None:
        self._shared = shared
        self._store = store
        self._row = row
        self._clock = clock
        self._log = log
        self._reported: set[str] = set()

    async def run(self) -> None:
        """Refresh and look until cancelled."""
        next_look = self._clock.monotonic()
        while True:
            try:
                running = len(self._shared.held)
                await self._store.register_runner(self._row._replace(running=running))
                await self._store.expire_runners(RUNNER_STALE_SECONDS)
                if self._clock.monotonic() >= next_look:
                    next_look = self._clock.monotonic() + UNHANDLED_EVERY
                    self._report(await self._store.unhandled_kinds(RUNNER_STALE_SECONDS))
            except DatabaseError as exc:
                self._log.warning("runner.register_failed", error=safe_failure_message(exc))
            await self._clock.sleep(REGISTER_EVERY)

    def _report(self, unhandled: list[tuple[str, int]]) -> None:
        kinds = {kind for kind, _ in unhandled}
        for kind, jobs in unhandled:
            if kind not in self._reported:
                self._log.warning(
                    "runner.unhandled_kind",
                    kind=safe_label(kind),
                    jobs=jobs,
                    advice="runnable jobs of this kind wait and no live runner handles it: "
                    "a typo in the kind, or a deploy that forgot its handler",
                )
        self._reported = kinds  # a kind that comes back is reported again


def this_host() -> tuple[str, int]:
    """Host name and process id, for the runner's row."""
    return socket.gethostname()[:255], os.getpid()

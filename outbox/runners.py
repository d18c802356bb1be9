"""Live runners and the jobs nobody handles: plans over ``<schema>.runners``.

Each runner keeps a row of its own fresh (its registrar service); a row not refreshed for
RUNNER_STALE_SECONDS belongs to a runner that died and is deleted. ``unhandled_kinds`` names
the runnable pending jobs of a kind (in a queue) that no live runner serves: a typo in a kind,
or a deploy that forgot a handler, which would otherwise look like a slow queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from outbox import queries
from outbox.db import Plan, Statement

__all__ = [
    "RUNNER_STALE_SECONDS",
    "RunnerInfo",
    "UnhandledKind",
    "expire_runners_plan",
    "list_runners_plan",
    "register_runner_plan",
    "remove_runner_plan",
    "unhandled_kinds_plan",
]

RUNNER_STALE_SECONDS = 60.0
"""A runner whose row was not refreshed for this long is dead (rows refresh every 10 s)."""


@dataclass(frozen=True)
class RunnerInfo:
    """One live runner, as its own row says."""

    id: str
    host: str
    pid: int
    version: str
    kinds: list[str]
    queues: list[str] | None
    """The queues it serves; None: every queue."""
    concurrency: int
    started_at: datetime
    last_seen: datetime
    running: int
    """Jobs it held at its last refresh."""
    seen_seconds_ago: float


@dataclass(frozen=True)
class UnhandledKind:
    """Runnable pending jobs of one kind that no live runner serves."""

    kind: str
    jobs: int
    oldest_seconds: float
    """How long the oldest of them has been runnable."""


def register_runner_plan(
    schema: str,
    *,
    runner_id: str,
    host: str,
    pid: int,
    version: str,
    kinds: Sequence[str],
    queues: Sequence[str] | None,
    concurrency: int,
    running: int,
) -> Plan[None]:
    """Create or refresh a runner's row."""
    params = {
        "id": runner_id, "host": host, "pid": pid, "version": version, "kinds": list(kinds),
        "queues": None if queues is None else list(queues), "concurrency": concurrency,
        "running": running,
    }  # fmt: skip
    yield Statement(queries.query("register_runner", schema), params)


def remove_runner_plan(schema: str, runner_id: str) -> Plan[None]:
    """Delete a runner's row (a clean stop)."""
    yield Statement(queries.query("remove_runner", schema), {"id": runner_id})


def expire_runners_plan(schema: str, stale: float = RUNNER_STALE_SECONDS) -> Plan[int]:
    """Delete the rows of runners that stopped refreshing them; return how many."""
    rows = yield Statement(queries.query("expire_runners", schema), {"stale": stale})
    return len(rows)


def list_runners_plan(schema: str, stale: float = RUNNER_STALE_SECONDS) -> Plan[list[RunnerInfo]]:
    """The live runners (refreshed within ``stale`` seconds), oldest first."""
    rows = yield Statement(queries.query("list_runners", schema), {"stale": stale})
    return [RunnerInfo(*row) for row in rows]


def unhandled_kinds_plan(
    schema: str, stale: float = RUNNER_STALE_SECONDS
) -> Plan[list[UnhandledKind]]:
    """Kinds with runnable pending jobs that no live runner serves, most jobs first."""
    rows = yield Statement(queries.query("unhandled_kinds", schema), {"stale": stale})
    return [UnhandledKind(kind, int(jobs), float(oldest)) for kind, jobs, oldest in rows]

"""Periodic jobs: schedules registered on a mux, enqueued once per tick by any number of runners.

Each schedule has a row in ``<schema>.periodic`` holding its next tick. A runner enqueues a
tick's job in the same transaction as it moves that row past the tick, locking it with
``FOR UPDATE SKIP LOCKED`` and guarding on the tick it read: of any number of runners exactly
one enqueues each tick, and a crash either did both or neither. After downtime the most recent
missed tick fires once and the skipped ones are logged: never a burst, never silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from croniter import croniter

from outbox import queries
from outbox.db import Plan, Statement
from outbox.enqueuing import dump_payload
from outbox.errors import ConfigurationError
from outbox.safety import MAX_PAYLOAD_BYTES, sanitize_kind, sanitize_queue

__all__ = ["MAX_MISSED_COUNTED", "Fired", "Schedule", "fire_due_plan", "register_plan"]

MAX_MISSED_COUNTED = 10_000
"""Missed ticks counted after downtime, at most (a per-second schedule down for a day)."""


@dataclass(frozen=True)
class Schedule:
    """When and what to enqueue: a cron expression (5 fields) or an interval, and the job."""

    name: str
    kind: str
    cron: str | None
    every: timedelta | None
    tz: str
    payload: str
    queue: str
    priority: int
    max_attempts: int
    spec: str
    """The schedule as stored: the cron expression with its zone, or the interval."""

    @classmethod
    def build(
        cls,
        name: str,
        kind: str,
        *,
        cron: str | None,
        every: timedelta | float | None,
        tz: str,
        payload: Any,
        queue: str,
        priority: int,
        max_attempts: int,
    ) -> Schedule:
        """Validate a schedule; raise ConfigurationError with what to fix."""
        if (cron is None) == (every is None):
            raise ConfigurationError("give a schedule a cron expression or every=, not both")
        if every is not None:
            seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)
            if not 1 <= seconds <= 366 * 86400 or not math.isfinite(seconds):
                raise ConfigurationError(f"every must be from 1 s to a year, got {every!r}")
            every = timedelta(seconds=seconds)
        elif not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
            raise ConfigurationError(
                f"invalid cron expression {cron!r}: five fields, minute hour day month weekday"
            )
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(f"unknown time zone {tz!r}") from None
        interval = every if isinstance(every, timedelta) else None
        spec = f"{cron} {tz}" if interval is None else f"every {interval.total_seconds():g}s"
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be an int of at least 1: {max_attempts!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigurationError(f"priority must be an int, got {priority!r}")
        return cls(
            name=sanitize_kind(name),
            kind=sanitize_kind(kind),
            cron=cron,
            every=interval,
            tz=tz,
            payload=dump_payload(payload, MAX_PAYLOAD_BYTES),
            queue=sanitize_queue(queue),
            priority=priority,
            max_attempts=max_attempts,
            spec=spec,
        )

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``."""
        if self.every is not None:
            step = self.every.total_seconds()
            ticks = math.floor(moment.timestamp() / step) + 1
            return datetime.fromtimestamp(ticks * step, timezone.utc)
        assert self.cron is not None
        local = moment.astimezone(ZoneInfo(self.tz))
        after: datetime = croniter(self.cron, local).get_next(datetime)
        return after.astimezone(timezone.utc)

    def catch_up(self, due: datetime, now: datetime) -> tuple[datetime, int, datetime]:
        """Where a schedule due at ``due`` stands at ``now``.

        Returns the tick to fire (the latest one not after ``now``), how many ticks before it
        are skipped, and the tick after it.
        """
        tick, missed = due, 0
        upcoming = self.next_after(tick)
        while upcoming <= now and missed < MAX_MISSED_COUNTED:
            tick, missed = upcoming, missed + 1
            upcoming = self.next_after(tick)
        if upcoming <= now:  # more missed than we count: start again from now
            tick, upcoming = now, self.next_after(now)
        return tick, missed, upcoming

    def metadata(self, tick: datetime) -> str:
        """The fired job's metadata (JSON text): which schedule and tick enqueued it."""
        return orjson.dumps({"periodic": {"name": self.name, "tick": tick.isoformat()}}).decode()

    def unique_key(self, tick: datetime) -> str:
        """The job's unique key for one tick."""
        return f"periodic:{self.name}:{tick.astimezone(timezone.utc).isoformat()}"


@dataclass(frozen=True, slots=True)
class Fired:
    """One tick enqueued by this runner."""

    name: str
    tick: datetime
    job_id: int
    missed: int
    """Ticks skipped before this one (the runners were down); 0 normally."""


def register_plan(schema: str, schedules: list[Schedule]) -> Plan[None]:
    """Create the rows of new schedules; a changed schedule restarts from its next tick."""
    rows = yield Statement(queries.query("now", schema))
    now: datetime = rows[0][0]
    yield Statement(
        queries.query("register_periodic", schema),
        (
            [s.name for s in schedules],
            [s.spec for s in schedules],
            [s.next_after(now) for s in schedules],
        ),
    )


def fire_due_plan(schema: str, schedules: list[Schedule]) -> Plan[tuple[list[Fired], datetime]]:
    """Enqueue the job of every due tick, in the caller's transaction.

    Returns what fired and the earliest next tick of all schedules.
    """
    by_name = {s.name: s for s in schedules}
    rows = yield Statement(queries.query("due_periodic", schema), ([*by_name],))
    fired = []
    for name, due, now in rows:
        s = by_name[name]
        tick, missed, upcoming = s.catch_up(due, now)
        ids = yield Statement(
            queries.query("fire_periodic", schema),
            {
                "name": name, "due": due, "next": upcoming, "kind": s.kind, "queue": s.queue,
                "payload": s.payload, "priority": s.priority, "max_attempts": s.max_attempts,
                "unique_key": s.unique_key(tick), "metadata": s.metadata(tick),
            },
        )  # fmt: skip
        if ids and ids[0][0] is not None:
            fired.append(Fired(name, tick, int(ids[0][0]), missed))
    nexts = yield Statement(queries.query("next_periodic", schema), ([*by_name],))
    earliest, now = nexts[0]
    return fired, now if earliest is None else max(earliest, now)

"""The runner's own ``VACUUM`` of the jobs table, when autovacuum lags far behind.

Every job leaves about three dead row versions (its lease, its outcome, its pruning), and the
autovacuum launcher visits a database only once per ``autovacuum_naptime`` (60 s by default): at
thousands of jobs a second, hundreds of thousands of dead rows pile up between its visits and the
table and its indexes grow to hold them (``benchmarks/churn.py``). So every VACUUM_EVERY seconds
a runner's vacuumer looks, and vacuums the table when ``vacuum_due`` says autovacuum has fallen
far behind, as River's and Oban's maintenance services look after their
own tables. Autovacuum still does the everyday work: a lightly used table never meets the rule.
"""

from __future__ import annotations

import time
from typing import Any

from outbox.clock import Clock
from outbox.errors import DatabaseError
from outbox.safety import safe_failure_message
from outbox.store import TableStats, VacuumingStore

__all__ = [
    "VACUUM_DEAD_SHARE",
    "VACUUM_EVERY",
    "VACUUM_MIN_DEAD",
    "VACUUM_TIMEOUT",
    "Vacuumer",
    "vacuum_due",
]

VACUUM_EVERY = 2.5
"""Seconds between looks at the jobs table's dead rows (one cheap statistics query), and the
quiet time after any vacuum ends. Dead rows come from every lease and outcome, not only from
pruning: at thousands of jobs a second a minute's wait (autovacuum's default naptime) lets a
million pile up."""

VACUUM_MIN_DEAD = 10_000
"""Dead rows below which the runner never vacuums: a small or quiet table is autovacuum's alone."""

VACUUM_DEAD_SHARE = 0.2
"""Dead rows, as a share of the live ones, before the runner steps in: the server's default
autovacuum trigger, ten times the jobs table's own (0.02, migration 0001), so a big table whose
dead rows are a small part of it is left to autovacuum."""

VACUUM_TIMEOUT = 60.0
"""Seconds before a vacuum is cancelled: it holds a pooled connection and a lock that keeps
migrations and index builds waiting, and a vacuum that long is a big table's, for autovacuum."""


def vacuum_due(stats: TableStats, *, left: int, quiet: float) -> bool:
    """Whether the jobs table needs the runner's vacuum now.

    It does when its dead rows beyond the ``left`` ones the runner's last vacuum left behind
    number at least VACUUM_MIN_DEAD and VACUUM_DEAD_SHARE of the live rows, and no vacuum, the
    runner's or autovacuum's, ended within ``quiet`` seconds. Counting past ``left``: rows that an
    old snapshot still sees survive every vacuum, and vacuuming for them again frees nothing.
    The quiet time: a vacuum that just ended did this round's work, and dead rows counted right
    after it may be rows it removed (sessions report their counts up to a second late).
    """
    if stats.since_vacuum is not None and stats.since_vacuum < quiet:
        return False
    return stats.dead - left >= max(VACUUM_MIN_DEAD, VACUUM_DEAD_SHARE * stats.live)


class Vacuumer:
    """A runner service: every VACUUM_EVERY seconds, vacuums the jobs table when ``vacuum_due``.

    Every runner looks: a vacuum that another holds is skipped at once, and none follows another
    within VACUUM_EVERY.

    A role that may not vacuum the table (it neither owns it nor, on PostgreSQL 17+, has MAINTAIN
    on it) is said once, as ``runner.vacuum_skipped``; then it stops trying. A vacuum that fails
    (the database is away, the timeout) is logged, once while it keeps failing, and tried again at
    the next look.
    """

    name = "vacuumer"

    def __init__(self, store: VacuumingStore, *, clock: Clock, log: Any) -> None:
        self._store = store
        self._clock = clock
        self._log = log
        self._left = 0
        self._refused = False
        self._failing = False

    async def run(self) -> None:
        """Look, and vacuum when needed, until cancelled."""
        while True:
            await self.round()
            await self._clock.sleep(VACUUM_EVERY)

    async def round(self) -> None:
        """Look at the table's statistics and vacuum it when it needs it."""
        if self._refused:
            return
        try:
            await self._round()
        except DatabaseError as exc:
            # Said once while it keeps failing: a look comes every few seconds.
            level = "debug" if self._failing else "warning"
            self._failing = True
            getattr(self._log, level)("runner.vacuum_failed", error=safe_failure_message(exc))
        else:
            self._failing = False

    async def _round(self) -> None:
        stats = await self._store.table_stats()
        if stats.dead < self._left:
            self._left = 0  # something removed them since (autovacuum, pruning on access)
        if not vacuum_due(stats, left=self._left, quiet=VACUUM_EVERY):
            return
        if not stats.may_vacuum:
            self._refused = True
            self._log.warning(
                "runner.vacuum_skipped",
                reason=f"role {stats.role} may not vacuum {stats.table}: only its owner, the "
                "database's owner or (PostgreSQL 17+) a role with MAINTAIN on it may",
                dead=stats.dead,
                fix=f"GRANT MAINTAIN ON {stats.table} TO {stats.role} (PostgreSQL 17+), or turn "
                "the runner's vacuum off (vacuum=False, outbox run --no-vacuum); autovacuum "
                "still runs",
            )
            return
        started = time.monotonic()
        done = await self._store.vacuum(VACUUM_TIMEOUT)
        seconds = time.monotonic() - started
        if not done.ran:
            self._log.debug("runner.vacuum_deferred", reason="another vacuum holds the table")
            return
        after = await self._store.table_stats()
        self._left = after.dead
        extra = {"warnings": list(done.warnings)} if done.warnings else {}
        self._log.info(
            "runner.vacuumed",
            dead_before=stats.dead,
            dead_after=after.dead,
            live=after.live,
            seconds=round(seconds, 3),
            **extra,
        )

"""The runner's storage: the ``Store`` protocol and ``PgStore``, which issues every statement.

A lease is identified by (job id, attempts, runner id); every write after the lease checks it,
so a runner that lost a lease can never overwrite the outcome another runner recorded.
``outbox.testing`` holds an in-memory store and the contract every store must pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

import orjson
import psycopg
from psycopg.errors import Diagnostic
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from outbox import queries
from outbox.db import Plan, Rows, Statement, arun, check_dsn, run, translate_error
from outbox.errors import ConfigurationError, DatabaseError, DatabaseUnavailableError
from outbox.migrations import check_schema
from outbox.periodic import Fired, Schedule, fire_due_plan, register_plan
from outbox.runners import (
    expire_runners_plan,
    register_runner_plan,
    remove_runner_plan,
    unhandled_kinds_plan,
)
from outbox.safety import safe_failure_message

__all__ = [
    "POOL_SIZE",
    "LeaseKey",
    "Leased",
    "Outcome",
    "PgStore",
    "RunnerRow",
    "Store",
    "TableStats",
    "Vacuumed",
    "VacuumingStore",
    "heartbeat_plan",
    "prune_batch_plan",
    "prune_plan",
]

POOL_SIZE = 2
"""Connections in a PgStore's own pool: lease and record overlap; a third would sit idle.
With the LISTEN and heartbeat connections, a runner on a DSN holds at most POOL_SIZE + 2."""

POOL_WAIT = 10.0
"""Seconds a statement waits for a pooled connection before failing as DatabaseUnavailable."""

CONNECTION_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,
    # A server that vanished without closing its sockets (a failover, a cut network) is
    # noticed within about 30 s instead of the kernel's two hours; the DSN may override these.
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
"""libpq options the store's own connections get unless the DSN sets them."""

PRUNE_BATCH = 1000
"""Finished jobs deleted per statement: small, so pruning never holds long locks."""

_LOCK_NOT_AVAILABLE = "55P03"
"""The SQLSTATE of the WARNING with which ``VACUUM (SKIP_LOCKED)`` skips a table held by another."""


class Leased(NamedTuple):
    """A job as a lease returns it."""

    id: int
    kind: str
    queue: str
    payload: Any
    priority: int
    attempts: int
    max_attempts: int
    run_at: datetime
    created_at: datetime
    unique_key: str | None
    metadata: dict[str, Any] | None = None
    timeout_seconds: float | None = None
    tenant: str | None = None
    ordering_key: str | None = None


class RunnerRow(NamedTuple):
    """What a runner says about itself in ``<schema>.runners``."""

    id: str
    host: str
    pid: int
    version: str
    kinds: list[str]
    queues: list[str] | None
    concurrency: int
    running: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one attempt, as it is written."""

    id: int
    attempts: int
    state: str
    """succeeded, pending (a retry), failed or discarded."""
    delay: float = 0.0
    """Seconds to the retry, for pending."""
    error: str | None = None
    """The bounded failure message (None on success)."""
    result: str | None = None
    """The handler's result as JSON text, for succeeded."""


@runtime_checkable
class Store(Protocol):
    """What a runner needs from storage. ``outbox.testing.StoreContract`` states the rules."""

    async def open(self) -> None:
        """Connect, and check that the storage is ready (migrated)."""

    async def close(self) -> None:
        """Release what ``open`` took."""

    async def check(self) -> None:
        """Raise unless the storage answers now and is ready (for readiness probes)."""

    async def lease(
        self,
        runner: str,
        kinds: Sequence[str],
        queues: Sequence[str] | None,
        limit: int,
        lease_seconds: float,
    ) -> list[Leased]:
        """Lease up to ``limit`` runnable jobs of these kinds (and queues; None is all).

        Jobs are chosen, and returned, in lease order: priority (higher first), then run_at,
        then id. Each leased job is running, its attempts grown by one, its lease held by
        ``runner`` for ``lease_seconds``.
        """

    async def record(self, runner: str, outcomes: Sequence[Outcome]) -> set[int]:
        """Write outcomes; return the ids whose lease (id, attempts, runner) was still held."""

    def heartbeat(
        self, runner: str, leases: Sequence[LeaseKey], lease_seconds: float
    ) -> set[LeaseKey]:
        """Extend these leases; return those still held. Blocking: the heartbeat thread calls it."""

    async def release(self, runner: str, leases: Sequence[LeaseKey]) -> set[int]:
        """Hand held jobs back as pending, giving back the attempt their lease took."""

    async def seconds_until_due(
        self, kinds: Sequence[str], queues: Sequence[str] | None
    ) -> float | None:
        """Seconds until the earliest pending job of these kinds is due (<= 0: it is).

        None when none is pending. For one-shot runs that wait for retries.
        """

    async def rescue(self, limit: int, held: Sequence[int] = ()) -> int:
        """Retry (or fail, on their last attempt) up to ``limit`` jobs whose lease expired.

        Jobs in ``held`` (the caller still runs them) are left alone, expired or not.
        """

    async def prune(self, older_than: float, *, once_per: float | None = None) -> int | None:
        """Delete jobs finished more than ``older_than`` seconds ago; return how many.

        With ``once_per``, prune only when no runner has begun a round within that many
        seconds (one runner a round); otherwise return None: the round is another's.
        """

    def notifications(self) -> AsyncIterator[None]:
        """Yield whenever new jobs may be runnable (it may never yield: runners also poll)."""

    async def listen_for(self, seconds: float) -> None:
        """Ask enqueuers to notify for the next ``seconds``: this runner waits for work.

        Enqueues send no notification otherwise, so that their commits are not serialized
        while every runner is busy.
        """

    async def register_runner(self, row: RunnerRow) -> None:
        """Create or refresh this runner's row (its last_seen is now)."""

    async def remove_runner(self, runner_id: str) -> None:
        """Delete this runner's row (a clean stop)."""

    async def expire_runners(self, stale: float) -> int:
        """Delete rows not refreshed for ``stale`` seconds; return how many."""

    async def unhandled_kinds(self, stale: float) -> list[tuple[str, int]]:
        """(kind, jobs) of runnable pending jobs no runner seen within ``stale`` s serves."""

    async def register_periodic(self, schedules: Sequence[Schedule]) -> None:
        """Record schedules not seen before (or changed), starting at their next tick."""

    async def fire_periodic(self, schedules: Sequence[Schedule]) -> tuple[list[Fired], datetime]:
        """Enqueue the job of each due tick, once across all runners.

        Returns what this call fired and when the next tick of any schedule is due.
        """


LeaseKey = tuple[int, int]
"""A lease as the runner holds it: (job id, attempts). An attempt's writes name both."""


@dataclass(frozen=True, slots=True)
class TableStats:
    """What ``pg_stat_user_tables`` says about the jobs table, and whether this role may vacuum it.

    The counts are the server's statistics: other sessions report theirs within about a second.
    """

    live: int
    dead: int
    since_vacuum: float | None
    """Seconds since the last vacuum or autovacuum of the table ended (None: none on record)."""
    may_vacuum: bool
    """Whether VACUUM would process the table for this role, or only warn and skip it."""
    role: str
    """The role the store connects as, quoted as SQL wants it."""
    table: str
    """The jobs table's name, schema-qualified and quoted as SQL wants it."""


@dataclass(frozen=True, slots=True)
class Vacuumed:
    """What one ``VACUUM`` of the jobs table did."""

    ran: bool
    """False when another vacuum held the table: it was skipped, and nothing was done."""
    warnings: tuple[str, ...] = ()
    """Any other WARNING the server sent meanwhile (an old snapshot holding rows back, say)."""


@runtime_checkable
class VacuumingStore(Protocol):
    """A store whose jobs table the runner vacuums when autovacuum is far behind (``PgStore``).

    The runner vacuums a store only when it has these methods as well as ``Store``'s.
    """

    async def table_stats(self) -> TableStats:
        """The jobs table's live and dead rows, its last vacuum, and whether we may vacuum it."""

    async def vacuum(self, timeout: float) -> Vacuumed:
        """VACUUM the jobs table (plain, never FULL; skipped when another vacuum holds it).

        A vacuum still running after ``timeout`` seconds is cancelled on the server and raises
        ``DatabaseError``.
        """


def heartbeat_plan(
    schema: str, runner_id: str, leases: Sequence[LeaseKey], lease_seconds: float
) -> Plan[set[LeaseKey]]:
    """Extend these leases; return those still held (the rest were lost or cancelled)."""
    params = {
        "ids": [job_id for job_id, _ in leases],
        "attempts": [attempts for _, attempts in leases],
        "lease_seconds": lease_seconds,
        "runner": runner_id,
    }
    rows = yield Statement(queries.query("heartbeat", schema), params)
    return {(row[0], row[1]) for row in rows}


def _lease_order(job: Leased) -> tuple[int, datetime, int]:
    return (-job.priority, job.run_at, job.id)


def prune_batch_plan(
    schema: str, older_than: float, after: int, batch: int = PRUNE_BATCH
) -> Plan[tuple[int, int | None]]:
    """Prune one window of ``batch`` ids after ``after``.

    Returns the rows deleted and where the next window starts (None: no later job can be old
    enough).
    """
    rows = yield Statement(
        queries.query("prune", schema), {"older_than": older_than, "limit": batch, "after": after}
    )
    deleted, last, more = rows[0]
    return deleted, (last if more and last is not None else None)


def prune_plan(schema: str, older_than: float, batch: int = PRUNE_BATCH) -> Plan[int]:
    """Delete finished jobs older than ``older_than`` seconds, window by window."""
    total, after = 0, 0
    while True:
        deleted, following = yield from prune_batch_plan(schema, older_than, after, batch)
        total += deleted
        if following is None:
            return total
        after = following


def _one(query: bytes, params: Any = None) -> Plan[Rows]:
    rows = yield Statement(query, params)
    return rows


class PgStore:
    """The runner's statements on Postgres, for one schema.

    With a ``dsn`` it opens its own pool of POOL_SIZE connections; with a ``pool`` it borrows
    from yours. Either way it opens one connection for LISTEN and one for heartbeats, named
    ``application_name`` in ``pg_stat_activity``. On its own pool, writes skip the WAL flush
    wait unless ``synchronous_commit`` is True (see docs/handlers.md, Guarantees).

    Whatever psycopg or its pool raises (a pool timeout, a failed ``BEGIN``, a connection that
    died in the pool, ``connect`` itself) leaves this class as a ``DatabaseError``;
    ``DatabaseUnavailableError`` when waiting may fix it.
    """

    def __init__(
        self,
        *,
        schema: str,
        dsn: str | None = None,
        pool: AsyncConnectionPool[Any] | None = None,
        application_name: str = "outbox",
        synchronous_commit: bool = False,
        pgbouncer: bool = False,
        listen_dsn: str | None = None,
    ) -> None:
        if (dsn is None) == (pool is None):
            raise ConfigurationError("give the store a dsn or a pool (one of them)")
        for given in (dsn, listen_dsn):
            if given is not None:
                check_dsn(given)
        self._pgbouncer = pgbouncer
        self._listen_dsn = listen_dsn
        self.schema = queries.check_schema_name(schema)
        self._dsn = dsn
        self._given_pool = pool
        self._pool: AsyncConnectionPool[Any] | None = pool
        self._application_name = application_name[:63]
        self._synchronous_commit = synchronous_commit
        self._conninfo = ""
        self._connect_kwargs: dict[str, Any] = {}
        self._heartbeat_conn: psycopg.Connection[Any] | None = None
        self._broken = False
        self._reopening = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        """The pool statements run on (open only between ``open`` and ``close``)."""
        if self._pool is None:
            raise ConfigurationError("the store is not open")
        return self._pool

    async def open(self) -> None:
        """Connect (opening the pool when it is ours) and check the schema's version.

        A database that cannot be reached raises ``DatabaseUnavailableError`` at once: the
        runner decides how long to wait for it.
        """
        self._conninfo, self._connect_kwargs = await self._connect_params()
        if self._given_pool is None:
            await self._open_pool()
        async with self._connection() as conn:
            await arun(conn, check_schema(self.schema))

    async def _open_pool(self) -> None:
        """Open a fresh pool of our own, after one plain connection proves the server is up.

        The plain attempt fails at once, with Postgres's own words, where the pool would retry
        for its whole timeout; and after an outage it replaces a pool whose reconnection
        backoff (doubling up to minutes) would leave the runner idle long after the database
        came back.
        """
        with _translated("cannot connect to the database"):
            probe = await psycopg.AsyncConnection.connect(self._conninfo, **self._connect_kwargs)
            await probe.close()
        pool = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True, **self._connect_kwargs},
            configure=self._configure,
            open=False,
            timeout=POOL_WAIT,
            name=self._application_name,
        )
        try:
            with _translated("cannot connect to the database"):
                await pool.open(wait=True, timeout=POOL_WAIT)
        except BaseException:
            await pool.close()
            raise
        old, self._pool, self._broken = self._pool, pool, False
        if old is not None:
            # Closed in the background: its workers may be asleep in their reconnect backoff.
            closing = asyncio.create_task(old.close(timeout=5))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        set_json_loads(orjson.loads, conn)
        # Behind PgBouncer a session setting would stay on the server connection, for the
        # clients that get it next: none is made there.
        if not self._synchronous_commit and not self._pgbouncer:
            # The runner's bookkeeping need not wait for the WAL flush: a database crash can
            # forget its last writes, and those jobs run again, as after a runner crash.
            # Enqueues keep the durability of the caller's own transaction.
            await conn.execute(b"SET synchronous_commit = off")

    async def close(self) -> None:
        """Close the pool when it is ours, and the heartbeat connection."""
        if self._heartbeat_conn is not None:
            self._heartbeat_conn.close()
            self._heartbeat_conn = None
        if self._given_pool is None and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def check(self) -> None:
        """Ask the database, on a fresh connection, whether it answers and the schema is current.

        For readiness probes: it never waits on the pool, which an outage may have emptied.
        """
        with _translated("cannot connect to the database"):
            async with await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, **{**self._connect_kwargs, "connect_timeout": 3}
            ) as conn:
                await arun(conn, check_schema(self.schema))

    async def _connect_params(self) -> tuple[str, dict[str, Any]]:
        """Conninfo and options for the store's own connections."""
        conninfo: Any
        kwargs: Any
        if self._dsn is not None:
            conninfo, kwargs = self._dsn, {}
        else:
            pool = self.pool
            conninfo = pool.conninfo
            kwargs = pool.kwargs or {}
            # psycopg_pool accepts callables (sync or async) for both.
            if callable(conninfo):
                conninfo = conninfo()
            if inspect.isawaitable(conninfo):
                conninfo = await conninfo
            if callable(kwargs):
                kwargs = kwargs()
            if inspect.isawaitable(kwargs):
                kwargs = await kwargs
            kwargs = {k: v for k, v in dict(kwargs).items() if k != "autocommit"}
        conninfo = str(conninfo)
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
        defaults = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}
        # No server-side prepared statements: PgBouncer in transaction mode (before 1.21) cannot
        # keep them, and for statements that each carry a batch they save next to nothing.
        return conninfo, {
            **defaults, **kwargs, "application_name": self._application_name,
            "prepare_threshold": None,
        }  # fmt: skip

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; whatever the pool raises comes out as a DatabaseError.

        Once a connection failed for want of the server, the next call first reconnects on a
        fresh pool of our own (see ``_open_pool``), so that the runner's services decide how
        often to try, and resume as soon as the server answers.
        """
        if self._broken and self._given_pool is None:
            async with self._reopening:
                if self._broken:
                    await self._open_pool()
        try:
            with _translated("the database connection failed"):
                async with self.pool.connection() as conn:
                    yield conn
        except DatabaseUnavailableError:
            self._broken = True
            raise

    async def _execute(self, name: str, params: Any = None) -> Rows:
        async with self._connection() as conn:
            return await arun(conn, _one(queries.query(name, self.schema), params))

    async def lease(
        self,
        runner: str,
        kinds: Sequence[str],
        queues: Sequence[str] | None,
        limit: int,
        lease_seconds: float,
    ) -> list[Leased]:
        """Lease jobs with one ``UPDATE … FOR UPDATE SKIP LOCKED`` statement."""
        rows = await self._execute(
            "lease",
            {
                "kinds": list(kinds),
                "queues": None if queues is None else list(queues),
                "limit": limit,
                "lease_seconds": lease_seconds,
                "runner": runner,
            },
        )
        leased = [Leased._make(row) for row in rows]
        # UPDATE … RETURNING has no order of its own.
        leased.sort(key=_lease_order)
        return leased

    async def record(self, runner: str, outcomes: Sequence[Outcome]) -> set[int]:
        """Write outcomes: plain successes in one lean statement, the rest in another."""
        plain = [o for o in outcomes if o.state == "succeeded" and o.result is None]
        written: set[int] = set()
        if plain:
            rows = await self._execute(
                "complete_jobs",
                {
                    "ids": [o.id for o in plain],
                    "attempts": [o.attempts for o in plain],
                    "runner": runner,
                },
            )
            written.update(row[0] for row in rows)
            if len(plain) == len(outcomes):
                return written
            outcomes = [o for o in outcomes if not (o.state == "succeeded" and o.result is None)]
        rows = await self._execute(
            "record_outcomes",
            {
                "ids": [o.id for o in outcomes],
                "attempts": [o.attempts for o in outcomes],
                "states": [o.state for o in outcomes],
                "delays": [o.delay for o in outcomes],
                "errors": [o.error for o in outcomes],
                "results": [o.result for o in outcomes],
                "runner": runner,
            },
        )
        written.update(row[0] for row in rows)
        return written

    def heartbeat(
        self, runner: str, leases: Sequence[LeaseKey], lease_seconds: float
    ) -> set[LeaseKey]:
        """Extend leases on the store's own sync connection (the heartbeat thread's)."""
        try:
            with _translated("heartbeat failed"):
                if self._heartbeat_conn is None or self._heartbeat_conn.closed:
                    self._heartbeat_conn = psycopg.connect(
                        self._conninfo, autocommit=True, **self._connect_kwargs
                    )
                return run(
                    self._heartbeat_conn,
                    heartbeat_plan(self.schema, runner, leases, lease_seconds),
                )
        except DatabaseError:
            if self._heartbeat_conn is not None:
                self._heartbeat_conn.close()
            self._heartbeat_conn = None
            raise

    async def release(self, runner: str, leases: Sequence[LeaseKey]) -> set[int]:
        """Hand jobs back without spending their attempt."""
        params = {
            "ids": [job_id for job_id, _ in leases],
            "attempts": [attempts for _, attempts in leases],
            "runner": runner,
        }
        return {row[0] for row in await self._execute("release", params)}

    async def seconds_until_due(
        self, kinds: Sequence[str], queues: Sequence[str] | None
    ) -> float | None:
        """One statement over the pending jobs of these kinds."""
        params = {"kinds": list(kinds), "queues": None if queues is None else list(queues)}
        [(seconds,)] = await self._execute("seconds_until_due", params)
        return None if seconds is None else float(seconds)

    async def rescue(self, limit: int, held: Sequence[int] = ()) -> int:
        """Retry (or fail) jobs whose lease expired, but for those in ``held``."""
        return len(await self._execute("rescue", {"limit": limit, "held": list(held)}))

    async def register_periodic(self, schedules: Sequence[Schedule]) -> None:
        """Record new or changed schedules (one statement)."""
        async with self._connection() as conn:
            await arun(conn, register_plan(self.schema, list(schedules)))

    async def fire_periodic(self, schedules: Sequence[Schedule]) -> tuple[list[Fired], datetime]:
        """Enqueue due ticks in one transaction: jobs and moved schedules commit together."""
        async with self._connection() as conn:
            with _translated("the database connection failed"):
                async with conn.transaction():
                    return await arun(conn, fire_due_plan(self.schema, list(schedules)))

    async def prune(self, older_than: float, *, once_per: float | None = None) -> int | None:
        """Delete old finished jobs, a window of ids at a time.

        The connection goes back to the pool between windows: a long prune never holds one of
        the runner's connections.
        """
        if once_per is not None:
            async with self._connection() as conn:
                claimed = await arun(
                    conn, _one(queries.query("claim_prune", self.schema), {"every": once_per})
                )
            if not claimed:
                return None
        total, after = 0, 0
        while True:
            async with self._connection() as conn:
                deleted, following = await arun(
                    conn, prune_batch_plan(self.schema, older_than, after)
                )
            total += deleted
            if following is None:
                return total
            after = following

    async def table_stats(self) -> TableStats:
        """One look at ``pg_stat_user_tables`` and the privileges VACUUM checks."""
        [row] = await self._execute("vacuum_stats")
        return TableStats(*row)

    async def vacuum(self, timeout: float) -> Vacuumed:
        """VACUUM on a pooled connection, in autocommit (VACUUM refuses a transaction).

        The connection goes back to the pool as soon as it ends, in the autocommit mode it came
        in. A timeout cancels the statement on the server, as psycopg does for a cancelled task.
        """
        skipped: list[str] = []
        warnings: list[str] = []

        def notice(diag: Diagnostic) -> None:
            if diag.severity_nonlocalized != "WARNING":
                return
            message = safe_failure_message(diag.message_primary or "")
            (skipped if diag.sqlstate == _LOCK_NOT_AVAILABLE else warnings).append(message)

        async with self._connection() as conn:
            autocommit = conn.autocommit
            conn.add_notice_handler(notice)
            try:
                if not autocommit:  # a pool of yours may hand out connections in transactions
                    with _translated("the database connection failed"):
                        await conn.set_autocommit(True)
                try:
                    await asyncio.wait_for(
                        arun(conn, _one(queries.query("vacuum_jobs", self.schema))), timeout
                    )
                except asyncio.TimeoutError:
                    raise DatabaseError(
                        f"VACUUM of the jobs table did not finish within {timeout:g} s and was "
                        "cancelled (the pages it had cleaned stay clean)"
                    ) from None
            finally:
                conn.remove_notice_handler(notice)
                if not autocommit:
                    with contextlib.suppress(psycopg.Error):  # a broken one leaves the pool
                        await conn.set_autocommit(False)
        return Vacuumed(ran=not skipped, warnings=tuple(warnings))

    async def register_runner(self, row: RunnerRow) -> None:
        """Upsert the runner's row."""
        async with self._connection() as conn:
            await arun(
                conn,
                register_runner_plan(
                    self.schema, runner_id=row.id, host=row.host, pid=row.pid,
                    version=row.version, kinds=row.kinds, queues=row.queues,
                    concurrency=row.concurrency, running=row.running,
                ),
            )  # fmt: skip

    async def remove_runner(self, runner_id: str) -> None:
        """Delete the runner's row."""
        async with self._connection() as conn:
            await arun(conn, remove_runner_plan(self.schema, runner_id))

    async def expire_runners(self, stale: float) -> int:
        """Delete stale runner rows."""
        async with self._connection() as conn:
            return await arun(conn, expire_runners_plan(self.schema, stale))

    async def unhandled_kinds(self, stale: float) -> list[tuple[str, int]]:
        """One pass over the runnable pending jobs."""
        async with self._connection() as conn:
            found = await arun(conn, unhandled_kinds_plan(self.schema, stale))
        return [(u.kind, u.jobs) for u in found]

    async def listen_for(self, seconds: float) -> None:
        """Move the deadline enqueuers notify before (one statement)."""
        async with self._connection() as conn:
            await arun(conn, _one(queries.query("listen_for", self.schema), {"seconds": seconds}))

    async def notifications(self) -> AsyncIterator[None]:
        """LISTEN for new jobs on a connection of its own; a dropped one raises DatabaseError.

        It yields once right after LISTEN: notifications sent while no one listened are lost.
        """
        listen = queries.query("listen", self.schema)
        if self._pgbouncer and self._listen_dsn is None:
            # LISTEN needs a session, which PgBouncer's transaction mode does not keep: without
            # a direct listen_dsn the runner polls, and this never yields.
            await asyncio.Event().wait()
        with _translated("listening for new jobs failed"):
            async with await psycopg.AsyncConnection.connect(
                self._listen_dsn or self._conninfo, autocommit=True, **self._connect_kwargs
            ) as conn:
                await conn.execute(listen)
                yield
                async for _ in conn.notifies():
                    yield


@contextlib.contextmanager
def _translated(doing: str) -> Iterator[None]:
    """Turn psycopg's and the network's errors into DatabaseErrors, saying what failed."""
    try:
        yield
    except psycopg.Error as exc:
        error = translate_error(exc)
        if isinstance(error, DatabaseUnavailableError) and not str(error).startswith("cannot"):
            error = DatabaseUnavailableError(f"{doing}: {error}")
        raise error from exc
    except OSError as exc:
        raise DatabaseUnavailableError(
            f"{doing}: {safe_failure_message(exc)}. Check that Postgres is up."
        ) from exc

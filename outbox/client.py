"""``Outbox``: the settings of one outbox schema and the operations on it.

Every operation takes the caller's psycopg connection, sync or async: on a ``Connection`` it
returns the result, on an ``AsyncConnection`` an awaitable of it. It runs in whatever
transaction the connection is in, so a job exists if and only if the caller's transaction
commits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

import psycopg
from pydantic import BaseModel

from outbox import admin as _admin
from outbox import enqueuing as _enqueue
from outbox import limits as _limits
from outbox import migrations as _migrate
from outbox import runners as _runners
from outbox import status as _status
from outbox import store as _store
from outbox import tracing as _tracing
from outbox.db import AnyConnection, Plan, execute
from outbox.errors import ConfigurationError, InvalidOptionError, UnknownQueueError
from outbox.limits import BlockedKey, Limit
from outbox.models import Job, JobState, NewJob, Stats
from outbox.queries import check_schema_name
from outbox.runners import RunnerInfo, UnhandledKind
from outbox.safety import MAX_PAYLOAD_BYTES, sanitize_kind, sanitize_queue

__all__ = ["DEFAULT_SCHEMA", "Outbox"]

DEFAULT_SCHEMA = "outbox"
"""The Postgres schema that holds the jobs table unless told otherwise."""

T = TypeVar("T")
SyncConn = psycopg.Connection[Any]
AsyncConn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class Outbox:
    """The settings of one outbox: its schema, payload limit and (optionally) declared queues.

    The module-level functions (``outbox.enqueue`` …) use ``Outbox()``, the defaults.
    """

    schema: str = DEFAULT_SCHEMA
    """The Postgres schema of the jobs table, views and functions."""
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    """Largest payload, in bytes of JSON, that enqueue accepts."""
    queues: frozenset[str] | None = field(default=None)
    """When set, enqueue refuses a queue outside these names."""
    payloads: Mapping[str, type[BaseModel]] | None = field(default=None, hash=False)
    """Pydantic models by kind (``mux.payload_models()``): enqueue validates those kinds'
    payloads before writing (``InvalidPayloadError``)."""
    enqueue_via_function: bool = False
    """Enqueue through the SQL function ``<schema>.enqueue()``, which runs with its owner's
    rights: what a role that may only enqueue needs (see ``outbox grant``). Slower for bulk
    (no COPY); a live duplicate unique_key returns the existing id (``if_exists="raise"`` is
    not available)."""

    def __post_init__(self) -> None:
        check_schema_name(self.schema)
        limit = self.max_payload_bytes
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
            raise ConfigurationError(
                f"max_payload_bytes must be an int of at least 2, got {limit!r}"
            )
        if isinstance(self.queues, str):
            raise ConfigurationError(
                f"queues must be a collection of queue names, not the str {self.queues!r}"
            )
        if self.payloads is not None:
            models = {}
            for kind, model in dict(self.payloads).items():
                if not (isinstance(model, type) and issubclass(model, BaseModel)):
                    raise ConfigurationError(f"payloads[{kind!r}] must be a pydantic model class")
                models[sanitize_kind(kind)] = model
            object.__setattr__(self, "payloads", models)
        if self.queues is not None:
            try:
                declared = frozenset(sanitize_queue(q) for q in self.queues)
            except UnknownQueueError as exc:
                raise ConfigurationError(f"queues: {exc}") from None
            if not declared:
                raise ConfigurationError("queues, when given, must name at least one queue")
            object.__setattr__(self, "queues", declared)

    def _run(self, conn: AnyConnection, plan: Plan[T]) -> T | Awaitable[T]:
        _check_connection(conn, plan)
        return execute(conn, _migrate.verified(conn, self.schema, plan))

    @overload
    def enqueue(
        self,
        conn: SyncConn,
        kind: str,
        payload: Any = None,
        *,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        max_attempts: int | None = None,
        priority: int = 0,
        queue: str | None = None,
        unique_key: str | None = None,
        if_exists: _enqueue.IfExists = "return",
        timeout: float | None = None,
        tenant: str | None = None,
        ordering_key: str | None = None,
    ) -> int: ...
    @overload
    def enqueue(
        self,
        conn: AsyncConn,
        kind: str,
        payload: Any = None,
        *,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        max_attempts: int | None = None,
        priority: int = 0,
        queue: str | None = None,
        unique_key: str | None = None,
        if_exists: _enqueue.IfExists = "return",
        timeout: float | None = None,
        tenant: str | None = None,
        ordering_key: str | None = None,
    ) -> Awaitable[int]: ...
    def enqueue(
        self, conn: AnyConnection, kind: str, payload: Any = None, *,
        run_at: datetime | None = None, delay: timedelta | float | None = None,
        max_attempts: int | None = None, priority: int = 0, queue: str | None = None,
        unique_key: str | None = None, if_exists: _enqueue.IfExists = "return",
        timeout: float | None = None, tenant: str | None = None, ordering_key: str | None = None,
    ) -> int | Awaitable[int]:  # fmt: skip
        """Add a job in the connection's current transaction and return its id.

        ``payload`` is anything orjson serializes, or a pydantic model. The job runs at
        ``run_at`` (timezone-aware) or ``delay`` after now (the database's clock), else now.
        While an unfinished job of this kind has the same ``unique_key``, its id is returned
        instead (``if_exists="raise"`` raises DuplicateJobError). Higher ``priority`` runs
        first. ``timeout`` (seconds) bounds each attempt, overriding the kind's. ``tenant``
        names whose job it is: leases take tenants round-robin, under per-tenant limits. Jobs
        with one ``ordering_key`` run one at a time, in enqueue order, across every runner. Bad
        input raises an InvalidJobError before anything is sent.
        """
        row = _enqueue.prepare(
            kind,
            payload,
            run_at=run_at,
            delay=delay,
            max_attempts=max_attempts,
            priority=priority,
            queue=queue,
            unique_key=unique_key,
            max_payload_bytes=self.max_payload_bytes,
            queues=self.queues,
            metadata=_tracing.current_metadata(),
            models=self.payloads,
            timeout=timeout,
            tenant=tenant,
            ordering_key=ordering_key,
        )
        if if_exists not in ("return", "raise"):
            raise ConfigurationError(f"if_exists must be 'return' or 'raise', got {if_exists!r}")
        if self.enqueue_via_function:
            if if_exists == "raise":
                raise ConfigurationError(
                    "if_exists='raise' is not available with enqueue_via_function=True"
                )
            return self._run(conn, _enqueue.enqueue_via_function_plan(self.schema, row))
        return self._run(conn, _enqueue.enqueue_plan(self.schema, row, if_exists))

    @overload
    def enqueue_many(self, conn: SyncConn, jobs: Iterable[NewJob]) -> list[int]: ...
    @overload
    def enqueue_many(self, conn: AsyncConn, jobs: Iterable[NewJob]) -> Awaitable[list[int]]: ...
    def enqueue_many(
        self, conn: AnyConnection, jobs: Iterable[NewJob]
    ) -> list[int] | Awaitable[list[int]]:
        """Add many jobs at once (with COPY); return the new ids in order.

        One bad job refuses the whole call with an InvalidJobError naming its index, and writes
        nothing: the caller's transaction stays usable. A job whose unique_key matches an
        unfinished job is not inserted: that job's id stands in its place, so the result has one
        id per input, in input order.
        """
        checked = _enqueue.checked_jobs(jobs)
        rows = _enqueue.prepare_many(
            checked, max_payload_bytes=self.max_payload_bytes, queues=self.queues,
            models=self.payloads,
        )  # fmt: skip
        if self.enqueue_via_function:
            plan = _enqueue.enqueue_many_via_function_plan(self.schema, list(rows))
            return self._run(conn, plan)
        return self._run(conn, _enqueue.enqueue_many_plan(self.schema, checked, rows))

    @overload
    def get_job(self, conn: SyncConn, job_id: int) -> Job | None: ...
    @overload
    def get_job(self, conn: AsyncConn, job_id: int) -> Awaitable[Job | None]: ...
    def get_job(self, conn: AnyConnection, job_id: int) -> Job | Awaitable[Job | None] | None:
        """Return the job with this id, or None."""
        return self._run(conn, _status.get_job_plan(self.schema, job_id))

    @overload
    def list_jobs(
        self,
        conn: SyncConn,
        *,
        state: JobState | str | None = None,
        kind: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
    ) -> list[Job]: ...
    @overload
    def list_jobs(
        self,
        conn: AsyncConn,
        *,
        state: JobState | str | None = None,
        kind: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
    ) -> Awaitable[list[Job]]: ...
    def list_jobs(
        self, conn: AnyConnection, *, state: JobState | str | None = None,
        kind: str | None = None, queue: str | None = None, limit: int = 100,
        after_id: int | None = None,
    ) -> list[Job] | Awaitable[list[Job]]:  # fmt: skip
        """Return up to ``limit`` jobs, newest first, filtered by state, kind and queue.

        For the next page pass the last job's id as ``after_id``.
        """
        plan = _status.list_jobs_plan(
            self.schema, state=state, kind=kind, queue=queue, limit=limit, after_id=after_id
        )
        return self._run(conn, plan)

    @overload
    def stats(self, conn: SyncConn) -> Stats: ...
    @overload
    def stats(self, conn: AsyncConn) -> Awaitable[Stats]: ...
    def stats(self, conn: AnyConnection) -> Stats | Awaitable[Stats]:
        """Count jobs per queue, kind and state, with the oldest runnable pending job's age."""
        return self._run(conn, _status.stats_plan(self.schema))

    @overload
    def overview(self, conn: SyncConn) -> _status.Overview: ...
    @overload
    def overview(self, conn: AsyncConn) -> Awaitable[_status.Overview]: ...
    def overview(self, conn: AnyConnection) -> _status.Overview | Awaitable[_status.Overview]:
        """Live and problem jobs per queue and kind, counted from indexes only.

        The dashboard's first page: cheap however many finished jobs the table holds.
        """
        return self._run(conn, _status.overview_plan(self.schema))

    @overload
    def cancel(self, conn: SyncConn, job_id: int) -> bool: ...
    @overload
    def cancel(self, conn: AsyncConn, job_id: int) -> Awaitable[bool]: ...
    def cancel(self, conn: AnyConnection, job_id: int) -> bool | Awaitable[bool]:
        """Cancel a job: a pending one never runs; a running one is never retried.

        A running job's handler is stopped at its runner's next heartbeat where it can be (an
        ``async def`` is cancelled; a ``def`` runs to its end) and its outcome is not recorded.
        Returns False when the job had already finished or does not exist.
        """
        return self._run(conn, _admin.cancel_plan(self.schema, job_id))

    @overload
    def discard(self, conn: SyncConn, job_id: int, reason: str = "") -> bool: ...
    @overload
    def discard(self, conn: AsyncConn, job_id: int, reason: str = "") -> Awaitable[bool]: ...
    def discard(self, conn: AnyConnection, job_id: int, reason: str = "") -> bool | Awaitable[bool]:
        """Give up on a pending or running job: it ends ``discarded`` with ``reason`` stored.

        A running job is stopped as ``cancel`` stops it. Returns False when the job had
        already finished or does not exist.
        """
        return self._run(conn, _admin.discard_plan(self.schema, _job_id(job_id), reason))

    @overload
    def retry(self, conn: SyncConn, job_id: int) -> bool: ...
    @overload
    def retry(self, conn: AsyncConn, job_id: int) -> Awaitable[bool]: ...
    def retry(self, conn: AnyConnection, job_id: int) -> bool | Awaitable[bool]:
        """Run a failed, discarded or cancelled job again, now (a pending one: run it now).

        Its history is kept; a job whose attempts are spent gets one more. Returns False when
        the job is running, succeeded or does not exist; raises DuplicateJobError when another
        unfinished job holds its unique key.
        """
        return self._run(conn, _admin.retry_plan(self.schema, _job_id(job_id)))

    @overload
    def retry_many(
        self,
        conn: SyncConn,
        *,
        state: JobState | str = ...,
        kind: str | None = ...,
        queue: str | None = ...,
        progress: Callable[[int], None] | None = ...,
    ) -> int: ...
    @overload
    def retry_many(
        self,
        conn: AsyncConn,
        *,
        state: JobState | str = ...,
        kind: str | None = ...,
        queue: str | None = ...,
        progress: Callable[[int], None] | None = ...,
    ) -> Awaitable[int]: ...
    def retry_many(
        self, conn: AnyConnection, *, state: JobState | str = JobState.FAILED,
        kind: str | None = None, queue: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int | Awaitable[int]:  # fmt: skip
        """Retry every job in ``state`` (default ``failed``), optionally of one kind or queue.

        Works in batches of 1,000 (each its own transaction on an autocommit connection);
        ``progress`` is called with each batch's size. Returns how many jobs were made pending;
        jobs whose unique key another unfinished job holds are skipped.
        """
        plan = _admin.retry_many_plan(
            self.schema, state=state, kind=kind, queue=queue, progress=progress
        )
        return self._run(conn, plan)

    @overload
    def count(
        self,
        conn: SyncConn,
        *,
        state: JobState | str,
        kind: str | None = ...,
        queue: str | None = ...,
    ) -> int: ...
    @overload
    def count(
        self,
        conn: AsyncConn,
        *,
        state: JobState | str,
        kind: str | None = ...,
        queue: str | None = ...,
    ) -> Awaitable[int]: ...
    def count(
        self, conn: AnyConnection, *, state: JobState | str, kind: str | None = None,
        queue: str | None = None,
    ) -> int | Awaitable[int]:  # fmt: skip
        """Count the jobs in ``state``, optionally of one kind or in one queue."""
        try:
            wanted = JobState(state)
        except ValueError:
            raise InvalidOptionError(
                f"state must be one of {[s.value for s in JobState]}, got {state!r}"
            ) from None
        return self._run(conn, _admin.count_plan(self.schema, wanted, kind, queue))

    @overload
    def flush(
        self, conn: SyncConn, *, kind: str | None = ..., queue: str | None = ...,
        everything: bool = ...,
    ) -> int: ...  # fmt: skip
    @overload
    def flush(
        self, conn: AsyncConn, *, kind: str | None = ..., queue: str | None = ...,
        everything: bool = ...,
    ) -> Awaitable[int]: ...  # fmt: skip
    def flush(
        self, conn: AnyConnection, *, kind: str | None = None, queue: str | None = None,
        everything: bool = False,
    ) -> int | Awaitable[int]:  # fmt: skip
        """Delete every unfinished (pending or running) job of ``kind`` and/or ``queue``.

        On purpose and for good: a flushed job never runs, and a runner holding one finds it
        gone and writes no outcome. With neither filter it refuses unless ``everything=True``.
        Deletes in batches of 1,000; returns how many.
        """
        kind, queue = _filters(kind, queue)
        if kind is None and queue is None and not everything:
            raise InvalidOptionError(
                "flush needs kind= or queue= (or everything=True to delete every unfinished job)"
            )
        return self._run(conn, _admin.flush_plan(self.schema, kind, queue))

    @overload
    def grant(
        self, conn: SyncConn, *, enqueuer: str | None = ..., runner: str | None = ...,
        reader: str | None = ...,
    ) -> None: ...  # fmt: skip
    @overload
    def grant(
        self, conn: AsyncConn, *, enqueuer: str | None = ..., runner: str | None = ...,
        reader: str | None = ...,
    ) -> Awaitable[None]: ...  # fmt: skip
    def grant(
        self, conn: AnyConnection, *, enqueuer: str | None = None, runner: str | None = None,
        reader: str | None = None,
    ) -> Awaitable[None] | None:  # fmt: skip
        """Give existing roles what one part of outbox needs, and nothing more.

        ``enqueuer`` may only call the SQL function ``enqueue()`` (use it with
        ``Outbox(enqueue_via_function=True)``) and sees no job; ``runner`` may lease, record,
        enqueue and prune, but not alter or drop anything, nor change limits; ``reader`` may
        read everything (status, metrics, a read-only dashboard) and change nothing. Run as the
        schema's owner, and again after a migration.
        """
        grants = [(p, r) for p, r in (("enqueuer", enqueuer), ("runner", runner),
                                      ("reader", reader)) if r is not None]  # fmt: skip
        if not grants:
            raise InvalidOptionError("name a role: enqueuer=, runner= or reader=")
        return self._run(conn, _admin.grant_plan(self.schema, grants))

    @overload
    def set_limit(
        self, conn: SyncConn, *, kind: str | None = ..., tenant: str | None = ...,
        max_running: int | None = ..., rate: int | None = ..., per: timedelta | float = ...,
        weight: int | None = ...,
    ) -> None: ...  # fmt: skip
    @overload
    def set_limit(
        self, conn: AsyncConn, *, kind: str | None = ..., tenant: str | None = ...,
        max_running: int | None = ..., rate: int | None = ..., per: timedelta | float = ...,
        weight: int | None = ...,
    ) -> Awaitable[None]: ...  # fmt: skip
    def set_limit(
        self, conn: AnyConnection, *, kind: str | None = None, tenant: str | None = None,
        max_running: int | None = None, rate: int | None = None, per: timedelta | float = 1.0,
        weight: int | None = None,
    ) -> Awaitable[None] | None:  # fmt: skip
        """Limit a kind or a tenant across every runner (see ``outbox.limits``).

        At most ``max_running`` of its jobs run at once; at most ``rate`` start per ``per``
        seconds; a tenant's ``weight`` is its share of each lease. Replaces the previous limit:
        what is not given is no longer limited. ``tenant="*"`` is every tenant without a limit
        of its own.
        """
        row = _limits.limit_row(
            kind=kind, tenant=tenant, max_running=max_running, rate=rate, per=per, weight=weight
        )
        return self._run(conn, _limits.set_limit_plan(self.schema, row))

    @overload
    def remove_limit(
        self, conn: SyncConn, *, kind: str | None = ..., tenant: str | None = ...
    ) -> bool: ...
    @overload
    def remove_limit(
        self, conn: AsyncConn, *, kind: str | None = ..., tenant: str | None = ...
    ) -> Awaitable[bool]: ...
    def remove_limit(
        self, conn: AnyConnection, *, kind: str | None = None, tenant: str | None = None
    ) -> bool | Awaitable[bool]:
        """Remove the limit of a kind or tenant; False when it had none."""
        return self._run(conn, _limits.remove_limit_plan(self.schema, kind=kind, tenant=tenant))

    @overload
    def limits(self, conn: SyncConn) -> list[Limit]: ...
    @overload
    def limits(self, conn: AsyncConn) -> Awaitable[list[Limit]]: ...
    def limits(self, conn: AnyConnection) -> list[Limit] | Awaitable[list[Limit]]:
        """Every limit, with the jobs running and waiting under it now."""
        return self._run(conn, _limits.limits_plan(self.schema))

    @overload
    def blocked_keys(self, conn: SyncConn, *, limit: int = ...) -> list[BlockedKey]: ...
    @overload
    def blocked_keys(self, conn: AsyncConn, *, limit: int = ...) -> Awaitable[list[BlockedKey]]: ...
    def blocked_keys(
        self, conn: AnyConnection, *, limit: int = 100
    ) -> list[BlockedKey] | Awaitable[list[BlockedKey]]:
        """Ordering keys whose head failed an attempt and waits for its retry.

        Every later job of such a key waits behind its head: cancel the head (``cancel``) to
        let the key move on, or fix what makes it fail.
        """
        return self._run(conn, _limits.blocked_keys_plan(self.schema, limit))

    @overload
    def count_unfinished(
        self, conn: SyncConn, *, kind: str | None = ..., queue: str | None = ...
    ) -> int: ...
    @overload
    def count_unfinished(
        self, conn: AsyncConn, *, kind: str | None = ..., queue: str | None = ...
    ) -> Awaitable[int]: ...
    def count_unfinished(
        self, conn: AnyConnection, *, kind: str | None = None, queue: str | None = None
    ) -> int | Awaitable[int]:
        """How many pending or running jobs of ``kind`` and/or ``queue`` there are."""
        kind, queue = _filters(kind, queue)
        return self._run(conn, _admin.unfinished_plan(self.schema, kind, queue))

    @overload
    def runners(self, conn: SyncConn) -> list[RunnerInfo]: ...
    @overload
    def runners(self, conn: AsyncConn) -> Awaitable[list[RunnerInfo]]: ...
    def runners(self, conn: AnyConnection) -> list[RunnerInfo] | Awaitable[list[RunnerInfo]]:
        """The live runners, oldest first.

        Each says its id, host, pid, version, kinds, queues, concurrency, since when, when last
        seen and the jobs it holds. A killed runner's row is gone within a minute.
        """
        return self._run(conn, _runners.list_runners_plan(self.schema))

    @overload
    def unhandled_kinds(self, conn: SyncConn) -> list[UnhandledKind]: ...
    @overload
    def unhandled_kinds(self, conn: AsyncConn) -> Awaitable[list[UnhandledKind]]: ...
    def unhandled_kinds(
        self, conn: AnyConnection
    ) -> list[UnhandledKind] | Awaitable[list[UnhandledKind]]:
        """Kinds with runnable pending jobs that no live runner serves, most jobs first.

        A typo in a kind, or a deploy that forgot a handler: such jobs wait for ever. One pass
        over the pending jobs.
        """
        return self._run(conn, _runners.unhandled_kinds_plan(self.schema))

    @overload
    def prune(self, conn: SyncConn, older_than: timedelta) -> int: ...
    @overload
    def prune(self, conn: AsyncConn, older_than: timedelta) -> Awaitable[int]: ...
    def prune(self, conn: AnyConnection, older_than: timedelta) -> int | Awaitable[int]:
        """Delete jobs that finished more than ``older_than`` ago; return how many.

        Deletes in batches of 1,000; on an autocommit connection each batch is its own
        transaction, so pruning never holds long locks.
        """
        if older_than < timedelta(0):
            raise ConfigurationError(f"older_than must not be negative, got {older_than}")
        plan = _store.prune_plan(self.schema, older_than.total_seconds())
        return self._run(conn, plan)

    @overload
    def migrate(self, conn: SyncConn) -> list[int]: ...
    @overload
    def migrate(self, conn: AsyncConn) -> Awaitable[list[int]]: ...
    def migrate(self, conn: AnyConnection) -> list[int] | Awaitable[list[int]]:
        """Apply pending migrations in one transaction; return the versions applied.

        Safe to call from several processes at once, and idempotent.
        """
        _check_connection(conn)
        if isinstance(conn, psycopg.AsyncConnection):
            return _migrate.migrate_async(conn, self.schema)
        return _migrate.migrate_sync(conn, self.schema)


def _filters(kind: str | None, queue: str | None) -> tuple[str | None, str | None]:
    """Kind and queue filters, checked as enqueue checks them."""
    return (
        None if kind is None else sanitize_kind(kind),
        None if queue is None else sanitize_queue(queue),
    )


def _check_connection(conn: object, plan: Plan[Any] | None = None) -> None:
    """Raise ConfigurationError unless ``conn`` is a psycopg (Async)Connection."""
    if isinstance(conn, (psycopg.Connection, psycopg.AsyncConnection)):
        return
    if plan is not None:
        plan.close()
    raise ConfigurationError(
        f"expected a psycopg Connection or AsyncConnection, got {type(conn).__name__}"
    )


def _job_id(job_id: object) -> int:
    if isinstance(job_id, bool) or not isinstance(job_id, int) or not 1 <= job_id < 2**63:
        raise InvalidOptionError(f"a job id is a positive int, got {job_id!r}")
    return job_id

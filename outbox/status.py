"""Status plans: what happened to a job, and how many jobs wait or failed per queue and kind."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from outbox import queries
from outbox.db import Plan, Statement
from outbox.errors import InvalidKindError, InvalidOptionError
from outbox.models import Job, JobState, KindStats, Stats
from outbox.safety import sanitize_kind

__all__ = [
    "JOB_COLUMNS",
    "LIST_LIMIT_MAX",
    "OVERVIEW_STATES",
    "Overview",
    "QueueOverview",
    "get_job_plan",
    "job_from_row",
    "list_jobs_plan",
    "overview_plan",
    "stats_plan",
]

JOB_COLUMNS = (
    "id",
    "kind",
    "queue",
    "payload",
    "state",
    "priority",
    "attempts",
    "max_attempts",
    "run_at",
    "created_at",
    "finished_at",
    "leased_until",
    "leased_by",
    "last_error",
    "errors",
    "unique_key",
    "result",
    "metadata",
    "timeout_seconds",
    "attempted_at",
    "updated_at",
    "tenant",
    "ordering_key",
)
"""The columns of ``sql/queries`` job rows, in order."""

LIST_LIMIT_MAX = 1000
"""Most jobs one list_jobs page returns: pages stay cheap for the database and the caller."""

_INT8_MAX = 2**63 - 1


def job_from_row(row: tuple[Any, ...]) -> Job:
    """Build a Job from a row of JOB_COLUMNS."""
    return Job.model_validate(dict(zip(JOB_COLUMNS, row, strict=True)))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _filter_name(what: str, value: str | None) -> str | None:
    # Filters take the names enqueue was given: canonicalize them the same way.
    if value is None:
        return None
    try:
        return sanitize_kind(value)
    except InvalidKindError as exc:
        raise InvalidOptionError(f"{what} filter: {exc}") from None


def get_job_plan(schema: str, job_id: int) -> Plan[Job | None]:
    """Return one job, or None when there is no job with that id."""
    if not _is_int(job_id):
        raise InvalidOptionError(f"a job id is an int, got {type(job_id).__name__}")
    if not 1 <= job_id <= _INT8_MAX:
        return None
    rows = yield Statement(queries.query("get_job", schema), (job_id,))
    return job_from_row(rows[0]) if rows else None


def list_jobs_plan(
    schema: str,
    *,
    state: JobState | str | None,
    kind: str | None,
    queue: str | None,
    limit: int,
    after_id: int | None,
) -> Plan[list[Job]]:
    """Return jobs newest first, filtered; ``after_id`` (the last id seen) gives the next page."""
    if state is not None:
        try:
            state = JobState(state)
        except ValueError:
            raise InvalidOptionError(
                f"unknown state {state!r}: use one of {[s.value for s in JobState]}"
            ) from None
    if not _is_int(limit) or not 1 <= limit <= LIST_LIMIT_MAX:
        raise InvalidOptionError(f"limit must be an int from 1 to {LIST_LIMIT_MAX}, got {limit!r}")
    if after_id is not None:
        if not _is_int(after_id):
            raise InvalidOptionError(f"after_id must be a job id (an int), got {after_id!r}")
        after_id = min(after_id, _INT8_MAX)
    params = {
        "state": None if state is None else state.value,
        "kind": _filter_name("kind", kind),
        "queue": _filter_name("queue", queue),
        "after_id": after_id,
        "limit": limit,
    }
    rows = yield Statement(queries.query("list_jobs", schema), params)
    return [job_from_row(row) for row in rows]


def stats_plan(schema: str) -> Plan[Stats]:
    """Count jobs per queue, kind and state, with the age of the oldest runnable pending job."""
    rows = yield Statement(queries.query("job_counts", schema))
    by_pair: dict[tuple[str, str], dict[JobState, int]] = {}
    ages: dict[tuple[str, str], timedelta] = {}
    totals = dict.fromkeys(JobState, 0)
    for queue, kind, state, count, age in rows:
        counts = by_pair.setdefault((queue, kind), dict.fromkeys(JobState, 0))
        counts[JobState(state)] = count
        totals[JobState(state)] += count
        if age is not None:
            ages[(queue, kind)] = age
    by_kind = [
        KindStats(queue=q, kind=k, counts=c, oldest_runnable_age=ages.get((q, k)))
        for (q, k), c in by_pair.items()
    ]
    return Stats(
        by_kind=by_kind, totals=totals, oldest_runnable_age=max(ages.values(), default=None)
    )


@dataclass(frozen=True, slots=True)
class QueueOverview:
    """One queue and kind's live and problem counts, all read from indexes."""

    queue: str
    kind: str
    counts: dict[str, int]
    """By ``pending`` (runnable now), ``scheduled``, ``running``, ``failed``, ``discarded``,
    ``cancelled``."""
    oldest_pending_seconds: float | None
    """How long the oldest runnable job has waited; None when none waits."""


@dataclass(frozen=True, slots=True)
class Overview:
    """What the dashboard's first page shows."""

    rows: list[QueueOverview]
    totals: dict[str, int]
    estimated_succeeded: int | None
    """The table's row estimate less the counted jobs: None before the first ANALYZE."""


OVERVIEW_STATES = ("pending", "scheduled", "running", "failed", "discarded", "cancelled")
"""The columns of an overview, in order."""


def overview_plan(schema: str) -> Plan[Overview]:
    """Counts per queue and kind for live and problem jobs, from indexes only."""
    rows = yield Statement(queries.query("overview", schema))
    pairs: dict[tuple[str, str], QueueOverview] = {}
    totals = dict.fromkeys(OVERVIEW_STATES, 0)
    for queue, kind, state, count, oldest in rows:
        pair = pairs.get((queue, kind))
        if pair is None:
            pair = QueueOverview(queue, kind, dict.fromkeys(OVERVIEW_STATES, 0), None)
        if oldest is not None:
            pair = QueueOverview(queue, kind, pair.counts, oldest)
        pairs[(queue, kind)] = pair
        pair.counts[state] += count
        totals[state] += count
    estimate = yield Statement(queries.query("estimated_rows", schema), (schema,))
    estimated = estimate[0][0] if estimate else -1
    succeeded = None if estimated < 0 else max(0, estimated - sum(totals.values()))
    return Overview(list(pairs.values()), totals, succeeded)

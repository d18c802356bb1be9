"""The typed shapes of outbox data: job states, jobs, new jobs and statistics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Generic

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeVar

__all__ = ["FINAL_STATES", "Job", "JobState", "KindStats", "NewJob", "Stats"]


class JobState(str, Enum):
    """Where a job is in its life. A ``str``, so ``job.state == "pending"`` holds."""

    PENDING = "pending"
    """Waiting: runnable now, scheduled for later, or waiting for a retry."""
    RUNNING = "running"
    """Leased by a runner, which is running its handler."""
    SUCCEEDED = "succeeded"
    """The handler returned."""
    FAILED = "failed"
    """Attempts exhausted: the dead letter."""
    DISCARDED = "discarded"
    """Not retryable: the handler raised PermanentError or the payload was malformed."""
    CANCELLED = "cancelled"
    """Cancelled by ``cancel()`` before it could finish."""

    def __str__(self) -> str:
        return self.value


FINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.DISCARDED, JobState.CANCELLED}
)
"""States a job never leaves (except by an explicit retry)."""


P = TypeVar("P", default=Any)


class Job(BaseModel, Generic[P]):
    """One job as stored: what ``get_job`` returns and what a handler receives.

    Generic in its payload for type checkers: a handler registered with ``payload=Model``
    receives the validated model, so it can say ``job: Job[Model]`` and mypy checks its use of
    ``job.payload``. At run time every job is a plain ``Job``.
    """

    model_config = ConfigDict(frozen=True)

    id: int
    kind: str
    queue: str
    payload: P
    state: JobState
    priority: int
    attempts: int
    max_attempts: int
    run_at: datetime
    created_at: datetime
    finished_at: datetime | None = None
    leased_until: datetime | None = None
    leased_by: str | None = None
    last_error: str | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list)
    """The last errors, oldest first: ``{"attempt": n, "at": iso time, "error": message}``."""
    unique_key: str | None = None
    result: Any = None
    metadata: dict[str, Any] | None = None
    """outbox's own facts about the job: ``trace`` is the trace context active at enqueue."""
    timeout_seconds: float | None = None
    """Seconds one attempt may take, overriding its kind's timeout; None: the kind's."""
    attempted_at: datetime | None = None
    """When the current (or last) attempt started."""
    updated_at: datetime | None = None
    """When outbox last changed the job: enqueue, lease, outcome or an operator's action."""
    tenant: str | None = None
    """Whose job it is: leases take tenants round-robin. None: no tenant's."""
    ordering_key: str | None = None
    """Jobs with one ordering key run one at a time, in enqueue order."""


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job for ``enqueue_many``: the same fields as ``enqueue``'s arguments.

    A plain dataclass, not a pydantic model: bulk enqueue builds many of them, and enqueue
    validates every field anyway.
    """

    kind: str
    payload: Any = None
    run_at: datetime | None = None
    delay: timedelta | float | None = None
    max_attempts: int | None = None
    priority: int = 0
    queue: str | None = None
    unique_key: str | None = None
    timeout: float | None = None
    tenant: str | None = None
    ordering_key: str | None = None


class KindStats(BaseModel):
    """Job counts for one (queue, kind) pair."""

    model_config = ConfigDict(frozen=True)

    queue: str
    kind: str
    counts: dict[JobState, int]
    """Jobs per state; every state is present, zero when there are none."""
    oldest_runnable_age: timedelta | None
    """How long the oldest runnable pending job has waited, or None when none is runnable."""


class Stats(BaseModel):
    """What ``stats()`` returns: counts per queue and kind, and totals."""

    model_config = ConfigDict(frozen=True)

    by_kind: list[KindStats]
    totals: dict[JobState, int]
    oldest_runnable_age: timedelta | None


_JOB_FIELDS = frozenset(Job.model_fields)


def trusted_job(values: dict[str, Any]) -> Job:
    """A Job from values the database just returned, every field given, without validation.

    What ``Job.model_construct`` does, minus its per-field bookkeeping: the runner builds one
    per job, and ``model_construct`` alone cost a third of its Python time per no-op job.
    """
    job = Job.__new__(Job)
    object.__setattr__(job, "__dict__", values)
    object.__setattr__(job, "__pydantic_fields_set__", set(_JOB_FIELDS))  # model_copy adds to it
    object.__setattr__(job, "__pydantic_extra__", None)
    object.__setattr__(job, "__pydantic_private__", None)
    return job

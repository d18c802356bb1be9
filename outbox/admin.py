"""Operator actions on jobs: plans that change a job's state from outside the runner."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from outbox import queries
from outbox.db import Plan, Statement
from outbox.errors import DuplicateJobError, InvalidOptionError
from outbox.models import JobState
from outbox.safety import safe_failure_message

__all__ = [
    "RETRYABLE_STATES",
    "RETRY_BATCH",
    "ROLES",
    "cancel_plan",
    "count_plan",
    "discard_plan",
    "flush_plan",
    "grant_plan",
    "retry_many_plan",
    "retry_plan",
    "unfinished_plan",
]

RETRY_BATCH = 1000
"""Jobs made pending again per statement by a bulk retry."""

RETRYABLE_STATES = (JobState.FAILED, JobState.DISCARDED, JobState.CANCELLED, JobState.PENDING)
"""The states ``retry`` takes a job from (a pending job is simply made runnable now)."""


def cancel_plan(schema: str, job_id: int) -> Plan[bool]:
    """Cancel a pending or running job; False when it had already finished (or never existed)."""
    rows = yield Statement(queries.query("cancel", schema), (job_id,))
    return bool(rows)


FLUSH_BATCH = 1000
"""Unfinished jobs deleted per statement by a flush."""


def flush_plan(
    schema: str, kind: str | None, queue: str | None, batch: int = FLUSH_BATCH
) -> Plan[int]:
    """Delete every pending or running job of ``kind`` and/or ``queue``, a batch at a time."""
    total = 0
    while True:
        params = {"kind": kind, "queue": queue, "limit": batch}
        rows = yield Statement(queries.query("flush", schema), params)
        total += len(rows)
        if len(rows) < batch:
            return total


def unfinished_plan(schema: str, kind: str | None, queue: str | None) -> Plan[int]:
    """How many pending or running jobs a flush with these filters would delete."""
    rows = yield Statement(
        queries.query("count_unfinished", schema), {"kind": kind, "queue": queue}
    )
    return int(rows[0][0])


def discard_plan(schema: str, job_id: int, reason: str) -> Plan[bool]:
    """Discard a pending or running job with an operator's reason; False when it had finished."""
    error = safe_failure_message(f"Discarded by an operator: {reason or 'no reason given'}")
    rows = yield Statement(queries.query("discard", schema), {"id": job_id, "error": error})
    return bool(rows)


def _retry_batch(
    schema: str,
    state: JobState,
    *,
    after: int = 0,
    ids: Sequence[int] | None = None,
    kind: str | None = None,
    queue: str | None = None,
    limit: int = RETRY_BATCH,
) -> Plan[tuple[int | None, int, list[int]]]:
    params = {
        "state": state.value, "after": after, "ids": None if ids is None else list(ids),
        "kind": kind, "queue": queue, "limit": limit,
    }  # fmt: skip
    rows = yield Statement(queries.query("retry", schema), params)
    last, picked, retried = rows[0]
    return last, picked, list(retried or [])


def _wake(schema: str) -> Plan[None]:
    yield Statement(queries.query("wake_runners", schema), (f"{schema}_jobs",))


def retry_plan(schema: str, job_id: int) -> Plan[bool]:
    """Make one job pending and runnable now; False when it is running, succeeded or missing.

    Raises DuplicateJobError when another live job holds its unique key.
    """
    for state in RETRYABLE_STATES:
        _, picked, retried = yield from _retry_batch(schema, state, ids=[job_id], limit=1)
        if retried:
            yield from _wake(schema)
            return True
        if picked:
            raise DuplicateJobError(
                f"job {job_id} was not retried: another unfinished job of its kind holds its "
                "unique_key. Cancel that one first, or let it finish."
            )
    return False


def retry_many_plan(
    schema: str,
    *,
    state: JobState | str = JobState.FAILED,
    kind: str | None = None,
    queue: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Plan[int]:
    """Retry every job in ``state`` (of ``kind``, in ``queue``), a batch per statement.

    Returns how many were made pending; ``progress`` is called with each batch's size (jobs
    looked at, retried or skipped), so it adds up to ``count_plan``'s total.
    Jobs whose unique key another live job holds are skipped.
    """
    try:
        wanted = JobState(state)
    except ValueError:
        raise InvalidOptionError(f"state must be one of {[s.value for s in JobState]}") from None
    if wanted not in RETRYABLE_STATES:
        raise InvalidOptionError(
            f"only {', '.join(s.value for s in RETRYABLE_STATES)} jobs can be retried"
        )
    after, total = 0, 0
    while True:
        last, picked, retried = yield from _retry_batch(
            schema, wanted, after=after, kind=kind, queue=queue
        )
        total += len(retried)
        if progress is not None and picked:
            progress(picked)
        if last is None:
            break
        after = last
    if total:
        yield from _wake(schema)
    return total


def count_plan(
    schema: str, state: JobState | str, kind: str | None = None, queue: str | None = None
) -> Plan[int]:
    """Count the jobs in a state (of a kind, in a queue): the total of a bulk operation."""
    params = {"state": JobState(state).value, "kind": kind, "queue": queue}
    rows = yield Statement(queries.query("count_jobs", schema), params)
    return int(rows[0][0])


ROLES = ("enqueuer", "runner", "reader")
"""What ``grant`` can make a role: may only enqueue; may run jobs; may only read."""


def grant_plan(schema: str, grants: Sequence[tuple[str, str]]) -> Plan[None]:
    """Grant each (part, role) pair: ``part`` one of ROLES, ``role`` an existing role's name."""
    for part, role in grants:
        if part not in ROLES:
            raise InvalidOptionError(f"a role is granted one of {ROLES}, not {part!r}")
        if not isinstance(role, str) or not 1 <= len(role) <= 63 or "\x00" in role:
            raise InvalidOptionError(f"a role name is 1 to 63 characters, got {role!r}")
        yield Statement(queries.query(f"grant_{part}", schema), (role,))

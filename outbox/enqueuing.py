"""Enqueue plans: validate a job completely in Python, then write it in the caller's transaction.

Validation happens before any statement is sent, so a refused job leaves the caller's
transaction usable.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ValidationError

from outbox import queries, tracing
from outbox.db import Copy, Plan, Statement
from outbox.errors import (
    DuplicateJobError,
    InvalidJobError,
    InvalidOptionError,
    InvalidPayloadError,
    PayloadTooLargeError,
    UnserializablePayloadError,
)
from outbox.models import NewJob
from outbox.safety import safe_failure_message, sanitize_kind, sanitize_queue

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_QUEUE",
    "MAX_DELAY_SECONDS",
    "MAX_TIMEOUT_SECONDS",
    "ORDERING_KEY_MAX_BYTES",
    "RUN_AT_END",
    "RUN_AT_MIN",
    "TENANT_MAX_BYTES",
    "IfExists",
    "JobRow",
    "check_label",
    "checked_jobs",
    "enqueue_many_plan",
    "enqueue_many_via_function_plan",
    "enqueue_plan",
    "enqueue_via_function_plan",
    "prepare",
    "prepare_many",
]

DEFAULT_MAX_ATTEMPTS = 20
"""Attempts before a job is failed: with the default backoff, about a day of retries."""

DEFAULT_QUEUE = "default"
"""The queue of a job enqueued without one."""

UNIQUE_KEY_MAX_BYTES = 512
"""Longest unique_key: it lives in a btree index, whose entries must stay small."""

MAX_DELAY_SECONDS = 1000 * 365.25 * 86400
"""Longest delay, 1000 years: far beyond any schedule, well inside Postgres's timestamp range."""

IfExists = Literal["return", "raise"]

_INT4_MAX = 2**31 - 1
# A NUL escape not itself escaped: Postgres's jsonb cannot store U+0000.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


RUN_AT_MIN = datetime(1970, 1, 1, tzinfo=timezone.utc)
RUN_AT_END = datetime(9000, 1, 1, tzinfo=timezone.utc)
"""run_at must fall in [RUN_AT_MIN, RUN_AT_END): the table's CHECK says the same."""

TENANT_MAX_BYTES = 128
"""Longest tenant id."""

ORDERING_KEY_MAX_BYTES = 512
"""Longest ordering key: it lives in a btree index, like unique_key."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

MAX_TIMEOUT_SECONDS = 604_800
"""Longest per-job timeout (a week): the table's CHECK says the same."""


class JobRow(NamedTuple):
    """A validated job, ready to insert (a tuple: bulk enqueue makes many)."""

    kind: str
    queue: str
    payload: str
    priority: int
    max_attempts: int
    run_at: datetime | None
    delay: float
    unique_key: str | None
    metadata: str | None = None
    """JSON text: the trace context active at enqueue (see outbox.tracing)."""
    timeout: float | None = None
    """Seconds one attempt may take, overriding the kind's."""
    tenant: str | None = None
    ordering_key: str | None = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dump_payload(payload: Any, limit: int) -> str:
    """Serialize a payload to JSON text, refusing what Postgres's jsonb cannot hold."""
    if payload is None:
        return "{}"
    try:
        # isinstance against pydantic's metaclass is slow: plain containers skip it.
        if type(payload) not in (dict, list) and isinstance(payload, BaseModel):
            data = payload.__pydantic_serializer__.to_json(payload)
        else:
            data = orjson.dumps(payload, default=_jsonable)
    except (TypeError, ValueError, orjson.JSONEncodeError) as exc:
        raise UnserializablePayloadError(
            f"the payload cannot be serialized to JSON: {exc}. Pass a dict, a list, a pydantic "
            "model or anything orjson serializes."
        ) from exc
    # orjson writes NaN and infinities as null: only a payload whose JSON holds a null is walked.
    if b"null" in data and _non_finite(payload):
        raise UnserializablePayloadError(
            "the payload holds NaN or an infinity, which JSON cannot represent: store a string "
            "or null instead"
        )
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"the payload is {len(data)} bytes, over the limit of {limit} bytes: enqueue a "
            "reference to large data instead, or raise max_payload_bytes"
        )
    if b"\\u0000" in data and _NUL_ESCAPE.search(data):
        raise UnserializablePayloadError(
            "the payload contains the character U+0000, which Postgres's jsonb cannot store"
        )
    return data.decode()


@functools.lru_cache(maxsize=1024)
def _cached_kind(kind: str) -> str:
    return sanitize_kind(kind)


def _kind(kind: str) -> str:
    # Only a str reaches the cache: an unhashable kind would raise TypeError there.
    return _cached_kind(kind) if isinstance(kind, str) else sanitize_kind(kind)


@functools.lru_cache(maxsize=1024)
def _cached_queue(queue: str, declared: frozenset[str] | None) -> str:
    return sanitize_queue(queue, declared)


def _queue(queue: str | None, declared: frozenset[str] | None) -> str:
    if queue is None:
        queue = DEFAULT_QUEUE
    return _cached_queue(queue, declared) if isinstance(queue, str) else sanitize_queue(queue)


def _is_int(value: object) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _delay_seconds(delay: timedelta | float | None) -> float:
    if delay is None:
        return 0.0
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, numbers.Real) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise InvalidOptionError(
            f"delay must be a timedelta or a number of seconds, got {type(delay).__name__}"
        )
    # Refuses NaN and infinity too; the bound keeps run_at inside the timestamp range.
    if not 0 <= seconds <= MAX_DELAY_SECONDS:
        raise InvalidOptionError(
            f"delay must be from 0 to {MAX_DELAY_SECONDS:.0f} seconds, got {delay!r}"
        )
    return seconds


def prepare(
    kind: str,
    payload: Any = None,
    *,
    run_at: datetime | None = None,
    delay: timedelta | float | None = None,
    max_attempts: int | None = None,
    priority: int = 0,
    queue: str | None = None,
    unique_key: str | None = None,
    max_payload_bytes: int,
    queues: frozenset[str] | None,
    metadata: str | None = None,
    models: Mapping[str, type[BaseModel]] | None = None,
    timeout: float | None = None,
    tenant: str | None = None,
    ordering_key: str | None = None,
) -> JobRow:
    """Validate one job's fields; raise an InvalidJobError for the first bad one.

    When ``models`` has a pydantic model for the kind, the payload must be that model or
    validate into it; the validated model is what is stored.
    """
    if run_at is not None:
        if delay is not None:
            raise InvalidOptionError("give run_at or delay, not both")
        if not isinstance(run_at, datetime) or run_at.utcoffset() is None:
            raise InvalidOptionError(f"run_at must be a timezone-aware datetime, got {run_at!r}")
        try:
            in_range = RUN_AT_MIN <= run_at < RUN_AT_END
        except OverflowError:  # year 9999 at a negative offset is past datetime.max in UTC
            in_range = False
        if not in_range:
            raise InvalidOptionError(
                f"run_at must be from {RUN_AT_MIN:%Y-%m-%d} to before {RUN_AT_END:%Y-%m-%d} (UTC), "
                f"got {run_at!r}"
            )
    attempts = DEFAULT_MAX_ATTEMPTS if max_attempts is None else max_attempts
    if not (_is_int(attempts) and 1 <= attempts <= _INT4_MAX):
        raise InvalidOptionError(f"max_attempts must be an int of at least 1, got {max_attempts!r}")
    if not (_is_int(priority) and -32768 <= priority <= 32767):
        raise InvalidOptionError(f"priority must be an int from -32768 to 32767, got {priority!r}")
    if unique_key is not None and (
        not isinstance(unique_key, str)
        or not unique_key
        or _utf8_length(unique_key) > UNIQUE_KEY_MAX_BYTES
        or "\x00" in unique_key
    ):
        raise InvalidOptionError(
            f"unique_key must be a non-empty str of at most {UNIQUE_KEY_MAX_BYTES} bytes of "
            "valid UTF-8"
        )
    if timeout is not None and not (
        isinstance(timeout, numbers.Real)
        and not isinstance(timeout, bool)
        and 0 < timeout <= MAX_TIMEOUT_SECONDS
    ):
        raise InvalidOptionError(
            f"timeout must be more than 0 and at most {MAX_TIMEOUT_SECONDS} seconds, "
            f"got {timeout!r}"
        )
    check_label("tenant", tenant, TENANT_MAX_BYTES)
    check_label("ordering_key", ordering_key, ORDERING_KEY_MAX_BYTES)
    canonical = _kind(kind)
    if models:
        payload = _typed(canonical, payload, models)
    return JobRow(
        canonical,
        _queue(queue, queues),
        dump_payload(payload, max_payload_bytes),
        priority,
        attempts,
        run_at,
        _delay_seconds(delay),
        unique_key,
        metadata,
        None if timeout is None else float(timeout),
        tenant,
        ordering_key,
    )


def check_label(name: str, value: str | None, limit: int) -> None:
    """Refuse a tenant or ordering key the table's CHECK would refuse, before anything is sent."""
    if value is None:
        return
    if (
        not isinstance(value, str)
        or not value
        or _utf8_length(value) > limit
        or _CONTROL.search(value)
    ):
        raise InvalidOptionError(
            f"{name} must be a non-empty str of at most {limit} bytes of valid UTF-8 without "
            f"control characters, got {safe_failure_message(repr(value), limit=80)}"
        )


def _utf8_length(text: str) -> float:
    """Bytes of ``text`` in UTF-8; infinite when it cannot be encoded (a lone surrogate)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return math.inf


def _non_finite(value: Any, depth: int = 0) -> bool:
    """Whether a plain payload holds NaN or an infinity (orjson would write them as null)."""
    if type(value) is float:
        return not math.isfinite(value)
    if depth > 64:
        return False  # orjson refuses deeper nesting itself
    if type(value) is dict:
        return any(_non_finite(v, depth + 1) for v in value.values())
    if type(value) in (list, tuple):
        return any(_non_finite(v, depth + 1) for v in value)
    return False


def enqueue_plan(schema: str, job: JobRow, if_exists: IfExists) -> Plan[int]:
    """Insert one job; for a live unique_key, return the existing job's id (or raise)."""
    if job.unique_key is None:
        rows = yield Statement(
            queries.query("insert_job_without_key", schema),
            (job.kind, job.queue, job.payload, job.priority, job.max_attempts, job.run_at,
             job.delay, job.metadata, job.timeout, job.tenant, job.ordering_key),
        )  # fmt: skip
        return int(rows[0][0])
    insert = queries.query("insert_job", schema)
    params = (
        job.kind,
        job.queue,
        job.payload,
        job.priority,
        job.max_attempts,
        job.run_at,
        job.delay,
        job.unique_key,
        job.metadata,
        job.timeout,
        job.tenant,
        job.ordering_key,
    )
    while True:
        rows = yield Statement(insert, params)
        if rows:
            return int(rows[0][0])
        rows = yield Statement(
            queries.query("live_job_by_unique_key", schema), (job.kind, job.unique_key)
        )
        if rows:
            existing = int(rows[0][0])
            if if_exists == "raise":
                raise DuplicateJobError(
                    f"job {existing} of kind {job.kind!r} with this unique_key is not finished",
                    existing_id=existing,
                )
            return existing
        # The live job finished between the two statements: insert again.


def _function_args(job: JobRow) -> tuple[Any, ...]:
    # The SQL function takes run_at or delay (seconds after the database's now), not both.
    return (
        job.kind, job.payload, job.run_at, job.max_attempts, job.priority, job.queue,
        job.unique_key, job.timeout, job.tenant, job.ordering_key,
        None if job.run_at is not None else job.delay, job.metadata,
    )  # fmt: skip


def enqueue_via_function_plan(schema: str, job: JobRow) -> Plan[int]:
    """Insert one job through the SQL function ``enqueue()``, with its owner's rights.

    What a role that may only enqueue uses (``Outbox(enqueue_via_function=True)``). For a live
    unique_key the function returns the existing job's id.
    """
    rows = yield Statement(queries.query("enqueue_via_function", schema), _function_args(job))
    return int(rows[0][0])


def enqueue_many_via_function_plan(schema: str, rows: list[JobRow]) -> Plan[list[int]]:
    """Insert many jobs through the SQL function: one id per job, in input order."""
    if not rows:
        return []
    columns = list(zip(*(_function_args(r) for r in rows), strict=True))
    # unnest's column order: kind, queue, payload, priority, max_attempts, run_at, delay,
    # unique_key, metadata, timeout, tenant, ordering_key.
    k, p, ra, ma, pr, q, uk, ts, tn, ok, d, m = columns
    result = yield Statement(
        queries.query("enqueue_many_via_function", schema),
        [list(c) for c in (k, q, p, pr, ma, ra, d, uk, m, ts, tn, ok)],
    )
    return [int(row[0]) for row in result]


def _typed(kind: str, payload: Any, models: Mapping[str, type[BaseModel]]) -> Any:
    """The payload validated into its kind's model, when the kind has one."""
    model = models.get(kind)
    if model is None or type(payload) is model:
        return payload
    if isinstance(payload, BaseModel) and not isinstance(payload, model):
        raise InvalidPayloadError(
            f"kind {kind!r} takes a {model.__name__} payload, got a {type(payload).__name__}"
        )
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        message = safe_failure_message(str(exc).replace("\n", "; "))
        raise InvalidPayloadError(
            f"the payload of kind {kind!r} does not validate into {model.__name__}: {message}"
        ) from None


def checked_jobs(jobs: Iterable[NewJob]) -> list[NewJob]:
    """The jobs of a bulk enqueue as a list, refusing anything that is not a NewJob."""
    checked = list(jobs)
    for index, job in enumerate(checked):
        if not isinstance(job, NewJob):
            raise InvalidOptionError(f"job {index} is a {type(job).__name__}, expected NewJob")
    return checked


def prepare_many(
    jobs: list[NewJob],
    *,
    max_payload_bytes: int,
    queues: frozenset[str] | None,
    models: Mapping[str, type[BaseModel]] | None = None,
) -> Iterator[JobRow]:
    """Validate each job as it is consumed; an InvalidJobError names the bad job's index.

    A generator, so that a bulk enqueue streams each row to COPY while the server takes the
    ones before it: ``Copy`` runs in a savepoint, so a bad job still writes nothing.
    """
    metadata = tracing.current_metadata()
    for index, job in enumerate(jobs):
        try:
            yield prepare(
                job.kind,
                job.payload,
                run_at=job.run_at,
                delay=job.delay,
                max_attempts=job.max_attempts,
                priority=job.priority,
                queue=job.queue,
                unique_key=job.unique_key,
                max_payload_bytes=max_payload_bytes,
                queues=queues,
                metadata=metadata,
                models=models,
                timeout=job.timeout,
                tenant=job.tenant,
                ordering_key=job.ordering_key,
            )
        except InvalidJobError as exc:
            raise type(exc)(f"job {index}: {exc}") from None


def enqueue_many_plan(schema: str, jobs: list[NewJob], rows: Iterator[JobRow]) -> Plan[list[int]]:
    """Insert many jobs; returns one id per job, in input order.

    ``rows`` are ``jobs`` validated (``prepare_many``). Without unique keys the rows stream in
    with COPY, after one statement that reserves their ids and reads the database's clock. With
    unique keys they go in one INSERT … ON CONFLICT, each with an id reserved for it: a job whose
    (kind, unique_key) matches a live job (or an earlier job of the same call) is not inserted,
    and that live job's id stands in its place.
    """
    if not jobs:
        return []
    if any(job.unique_key is not None for job in jobs):
        return (yield from _insert_unique(schema, list(rows)))
    now, ids = yield from _reserve_ids(schema, len(jobs))
    timed = _timed(jobs)
    query = queries.query("copy_jobs" if timed else "copy_jobs_now", schema)
    yield Copy(query, _copy_rows(rows, ids, now if timed else None))
    return ids


def _timed(jobs: list[NewJob]) -> bool:
    """Whether any job has a run_at or a delay: else run_at takes the column's default, now()."""
    return any(job.run_at is not None or job.delay is not None for job in jobs)


def _copy_rows(
    rows: Iterator[JobRow], ids: list[int], now: datetime | None
) -> Iterator[tuple[Any, ...]]:
    """COPY's rows: the id first, run_at last when some job is timed."""
    for job_id, r in zip(ids, rows, strict=True):
        row: tuple[Any, ...] = (
            job_id, r.kind, r.queue, r.payload, r.priority, r.max_attempts, r.metadata, r.timeout,
            r.tenant, r.ordering_key,
        )  # fmt: skip
        if now is not None:
            row = (*row, r.run_at or (now + timedelta(seconds=r.delay) if r.delay else now))
        yield row


def _insert_unique(schema: str, rows: list[JobRow]) -> Plan[list[int]]:
    """Insert jobs of which some have a unique_key: live duplicates give their ids instead."""
    _, ids = yield from _reserve_ids(schema, len(rows))
    columns = (
        ids,
        [r.kind for r in rows],
        [r.queue for r in rows],
        [r.payload for r in rows],
        [r.priority for r in rows],
        [r.max_attempts for r in rows],
        [r.run_at for r in rows],
        [r.delay for r in rows],
        [r.unique_key for r in rows],
        [r.metadata for r in rows],
        [r.timeout for r in rows],
        [r.tenant for r in rows],
        [r.ordering_key for r in rows],
    )
    inserted = {row[0] for row in (yield Statement(queries.query("insert_jobs", schema), columns))}
    skipped = [(i, r) for i, r in zip(ids, rows, strict=True) if i not in inserted]
    if not skipped:
        return ids
    found = yield Statement(
        queries.query("live_jobs_by_unique_key", schema),
        ([r.kind for _, r in skipped], [r.unique_key for _, r in skipped]),
    )
    live = {(kind, key): job_id for kind, key, job_id in found}
    gone = [r for _, r in skipped if (r.kind, r.unique_key) not in live]
    if gone:  # the live job finished meanwhile: insert those again
        again = iter((yield from _insert_unique(schema, gone)))
        for r in gone:
            live[(r.kind, r.unique_key)] = next(again)
    pairs = zip(ids, rows, strict=True)
    return [i if i in inserted else live[(r.kind, r.unique_key)] for i, r in pairs]


def _reserve_ids(schema: str, n: int) -> Plan[tuple[datetime, list[int]]]:
    """``n`` ids for new jobs, and now on the database's clock."""
    reserved = yield Statement(queries.query("reserve_job_ids", schema), (n,))
    now, first, last, scattered = reserved[0]
    return now, list(range(first, last + 1)) if scattered is None else list(scattered)

"""outbox: a Postgres-native durable outbox and job runner.

Enqueue a job in the same transaction as your business data; a runner leases it with
``FOR UPDATE SKIP LOCKED`` and hands it to the handler registered for its kind.
"""

from __future__ import annotations

from outbox.backoff import Backoff
from outbox.client import DEFAULT_SCHEMA, Outbox
from outbox.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    DuplicateJobError,
    HandlerNotFoundError,
    InvalidJobError,
    InvalidKindError,
    InvalidOptionError,
    InvalidPayloadError,
    OutboxError,
    PayloadError,
    PayloadTooLargeError,
    PermanentError,
    RetryableError,
    RunnerFailedError,
    SchemaError,
    SchemaNotMigratedError,
    SchemaTooNewError,
    UnknownQueueError,
    UnserializablePayloadError,
)
from outbox.limits import BlockedKey, Limit
from outbox.models import FINAL_STATES, Job, JobState, KindStats, NewJob, Stats
from outbox.mux import HandlerMux
from outbox.observe import JobEvent, Observer, observers
from outbox.runner import Health, Runner
from outbox.safety import safe_failure_message, safe_label, sanitize_kind

__all__ = [
    "DEFAULT_SCHEMA",
    "FINAL_STATES",
    "Backoff",
    "BlockedKey",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DuplicateJobError",
    "HandlerMux",
    "HandlerNotFoundError",
    "Health",
    "InvalidJobError",
    "InvalidKindError",
    "InvalidOptionError",
    "InvalidPayloadError",
    "Job",
    "JobEvent",
    "JobState",
    "KindStats",
    "Limit",
    "NewJob",
    "Observer",
    "Outbox",
    "OutboxError",
    "PayloadError",
    "PayloadTooLargeError",
    "PermanentError",
    "RetryableError",
    "Runner",
    "RunnerFailedError",
    "SchemaError",
    "SchemaNotMigratedError",
    "SchemaTooNewError",
    "Stats",
    "UnknownQueueError",
    "UnserializablePayloadError",
    "blocked_keys",
    "cancel",
    "count",
    "discard",
    "enqueue",
    "enqueue_many",
    "flush",
    "get_job",
    "limits",
    "list_jobs",
    "migrate",
    "observers",
    "prune",
    "remove_limit",
    "retry",
    "retry_many",
    "safe_failure_message",
    "safe_label",
    "sanitize_kind",
    "set_limit",
    "stats",
]

_DEFAULT = Outbox()

blocked_keys = _DEFAULT.blocked_keys
cancel = _DEFAULT.cancel
count = _DEFAULT.count
discard = _DEFAULT.discard
enqueue = _DEFAULT.enqueue
enqueue_many = _DEFAULT.enqueue_many
flush = _DEFAULT.flush
get_job = _DEFAULT.get_job
limits = _DEFAULT.limits
list_jobs = _DEFAULT.list_jobs
remove_limit = _DEFAULT.remove_limit
set_limit = _DEFAULT.set_limit
stats = _DEFAULT.stats
migrate = _DEFAULT.migrate
prune = _DEFAULT.prune
retry = _DEFAULT.retry
retry_many = _DEFAULT.retry_many

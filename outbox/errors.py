"""Every error outbox raises, rooted in :class:`OutboxError`.

Each class's docstring is its default message. Errors about bad input are also ``ValueError``s,
so code that already catches those keeps working.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DuplicateJobError",
    "HandlerNotFoundError",
    "InvalidJobError",
    "InvalidKindError",
    "InvalidOptionError",
    "InvalidPayloadError",
    "JobControl",
    "OutboxError",
    "PayloadError",
    "PayloadTooLargeError",
    "PermanentError",
    "RetryableError",
    "RunnerFailedError",
    "SchemaError",
    "SchemaNotMigratedError",
    "SchemaTooNewError",
    "UnknownQueueError",
    "UnserializablePayloadError",
]


class OutboxError(Exception):
    """An outbox operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(OutboxError, ValueError):
    """The outbox is configured wrongly (a bad DSN, option or schema name)."""


class InvalidJobError(OutboxError, ValueError):
    """The job was refused before anything was written."""


class InvalidKindError(InvalidJobError):
    """A job kind is 1 to 64 characters of a-z 0-9 . _ - starting with a letter or digit."""


class InvalidOptionError(InvalidJobError):
    """An enqueue option is out of range."""


class UnknownQueueError(InvalidJobError):
    """The queue is not one of the declared queues."""


class PayloadError(InvalidJobError):
    """The payload cannot be stored."""


class InvalidPayloadError(PayloadError):
    """The payload does not validate into the pydantic model registered for its kind."""


class UnserializablePayloadError(PayloadError):
    """The payload cannot be serialized to JSON."""


class PayloadTooLargeError(PayloadError):
    """The payload is over the size limit; enqueue a reference to large data instead."""


class DuplicateJobError(OutboxError):
    """An unfinished job with this kind and unique_key already exists."""

    def __init__(self, message: str | None = None, *, existing_id: int | None = None) -> None:
        super().__init__(message)
        self.existing_id = existing_id


class SchemaError(OutboxError):
    """The database schema does not match this version of outbox."""


class SchemaNotMigratedError(SchemaError):
    """The outbox schema is missing or behind: run `outbox migrate` (or `outbox.migrate(conn)`)."""


class SchemaTooNewError(SchemaError):
    """The database was migrated by a newer outbox: upgrade the outbox package."""


class DatabaseError(OutboxError):
    """The database refused or failed the operation.

    ``sqlstate`` carries Postgres's error code when there is one; the psycopg error is the cause.
    """

    def __init__(self, message: str | None = None, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class DatabaseUnavailableError(DatabaseError):
    """The database cannot be reached now (down, restarting, or cut off): waiting may fix it."""


class RunnerFailedError(OutboxError):
    """A runner service kept failing past its restart limit, so the runner stopped.

    ``service`` names it; the last error is the cause. Restart the process (systemd and
    Kubernetes do); the log's ``runner.service_failed`` events say what went wrong.
    """

    def __init__(self, message: str | None = None, *, service: str = "") -> None:
        super().__init__(message)
        self.service = service


class HandlerNotFoundError(OutboxError, LookupError):
    """No handler is registered for this job kind."""


class JobControl(OutboxError):  # noqa: N818 - a signal from a handler, not a failure of outbox
    """A handler's instruction about its job's outcome."""


class RetryableError(JobControl):
    """Retry this job, after ``retry_after`` seconds when given (else the backoff's delay)."""

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        if retry_after is not None and retry_after < 0:
            raise InvalidOptionError(f"retry_after must be >= 0 seconds, got {retry_after}")
        self.retry_after = retry_after


class PermanentError(JobControl):
    """Do not retry this job: it is discarded with this error as the reason."""

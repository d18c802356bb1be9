"""Runs database *plans* on sync or async psycopg connections: one core, two thin drivers.

A plan is a generator that yields the statements it needs (``Statement``, or ``Copy`` to stream
rows with COPY) and receives each one's rows; its return value is the result. The logic lives
once, in the plan; :func:`run` and :func:`arun` only carry statements to a connection. Every
psycopg error is turned into an OutboxError here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Coroutine, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq

from outbox.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    SchemaNotMigratedError,
)

__all__ = [
    "AnyConnection",
    "Copy",
    "Plan",
    "Rows",
    "Statement",
    "arun",
    "check_dsn",
    "execute",
    "run",
    "translate_error",
]

T = TypeVar("T")
Rows = list[tuple[Any, ...]]
AnyConnection = psycopg.Connection[Any] | psycopg.AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a plan: SQL from ``queries`` and its parameters."""

    query: bytes
    params: Sequence[Any] | Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Copy:
    """A ``COPY … FROM STDIN`` of a plan, with the rows to stream; it receives no rows.

    ``rows`` may be a generator that validates as it goes: the COPY runs in a savepoint, so an
    error it raises (or the server's) leaves the caller's transaction as it was.
    """

    query: bytes
    rows: Iterable[Sequence[Any]]


Plan = Generator[Statement | Copy, Rows, T]

_NOT_MIGRATED = (
    pg_errors.UndefinedTable,
    pg_errors.UndefinedFunction,
    pg_errors.InvalidSchemaName,
    pg_errors.UndefinedObject,
    pg_errors.UndefinedColumn,
)


_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
"""Connection exceptions, a server shutting down or starting up, too many connections."""

_CANNOT_WAIT = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "password",
    "not permitted",
)
"""Words of libpq connection failures that waiting cannot fix (no sqlstate comes with them)."""


def translate_error(exc: psycopg.Error) -> Exception:
    """Return the OutboxError that stands for a psycopg error (raise it ``from exc``).

    ``DatabaseUnavailableError`` when waiting may fix it (the server is down, restarting or
    cut off); a plain ``DatabaseError`` when it will not (a refused password, an unknown
    database, a constraint).
    """
    if isinstance(exc, _NOT_MIGRATED):
        return SchemaNotMigratedError(
            f"{SchemaNotMigratedError.__doc__} (the database said: {exc.diag.message_primary})"
        )
    sqlstate = exc.sqlstate
    if isinstance(exc, psycopg.OperationalError) and sqlstate is None:
        text = " ".join(str(exc).split())  # libpq writes several lines; logs want one
        if any(words in text.lower() for words in _CANNOT_WAIT):
            return DatabaseError(f"the database refused the connection: {text}")
        return DatabaseUnavailableError(
            f"cannot reach the database: {text}. Check the DSN and that Postgres is up."
        )
    message = exc.diag.message_primary or str(exc).strip()
    if sqlstate is not None and sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
        return DatabaseUnavailableError(
            f"the database is unavailable: {message}", sqlstate=sqlstate
        )
    return DatabaseError(f"the database refused the operation: {message}", sqlstate=sqlstate)


def _without_quotes(text: str) -> str:
    # libpq quotes the DSN's own words back ("invalid percent-encoded token: ..."), and a
    # password may be among them.
    return re.sub(r'"[^"]*"', '"…"', text)


def check_dsn(dsn: str) -> None:
    """Raise ConfigurationError when ``dsn`` cannot be parsed, without echoing any of it."""
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(
            f"invalid DSN: it cannot be parsed ({_without_quotes(str(exc).strip())}); expected "
            "postgresql://user:password@host:port/dbname or 'host=... dbname=...'"
        ) from None


_TUPLES_OK = pq.ExecStatus.TUPLES_OK


def _returned_rows(cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> bool:
    """Whether the statement returned rows (zero or more): ``description is not None``.

    Without the ``Column`` per field that ``description`` builds on every call.
    """
    result = cursor.pgresult
    return result is not None and result.status == _TUPLES_OK


def _rows(cursor: psycopg.Cursor[Any]) -> Rows:
    return cursor.fetchall() if _returned_rows(cursor) else []


_SAVEPOINT = b"SAVEPOINT outbox_copy"
_RELEASE = b"RELEASE SAVEPOINT outbox_copy"
_ROLLBACK = b"ROLLBACK TO SAVEPOINT outbox_copy"


def _in_transaction(conn: AnyConnection) -> bool:
    """Whether a statement now runs in a transaction that outlives it (so a savepoint can help)."""
    return not conn.autocommit or conn.info.transaction_status != pq.TransactionStatus.IDLE


def _copy(conn: psycopg.Connection[Any], cursor: psycopg.Cursor[Any], statement: Copy) -> None:
    savepoint = _in_transaction(conn)
    if savepoint:
        cursor.execute(_SAVEPOINT)
    try:
        with cursor.copy(statement.query) as copy:
            for row in statement.rows:
                copy.write_row(row)
    except Exception:
        if savepoint and conn.info.transaction_status == pq.TransactionStatus.INERROR:
            with contextlib.suppress(psycopg.Error):  # a dead connection: the first error tells
                cursor.execute(_ROLLBACK)
                cursor.execute(_RELEASE)
        raise
    if savepoint:
        cursor.execute(_RELEASE)


async def _acopy(
    conn: psycopg.AsyncConnection[Any], cursor: psycopg.AsyncCursor[Any], statement: Copy
) -> None:
    savepoint = _in_transaction(conn)
    if savepoint:
        await cursor.execute(_SAVEPOINT)
    try:
        async with cursor.copy(statement.query) as copy:
            for row in statement.rows:
                await copy.write_row(row)
    except Exception:
        if savepoint and conn.info.transaction_status == pq.TransactionStatus.INERROR:
            with contextlib.suppress(psycopg.Error):
                await cursor.execute(_ROLLBACK)
                await cursor.execute(_RELEASE)
        raise
    if savepoint:
        await cursor.execute(_RELEASE)


def run(conn: psycopg.Connection[Any], plan: Plan[T]) -> T:
    """Carry out ``plan`` on a sync connection."""
    try:
        statement = next(plan)
        while True:
            with conn.cursor() as cursor:
                try:
                    if isinstance(statement, Copy):
                        _copy(conn, cursor, statement)
                        rows: Rows = []
                    else:
                        cursor.execute(statement.query, statement.params)
                        rows = _rows(cursor)
                except psycopg.Error as exc:
                    raise translate_error(exc) from exc
            statement = plan.send(rows)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def arun(conn: psycopg.AsyncConnection[Any], plan: Plan[T]) -> T:
    """Carry out ``plan`` on an async connection."""
    try:
        statement = next(plan)
        while True:
            async with conn.cursor() as cursor:
                try:
                    if isinstance(statement, Copy):
                        await _acopy(conn, cursor, statement)
                        rows: Rows = []
                    else:
                        await cursor.execute(statement.query, statement.params)
                        rows = await cursor.fetchall() if _returned_rows(cursor) else []
                except psycopg.Error as exc:
                    raise translate_error(exc) from exc
            statement = plan.send(rows)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def execute(conn: AnyConnection, plan: Plan[T]) -> T | Coroutine[Any, Any, T]:
    """Carry out ``plan`` on ``conn``: the result, or for an async connection an awaitable of it."""
    if isinstance(conn, psycopg.AsyncConnection):
        return arun(conn, plan)
    if isinstance(conn, psycopg.Connection):
        return run(conn, plan)
    plan.close()
    raise ConfigurationError(
        f"expected a psycopg Connection or AsyncConnection, got {type(conn).__name__}"
    )

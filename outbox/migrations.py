"""Applies the numbered migrations in ``sql/migrations`` and checks a database's schema version.

Migrating takes an advisory lock, so two processes migrating at once apply each migration once:
the second waits, then finds nothing left to do. A migration is a transaction, then, after the
line ``-- outbox: concurrently``, statements that cannot run in one (``CREATE INDEX
CONCURRENTLY``, which builds an index while the table keeps taking writes). Those run one at a
time after the commit; a migration whose statements have not all run is marked pending, and
every ``migrate`` finishes them. On a jobs table created by the same ``migrate`` call (empty,
nobody else can see it) they run inside the transaction instead.
"""

from __future__ import annotations

import contextlib
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from psycopg.pq import TransactionStatus

from outbox import queries
from outbox.db import AnyConnection, Plan, Statement, arun, run
from outbox.errors import OutboxError, SchemaNotMigratedError, SchemaTooNewError

__all__ = ["LATEST_VERSION", "check_schema", "migrate_async", "migrate_sync", "verified"]

LATEST_VERSION = len(queries.migrations())
"""The schema version this package's code expects."""


def _migrate_plan(schema: str) -> Plan[list[int]]:
    """Apply pending migrations; returns the versions applied (run inside one transaction)."""
    q = queries.check_schema_name(schema)
    yield Statement(queries.query("migrate_lock", q), (q,))
    yield Statement(queries.query("create_schema", q))
    yield Statement(queries.query("create_migrations_table", q))
    yield Statement(queries.query("add_pending_column", q))
    rows = yield Statement(queries.query("applied_versions", q))
    applied = {row[0] for row in rows}
    newest = max(applied, default=0)
    if newest > LATEST_VERSION:
        raise SchemaTooNewError(
            f"schema {q!r} is at version {newest}, newer than this outbox's {LATEST_VERSION}: "
            "upgrade the outbox package"
        )
    new_table = not applied
    done: list[int] = []
    for migration in queries.migrations():
        if migration.version in applied:
            continue
        yield Statement(migration.render(q))
        later = migration.render_concurrently(q)
        if new_table:
            for statement in later:
                yield Statement(statement.replace(b" CONCURRENTLY", b"", 1))
        pending = bool(later) and not new_table
        yield Statement(
            queries.query("record_migration", q), (migration.version, migration.name, pending)
        )
        done.append(migration.version)
    return done


def _concurrently_plan(schema: str, in_transaction: bool) -> Plan[None]:
    """Run the statements after the transaction of every migration marked pending.

    Outside a transaction block each runs on its own (the driver holds the session-level
    migration lock). Inside one (the caller's), ``CONCURRENTLY`` is impossible: they run as
    plain statements, locking the table against writes while an index builds.
    """
    q = queries.check_schema_name(schema)
    rows = yield Statement(queries.query("pending_concurrently", q))
    versions = {row[0] for row in rows}
    pending = [m for m in queries.migrations() if m.version in versions]
    if not pending:
        return
    invalid = yield Statement(queries.query("invalid_indexes", q), (q,))
    for (name,) in invalid:  # left by an interrupted CREATE INDEX CONCURRENTLY
        yield Statement(queries.drop_index(q, name))
    for migration in pending:
        for statement in migration.render_concurrently(q):
            if in_transaction:
                statement = statement.replace(b" CONCURRENTLY", b"", 1)
            yield Statement(statement)
        yield Statement(queries.query("finish_concurrently", q), (migration.version,))


def _any_pending(schema: str) -> Plan[bool]:
    rows = yield Statement(queries.query("pending_concurrently", queries.check_schema_name(schema)))
    return bool(rows)


def _session_lock(schema: str, take: bool) -> Plan[None]:
    name = "migrate_session_lock" if take else "migrate_session_unlock"
    yield Statement(queries.query(name, schema), (schema,))


def migrate_sync(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    """Apply pending migrations on a sync connection: see the module's docstring."""
    with conn.transaction():
        done = run(conn, _migrate_plan(schema))
    if conn.info.transaction_status != TransactionStatus.IDLE:
        run(conn, _concurrently_plan(schema, in_transaction=True))
        return done
    if not run(conn, _any_pending(schema)):
        return done  # the common case: no lock, no setting changed
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        run(conn, _session_lock(schema, take=True))
        try:
            run(conn, _concurrently_plan(schema, in_transaction=False))
        finally:
            with contextlib.suppress(OutboxError):
                run(conn, _session_lock(schema, take=False))
    finally:
        if not conn.closed:
            conn.autocommit = autocommit
    return done


async def migrate_async(conn: psycopg.AsyncConnection[Any], schema: str) -> list[int]:
    """Apply pending migrations on an async connection: see the module's docstring."""
    async with conn.transaction():
        done = await arun(conn, _migrate_plan(schema))
    if conn.info.transaction_status != TransactionStatus.IDLE:
        await arun(conn, _concurrently_plan(schema, in_transaction=True))
        return done
    if not await arun(conn, _any_pending(schema)):
        return done
    autocommit = conn.autocommit
    await conn.set_autocommit(True)
    try:
        await arun(conn, _session_lock(schema, take=True))
        try:
            await arun(conn, _concurrently_plan(schema, in_transaction=False))
        finally:
            with contextlib.suppress(OutboxError):
                await arun(conn, _session_lock(schema, take=False))
    finally:
        if not conn.closed:
            await conn.set_autocommit(autocommit)
    return done


def check_schema(schema: str) -> Plan[int]:
    """Return the schema's version; raise unless it is exactly the one this code expects."""
    rows = yield Statement(queries.query("migrations_table_exists", schema), (schema,))
    version = 0
    if rows[0][0]:
        rows = yield Statement(queries.query("schema_version", schema))
        version = rows[0][0]
    if version < LATEST_VERSION:
        raise SchemaNotMigratedError(
            f"schema {schema!r} is at version {version}, this outbox needs {LATEST_VERSION}: "
            f"run `outbox migrate --schema {schema}` (or outbox.migrate(conn))"
        )
    if version > LATEST_VERSION:
        raise SchemaTooNewError(
            f"schema {schema!r} is at version {version}, newer than this outbox's "
            f"{LATEST_VERSION}: upgrade the outbox package"
        )
    return version


_verified: WeakKeyDictionary[AnyConnection, set[str]] = WeakKeyDictionary()


def verified(conn: AnyConnection, schema: str, plan: Plan[Any]) -> Plan[Any]:
    """Return ``plan``, preceded by a schema check the first time ``conn`` meets ``schema``."""
    seen = _verified.setdefault(conn, set())
    if schema in seen:
        return plan

    def checked() -> Plan[Any]:
        yield from check_schema(schema)
        seen.add(schema)
        return (yield from plan)

    return checked()

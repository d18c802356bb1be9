"""Applies the numbered migrations in ``sql/migrations`` and checks a database's schema version.

Migrating takes a transaction-scoped advisory lock, so two processes migrating at once apply
each migration once: the second waits, then finds nothing left to do.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

import psycopg

from outbox import queries
from outbox.db import AnyConnection, Plan, Statement, arun, run
from outbox.errors import SchemaNotMigratedError, SchemaTooNewError

__all__ = ["LATEST_VERSION", "check_schema", "migrate_async", "migrate_sync", "verified"]

LATEST_VERSION = len(queries.migrations())
"""The schema version this package's code expects."""


def _migrate_plan(schema: str) -> Plan[list[int]]:
    """Apply pending migrations; returns the versions applied (run inside one transaction)."""
    q = queries.check_schema_name(schema)
    yield Statement(queries.query("migrate_lock", q), (q,))
    yield Statement(queries.query("create_schema", q))
    yield Statement(queries.query("create_migrations_table", q))
    rows = yield Statement(queries.query("applied_versions", q))
    applied = {row[0] for row in rows}
    newest = max(applied, default=0)
    if newest > LATEST_VERSION:
        raise SchemaTooNewError(
            f"schema {q!r} is at version {newest}, newer than this outbox's {LATEST_VERSION}: "
            "upgrade the outbox package"
        )
    done: list[int] = []
    for migration in queries.migrations():
        if migration.version in applied:
            continue
        yield Statement(migration.render(q))
        yield Statement(queries.query("record_migration", q), (migration.version, migration.name))
        done.append(migration.version)
    return done


def migrate_sync(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    """Apply pending migrations on a sync connection, in one transaction."""
    with conn.transaction():
        return run(conn, _migrate_plan(schema))


async def migrate_async(conn: psycopg.AsyncConnection[Any], schema: str) -> list[int]:
    """Apply pending migrations on an async connection, in one transaction."""
    async with conn.transaction():
        return await arun(conn, _migrate_plan(schema))


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

"""The only door to SQL text: named queries and numbered migrations from the ``sql/`` folder.

Queries live in ``sql/queries/*.sql`` as blocks headed ``-- name: <name>``. Every file may use
``{schema}``, the quoted schema name, and ``{channel}``, the quoted NOTIFY channel
``<schema>_jobs``; both go through ``psycopg.sql.Identifier``. Literal braces are doubled.
Nothing else is ever formatted into SQL text.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass
from importlib import resources

from psycopg import sql

from outbox.errors import ConfigurationError

if sys.version_info >= (3, 11):
    from importlib.resources.abc import Traversable
else:
    from importlib.abc import Traversable

__all__ = [
    "CONCURRENTLY_MARKER",
    "Migration",
    "check_schema_name",
    "drop_index",
    "migrations",
    "query",
]

CONCURRENTLY_MARKER = "-- outbox: concurrently\n"
"""The line that ends a migration's transaction; the statements after it run one at a time."""

_BLOCK = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")


@dataclass(frozen=True)
class Migration:
    """One numbered migration file."""

    version: int
    name: str
    text: str

    def render(self, schema: str) -> bytes:
        """Return the SQL of the migration's transaction for ``schema``."""
        return _render(self.text.partition(CONCURRENTLY_MARKER)[0], schema)

    def render_concurrently(self, schema: str) -> list[bytes]:
        """Return the statements that run after the transaction, one at a time, for ``schema``.

        They follow the line ``-- outbox: concurrently``: index builds and drops made
        ``CONCURRENTLY`` so that a live table keeps taking writes. Each must be a no-op once done
        (``IF NOT EXISTS``, ``IF EXISTS``): ``migrate`` runs them again until all succeed.
        """
        _, marker, tail = self.text.partition(CONCURRENTLY_MARKER)
        if not marker:
            return []
        statements = []
        for chunk in tail.split(";\n"):
            lines = [line for line in chunk.splitlines() if not line.lstrip().startswith("--")]
            text = "\n".join(lines).strip()
            if text:
                statements.append(_render(text, schema))
        return statements


def _sql_root() -> Traversable:
    # In a wheel the files sit inside the package; in a source checkout, beside it.
    packaged = resources.files("outbox") / "sql"
    if packaged.is_dir():
        return packaged
    return resources.files("outbox") / ".." / "sql"


def check_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a plain lowercase identifier, else raise ConfigurationError."""
    if (
        not isinstance(schema, str)
        or not _SCHEMA_NAME.fullmatch(schema)
        or schema.startswith("pg_")  # reserved by Postgres for system schemas
        or schema == "information_schema"
    ):
        raise ConfigurationError(
            f"invalid schema name {schema!r}: use 1 to 48 characters of a-z 0-9 _, "
            "starting with a letter or _ (but not pg_, nor information_schema)"
        )
    return schema


def _render(text: str, schema: str) -> bytes:
    check_schema_name(schema)
    return (
        sql.SQL(text)
        .format(schema=sql.Identifier(schema), channel=sql.Identifier(f"{schema}_jobs"))
        .as_bytes()
    )


def drop_index(schema: str, name: str) -> bytes:
    """``DROP INDEX CONCURRENTLY`` of one index, found by name in the catalog (an invalid one)."""
    check_schema_name(schema)
    return (
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}")
        .format(sql.Identifier(schema), sql.Identifier(name))
        .as_bytes()
    )


@functools.cache
def _blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for path in sorted((_sql_root() / "queries").iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".sql"):
            continue
        parts = _BLOCK.split(path.read_text(encoding="utf-8"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in blocks:
                raise RuntimeError(f"query {name!r} is defined twice ({path.name})")
            blocks[name] = body.strip()
    return blocks


@functools.cache
def query(name: str, schema: str) -> bytes:
    """Return the SQL of the named query for ``schema``, ready to execute."""
    try:
        text = _blocks()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/queries") from None
    return _render(text, schema)


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """Return every migration, in version order."""
    found: list[Migration] = []
    for path in (_sql_root() / "migrations").iterdir():
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must be 1..n without gaps, found {versions}")
    return tuple(found)

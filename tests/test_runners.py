"""Runners you can see: each live runner in `outbox runners`, gone after SIGTERM or, killed,
once its row is stale; runnable kinds nobody handles in `outbox status`."""

from __future__ import annotations

import json
import signal

import pytest

from tests.helpers import start_runner, stop, wait_for
from tests.test_cli import outbox_cmd

pytestmark = pytest.mark.slow


def live_runners(dsn: str, schema: str) -> list[dict]:
    result = outbox_cmd("runners", "--json", "--schema", schema, dsn=dsn)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_runner_appears_with_its_kinds_and_vanishes_after_sigterm(dsn, schema):
    proc = start_runner(dsn, schema, "--concurrency", "7", "--queues", "default,mail")
    try:
        wait_for(lambda: live_runners(dsn, schema), timeout=30, every=0.2)
        [runner] = live_runners(dsn, schema)
        assert "effect" in runner["kinds"] and "maybe_fail" in runner["kinds"]
        assert (runner["queues"], runner["concurrency"], runner["pid"]) == (
            ["default", "mail"], 7, proc.pid,
        )  # fmt: skip
        assert runner["version"].startswith("0.")
        table = outbox_cmd("runners", "--schema", schema, dsn=dsn)
        assert "1 live" in table.stdout and runner["id"][:20] in table.stdout
    finally:
        assert stop(proc, signal.SIGTERM) == 0
    assert live_runners(dsn, schema) == []


def test_a_killed_runners_entry_expires(dsn, schema, conn):
    proc = start_runner(dsn, schema)
    wait_for(lambda: live_runners(dsn, schema), timeout=30, every=0.2)
    proc.kill()
    stop(proc)
    assert len(live_runners(dsn, schema)) == 1  # it cannot say goodbye
    # Time passes (injected): its row is not refreshed for two minutes.
    conn.execute(f"UPDATE \"{schema}\".runners SET last_seen = now() - interval '2 minutes'")
    assert live_runners(dsn, schema) == []


def test_pending_jobs_of_a_kind_nobody_handles_are_a_warning_in_status(dsn, ob, conn, schema):
    ob.enqueue(conn, "emails.sned")  # a typo
    ob.enqueue(conn, "emails.sned")
    ob.enqueue(conn, "effect", delay=3600)  # not runnable yet: not a warning
    result = outbox_cmd("status", "--json", "--schema", schema, dsn=dsn)
    assert result.returncode == 0, result.stderr
    [unhandled] = json.loads(result.stdout)["unhandled_kinds"]
    assert (unhandled["kind"], unhandled["jobs"]) == ("emails.sned", 2)
    table = outbox_cmd("status", "--schema", schema, dsn=dsn)
    assert "2 runnable jobs of kind 'emails.sned' wait and no live runner handles" in table.stderr

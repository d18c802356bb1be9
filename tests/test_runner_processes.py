"""Real runner processes: several draining one table, kill -9, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from outbox import NewJob
from tests.helpers import ROOT, start_runner, states, stop, wait_for

pytestmark = pytest.mark.slow


def test_four_runner_processes_run_every_job_exactly_once(dsn, schema, ob, conn, effects):
    ob.enqueue_many(conn, [NewJob("effect") for _ in range(10_000)])
    runners = [start_runner(dsn, schema, "--concurrency", "20") for _ in range(4)]
    try:
        wait_for(lambda: states(dsn, schema) == {"succeeded": 10_000}, timeout=120, every=0.5)
    finally:
        codes = [stop(r) for r in runners]
    assert codes == [0, 0, 0, 0]
    count, distinct = conn.execute(
        f'SELECT count(*), count(DISTINCT job_id) FROM "{schema}".effects'
    ).fetchone()
    assert count == distinct == 10_000
    runs = conn.execute(f'SELECT sum(runs) FROM "{schema}".effects').fetchone()[0]
    assert runs == 10_000
    # Every process took part.
    runners_seen = conn.execute(
        f'SELECT count(DISTINCT leased_by) FROM "{schema}".jobs'
    ).fetchone()[0]
    assert runners_seen == 4


def test_jobs_of_a_killed_runner_finish_on_another_after_the_lease(dsn, schema, ob, conn, effects):
    ob.enqueue_many(conn, [NewJob("effect", {"sleep": 1.5}) for _ in range(6)])
    victim = start_runner(dsn, schema, "--concurrency", "3", "--lease", "2")
    wait_for(lambda: states(dsn, schema).get("running") == 3, timeout=20, every=0.05)
    victim.kill()  # kill -9: no chance to hand anything back
    stop(victim)
    killed_at = time.monotonic()
    mid_flight = [
        row[0]
        for row in conn.execute(
            f"SELECT id FROM \"{schema}\".jobs WHERE state = 'running'"
        ).fetchall()
    ]
    assert len(mid_flight) == 3
    rescuer = start_runner(dsn, schema, "--concurrency", "3", "--lease", "2")
    try:
        wait_for(lambda: states(dsn, schema) == {"succeeded": 6}, timeout=30)
        recovered_after = time.monotonic() - killed_at
    finally:
        assert stop(rescuer) == 0
    attempts = dict(
        conn.execute(f'SELECT id, attempts FROM "{schema}".jobs').fetchall()
    )
    assert all(attempts[i] == 2 for i in mid_flight)  # the crashed attempt counts
    assert sorted(attempts.values()) == [1, 1, 1, 2, 2, 2]
    # 2 s lease + the 1.5 s job: recovery stays within a few seconds.
    print(f"jobs of the killed runner finished {recovered_after:.2f} s after kill -9")
    assert recovered_after < 10


def test_sigterm_stops_gracefully_and_hands_jobs_back(dsn, schema, ob, conn, effects):
    job_id = ob.enqueue(conn, "effect", {"sleep": 60})
    proc = start_runner(dsn, schema, "--shutdown-timeout", "0.5")
    wait_for(lambda: states(dsn, schema) == {"running": 1}, timeout=20, every=0.05)
    started = time.monotonic()
    assert stop(proc, signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    job = ob.get_job(conn, job_id)
    assert job.state == "pending"
    assert job.attempts == 0


def test_second_signal_stops_at_once(dsn, schema, ob, conn, effects):
    ob.enqueue(conn, "effect", {"sleep": 60})
    proc = start_runner(dsn, schema, "--shutdown-timeout", "60")
    wait_for(lambda: states(dsn, schema) == {"running": 1}, timeout=20, every=0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert stop(proc, signal.SIGINT, timeout=10) == 0
    assert states(dsn, schema) == {"pending": 1}


def test_run_with_a_bad_target_exits_2(dsn, schema):
    result = subprocess.run(
        [sys.executable, "-m", "outbox.cli", "run", "tests.jobs_app:nothing"],
        cwd=ROOT,
        env={**os.environ, "OUTBOX_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "has no attribute" in result.stderr


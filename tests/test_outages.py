"""Database outages of any length, as users meet them: a runner process cut off from Postgres.

A TCP proxy stands between a real ``outbox run`` process and the real server, and cuts every
connection (and refuses new ones) for as long as a managed-Postgres failover takes; then the
server itself is stopped and started. Through each outage the runner stays up and says what
is wrong; after it, the runner resumes within seconds, every job ends ``succeeded``, none is
left ``running``, and each job's side effect is written by the attempt that succeeded.

The outage lengths come from OUTBOX_TEST_OUTAGES (seconds, comma-separated; default 45,120)
and OUTBOX_TEST_SERVER_OUTAGE (default 45): CI runs the long ones against one server only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg
import pytest

from outbox import NewJob, Outbox
from tests.faultproxy import FaultProxy
from tests.helpers import ROOT, states, wait_for

pytestmark = pytest.mark.slow

OUTAGES = [float(s) for s in os.environ.get("OUTBOX_TEST_OUTAGES", "45,120").split(",") if s]
SERVER_OUTAGE = float(os.environ.get("OUTBOX_TEST_SERVER_OUTAGE", "45"))
RESUME_WITHIN = 5.0
"""Seconds from the database's return to the runner's next finished job."""

JOBS = 300
LATE_JOBS = 50


@dataclass
class Scenario:
    """One schema, one runner process (its DSN through a proxy, or not), its log file."""

    dsn: str
    schema: str
    runner_dsn: str
    log: IO[bytes]
    proc: subprocess.Popen[bytes] | None = None
    enqueued: int = 0
    notes: list[str] = field(default_factory=list)

    def start(self, *args: str) -> None:
        env = {**os.environ, "OUTBOX_DSN": self.runner_dsn, "OUTBOX_SCHEMA": self.schema}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "outbox.cli", "run", "tests.jobs_app:mux", *args],
            cwd=ROOT,
            env=env,
            # A file, not a pipe: an outage's log would fill a pipe and block the runner.
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def enqueue(self, count: int, sleep: float) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            Outbox(schema=self.schema).enqueue_many(
                conn,
                [NewJob("effect_direct", {"sleep": sleep}, max_attempts=25) for _ in range(count)],
            )
        self.enqueued += count

    def succeeded(self) -> int:
        return states(self.dsn, self.schema).get("succeeded", 0)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logged(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(60)


@contextmanager
def scenario(dsn: str, runner_dsn: str | None = None) -> Iterator[Scenario]:
    schema = f"o_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        Outbox(schema=schema).migrate(conn)
        conn.execute(
            f'CREATE TABLE "{schema}".effects (job_id bigint PRIMARY KEY, attempt int NOT NULL,'
            " runs int NOT NULL DEFAULT 1)"
        )
    with tempfile.NamedTemporaryFile(prefix="outbox-outage-", suffix=".log") as log:
        s = Scenario(dsn, schema, runner_dsn or dsn, log)
        try:
            yield s
        finally:
            if s.alive():
                s.stop()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def assert_every_job_done_once(s: Scenario) -> None:
    assert states(s.dsn, s.schema) == {"succeeded": s.enqueued}, s.logged()[-3000:]
    with psycopg.connect(s.dsn) as conn:
        rows = conn.execute(
            f'SELECT j.id, j.attempts, e.attempt, e.runs FROM "{s.schema}".jobs j'
            f' LEFT JOIN "{s.schema}".effects e ON e.job_id = j.id'
        ).fetchall()
    missing = [r for r in rows if r[2] is None]
    assert not missing, f"{len(missing)} jobs succeeded without their effect"
    # One effect per job, written by the attempt that succeeded. An effect can be written
    # twice only when the cut fell between its INSERT's commit and the handler's return (the
    # handler saw an error, so it was retried): at most one per job running at the cut.
    twice = [r for r in rows if r[3] > 1]
    assert len(twice) <= 10, twice
    assert all(r[1] == r[2] for r in rows if r[3] == 1)


def wait_resumed(s: Scenario, before: int) -> float:
    """Seconds until the runner finishes a job again after the database came back."""
    back = time.monotonic()
    wait_for(lambda: s.succeeded() > before, timeout=60, every=0.05)
    return time.monotonic() - back


def target_of(dsn: str) -> tuple[str, int]:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return str(info.get("host") or "localhost"), int(info.get("port") or 5432)


def test_runners_cut_off_from_the_database_wait_it_out_and_resume(dsn):
    """Every outage length at once, one runner each: the wall time is the longest outage."""
    with ExitStack() as stack:
        cuts = []
        for seconds in sorted(OUTAGES):
            proxy = stack.enter_context(FaultProxy(*target_of(dsn)))
            s = stack.enter_context(scenario(dsn, proxy.dsn(dsn)))
            s.enqueue(JOBS, sleep=0.2)
            s.start("--concurrency", "10", "--lease", "6")
            cuts.append((seconds, proxy, s))
        for _, _, s in cuts:  # cut while handlers run, with jobs left to lease
            wait_for(lambda s=s: s.succeeded() >= 30, timeout=60, every=0.05)
        cut_at = time.monotonic()
        for _, proxy, _ in cuts:
            proxy.cut("reset")
        for _, _, s in cuts:
            s.enqueue(LATE_JOBS, sleep=0)  # the business goes on: jobs committed meanwhile
        for seconds, proxy, s in cuts:
            time.sleep(max(0.0, cut_at + seconds - time.monotonic()))
            assert s.alive(), s.logged()[-3000:]
            before = s.succeeded()
            proxy.restore()
            resumed = wait_resumed(s, before)
            s.notes.append(f"{seconds:g} s cut: resumed {resumed:.2f} s after the database")
            print(s.notes[-1])
            assert resumed < RESUME_WITHIN, s.logged()[-3000:]
        for _, _, s in cuts:
            wait_for(lambda s=s: s.succeeded() == s.enqueued, timeout=90, every=0.2)
            assert s.alive()
            log = s.logged()
            # It said what was wrong, and when it was right again.
            assert "runner.lease_failed" in log and "DatabaseUnavailableError" in log
            assert "runner.lease_resumed" in log
            assert s.stop() == 0
            assert_every_job_done_once(s)


def test_runner_waits_out_a_stopped_server_and_resumes(pg_server, dsn):
    if pg_server.control is None:
        pytest.fail("the test server cannot be stopped from here: run the tests as root")
    with scenario(dsn) as s:
        s.enqueue(JOBS, sleep=0.2)
        s.start("--concurrency", "10", "--lease", "6")
        wait_for(lambda: s.succeeded() >= 30, timeout=60, every=0.05)
        pg_server.control("stop")
        try:
            time.sleep(SERVER_OUTAGE)
            assert s.alive(), s.logged()[-3000:]
        finally:
            pg_server.control("start")
        before = s.succeeded()
        resumed = wait_resumed(s, before)
        print(f"server stopped {SERVER_OUTAGE:g} s: resumed {resumed:.2f} s after it started")
        assert resumed < RESUME_WITHIN
        wait_for(lambda: s.succeeded() == s.enqueued, timeout=90, every=0.2)
        assert s.stop() == 0
        assert_every_job_done_once(s)


def test_outbox_run_started_while_the_database_is_down_starts_when_it_is_up(dsn):
    with FaultProxy(*target_of(dsn)) as proxy, scenario(dsn, proxy.dsn(dsn)) as s:
        proxy.cut("reset")
        s.enqueue(20, sleep=0)
        s.start("--wait-for-db", "60", "--health-port", "0")
        wait_for(lambda: "runner.waiting_for_database" in s.logged(), timeout=30)
        assert s.alive()
        proxy.restore()
        wait_for(lambda: s.succeeded() == 20, timeout=30, every=0.1)
        assert s.stop() == 0


def test_outbox_run_gives_up_on_an_unreachable_database_with_exit_4(dsn):
    with FaultProxy(*target_of(dsn)) as proxy, scenario(dsn, proxy.dsn(dsn)) as s:
        proxy.cut("reset")
        started = time.monotonic()
        s.start("--wait-for-db", "2")
        assert s.proc is not None
        assert s.proc.wait(30) == 4
        assert time.monotonic() - started < 20
        assert "gave up after waiting 2 s" in s.logged()


def test_start_in_thread_waits_for_the_database_then_runs(dsn):
    from outbox import HandlerMux, Job, Runner

    ran: list[int] = []
    mux = HandlerMux()

    @mux.register("effect_direct")
    def effect(job: Job) -> None:
        ran.append(job.id)

    with FaultProxy(*target_of(dsn)) as proxy, scenario(dsn, proxy.dsn(dsn)) as s:
        s.enqueue(5, sleep=0)
        proxy.cut("reset")
        runner = Runner(
            mux, dsn=proxy.dsn(dsn), outbox=Outbox(schema=s.schema), wait_for_db=30,
            poll_interval=0.1,
        )  # fmt: skip
        restore = threading.Timer(1.5, proxy.restore)
        restore.start()
        started = time.monotonic()
        runner.start_in_thread()  # returns once connected: after the restore
        try:
            assert time.monotonic() - started >= 1.4
            wait_for(lambda: len(ran) == 5, timeout=30)
        finally:
            runner.stop()
            restore.join()

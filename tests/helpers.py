"""Helpers shared by the runner tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from outbox import Runner


async def eventually(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.05) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def running(runner: Runner) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``runner`` for the duration of the block, then stop it gracefully."""
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.sleep(0.05)
        if task.done():
            task.result()
        yield task
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)


def states(dsn: str, schema: str) -> dict[str, int]:
    """Jobs per state, straight from the table."""
    with psycopg.connect(dsn) as conn:
        query = f'SELECT state::text, count(*) FROM "{schema}".jobs GROUP BY 1'
        rows = conn.execute(query).fetchall()
    return dict(rows)


def job_row(dsn: str, schema: str, job_id: int) -> dict[str, Any]:
    """One job's row as a dict."""
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f'SELECT * FROM "{schema}".jobs WHERE id = %s', (job_id,))
        row = cur.fetchone()
        assert row is not None, f"no job {job_id}"
        return dict(zip([c.name for c in cur.description], row, strict=True))


ROOT = Path(__file__).resolve().parent.parent


def start_runner(
    dsn: str,
    schema: str,
    *args: str,
    target: str = "tests.jobs_app:mux",
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `outbox run <target>` (by default tests.jobs_app:mux) as a real process."""
    env = {**os.environ, "OUTBOX_DSN": dsn, "OUTBOX_SCHEMA": schema, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "outbox.cli", "run", target, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for(check: Callable[[], Any], timeout: float, every: float = 0.1) -> None:
    """Poll ``check`` until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Signal the runner, wait for it, and return its exit code (its stderr goes to ours)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    sys.stderr.write(err.decode(errors="replace")[-2000:])
    return proc.returncode


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(args: list[str], port: int, env: dict[str, str]) -> Iterator[str]:
    """Run a web server process (``args``) until the block ends; yield its base URL."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            args, env={**os.environ, **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 30
            while not _listening(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise AssertionError(f"the server did not start:\n{log.read().decode()}")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def make_dead_rows(conn: psycopg.Connection[Any], schema: str, n: int) -> None:
    """Leave ``n`` dead rows in the jobs table (finished jobs inserted, then deleted), counted in
    ``pg_stat_user_tables`` at once: a session reports its counts up to a second late unless it
    is told to flush them (PostgreSQL 15+)."""
    conn.execute(
        f'INSERT INTO "{schema}".jobs (kind, state, finished_at, attempts)'
        " SELECT 'dead', 'succeeded', now(), 1 FROM generate_series(1, %s)",
        (n,),
    )
    conn.execute(f"DELETE FROM \"{schema}\".jobs WHERE kind = 'dead'")
    conn.execute("SELECT pg_stat_force_next_flush()")


def vacuums(conn: psycopg.Connection[Any], schema: str) -> int:
    """How many times the jobs table was vacuumed by a VACUUM statement (not by autovacuum)."""
    row = conn.execute(
        "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = %s::regclass",
        (f'"{schema}".jobs',),
    ).fetchone()
    assert row is not None
    return int(row[0])


def no_autovacuum(conn: psycopg.Connection[Any], schema: str) -> None:
    """Keep autovacuum off this jobs table, so that only the test (or the runner) vacuums it."""
    conn.execute(f'ALTER TABLE "{schema}".jobs SET (autovacuum_enabled = false)')

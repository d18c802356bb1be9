"""The raw loop, whatever its table: what raw_sql (outbox's table) and raw_min (a minimal one)
share. One INSERT per transaction; COPY for bulk; worker processes that lease 100 with
FOR UPDATE SKIP LOCKED and mark them done in one statement. No framework, no handlers.

A system module makes a ``RawLoop`` with its table's SQL and calls ``run()``; the workers are
that module run again as ``<module> _worker``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import common
import psycopg


@dataclass(frozen=True)
class RawLoop:
    table: str
    """The qualified table name: bench_raw.jobs, bench_raw_min.jobs."""
    script: str
    """The system module's file: its workers run it again."""
    reset: Callable[[str], psycopg.Connection]
    """Drop and create the table; return an autocommit connection."""
    lease: bytes
    complete: bytes
    finished_sql: str
    """An INSERT ... SELECT of %s finished jobs (index health under history)."""
    done: Callable[[psycopg.Connection], bool]
    """Whether every drained job is finished."""
    ballast: Callable[[str], str] | None = None
    """The trap ballast INSERT for --trap, when the table has kinds and queues to trap."""

    def enqueue_single(self, args) -> dict:
        conn = self.reset(args.dsn)
        started = time.perf_counter()
        for i in range(args.n):
            self._insert(conn, i)
        return common.rate(args.n, time.perf_counter() - started)

    def enqueue_clients(self, args) -> dict:
        self.reset(args.dsn).close()
        return common.from_clients(args, self._insert)

    def _insert(self, conn: psycopg.Connection, i: int) -> None:
        conn.execute(
            f"INSERT INTO {self.table} (kind, payload) VALUES (%s, %s::jsonb)",
            ("bench", f'{{"i": {i}}}'),
        )

    def enqueue_bulk(self, args) -> dict:
        conn = self.reset(args.dsn)
        rows = [("bench", f'{{"i": {i}}}') for i in range(args.n)]
        started = time.perf_counter()
        with conn.cursor().copy(f"COPY {self.table} (kind, payload) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return common.rate(args.n, time.perf_counter() - started)

    def worker(self, args) -> dict:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            idle_since = None
            while True:
                rows = conn.execute(self.lease).fetchall()
                if rows:
                    idle_since = None
                    conn.execute(self.complete, ([r[0] for r in rows],))
                    continue
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 5:
                    return {"value": 0, "unit": "-"}
                time.sleep(0.001)

    def _start_workers(self, args) -> list[subprocess.Popen]:
        return [
            subprocess.Popen(
                [sys.executable, self.script, "_worker", "--dsn", args.dsn],
                stdout=subprocess.DEVNULL,
            )
            for _ in range(args.processes)
        ]

    def _copy_jobs(self, conn: psycopg.Connection, n: int) -> None:
        with conn.cursor().copy(f"COPY {self.table} (kind) FROM STDIN") as copy:
            for _ in range(n):
                copy.write_row(("bench",))

    def _prepare(self, args) -> psycopg.Connection:
        conn = self.reset(args.dsn)
        if args.finished:
            conn.execute(self.finished_sql, (args.finished,))
        trapped = args.scenario == "trap" and args.trap != "none"
        if trapped and self.ballast is not None:
            conn.execute(self.ballast(args.trap), (args.ballast,))
        if args.finished or trapped:
            conn.execute(f"VACUUM ANALYZE {self.table}")
        return conn

    def _timed(self, args, conn: psycopg.Connection, started: float) -> dict:
        common.wait_until(lambda: self.done(conn), args.timeout)
        return common.rate(args.n, time.perf_counter() - started)

    def drain(self, args) -> dict:
        """Workers first, then the jobs in one COPY; the clock starts when it has committed."""
        if args.sleep_ms or args.handler == "sync":
            return {"skip": "the raw loop has no handlers"}
        if args.scenario == "trap" and self.ballast is None:
            return {"skip": "the minimal table has one kind and one queue"}
        conn = self._prepare(args)
        workers = self._start_workers(args)
        try:
            time.sleep(1)
            self._copy_jobs(conn, args.n)
            return self._timed(args, conn, time.perf_counter())
        finally:
            _stop(workers)

    def backlog(self, args) -> dict:
        """The jobs first, then the worker processes, started inside the clock."""
        if args.sleep_ms or args.handler == "sync":
            return {"skip": "the raw loop has no handlers"}
        conn = self._prepare(args)
        self._copy_jobs(conn, args.n)
        conn.execute(f"ANALYZE {self.table}")  # plans as autovacuum would leave them
        started = time.perf_counter()
        workers = self._start_workers(args)
        try:
            return self._timed(args, conn, started)
        finally:
            _stop(workers)

    def run(self) -> None:
        common.main(
            {
                "enqueue_single": self.enqueue_single,
                "enqueue_clients": self.enqueue_clients,
                "enqueue_bulk": self.enqueue_bulk,
                "drain": self.drain,
                "backlog": self.backlog,
                "trap": self.drain,
                "_worker": self.worker,
            }
        )


def _stop(workers: list[subprocess.Popen]) -> None:
    for w in workers:
        w.kill()
        w.wait()

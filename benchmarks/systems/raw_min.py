"""The raw loop on a minimal table: what the queue costs Postgres without outbox's schema.

One table, ``bench_raw_min.jobs`` (id bigint identity primary key, kind text, payload jsonb,
state smallint: 0 pending, 1 running, 2 done; priority smallint, run_at, attempts,
leased_until, finished_at), no CHECKs, no trigger, and ONE partial index
``(priority DESC, run_at, id) WHERE state = 0``. The statements are raw_sql's: one INSERT per
transaction, COPY for bulk, and a drain loop that leases 100 with FOR UPDATE SKIP LOCKED in
(priority DESC, run_at, id) order and marks them done in one statement. Beside raw_sql (the same
loop on outbox's table) it keeps the cost of the schema visible.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

SCHEMA = """
DROP SCHEMA IF EXISTS bench_raw_min CASCADE;
CREATE SCHEMA bench_raw_min;
CREATE TABLE bench_raw_min.jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text NOT NULL,
    payload      jsonb NOT NULL DEFAULT '{}',
    state        smallint NOT NULL DEFAULT 0,
    priority     smallint NOT NULL DEFAULT 0,
    run_at       timestamptz NOT NULL DEFAULT now(),
    attempts     integer NOT NULL DEFAULT 0,
    leased_until timestamptz,
    finished_at  timestamptz
);
CREATE INDEX jobs_pending_idx ON bench_raw_min.jobs (priority DESC, run_at, id) WHERE state = 0;
"""
LEASE = b"""
WITH next AS (
    SELECT id FROM bench_raw_min.jobs WHERE state = 0 AND run_at <= now()
    ORDER BY priority DESC, run_at, id LIMIT 100 FOR UPDATE SKIP LOCKED
)
UPDATE bench_raw_min.jobs j SET state = 1, attempts = j.attempts + 1,
       leased_until = now() + interval '30 seconds'
FROM next WHERE j.id = next.id
RETURNING j.id, j.kind, j.payload
"""
COMPLETE = b"""
UPDATE bench_raw_min.jobs SET state = 2, finished_at = now(), leased_until = NULL
WHERE id = ANY(%s)
"""
PENDING = (
    "SELECT EXISTS (SELECT 1 FROM bench_raw_min.jobs WHERE state = 0"
    " ORDER BY priority DESC, run_at, id LIMIT 1)"
)
# No index finds running jobs (the one index is the lease's): checked only once none is pending.
RUNNING = "SELECT EXISTS (SELECT 1 FROM bench_raw_min.jobs WHERE state = 1)"


def reset(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(SCHEMA.encode())
    return conn


def enqueue_single(args) -> dict:
    conn = reset(args.dsn)
    started = time.perf_counter()
    for i in range(args.n):
        conn.execute(
            "INSERT INTO bench_raw_min.jobs (kind, payload) VALUES (%s, %s::jsonb)",
            ("bench", f'{{"i": {i}}}'),
        )
    return common.rate(args.n, time.perf_counter() - started)


def enqueue_clients(args) -> dict:
    reset(args.dsn).close()
    return common.from_clients(
        args,
        lambda c, i: c.execute(
            "INSERT INTO bench_raw_min.jobs (kind, payload) VALUES (%s, %s::jsonb)",
            ("bench", f'{{"i": {i}}}'),
        ),
    )


def enqueue_bulk(args) -> dict:
    conn = reset(args.dsn)
    rows = [("bench", f'{{"i": {i}}}') for i in range(args.n)]
    started = time.perf_counter()
    with conn.cursor().copy("COPY bench_raw_min.jobs (kind, payload) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    return common.rate(args.n, time.perf_counter() - started)


def _worker(args) -> dict:
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        idle_since = None
        while True:
            rows = conn.execute(LEASE).fetchall()
            if rows:
                idle_since = None
                conn.execute(COMPLETE, ([r[0] for r in rows],))
                continue
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 5:
                return {"value": 0, "unit": "-"}
            time.sleep(0.001)


def start_workers(args) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [sys.executable, __file__, "_worker", "--dsn", args.dsn], stdout=subprocess.DEVNULL
        )
        for _ in range(args.processes)
    ]


def copy_jobs(conn: psycopg.Connection, n: int) -> None:
    with conn.cursor().copy("COPY bench_raw_min.jobs (kind) FROM STDIN") as copy:
        for _ in range(n):
            copy.write_row(("bench",))


def prepare(args) -> psycopg.Connection:
    conn = reset(args.dsn)
    if args.finished:
        conn.execute(
            "INSERT INTO bench_raw_min.jobs (kind, state, attempts, finished_at)"
            " SELECT 'old', 2, 1, now() FROM generate_series(1, %s)",
            (args.finished,),
        )
        conn.execute("VACUUM ANALYZE bench_raw_min.jobs")
    return conn


def wait_done(conn: psycopg.Connection, timeout: float) -> None:
    started = time.perf_counter()
    common.wait_until(lambda: not conn.execute(PENDING).fetchone()[0], timeout)
    left = timeout - (time.perf_counter() - started)
    common.wait_until(lambda: not conn.execute(RUNNING).fetchone()[0], left, every=0.005)


def stop(workers: list[subprocess.Popen]) -> None:
    for w in workers:
        w.kill()
        w.wait()


def drain(args) -> dict:
    """Workers first, then the jobs in one COPY; the clock starts when it has committed."""
    if args.sleep_ms or args.handler == "sync":
        return {"skip": "the raw loop has no handlers"}
    conn = prepare(args)
    workers = start_workers(args)
    try:
        time.sleep(1)
        copy_jobs(conn, args.n)
        started = time.perf_counter()
        wait_done(conn, args.timeout)
        seconds = time.perf_counter() - started
    finally:
        stop(workers)
    return common.rate(args.n, seconds)


def backlog(args) -> dict:
    """The jobs first, then the worker processes, started inside the clock."""
    if args.sleep_ms or args.handler == "sync":
        return {"skip": "the raw loop has no handlers"}
    conn = prepare(args)
    copy_jobs(conn, args.n)
    conn.execute("ANALYZE bench_raw_min.jobs")  # plans as autovacuum would leave them
    started = time.perf_counter()
    workers = start_workers(args)
    try:
        wait_done(conn, args.timeout)
        seconds = time.perf_counter() - started
    finally:
        stop(workers)
    return common.rate(args.n, seconds)


if __name__ == "__main__":
    common.main(
        {
            "enqueue_single": enqueue_single,
            "enqueue_clients": enqueue_clients,
            "enqueue_bulk": enqueue_bulk,
            "drain": drain,
            "backlog": backlog,
            "_worker": _worker,
        }
    )

"""The physical limit: the same SQL as outbox, from the thinnest psycopg client.

On outbox's own table: one INSERT per transaction; COPY for bulk; a drain loop that leases 100
with FOR UPDATE SKIP LOCKED (returning id, kind, payload) and marks them succeeded, with
finished_at, in one statement. No framework, no handlers, no concurrency.

The lease is that of a runner serving kind 'bench' in queue 'default' (where every benchmark job
is), with the predicates of outbox's plain lease (no tenant, no ordering key), so that it walks
outbox's partial lease index whichever its column order: (priority DESC, run_at, id) until
migration 0007, (kind, queue, priority DESC, run_at, id) after.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from outbox import Outbox

OB = Outbox(schema="bench_raw")
LEASE = b"""
WITH next AS (
    SELECT id FROM bench_raw.jobs
    WHERE state = 'pending' AND tenant IS NULL AND ordering_key IS NULL AND run_at <= now()
      AND kind = 'bench' AND queue = 'default'
    ORDER BY priority DESC, run_at, id LIMIT 100 FOR UPDATE SKIP LOCKED
)
UPDATE bench_raw.jobs j SET state = 'running', attempts = j.attempts + 1,
       leased_until = now() + interval '30 seconds', leased_by = 'raw'
FROM next WHERE j.id = next.id
RETURNING j.id, j.kind, j.payload
"""
COMPLETE = b"""
UPDATE bench_raw.jobs SET state = 'succeeded', finished_at = now(), leased_until = NULL
WHERE id = ANY(%s)
"""


def reset(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("DROP SCHEMA IF EXISTS bench_raw CASCADE")
    OB.migrate(conn)
    return conn


def enqueue_single(args) -> dict:
    conn = reset(args.dsn)
    started = time.perf_counter()
    for i in range(args.n):
        conn.execute(
            "INSERT INTO bench_raw.jobs (kind, payload) VALUES (%s, %s::jsonb)",
            ("bench", f'{{"i": {i}}}'),
        )
    return common.rate(args.n, time.perf_counter() - started)


def enqueue_clients(args) -> dict:
    reset(args.dsn).close()
    return common.from_clients(
        args,
        lambda c, i: c.execute(
            "INSERT INTO bench_raw.jobs (kind, payload) VALUES (%s, %s::jsonb)",
            ("bench", f'{{"i": {i}}}'),
        ),
    )


def enqueue_bulk(args) -> dict:
    conn = reset(args.dsn)
    rows = [("bench", f'{{"i": {i}}}') for i in range(args.n)]
    started = time.perf_counter()
    with conn.cursor().copy("COPY bench_raw.jobs (kind, payload) FROM STDIN") as copy:
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
    with conn.cursor().copy("COPY bench_raw.jobs (kind) FROM STDIN") as copy:
        for _ in range(n):
            copy.write_row(("bench",))


def unfinished(conn: psycopg.Connection) -> bool:
    """Whether a drained job is left to run (see ours.unfinished: a seek, not a walk)."""
    query = (
        "SELECT EXISTS (SELECT 1 FROM bench_raw.jobs WHERE state = 'pending' AND tenant IS NULL"
        " AND kind = 'bench' AND queue = 'default' AND priority <= 0) OR EXISTS (SELECT 1"
        " FROM bench_raw.jobs WHERE state = 'running' ORDER BY leased_until LIMIT 1)"
    )
    return bool(conn.execute(query).fetchone()[0])


def prepare(args) -> psycopg.Connection:
    conn = reset(args.dsn)
    if args.finished:
        conn.execute(
            "INSERT INTO bench_raw.jobs (kind, state, attempts, finished_at)"
            " SELECT 'old', 'succeeded', 1, now() FROM generate_series(1, %s)",
            (args.finished,),
        )
    if args.scenario == "trap" and args.trap != "none":
        conn.execute(common.ballast_sql("bench_raw", args.trap, "bench"), (args.ballast,))
    if args.finished or (args.scenario == "trap" and args.trap != "none"):
        conn.execute("VACUUM ANALYZE bench_raw.jobs")
    return conn


def drain(args) -> dict:
    """Workers first, then the jobs in one COPY; the clock starts when it has committed."""
    if args.sleep_ms or args.handler == "sync":
        return {"skip": "the raw loop has no handlers"}
    conn = prepare(args)
    workers = start_workers(args)
    try:
        time.sleep(1)
        copy_jobs(conn, args.n)
        seconds = common.wait_until(lambda: not unfinished(conn), args.timeout)
    finally:
        for w in workers:
            w.kill()
            w.wait()
    return common.rate(args.n, seconds)


def backlog(args) -> dict:
    """The jobs first, then the worker processes, started inside the clock."""
    if args.sleep_ms or args.handler == "sync":
        return {"skip": "the raw loop has no handlers"}
    conn = prepare(args)
    copy_jobs(conn, args.n)
    conn.execute("ANALYZE bench_raw.jobs")  # plans as autovacuum would leave them
    started = time.perf_counter()
    workers = start_workers(args)
    try:
        common.wait_until(lambda: not unfinished(conn), args.timeout)
        seconds = time.perf_counter() - started
    finally:
        for w in workers:
            w.kill()
            w.wait()
    return common.rate(args.n, seconds)


if __name__ == "__main__":
    common.main(
        {
            "enqueue_single": enqueue_single,
            "enqueue_clients": enqueue_clients,
            "enqueue_bulk": enqueue_bulk,
            "drain": drain,
            "backlog": backlog,
            "trap": drain,
            "_worker": _worker,
        }
    )

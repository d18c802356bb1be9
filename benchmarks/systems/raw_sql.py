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


def drain(args) -> dict:
    if args.sleep_ms or args.handler == "sync":
        return {"skip": "the raw loop has no handlers"}
    conn = reset(args.dsn)
    if args.finished:
        conn.execute(
            "INSERT INTO bench_raw.jobs (kind, state, attempts, finished_at)"
            " SELECT 'old', 'succeeded', 1, now() FROM generate_series(1, %s)",
            (args.finished,),
        )
        conn.execute("VACUUM ANALYZE bench_raw.jobs")
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "_worker", "--dsn", args.dsn], stdout=subprocess.DEVNULL
        )
        for _ in range(args.processes)
    ]
    try:
        time.sleep(1)
        with conn.cursor().copy("COPY bench_raw.jobs (kind) FROM STDIN") as copy:
            for _ in range(args.n):
                copy.write_row(("bench",))
        query = (
            # Walks the partial indexes: a plain EXISTS would scan the finished rows every poll.
            "SELECT EXISTS (SELECT 1 FROM bench_raw.jobs WHERE state = 'pending' AND tenant IS NULL"
            " AND kind = 'bench' AND queue = 'default' AND priority <= 0) OR EXISTS (SELECT 1"
            " FROM bench_raw.jobs WHERE state = 'running' ORDER BY leased_until LIMIT 1)"
        )
        seconds = common.wait_until(lambda: not conn.execute(query).fetchone()[0], args.timeout)
    finally:
        for w in workers:
            w.kill()
            w.wait()
    return common.rate(args.n, seconds)


if __name__ == "__main__":
    common.main(
        {
            "enqueue_single": enqueue_single,
            "enqueue_bulk": enqueue_bulk,
            "drain": drain,
            "_worker": _worker,
        }
    )

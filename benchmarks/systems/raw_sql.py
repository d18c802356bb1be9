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

import sys
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from raw_loop import RawLoop

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


def done(conn: psycopg.Connection) -> bool:
    """Whether every drained job is finished (see ours.unfinished: a seek, not a walk)."""
    query = (
        "SELECT EXISTS (SELECT 1 FROM bench_raw.jobs WHERE state = 'pending' AND tenant IS NULL"
        " AND kind = 'bench' AND queue = 'default' AND priority <= 0) OR EXISTS (SELECT 1"
        " FROM bench_raw.jobs WHERE state = 'running' ORDER BY kind LIMIT 1)"
    )
    return not conn.execute(query).fetchone()[0]


LOOP = RawLoop(
    table="bench_raw.jobs",
    script=__file__,
    reset=reset,
    lease=LEASE,
    complete=COMPLETE,
    finished_sql="INSERT INTO bench_raw.jobs (kind, state, attempts, finished_at)"
    " SELECT 'old', 'succeeded', 1, now() FROM generate_series(1, %s)",
    done=done,
    ballast=lambda trap: common.ballast_sql("bench_raw", trap, "bench"),
)

if __name__ == "__main__":
    LOOP.run()

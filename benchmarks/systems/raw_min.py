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

import sys
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raw_loop import RawLoop

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


def done(conn: psycopg.Connection) -> bool:
    return not conn.execute(PENDING).fetchone()[0] and not conn.execute(RUNNING).fetchone()[0]


LOOP = RawLoop(
    table="bench_raw_min.jobs",
    script=__file__,
    reset=reset,
    lease=LEASE,
    complete=COMPLETE,
    finished_sql="INSERT INTO bench_raw_min.jobs (kind, state, attempts, finished_at)"
    " SELECT 'old', 2, 1, now() FROM generate_series(1, %s)",
    done=done,
)

if __name__ == "__main__":
    LOOP.run()

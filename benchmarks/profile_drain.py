"""Profile one runner draining no-op jobs: where the runner's own time goes.

    python benchmarks/profile_drain.py [--dsn DSN] [--jobs 30000] [--concurrency 100] [--profile]
                                       [--handler async|sync]

Without --profile it prints the drain rate; with it, cProfile's top functions by own time
(cProfile roughly halves the rate: read the shares, not the figure).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outbox import HandlerMux, Job, NewJob, Outbox, Runner
from outbox.embedded import embedded_postgres


async def drain(dsn: str, ob: Outbox, jobs: int, concurrency: int, handler: str) -> float:
    mux = HandlerMux()

    if handler == "async":

        @mux.register("noop")
        async def noop(job: Job) -> None:
            return None

    else:

        @mux.register("noop")
        def noop_sync(job: Job) -> None:
            return None

    runner = Runner(mux, dsn=dsn, outbox=ob, concurrency=concurrency, retention=None)
    task = asyncio.create_task(runner.run())
    started = time.perf_counter()
    left = (
        f'SELECT EXISTS (SELECT 1 FROM "{ob.schema}".jobs WHERE state = \'pending\')'
        f' OR EXISTS (SELECT 1 FROM "{ob.schema}".jobs WHERE state = \'running\')'
    )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            row = await (await conn.execute(left)).fetchone()
            if row is not None and not row[0]:
                break
            await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    runner.stop()
    await task
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("OUTBOX_DSN"))
    parser.add_argument("--jobs", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--handler", choices=["async", "sync"], default="async")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        dsn = args.dsn or stack.enter_context(embedded_postgres())
        ob = Outbox(schema=f"bench_prof_{uuid.uuid4().hex[:8]}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            ob.migrate(conn)
            ob.enqueue_many(conn, [NewJob("noop", {"i": i}) for i in range(args.jobs)])
        profiler = cProfile.Profile() if args.profile else None
        try:
            if profiler is not None:
                profiler.enable()
            rate = asyncio.run(drain(dsn, ob, args.jobs, args.concurrency, args.handler))
        finally:
            if profiler is not None:
                profiler.disable()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{ob.schema}" CASCADE')
    print(
        f"{rate:,.0f} jobs/s ({args.jobs:,} no-op {args.handler} jobs, "
        f"concurrency {args.concurrency})"
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        pstats.Stats(profiler).sort_stats("cumtime").print_stats("outbox", 25)


if __name__ == "__main__":
    main()

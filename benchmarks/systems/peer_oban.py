"""Oban for Python 0.7 (psycopg 3 pool), in its own Python 3.12 virtualenv (requirements-oban.txt).

Schema: `oban.schema.install_sql(prefix)` into schema `bench_oban` (Oban's `prefix`), dropped and
recreated per run.
Enqueue: `oban.enqueue(Bench.new(args))` per job (one transaction each); bulk is
`oban.enqueue_many(jobs)`, which in 0.7 runs one INSERT per job inside a single transaction.
Workers: `Oban(pool=Oban.create_pool(dsn), prefix=..., queues={"default": C})`, run under uvloop
as `oban start` does; pool defaults (1..10 connections), stager/pruner/lifeline defaults,
LISTEN/NOTIFY insert signals. The producer fetches up to the free capacity per query and acks
finished jobs in batches; there is no other batching option.
Done: no row of `oban_jobs` in available/scheduled/executing/retryable; `--finished M` rows
are inserted there as 'completed' (pruned after a day, so they stay during a run).
Handlers: a `@worker` class with `async def process`; `--handler sync` uses a plain `def`
function under `@job`, which Oban 0.7 calls directly on the event loop (a sleeping sync handler
blocks its whole worker process).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import psycopg
import uvloop
from oban import Job, Oban, job, worker
from oban.schema import install_sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

SCHEMA = "bench_oban"
UNFINISHED = (
    f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.oban_jobs"
    " WHERE state IN ('available', 'scheduled', 'executing', 'retryable'))"
)
SLEEP = 0.0
STARTED: dict[int, float] = {}  # latency probe: job id -> handler start


@worker(queue="default")
class Bench:
    async def process(self, job: Job) -> None:
        if SLEEP:
            await asyncio.sleep(SLEEP)


@job(queue="default")
def bench_sync(i: int = 0) -> None:
    if SLEEP:
        time.sleep(SLEEP)


@worker(queue="default")
class Probe:
    async def process(self, job: Job) -> None:
        STARTED[job.id] = time.perf_counter()


def reset(dsn: str, finished: int = 0) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True, options=f"-c search_path={SCHEMA}")
    conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    conn.execute(f"CREATE SCHEMA {SCHEMA}")
    with conn.transaction():
        conn.execute(install_sql(SCHEMA))
    if finished:
        conn.execute(
            f"INSERT INTO {SCHEMA}.oban_jobs (state, worker, attempt, attempted_at, completed_at)"
            " SELECT 'completed', 'old', 1, timezone('UTC', now()), timezone('UTC', now())"
            " FROM generate_series(1, %s)",
            (finished,),
        )
        conn.execute(f"VACUUM ANALYZE {SCHEMA}.oban_jobs")
    return conn


async def client(dsn: str) -> Oban:
    return Oban(pool=await Oban.create_pool(dsn), prefix=SCHEMA)


def enqueue_single(args) -> dict:
    reset(args.dsn)

    async def main() -> float:
        oban = await client(args.dsn)
        started = time.perf_counter()
        for i in range(args.n):
            await oban.enqueue(Bench.new({"i": i}))
        return time.perf_counter() - started

    return common.rate(args.n, uvloop.run(main()))


def enqueue_bulk(args) -> dict:
    reset(args.dsn)

    async def main() -> float:
        oban = await client(args.dsn)
        jobs = [Bench.new({"i": i}) for i in range(args.n)]
        started = time.perf_counter()
        await oban.enqueue_many(jobs)
        return time.perf_counter() - started

    return common.rate(args.n, uvloop.run(main()))


async def server(dsn: str, concurrency: int) -> Oban:
    oban = Oban(pool=await Oban.create_pool(dsn), prefix=SCHEMA, queues={"default": concurrency})
    return await oban.start()


def _worker(args) -> dict:
    """Hidden scenario: one worker process, until SIGTERM."""
    global SLEEP
    SLEEP = args.sleep_ms / 1000

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        oban = await server(args.dsn, args.concurrency)
        await stop.wait()
        await oban.stop()

    uvloop.run(main())
    return {"value": 0, "unit": "-"}


def drain(args) -> dict:
    check = reset(args.dsn, args.finished)
    workers = common.start_workers(__file__, args)

    def done() -> bool:
        common.check_workers(workers)
        return not check.execute(UNFINISHED).fetchone()[0]

    async def enqueue() -> None:
        oban = await client(args.dsn)
        if args.handler == "async":
            jobs = [Bench.new({"i": i}) for i in range(args.n)]
        else:
            jobs = [bench_sync.new(i) for i in range(args.n)]
        await oban.enqueue_many(jobs)

    try:
        time.sleep(2)
        uvloop.run(enqueue())
        seconds = common.wait_until(done, args.timeout)
    finally:
        common.stop_workers(workers)
    return {**common.rate(args.n, seconds), "handler": args.handler}


def latency(args) -> dict:
    reset(args.dsn)

    async def main() -> list[float]:
        oban = await server(args.dsn, 10)
        samples = []
        try:
            await asyncio.sleep(1)
            deadline = time.perf_counter() + args.timeout
            for _ in range(args.n):
                job_id = (await oban.enqueue(Probe.new())).id
                committed = time.perf_counter()
                while job_id not in STARTED:
                    if time.perf_counter() > deadline:
                        raise TimeoutError
                    await asyncio.sleep(0.0005)
                samples.append((STARTED[job_id] - committed) * 1000)
                await asyncio.sleep(0.02)
        finally:
            await oban.stop()
        return samples

    try:
        return common.percentiles(uvloop.run(main()))
    except TimeoutError:
        return {"skip": f"timed out after {args.timeout:.0f} s"}


def rss(args) -> dict:
    global SLEEP
    SLEEP = 0.01
    conn = reset(args.dsn)
    conn.execute(
        f"INSERT INTO {SCHEMA}.oban_jobs (worker) SELECT %s FROM generate_series(1, %s)",
        (Bench.new().worker, args.n),
    )

    async def main() -> None:
        oban = await server(args.dsn, args.concurrency)
        deadline = time.perf_counter() + args.timeout
        try:
            while await asyncio.to_thread(lambda: conn.execute(UNFINISHED).fetchone()[0]):
                if time.perf_counter() > deadline:
                    raise TimeoutError
                await asyncio.sleep(0.2)
        finally:
            await oban.stop()

    try:
        uvloop.run(main())
    except TimeoutError:
        return {"skip": f"timed out after {args.timeout:.0f} s"}
    return {"value": common.peak_rss_mib(), "unit": "MiB"}


if __name__ == "__main__":
    common.main(
        {
            "enqueue_single": enqueue_single,
            "enqueue_bulk": enqueue_bulk,
            "drain": drain,
            "latency": latency,
            "rss": rss,
            "_worker": _worker,
        }
    )

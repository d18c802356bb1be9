"""Procrastinate 3.10 (psycopg 3 connector), in its own virtualenv (requirements-procrastinate.txt).

Schema: `app.schema_manager.apply_schema_async()` into schema `bench_procrastinate` (every
connection gets `search_path=bench_procrastinate`), dropped and recreated per run.
Connector: `PsycopgConnector` with a psycopg_pool of min 1 / max 10 connections (the size its
docs describe as the per-worker default).
Enqueue: `task.defer_async(i=...)` per job (one transaction each); bulk is
`task.batch_defer_async(*kwargs)` (one call of procrastinate_defer_jobs_v1 with an array).
Workers: `app.run_worker(concurrency=C)` with its defaults: LISTEN/NOTIFY on, 5 s polling
fallback, delete_jobs="never" (finished jobs stay as status 'succeeded'). Procrastinate fetches
one job per query; it has no batch-fetch option.
Done: no row of `procrastinate_jobs` in status 'todo' or 'doing'; `--finished M` rows are
inserted there as 'succeeded'.
Handlers: `async def` tasks; `--handler sync` uses plain `def` tasks, which procrastinate runs
in threads (asgiref sync_to_async).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path

import psycopg
from procrastinate import App, JobContext, PsycopgConnector

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

# Tasks are registered by explicit name, so an app defined in __main__ is fine here.
logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)

SCHEMA = "bench_procrastinate"
UNFINISHED = (
    f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.procrastinate_jobs WHERE status IN ('todo', 'doing'))"
)
OPTIONS = f"-c search_path={SCHEMA}"
SLEEP = 0.0
STARTED: dict[int, float] = {}  # latency probe: job id -> handler start


def make_app(dsn: str) -> App:
    connector = PsycopgConnector(conninfo=dsn, kwargs={"options": OPTIONS}, min_size=1, max_size=10)
    app = App(connector=connector)

    @app.task(name="bench")
    async def bench(i: int = 0) -> None:
        if SLEEP:
            await asyncio.sleep(SLEEP)

    @app.task(name="bench_sync")
    def bench_sync(i: int = 0) -> None:
        if SLEEP:
            time.sleep(SLEEP)

    @app.task(name="probe", pass_context=True)
    async def probe(context: JobContext) -> None:
        STARTED[context.job.id] = time.perf_counter()

    return app


def reset(dsn: str, finished: int = 0) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True, options=OPTIONS)  # its triggers name tables bare
    conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    conn.execute(f"CREATE SCHEMA {SCHEMA}")

    async def apply() -> None:
        async with make_app(dsn).open_async() as app:
            await app.schema_manager.apply_schema_async()

    asyncio.run(apply())
    if finished:
        conn.execute(
            f"INSERT INTO {SCHEMA}.procrastinate_jobs (queue_name, task_name, status, attempts)"
            " SELECT 'default', 'old', 'succeeded', 1 FROM generate_series(1, %s)",
            (finished,),
        )
        conn.execute(f"VACUUM ANALYZE {SCHEMA}.procrastinate_jobs")
    return conn


def enqueue_single(args) -> dict:
    reset(args.dsn)

    async def main() -> float:
        async with make_app(args.dsn).open_async() as app:
            task = app.tasks["bench"]
            started = time.perf_counter()
            for i in range(args.n):
                await task.defer_async(i=i)
            return time.perf_counter() - started

    return common.rate(args.n, asyncio.run(main()))


def enqueue_bulk(args) -> dict:
    reset(args.dsn)

    async def main() -> float:
        async with make_app(args.dsn).open_async() as app:
            task, kwargs = app.tasks["bench"], [{"i": i} for i in range(args.n)]
            started = time.perf_counter()
            await task.batch_defer_async(*kwargs)
            return time.perf_counter() - started

    return common.rate(args.n, asyncio.run(main()))


def _worker(args) -> dict:
    """Hidden scenario: one worker process, until SIGTERM (procrastinate's own handler)."""
    global SLEEP
    SLEEP = args.sleep_ms / 1000
    make_app(args.dsn).run_worker(concurrency=args.concurrency)
    return {"value": 0, "unit": "-"}


def drain(args) -> dict:
    check = reset(args.dsn, args.finished)
    workers = common.start_workers(__file__, args)

    def done() -> bool:
        common.check_workers(workers)
        return not check.execute(UNFINISHED).fetchone()[0]

    async def enqueue() -> None:
        async with make_app(args.dsn).open_async() as app:
            task = app.tasks["bench" if args.handler == "async" else "bench_sync"]
            await task.batch_defer_async(*({"i": i} for i in range(args.n)))

    try:
        time.sleep(2)
        asyncio.run(enqueue())
        seconds = common.wait_until(done, args.timeout)
    finally:
        common.stop_workers(workers)
    return {**common.rate(args.n, seconds), "handler": args.handler}


async def run_in_process(app: App, concurrency: int) -> asyncio.Task:
    return asyncio.create_task(
        app.run_worker_async(concurrency=concurrency, install_signal_handlers=False)
    )


async def stop(task: asyncio.Task) -> None:
    task.cancel()  # procrastinate's documented in-process stop: it finishes running jobs
    with contextlib.suppress(asyncio.CancelledError):
        await task


def latency(args) -> dict:
    reset(args.dsn)

    async def main() -> list[float]:
        async with make_app(args.dsn).open_async() as app:
            worker = await run_in_process(app, 10)
            samples = []
            try:
                await asyncio.sleep(1)
                deadline = time.perf_counter() + args.timeout
                for _ in range(args.n):
                    job_id = await app.tasks["probe"].defer_async()
                    committed = time.perf_counter()
                    while job_id not in STARTED:
                        if time.perf_counter() > deadline or worker.done():
                            raise TimeoutError
                        await asyncio.sleep(0.0005)
                    samples.append((STARTED[job_id] - committed) * 1000)
                    await asyncio.sleep(0.02)
            finally:
                await stop(worker)
            return samples

    try:
        return common.percentiles(asyncio.run(main()))
    except TimeoutError:
        return {"skip": f"timed out after {args.timeout:.0f} s"}


def rss(args) -> dict:
    global SLEEP
    SLEEP = 0.01
    conn = reset(args.dsn)
    conn.execute(
        f"INSERT INTO {SCHEMA}.procrastinate_jobs (queue_name, task_name)"
        " SELECT 'default', 'bench' FROM generate_series(1, %s)",
        (args.n,),
    )

    async def main() -> None:
        async with make_app(args.dsn).open_async() as app:
            worker = await run_in_process(app, args.concurrency)
            deadline = time.perf_counter() + args.timeout
            while await asyncio.to_thread(lambda: conn.execute(UNFINISHED).fetchone()[0]):
                if time.perf_counter() > deadline or worker.done():
                    raise TimeoutError
                await asyncio.sleep(0.2)
            await stop(worker)

    try:
        asyncio.run(main())
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

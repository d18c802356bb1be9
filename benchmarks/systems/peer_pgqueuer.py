"""PgQueuer 1.6 (asyncpg driver), in its own virtualenv (requirements-pgqueuer.txt).

Schema: `Queries.install()` into schema `bench_pgqueuer` (PGQUEUER_SCHEMA), dropped and reinstalled
per run, then `Queries.optimize_autovacuum()` (`pgq autovac`, the tuning guide's checklist);
default durability ("durable": every table logged, like outbox's).
Enqueue: `Queries.enqueue(entrypoint, payload)` per job (one statement = one transaction) on one
asyncpg connection; bulk is the list form of the same call (one INSERT ... unnest).
Workers: `QueueManager.run(batch_size=concurrency // 2, max_concurrent_tasks=concurrency)` on one
asyncpg connection (the guide: "a direct asyncpg connection, not a pool, for the QueueManager");
batch_size is the largest the library allows (it requires max_concurrent_tasks >= 2 x batch_size),
capped at 100. LISTEN/NOTIFY wake-ups, default 30 s dequeue_timeout; uvloop, as `pgq run` uses.
Done: PgQueuer deletes a finished job from `pgqueuer` and appends it to `pgqueuer_log`, so
"unfinished" is any row left in `pgqueuer`; `--finished M` rows go into `pgqueuer_log`.
Handlers: PgQueuer 1.6 rejects `def` entrypoints, so `--handler sync` runs a plain function
through `asyncio.to_thread`, as its error message and docs recommend.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

SCHEMA = "bench_pgqueuer"
os.environ["PGQUEUER_SCHEMA"] = SCHEMA  # read by pgqueuer's settings at first use

import asyncpg  # noqa: E402
import psycopg  # noqa: E402
import uvloop  # noqa: E402
from pgqueuer import Job, Queries, QueueManager  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SLEEP = 0.0
STARTED: dict[int, float] = {}  # latency probe: job id -> handler start
UNFINISHED = f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.pgqueuer)"


async def bench(job: Job) -> None:
    if SLEEP:
        await asyncio.sleep(SLEEP)


def _blocking() -> None:
    if SLEEP:
        time.sleep(SLEEP)


async def bench_sync(job: Job) -> None:
    await asyncio.to_thread(_blocking)


async def probe(job: Job) -> None:
    STARTED[job.id] = time.perf_counter()


def manager(conn: asyncpg.Connection) -> QueueManager:
    qm = QueueManager(Queries.from_asyncpg_connection(conn))
    qm.entrypoint("bench")(bench)
    qm.entrypoint("bench_sync")(bench_sync)
    qm.entrypoint("probe")(probe)
    return qm


async def run_manager(qm: QueueManager, concurrency: int) -> None:
    batch = max(1, min(concurrency // 2, 100))
    await qm.run(batch_size=batch, max_concurrent_tasks=max(concurrency, 2 * batch))


async def reset(dsn: str, finished: int = 0) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    queries = Queries.from_asyncpg_connection(conn)
    await queries.install()
    await queries.optimize_autovacuum()
    if finished:
        await conn.execute(
            f"INSERT INTO {SCHEMA}.pgqueuer_log (job_id, status, priority, entrypoint, aggregated)"
            " SELECT i, 'successful', 0, 'old', true FROM generate_series(1, $1) i",
            finished,
        )
        await conn.execute(f"VACUUM ANALYZE {SCHEMA}.pgqueuer_log")
    return conn


def enqueue_single(args) -> dict:
    async def main() -> float:
        conn = await reset(args.dsn)
        queries = Queries.from_asyncpg_connection(conn)
        started = time.perf_counter()
        for i in range(args.n):
            await queries.enqueue("bench", str(i).encode())
        return time.perf_counter() - started

    return common.rate(args.n, uvloop.run(main()))


def enqueue_bulk(args) -> dict:
    async def main() -> float:
        conn = await reset(args.dsn)
        entrypoints, payloads = ["bench"] * args.n, [str(i).encode() for i in range(args.n)]
        started = time.perf_counter()
        await Queries.from_asyncpg_connection(conn).enqueue(entrypoints, payloads, [0] * args.n)
        return time.perf_counter() - started

    return common.rate(args.n, uvloop.run(main()))


def _worker(args) -> dict:
    """Hidden scenario: one worker process, until SIGTERM."""
    global SLEEP
    SLEEP = args.sleep_ms / 1000

    async def main() -> None:
        qm = manager(await asyncpg.connect(args.dsn))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, qm.shutdown.set)
        await run_manager(qm, args.concurrency)

    uvloop.run(main())
    return {"value": 0, "unit": "-"}


def drain(args) -> dict:
    async def prepare() -> None:
        await (await reset(args.dsn, args.finished)).close()

    uvloop.run(prepare())
    workers = common.start_workers(__file__, args)
    check = psycopg.connect(args.dsn, autocommit=True)

    def done() -> bool:
        common.check_workers(workers)
        return not check.execute(UNFINISHED).fetchone()[0]

    try:
        time.sleep(2)
        kind = "bench" if args.handler == "async" else "bench_sync"

        async def enqueue() -> None:
            conn = await asyncpg.connect(args.dsn)
            payloads = [str(i).encode() for i in range(args.n)]
            await Queries.from_asyncpg_connection(conn).enqueue(
                [kind] * args.n, payloads, [0] * args.n
            )
            await conn.close()

        uvloop.run(enqueue())
        seconds = common.wait_until(done, args.timeout)
    finally:
        common.stop_workers(workers)
    result = {**common.rate(args.n, seconds), "handler": args.handler}
    if args.finished:
        result["note"] = "finished jobs go to pgqueuer_log: PgQueuer deletes them from its queue"
    return result


def backlog(args) -> dict:
    """The jobs first (one call), then the worker processes, started inside the clock."""
    kind = "bench" if args.handler == "async" else "bench_sync"

    async def prepare() -> None:
        conn = await reset(args.dsn, args.finished)
        payloads = [str(i).encode() for i in range(args.n)]
        await Queries.from_asyncpg_connection(conn).enqueue(
            [kind] * args.n, payloads, [0] * args.n
        )
        await conn.execute(f"ANALYZE {SCHEMA}.pgqueuer")  # plans as autovacuum would leave them
        await conn.close()

    uvloop.run(prepare())
    check = psycopg.connect(args.dsn, autocommit=True)
    started = time.perf_counter()
    workers = common.start_workers(__file__, args)

    def done() -> bool:
        common.check_workers(workers)
        return not check.execute(UNFINISHED).fetchone()[0]

    try:
        common.wait_until(done, args.timeout)
        seconds = time.perf_counter() - started
    finally:
        common.stop_workers(workers)
    return {**common.rate(args.n, seconds), "handler": args.handler}


def latency(args) -> dict:
    async def main() -> list[float]:
        conn = await reset(args.dsn)
        qm = manager(await asyncpg.connect(args.dsn))
        task = asyncio.create_task(run_manager(qm, 10))
        queries = Queries.from_asyncpg_connection(conn)
        samples = []
        try:
            await asyncio.sleep(1)
            deadline = time.perf_counter() + args.timeout
            for _ in range(args.n):
                [job_id] = await queries.enqueue("probe", None)
                committed = time.perf_counter()
                while job_id not in STARTED:
                    if time.perf_counter() > deadline or task.done():
                        raise TimeoutError
                    await asyncio.sleep(0.0005)
                samples.append((STARTED[job_id] - committed) * 1000)
                await asyncio.sleep(0.02)
        finally:
            qm.shutdown.set()
            await task
        return samples

    try:
        return common.percentiles(uvloop.run(main()))
    except TimeoutError:
        return {"skip": f"timed out after {args.timeout:.0f} s"}


def rss(args) -> dict:
    global SLEEP
    SLEEP = 0.01

    async def main() -> None:
        conn = await reset(args.dsn)
        await conn.execute(
            f"INSERT INTO {SCHEMA}.pgqueuer (priority, entrypoint, status)"
            " SELECT 0, 'bench', 'queued' FROM generate_series(1, $1)",
            args.n,
        )
        qm = manager(await asyncpg.connect(args.dsn))
        task = asyncio.create_task(run_manager(qm, args.concurrency))
        deadline = time.perf_counter() + args.timeout
        while await conn.fetchval(UNFINISHED):
            if time.perf_counter() > deadline or task.done():
                raise TimeoutError
            await asyncio.sleep(0.2)
        qm.shutdown.set()
        await task

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
            "backlog": backlog,
            "latency": latency,
            "rss": rss,
            "_worker": _worker,
        }
    )

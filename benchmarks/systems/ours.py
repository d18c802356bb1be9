"""outbox itself: enqueue and enqueue_many on psycopg, runners as `outbox run` processes.

Settings: Runner defaults (batch_size 100, LISTEN/NOTIFY wake-ups), --concurrency per process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import outbox
from outbox import HandlerMux, Job, NewJob, Outbox, Runner

ROOT = Path(__file__).resolve().parents[2]
OB = Outbox(schema="bench_outbox")

mux = HandlerMux()
_SLEEP = float(os.environ.get("BENCH_SLEEP_MS", "0")) / 1000


@mux.register("bench")
async def bench(job: Job) -> None:
    if _SLEEP:
        await asyncio.sleep(_SLEEP)


@mux.register("bench_sync")
def bench_sync(job: Job) -> None:
    if _SLEEP:
        time.sleep(_SLEEP)


_STARTED: dict[int, float] = {}
_REPORT_STARTS = os.environ.get("BENCH_REPORT_STARTS") == "1"


@mux.register("latency")
async def probe(job: Job) -> None:
    _STARTED[job.id] = time.perf_counter()
    if _REPORT_STARTS:  # a runner process tells the benchmark (perf_counter is system-wide)
        print(f"STARTED {job.id} {_STARTED[job.id]}", flush=True)


def reset(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("DROP SCHEMA IF EXISTS bench_outbox CASCADE")
    OB.migrate(conn)
    return conn


def add_finished(conn: psycopg.Connection, m: int) -> None:
    if m:
        conn.execute(
            "INSERT INTO bench_outbox.jobs (kind, state, attempts, finished_at)"
            " SELECT 'old', 'succeeded', 1, now() FROM generate_series(1, %s)",
            (m,),
        )
        conn.execute("VACUUM ANALYZE bench_outbox.jobs")


def enqueue_single(args) -> dict:
    conn = reset(args.dsn)
    started = time.perf_counter()
    for i in range(args.n):
        OB.enqueue(conn, "bench", {"i": i})  # autocommit: each job its own transaction
    return common.rate(args.n, time.perf_counter() - started)


def enqueue_clients(args) -> dict:
    conn = reset(args.dsn)
    if args.listening:  # what every enqueue did before migration 8: notify
        conn.execute("SELECT bench_outbox.listen_for(3600)")
    return common.from_clients(args, lambda c, i: OB.enqueue(c, "bench", {"i": i}))


def enqueue_bulk(args) -> dict:
    conn = reset(args.dsn)
    jobs = [NewJob("bench", {"i": i}) for i in range(args.n)]
    started = time.perf_counter()
    OB.enqueue_many(conn, jobs)
    return common.rate(args.n, time.perf_counter() - started)


def unfinished(conn: psycopg.Connection, kind: str = "bench") -> bool:
    """Whether a job of ``kind`` is left to run (drained jobs have priority 0, queue 'default';
    the trap ballast priority 1 or another kind or queue): a seek in the lease index, whichever
    its column order, instead of a walk over the ballast or the finished rows."""
    query = (
        "SELECT EXISTS (SELECT 1 FROM bench_outbox.jobs WHERE state = 'pending' AND tenant IS NULL"
        " AND kind = %s AND queue = 'default' AND priority <= 0)"
        " OR EXISTS (SELECT 1 FROM bench_outbox.jobs WHERE state = 'pending'"
        " AND tenant IS NOT NULL) OR EXISTS (SELECT 1 FROM bench_outbox.jobs"
        " WHERE state = 'running' ORDER BY kind LIMIT 1)"
    )
    return bool(conn.execute(query, (kind,)).fetchone()[0])


def new_jobs(args, kind: str) -> list[NewJob]:
    """``args.n`` jobs of ``kind``, spread round-robin over ``args.tenants`` tenants (if any)."""
    if not args.tenants:
        return [NewJob(kind) for _ in range(args.n)]
    return [NewJob(kind, tenant=f"tenant-{i % args.tenants}") for i in range(args.n)]


def set_limits(conn: psycopg.Connection, args, kind: str) -> None:
    if args.limits:
        OB.set_limit(conn, tenant="*", max_running=args.limits)
        OB.set_limit(conn, kind=kind, max_running=10_000)


def lease(args) -> dict:
    conn = reset(args.dsn)
    set_limits(conn, args, "bench")
    OB.enqueue_many(conn, new_jobs(args, "bench"))
    conn.execute("VACUUM ANALYZE bench_outbox.jobs")
    samples = []
    for _ in range(min(200, args.n // 100)):
        started = time.perf_counter()
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM bench_outbox.lease(ARRAY['bench'], NULL, 100, 30, 'bench')")]
        samples.append((time.perf_counter() - started) * 1000)
        conn.execute(
            "UPDATE bench_outbox.jobs SET state = 'succeeded', finished_at = now(),"
            " leased_until = NULL WHERE id = ANY(%s)", (ids,))
    return {**common.percentiles(samples), "unit": "ms p50 a lease of 100"}


def start_runners(args, kind: str, report_starts: bool = False) -> list[subprocess.Popen]:
    """``args.processes`` `outbox run` processes, as users start them (the CLI)."""
    env = {**os.environ, "OUTBOX_DSN": args.dsn, "OUTBOX_SCHEMA": OB.schema,
           "BENCH_SLEEP_MS": str(args.sleep_ms), "PYTHONPATH": str(ROOT),
           "BENCH_REPORT_STARTS": "1" if report_starts else "0"}  # fmt: skip
    command = [sys.executable, "-m", "outbox.cli", "run", "benchmarks.systems.ours:mux",
               "--concurrency", str(args.concurrency)]  # fmt: skip
    if args.scenario == "trap":
        command += ["--queues", "default"]  # every trap row, so that they differ only in ballast
    stdout = subprocess.PIPE if report_starts else subprocess.DEVNULL
    return [
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.DEVNULL, text=True
        )
        for _ in range(args.processes)
    ]


def drain(args) -> dict:
    """Runners first, then the jobs in one statement; the clock starts when it has committed.
    ``trap``: the same, with ``args.ballast`` jobs the runner must not run inserted first."""
    conn = reset(args.dsn)
    add_finished(conn, args.finished)
    kind = "bench" if args.handler == "async" else "bench_sync"
    set_limits(conn, args, kind)
    trapped = args.scenario == "trap"
    if trapped and args.trap != "none":
        conn.execute(common.ballast_sql(OB.schema, args.trap, kind), (args.ballast,))
        conn.execute("VACUUM ANALYZE bench_outbox.jobs")  # not trap_none: as drain_c100
    workers = start_runners(args, kind)
    try:
        time.sleep(2)
        OB.enqueue_many(conn, new_jobs(args, kind))
        seconds = common.wait_until(lambda: not unfinished(conn, kind), args.timeout)
    finally:
        common.stop_workers(workers)
    result = common.rate(args.n, seconds)
    if trapped:
        result["ballast"] = args.ballast if args.trap != "none" else 0
    return result


def backlog(args) -> dict:
    """The jobs first, then the runners, started inside the clock."""
    conn = reset(args.dsn)
    add_finished(conn, args.finished)
    kind = "bench" if args.handler == "async" else "bench_sync"
    OB.enqueue_many(conn, new_jobs(args, kind))
    conn.execute("ANALYZE bench_outbox.jobs")  # plans as autovacuum would leave them
    started = time.perf_counter()
    workers = start_runners(args, kind)
    try:
        common.wait_until(lambda: not unfinished(conn, kind), args.timeout)
        seconds = time.perf_counter() - started
    finally:
        common.stop_workers(workers)
    return {**common.rate(args.n, seconds), "handler": args.handler}


def latency(args) -> dict:
    """Jobs enqueued one at a time to an idle runner: the time until each handler starts.

    By default the runner is a thread of this process and the clock starts once the enqueue
    has committed, as for the peers. With --other-process the runner is an `outbox run`
    process, as in production, and the clock starts at the enqueue call (commit included).
    """
    conn = reset(args.dsn)
    samples: list[float] = []
    commits: list[float] = []
    if args.other_process:
        [runner] = start_runners(args, "latency", report_starts=True)
        threading.Thread(target=_read_starts, args=(runner,), daemon=True).start()
    else:
        thread = Runner(mux, dsn=args.dsn, outbox=OB, concurrency=10)
        thread.start_in_thread()
    try:
        warm_up = OB.enqueue(conn, "latency")  # the runner is up once it has run one job
        common.wait_until(lambda: warm_up in _STARTED, 60, every=0.01)
        for _ in range(args.n):
            called = time.perf_counter()
            with conn.transaction():
                job_id = OB.enqueue(conn, "latency")
            committed = time.perf_counter()
            common.wait_until(lambda j=job_id: j in _STARTED, 10, every=0.0005)
            since = called if args.other_process else committed
            samples.append((_STARTED[job_id] - since) * 1000)
            commits.append((committed - called) * 1000)
            time.sleep(0.02)
    finally:
        if args.other_process:
            common.stop_workers([runner])
        else:
            thread.stop()
    enqueue = common.percentiles(commits)  # the enqueue call itself, commit included
    return {**common.percentiles(samples), "enqueue_p50": enqueue["value"],
            "enqueue_p99": enqueue["p99"]}  # fmt: skip


def _read_starts(runner: subprocess.Popen) -> None:
    assert runner.stdout is not None
    for line in runner.stdout:
        if line.startswith("STARTED "):
            _, job_id, at = line.split()
            _STARTED[int(job_id)] = float(at)


def rss(args) -> dict:
    conn = reset(args.dsn)
    conn.execute(
        "INSERT INTO bench_outbox.jobs (kind) SELECT 'bench' FROM generate_series(1, %s)",
        (args.n,),
    )
    os.environ["BENCH_SLEEP_MS"] = "10"
    global _SLEEP
    _SLEEP = 0.01

    async def main() -> None:
        runner = Runner(mux, dsn=args.dsn, outbox=OB, concurrency=args.concurrency)
        task = asyncio.create_task(runner.run())
        while await asyncio.to_thread(unfinished, conn):
            await asyncio.sleep(0.2)
        runner.stop()
        await task

    asyncio.run(main())
    return {"value": common.peak_rss_mib(), "unit": "MiB", "outbox": outbox.__name__}


if __name__ == "__main__":
    common.main(
        {
            "enqueue_single": enqueue_single,
            "enqueue_clients": enqueue_clients,
            "enqueue_bulk": enqueue_bulk,
            "drain": drain,
            "backlog": backlog,
            "trap": drain,
            "latency": latency,
            "rss": rss,
            "lease": lease,
        }
    )

"""What every benchmarked system shares: the command line, timing, and the JSON it prints.

A system is a script ``benchmarks/systems/<name>.py`` run by its own interpreter (peers live in
their own virtualenvs). It is called as ``<script> <scenario> --dsn DSN [options]`` and prints one
JSON object on its last line of stdout: ``{"value": float, "unit": str, ...extra}``. A system
that cannot run a scenario prints ``{"skip": "why"}``.

Scenarios:
  enqueue_single  N jobs, one transaction each                     -> jobs/s
  enqueue_bulk    N jobs in one call                                -> jobs/s
  enqueue_clients N jobs, one transaction each, from --clients threads
                  with a connection each (a web app's workers)      -> jobs/s
  drain           N jobs enqueued (in one statement) to --processes
                  runner processes already started, at --concurrency,
                  handlers sleeping --sleep-ms (0: no-op); the clock
                  starts when the enqueue has committed             -> jobs/s
  backlog         N jobs enqueued first, then --processes runner
                  processes started inside the clock (process spawn,
                  imports, connecting: the way users start a runner) -> jobs/s
  trap            a drain of N jobs of the runner's kind and queue
                  ('default'), with --ballast M pending jobs it must
                  not run sitting ahead in lease order (--trap kind:
                  another kind; queue: another queue; scheduled: due in
                  an hour; none: no ballast, the same-run baseline) -> jobs/s
  latency         N jobs enqueued one by one to an idle runner,
                  enqueue commit -> handler start (--other-process:
                  an `outbox run` process, enqueue call -> start)    -> p50 ms (p95, p99 extra)
  rss             a runner at --concurrency draining N jobs          -> peak RSS MiB
  lease           N pending jobs, leased 100 at a time (each batch then
                  marked done) by one connection                    -> p50 ms a lease
``--finished M`` inserts M finished jobs before a drain (index health); ``--handler sync`` uses
plain ``def`` handlers where the system has both. ``--tenants T`` spreads the jobs over T
tenants, and ``--limits L`` caps every tenant at L running jobs (outbox's flow control).
The trap ballast has priority 1 (the drained jobs 0), so that it is ahead in lease order and a
completion check can skip it by priority.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--sleep-ms", type=float, default=0.0)
    parser.add_argument("--finished", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--handler", choices=["async", "sync"], default="async")
    parser.add_argument("--tenants", type=int, default=0, help="spread the jobs over N tenants")
    parser.add_argument("--limits", type=int, default=0, help="a running limit per tenant")
    parser.add_argument("--trap", choices=["none", "kind", "queue", "scheduled"], default="none")
    parser.add_argument("--ballast", type=int, default=0, help="trap: pending jobs not to run")
    parser.add_argument("--clients", type=int, default=16, help="enqueue_clients: threads")
    parser.add_argument("--other-process", action="store_true",
                        help="latency: the runner in another process, timed from the call")
    parser.add_argument("--listening", action="store_true",
                        help="enqueue_clients: as if a runner waited for work (outbox only)")
    return parser.parse_args()


def ballast_sql(schema: str, trap: str, kind: str) -> str:
    """One INSERT ... SELECT of ``%s`` jobs into outbox's table that a runner of ``kind``
    serving queue 'default' must not run, ahead of the drained jobs in lease order."""
    columns, values = {
        "kind": ("kind, priority", "'other', 1"),
        "queue": ("kind, queue, priority", f"'{kind}', 'other', 1"),
        "scheduled": ("kind, priority, run_at", f"'{kind}', 1, now() + interval '1 hour'"),
    }[trap]
    return f"INSERT INTO {schema}.jobs ({columns}) SELECT {values} FROM generate_series(1, %s)"


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def rate(n: int, seconds: float) -> dict[str, Any]:
    return {"value": n / seconds, "unit": "jobs/s", "seconds": round(seconds, 3)}


def percentiles(samples_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(samples_ms)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"value": pick(0.50), "unit": "ms p50", "p95": pick(0.95), "p99": pick(0.99)}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def wait_until(check: Callable[[], bool], timeout: float, every: float = 0.02) -> float:
    """Poll ``check``; return the seconds it took, or exit with a timeout result."""
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            emit({"skip": f"timed out after {timeout:.0f} s"})
            sys.exit(0)
        time.sleep(every)
    return time.perf_counter() - started


def start_workers(script: str, args: argparse.Namespace) -> list[subprocess.Popen]:
    """Start --processes copies of ``script``'s hidden ``_worker`` scenario."""
    command = [
        sys.executable, script, "_worker", "--dsn", args.dsn,
        "--concurrency", str(args.concurrency), "--sleep-ms", str(args.sleep_ms),
    ]  # fmt: skip
    return [subprocess.Popen(command, stdout=subprocess.DEVNULL) for _ in range(args.processes)]


def check_workers(workers: list[subprocess.Popen]) -> None:
    """Exit with a skip result when a worker process died during the run."""
    if any(worker.poll() is not None for worker in workers):
        emit({"skip": "a worker process exited during the drain"})
        sys.exit(0)


def stop_workers(workers: list[subprocess.Popen]) -> None:
    """SIGTERM every worker process, wait for each, kill what does not stop within 30 s."""
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()


def main(scenarios: dict[str, Callable[[argparse.Namespace], dict[str, Any]]]) -> None:
    args = parse()
    run = scenarios.get(args.scenario)
    if run is None:
        emit({"skip": f"{args.scenario} is not implemented"})
        return
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    emit(run(args))


def from_clients(args, insert: Callable[[Any, int], None]) -> dict[str, Any]:
    """``args.n`` calls of ``insert(conn, i)``, one transaction each, spread over
    ``args.clients`` threads with an autocommit connection each; timed from a common start."""
    import threading

    import psycopg

    conns = [psycopg.connect(args.dsn, autocommit=True) for _ in range(args.clients)]
    start = threading.Barrier(args.clients + 1)

    def client(k: int) -> None:
        start.wait()
        for i in range(k, args.n, args.clients):
            insert(conns[k], i)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    start.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    return {**rate(args.n, elapsed), "clients": args.clients}

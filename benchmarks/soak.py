"""Soak: runners under random handler failures, kill -9, SIGTERM restarts and cut connections.

    python benchmarks/soak.py --minutes 10            # embedded Postgres unless OUTBOX_DSN is set

Prints jobs processed, faults injected, and what must stay zero: lost (enqueued, never
finished), duplicated (one attempt run twice at once), stuck (running or overdue at the end);
with the peak RSS of the runners, the RSS of the one runner never killed (flat memory), and the
peak number of runner connections.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import psycopg

from outbox import Outbox

ROOT = Path(__file__).resolve().parent.parent


class Soak:
    def __init__(self, dsn: str, args: argparse.Namespace) -> None:
        self.dsn = dsn
        self.args = args
        self.ob = Outbox(schema=f"soak_{int(time.time())}")
        self.runners: list[subprocess.Popen[bytes] | None] = [None] * args.runners
        self.enqueued = 0
        self.faults: dict[str, int] = {}
        self.peak_rss = 0
        self.steady_rss: list[float] = []
        self.peak_connections = 0
        self.stop = threading.Event()

    def start_runner(self, i: int) -> None:
        env = {**os.environ, "OUTBOX_DSN": self.dsn, "OUTBOX_SCHEMA": self.ob.schema}
        self.runners[i] = subprocess.Popen(
            [sys.executable, "-m", "outbox.cli", "run", "benchmarks.soak_app:mux",
             "--concurrency", str(self.args.concurrency), "--lease", "3",
             "--shutdown-timeout", "5"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def fault(self, name: str) -> None:
        self.faults[name] = self.faults.get(name, 0) + 1

    def inject(self) -> None:
        """Every few seconds, one fault; runner 0 is never killed (its RSS shows leaks)."""
        while not self.stop.wait(self.args.fault_every):
            action = random.choice(["kill9", "sigterm", "terminate_backends"])
            victim = random.randrange(1, len(self.runners))
            proc = self.runners[victim]
            if action == "terminate_backends":
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name LIKE 'outbox %' AND pid <> pg_backend_pid()"
                    )
            elif proc is not None:
                proc.send_signal(signal.SIGKILL if action == "kill9" else signal.SIGTERM)
                proc.wait(60)
                self.start_runner(victim)
            self.fault(action)

    def produce(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                with conn.transaction():
                    for _ in range(self.args.rate // 10):
                        self.ob.enqueue(
                            conn, "soak.work", {"fail_p": 0.2, "max_sleep": 0.02},
                            max_attempts=15,
                        )  # fmt: skip
                self.enqueued += self.args.rate // 10
                time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))

    def sample(self) -> None:
        while not self.stop.wait(2):
            rss = []
            for proc in self.runners:
                with contextlib.suppress(psutil.Error, AttributeError):
                    rss.append(psutil.Process(proc.pid).memory_info().rss)  # type: ignore[union-attr]
            if rss:
                self.peak_rss = max(self.peak_rss, *rss)
            with contextlib.suppress(psutil.Error, AttributeError):
                steady = self.runners[0]
                self.steady_rss.append(psutil.Process(steady.pid).memory_info().rss / 2**20)  # type: ignore[union-attr]
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.dsn) as conn:
                n = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'outbox %'"
                ).fetchone()[0]
                self.peak_connections = max(self.peak_connections, n)

    def counts(self, conn: psycopg.Connection) -> dict[str, int]:
        s = self.ob.schema
        return dict(
            conn.execute(f'SELECT state::text, count(*) FROM "{s}".jobs GROUP BY 1').fetchall()
        )

    def run(self) -> int:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            self.ob.migrate(conn)
            conn.execute(
                f'CREATE TABLE "{self.ob.schema}".soak_runs (job_id bigint, attempt int,'
                " dup int NOT NULL DEFAULT 0, PRIMARY KEY (job_id, attempt))"
            )
        for i in range(len(self.runners)):
            self.start_runner(i)
        threads = [
            threading.Thread(target=f, daemon=True)
            for f in (self.produce, self.inject, self.sample)
        ]
        for t in threads:
            t.start()
        started = time.monotonic()
        while time.monotonic() - started < self.args.minutes * 60:
            time.sleep(1)
        self.stop.set()
        for t in threads:
            t.join(120)
        # Let the runners finish what is left (retries included), then stop them gracefully.
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                c = self.counts(conn)
                if c.get("pending", 0) + c.get("running", 0) == 0:
                    break
                time.sleep(1)
            for proc in self.runners:
                if proc is not None:
                    proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(60) if proc else None for proc in self.runners]
            return self.report(conn, time.monotonic() - started, codes)

    def report(self, conn: psycopg.Connection, seconds: float, codes: list) -> int:
        s = self.ob.schema
        counts = self.counts(conn)
        total = sum(counts.values())
        lost = self.enqueued - total + counts.get("pending", 0)
        duplicated = conn.execute(f'SELECT coalesce(sum(dup), 0) FROM "{s}".soak_runs').fetchone()[
            0
        ]
        stuck = counts.get("running", 0)
        unrecorded = conn.execute(
            f"SELECT count(*) FROM \"{s}\".jobs j WHERE state = 'succeeded' AND NOT EXISTS"
            f' (SELECT 1 FROM "{s}".soak_runs r WHERE r.job_id = j.id AND r.attempt = j.attempts)'
        ).fetchone()[0]
        steady = self.steady_rss
        q = max(1, len(steady) // 10)
        rows = [
            ("duration", f"{seconds:.0f} s"),
            ("jobs enqueued", self.enqueued),
            ("jobs by final state", ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))),
            ("attempts run", conn.execute(f'SELECT count(*) FROM "{s}".soak_runs').fetchone()[0]),
            ("faults injected", ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))),
            ("lost", lost),
            ("duplicated (an attempt run twice)", duplicated),
            ("succeeded without its run recorded", unrecorded),
            ("stuck (running at the end)", stuck),
            ("peak runner RSS", f"{self.peak_rss / 2**20:.1f} MiB"),
            ("steady runner RSS first/last 10%",
             f"{sum(steady[:q]) / q:.1f} / {sum(steady[-q:]) / q:.1f} MiB" if steady else "-"),
            ("peak runner connections", self.peak_connections),
            ("runner exit codes at the end", codes),
        ]  # fmt: skip
        print("| measure | value |\n| --- | --- |")
        for name, value in rows:
            print(f"| {name} | {value} |")
        with contextlib.suppress(psycopg.Error):
            conn.execute(f'DROP SCHEMA "{s}" CASCADE')
        return 0 if lost == duplicated == stuck == unrecorded == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--runners", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rate", type=int, default=200, help="jobs enqueued per second")
    parser.add_argument("--fault-every", type=float, default=5, help="seconds between faults")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        dsn = os.environ.get("OUTBOX_DSN")
        if not dsn:
            from outbox.embedded import embedded_postgres

            dsn = stack.enter_context(embedded_postgres())
        return Soak(dsn, args).run()


if __name__ == "__main__":
    sys.exit(main())

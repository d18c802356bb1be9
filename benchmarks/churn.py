"""Churn: does the jobs table stay the same size while a million jobs pass through it?

    python benchmarks/churn.py                      # embedded Postgres (autovacuum on)
    python benchmarks/churn.py --jobs 200000        # a shorter run
    python benchmarks/churn.py --no-vacuum          # the runner leaves the table to autovacuum
    python benchmarks/churn.py --dsn postgresql://… # your server (SHOW autovacuum first)

One runner process (concurrency 100, a no-op handler, retention --retention seconds) drains a
fresh schema while this process enqueues batches with ``enqueue_many``, keeping at most
--backlog jobs unfinished. Every --every finished jobs it prints the size of the heap, of each
index and of the whole (pg_total_relation_size), with n_dead_tup, the vacuums so far (the
runner's own vacuumer's, every VACUUM_EVERY, and autovacuum's) and the last autovacuum. The target
(issue 15): table + indexes at 1,000,000 jobs churned <= 2x their size at 100,000.

Retention is 3 s by default (pruning every 1.5 s), so that by the 100,000 mark the table has
been pruned and holds its working set (retention x rate + backlog, about 70,000 rows here):
the ratio then measures bloat. With a longer retention the working set itself outgrows the
100,000 mark (at 10 s and ~18,000 jobs/s: 2.1x its rows), and the ratio measures that growth
instead; run --jobs 2000000 to see whether the size levels off (churn-2026-12-03d-2m.txt).

The checkpoints are taken while the churn goes on (the backlog is still full at the last one);
enqueuing then stops, the runner drains what is left, and one more row shows the table after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from outbox import NewJob, Outbox

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 2.0
KIND = "churn.noop"


def run_runner(args: argparse.Namespace) -> None:
    """The runner subprocess: the Python API, since `outbox run` has no retention option."""
    from outbox import HandlerMux, Runner
    from outbox.runner import maintenance

    # The pruner runs every maintenance.PRUNE_EVERY (60 s) seconds: too rarely for a churn of a
    # few minutes. The pruner reads the module constant at each round, so setting it here (in
    # this process only, before the runner starts) shortens its period without editing outbox/.
    maintenance.PRUNE_EVERY = args.prune_every

    mux = HandlerMux()

    @mux.register(KIND)
    async def noop(job: Any) -> None:
        return None

    runner = Runner(
        mux,
        dsn=args.dsn,
        outbox=Outbox(schema=args.schema),
        concurrency=100,
        retention=timedelta(seconds=args.retention),
        vacuum=args.vacuum,
    )

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await runner.run()

    asyncio.run(main())


def sizes(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any]:
    table = f'"{schema}".jobs'
    row = conn.execute(
        "SELECT pg_relation_size(c.oid), pg_total_relation_size(c.oid), s.n_live_tup,"
        " s.n_dead_tup, s.n_tup_del, s.last_autovacuum, s.autovacuum_count, s.vacuum_count"
        " FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid"
        " WHERE c.oid = %s::regclass",
        (table,),
    ).fetchone()
    assert row is not None
    indexes = conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid)"
        " FROM pg_index i WHERE i.indrelid = %s::regclass ORDER BY 1",
        (table,),
    ).fetchall()
    heap, total, live, dead, deleted, last_av, av_count, vacuum_count = row
    return {
        "heap": heap,
        "total": total,
        "live": live,
        "dead": dead,
        "deleted": deleted,
        "last_autovacuum": last_av,
        "autovacuum_count": av_count,
        "vacuum_count": vacuum_count,
        "indexes": {name.split(".")[-1]: size for name, size in indexes},
    }


def unfinished(conn: psycopg.Connection[Any], schema: str) -> tuple[int, int]:
    """(pending, running): each count walks its partial index, never the finished rows."""
    row = conn.execute(
        f"SELECT (SELECT count(*) FROM \"{schema}\".jobs WHERE state = 'pending'"
        f" AND tenant IS NULL), (SELECT count(*) FROM \"{schema}\".jobs WHERE state = 'running')"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


class Churn:
    def __init__(self, dsn: str, args: argparse.Namespace) -> None:
        self.dsn = dsn
        self.args = args
        self.ob = Outbox(schema=f"churn_{int(time.time())}")
        self.index_names: list[str] = []
        self.rows: dict[int, dict[str, Any]] = {}
        self.t0: Any = None

    def settings(self, conn: psycopg.Connection[Any]) -> None:
        print(f"server: {conn.execute('SHOW server_version').fetchone()[0]}")  # type: ignore[index]
        print(f"SHOW autovacuum: {conn.execute('SHOW autovacuum').fetchone()[0]}")  # type: ignore[index]
        rows = conn.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name LIKE 'autovacuum%'"
            " OR name LIKE 'vacuum_cost%' OR name IN ('maintenance_work_mem', 'shared_buffers',"
            " 'track_counts') ORDER BY name"
        ).fetchall()
        for name, setting, unit in rows:
            print(f"  {name} = {setting}{' ' + unit if unit else ''}")
        opts = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = %s::regclass",
            (f'"{self.ob.schema}".jobs',),
        ).fetchone()
        print(f"jobs table reloptions (set by the migrations): {opts[0] if opts else None}")  # type: ignore[index]

    def start_runner(self, log: Path) -> subprocess.Popen[bytes]:
        a = self.args
        with log.open("wb") as out:
            return subprocess.Popen(
                [sys.executable, __file__, "--runner", "--dsn", self.dsn,
                 "--schema", self.ob.schema, "--retention", str(a.retention),
                 "--prune-every", str(a.prune_every),
                 "--vacuum" if a.vacuum else "--no-vacuum"],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def header(self) -> None:
        cols = ["churned", "pending", "elapsed s", "heap MiB"]
        cols += [f"{n} MiB" for n in self.index_names]
        cols += ["total MiB", "n_live_tup", "n_dead_tup", "pruned (n_tup_del)", "runner vacuums",
                 "autovacuums", "last autovacuum (s into run)"]  # fmt: skip
        print("| " + " | ".join(cols) + " |")
        print("|" + " --- |" * len(cols))

    def row(
        self, label: str, churned: int, pending: int, elapsed: float, s: dict[str, Any]
    ) -> None:
        av = s["last_autovacuum"]
        since = f"{(av - self.t0).total_seconds():.0f}" if av else "never"
        cells = [label or f"{churned:,}", f"{pending:,}", f"{elapsed:.0f}", mib(s["heap"])]
        cells += [mib(s["indexes"].get(n, 0)) for n in self.index_names]
        cells += [mib(s["total"]), f"{s['live']:,}", f"{s['dead']:,}", f"{s['deleted']:,}",
                  str(s["vacuum_count"]), str(s["autovacuum_count"]), since]  # fmt: skip
        print("| " + " | ".join(cells) + " |", flush=True)

    def run(self) -> int:
        a = self.args
        s = self.ob.schema
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            self.ob.migrate(conn)
            self.settings(conn)
            self.index_names = sorted(sizes(conn, s)["indexes"])
        print(
            f"runner: 1 process, concurrency 100, no-op handler, retention {a.retention:g} s;"
            f" maintenance.PRUNE_EVERY set to {a.prune_every:g} s in the runner process"
            f" (default 60 s); the runner's vacuum {'on' if a.vacuum else 'off (--no-vacuum)'};"
            f" backlog <= {a.backlog:,}, batches of {a.batch:,}; jobs {a.jobs:,}",
            flush=True,
        )
        log = Path(tempfile.mkstemp(prefix="churn-runner-", suffix=".log")[1])
        runner = self.start_runner(log)
        checkpoints = list(range(a.every, a.jobs + 1, a.every))
        if not checkpoints or checkpoints[-1] != a.jobs:
            checkpoints.append(a.jobs)
        enqueued = 0
        started = time.monotonic()
        with psycopg.connect(self.dsn) as conn:
            self.t0 = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        self.header()
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while checkpoints:
                    if runner.poll() is not None:
                        print(f"runner exited with {runner.returncode}; log: {log}")
                        return 1
                    pending, running = unfinished(conn, s)
                    churned = enqueued - pending - running
                    if churned >= checkpoints[0]:
                        stats = sizes(conn, s) | {"churned": churned}
                        self.rows[checkpoints.pop(0)] = stats
                        self.row("", churned, pending, time.monotonic() - started, stats)
                        continue
                    room = a.backlog - pending - running
                    if room >= a.batch:
                        with conn.transaction():
                            self.ob.enqueue_many(conn, [NewJob(KIND)] * a.batch)
                        enqueued += a.batch
                    else:
                        time.sleep(0.05)
                # Stop enqueuing; let the runner finish the backlog and prune once more.
                while sum(unfinished(conn, s)):
                    time.sleep(0.5)
                time.sleep(a.retention + a.prune_every + 1)
                self.row("drained", enqueued, 0, time.monotonic() - started, sizes(conn, s))
        finally:
            runner.send_signal(signal.SIGTERM)
            try:
                runner.wait(60)
            except subprocess.TimeoutExpired:
                runner.kill()
        return self.report(log)

    def report(self, log: Path) -> int:
        a = self.args
        first, last = self.rows[min(self.rows)], self.rows[a.jobs]
        ratio = last["total"] / first["total"]
        print(
            f"\ntable + indexes: {mib(first['total'])} MiB at {first['churned']:,} churned,"
            f" {mib(last['total'])} MiB at {last['churned']:,}: ratio {ratio:.2f}"
            f" (target <= {TARGET_RATIO:g}x): {'PASS' if ratio <= TARGET_RATIO else 'FAIL'}"
        )
        for name in self.index_names:
            before, after = first["indexes"].get(name, 0), last["indexes"].get(name, 0)
            print(f"  {name}: {mib(before)} -> {mib(after)} MiB ({after / max(before, 1):.2f}x)")
        print(f"  heap: {mib(first['heap'])} -> {mib(last['heap'])} MiB"
              f" ({last['heap'] / max(first['heap'], 1):.2f}x)")  # fmt: skip
        self.report_vacuums(log)
        print(f"runner log: {log}")
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute(f'DROP SCHEMA "{self.ob.schema}" CASCADE')
        return 0 if ratio <= TARGET_RATIO else 1

    def report_vacuums(self, log: Path) -> None:
        """The runner's runner.vacuumed events: how many, how long, how many dead rows each."""
        text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))  # colours
        events = [line for line in text.splitlines() if "runner.vacuumed" in line]
        seconds = sorted(float(m) for line in events for m in re.findall(r"seconds=([\d.]+)", line))
        dead = sorted(int(m) for line in events for m in re.findall(r"dead_before=(\d+)", line))
        failed = sum("runner.vacuum_failed" in line for line in text.splitlines())
        if failed:
            print(f"runner.vacuum_failed events: {failed}")
        if not events:
            print("runner.vacuumed events: none")
            return
        print(
            f"runner.vacuumed events: {len(events)}; seconds each: min {seconds[0]:.2f},"
            f" median {statistics.median(seconds):.2f}, max {seconds[-1]:.2f}"
            f" (total {sum(seconds):.1f}); dead rows before each: min {dead[0]:,},"
            f" median {int(statistics.median(dead)):,}, max {dead[-1]:,}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", help="Postgres DSN (default: an embedded server)")
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs to churn")
    parser.add_argument("--every", type=int, default=100_000, help="a size row every N jobs")
    parser.add_argument("--backlog", type=int, default=20_000, help="most unfinished jobs")
    parser.add_argument("--batch", type=int, default=2_000, help="jobs per enqueue_many")
    parser.add_argument("--retention", type=float, default=3, help="seconds (the runner's)")
    parser.add_argument("--prune-every", type=float, default=1.5, help="the pruner's period, s")
    parser.add_argument(
        "--vacuum",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the runner's vacuumer (Runner(vacuum=...))",
    )
    parser.add_argument(
        "--naptime",
        type=float,
        help="embedded server only: ALTER SYSTEM SET autovacuum_naptime to this many seconds",
    )
    parser.add_argument("--runner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runner:
        run_runner(args)
        return 0
    with contextlib.ExitStack() as stack:
        dsn = args.dsn
        if not dsn:
            from outbox.embedded import embedded_postgres

            dsn = stack.enter_context(embedded_postgres())
            print("database: embedded Postgres (outbox.embedded.embedded_postgres)")
            if args.naptime:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"ALTER SYSTEM SET autovacuum_naptime = '{args.naptime:g}s'")
                    conn.execute("SELECT pg_reload_conf()")
                print(f"autovacuum_naptime changed to {args.naptime:g} s (--naptime)")
        else:
            if args.naptime:
                parser.error("--naptime changes the embedded server only; tune yours yourself")
            print("database: --dsn")
        return Churn(dsn, args).run()


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark outbox against its peers and a raw-SQL baseline, side by side, on one Postgres.

    python benchmarks/run.py --quick            # a smaller run, under two minutes
    python benchmarks/run.py --write            # the full run; writes benchmarks/RESULTS.md
    python benchmarks/run.py --systems ours,raw_sql --scenarios drain_c100

Without OUTBOX_DSN / --dsn it starts an embedded Postgres. Peers run in their own virtualenvs
(benchmarks/.venvs/<peer>, made on first use from benchmarks/requirements-<peer>.txt with the
Python that benchmarks/peers.json names), so the library never depends on them. Every scenario
runs as a separate process per system, one after another, bounded by a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENVS = HERE / ".venvs"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    scenario: str
    n: int
    quick_n: int
    options: dict[str, object] = field(default_factory=dict)
    higher_is_better: bool = True
    only: tuple[str, ...] = ()
    """The systems that have the feature measured (empty: every system)."""
    quick_options: dict[str, object] = field(default_factory=dict)
    """Options that replace ``options`` in a --quick run."""
    baseline: str = ""
    """A scenario earlier in the list: each cell also gives its ratio to that row's cell of the
    same system, from the same run (a trap against the empty table, 4 processes against 1)."""


SCENARIOS = [
    Scenario("enqueue_single", "enqueue, one job per transaction", "enqueue_single", 3000, 500),
    Scenario("enqueue_clients", "enqueue, one job per transaction, 16 client threads",
             "enqueue_clients", 20_000, 4000, {"clients": 16}, only=("ours", "raw_sql", "raw_min")),
    Scenario("enqueue_clients_listening", "the same while a runner waits (every enqueue notifies)",
             "enqueue_clients", 20_000, 4000, {"clients": 16, "listening": True}, only=("ours",),
             baseline="enqueue_clients"),
    Scenario("enqueue_bulk", "enqueue 100,000 jobs in one call", "enqueue_bulk", 100_000, 20_000),
    Scenario("drain_c1", "drain 3,000 jobs, 1 process, concurrency 1", "drain", 3000, 1000,
             {"concurrency": 1}),
    Scenario("drain_c10", "drain 30,000 jobs, 1 process, concurrency 10", "drain", 30_000, 10_000,
             {"concurrency": 10}),
    Scenario("drain_c100", "drain 30,000 jobs, 1 process, concurrency 100", "drain", 30_000,
             10_000, {"concurrency": 100}),
    Scenario("drain_sync_c100", "drain 30,000 jobs, plain def handlers, concurrency 100", "drain",
             30_000, 10_000, {"concurrency": 100, "handler": "sync"}),
    Scenario("drain_2p", "drain 30,000 jobs, 2 processes, concurrency 100", "drain", 30_000,
             10_000, {"concurrency": 100, "processes": 2}, baseline="drain_c100"),
    Scenario("drain_4p", "drain 30,000 jobs, 4 processes, concurrency 100", "drain", 30_000,
             10_000, {"concurrency": 100, "processes": 4}, baseline="drain_c100"),
    # The way users start: jobs waiting, then the runner started inside the clock (process spawn,
    # imports, connecting included), one process unless said.
    Scenario("backlog_c100", "50,000 jobs waiting (quick: 10,000), runner started in the clock, "
             "1 process, concurrency 100", "backlog", 50_000, 10_000, {"concurrency": 100}),
    Scenario("backlog_sync_c100", "50,000 jobs waiting (quick: 10,000), runner started in the "
             "clock, plain def handlers, concurrency 100", "backlog", 50_000, 10_000,
             {"concurrency": 100, "handler": "sync"}, only=("ours",)),
    Scenario("backlog_2p", "50,000 jobs waiting (quick: 10,000), runners started in the clock, "
             "2 processes, concurrency 100", "backlog", 50_000, 10_000,
             {"concurrency": 100, "processes": 2}, baseline="backlog_c100"),
    Scenario("backlog_4p", "50,000 jobs waiting (quick: 10,000), runners started in the clock, "
             "4 processes, concurrency 100", "backlog", 50_000, 10_000,
             {"concurrency": 100, "processes": 4}, baseline="backlog_c100"),
    Scenario("drain_finished", "drain 30,000 jobs with 1,000,000 finished present "
             "(quick: 100,000)", "drain", 30_000, 10_000,
             {"concurrency": 100, "finished": 1_000_000}, quick_options={"finished": 100_000}),
    Scenario("drain_sleep10", "drain 20,000 jobs, handlers sleep 10 ms, concurrency 100", "drain",
             20_000, 5000, {"concurrency": 100, "sleep-ms": 10}),
    # The lease traps: pending jobs the runner must not run, ahead in lease order (priority 1),
    # inserted before the runner starts; the runner serves its kinds and queue 'default' only.
    Scenario("trap_none", "drain 20,000 jobs (quick: 5,000), no ballast, concurrency 100",
             "trap", 20_000, 5000, {"concurrency": 100, "trap": "none"},
             only=("ours", "raw_sql")),
    Scenario("trap_kind", "drain 20,000 jobs, 1,000,000 pending of another kind ahead "
             "(quick: 5,000 and 100,000)", "trap", 20_000, 5000,
             {"concurrency": 100, "trap": "kind", "ballast": 1_000_000},
             only=("ours", "raw_sql"), quick_options={"ballast": 100_000}, baseline="trap_none"),
    Scenario("trap_queue", "drain 20,000 jobs, 1,000,000 pending in another queue ahead "
             "(quick: 5,000 and 100,000)", "trap", 20_000, 5000,
             {"concurrency": 100, "trap": "queue", "ballast": 1_000_000},
             only=("ours", "raw_sql"), quick_options={"ballast": 100_000}, baseline="trap_none"),
    Scenario("trap_scheduled", "drain 20,000 jobs, 1,000,000 at a higher priority due in an "
             "hour (quick: 5,000 and 100,000)", "trap", 20_000, 5000,
             {"concurrency": 100, "trap": "scheduled", "ballast": 1_000_000},
             only=("ours", "raw_sql"), quick_options={"ballast": 100_000}, baseline="trap_none"),
    Scenario("latency", "latency enqueue -> handler start, idle runner", "latency", 300, 100,
             higher_is_better=False),
    Scenario("latency_process", "latency enqueue call -> handler start, idle `outbox run` "
             "process", "latency", 300, 100, {"other-process": True}, higher_is_better=False,
             only=("ours",)),
    Scenario("rss", "runner peak RSS at concurrency 100", "rss", 10_000, 3000,
             {"concurrency": 100}, higher_is_better=False),
    # Flow control (outbox only): the plain lease, then 1,000 tenants with a limit each.
    Scenario("lease_plain", "lease 100 of 100,000 pending jobs, no tenants", "lease", 100_000,
             20_000, higher_is_better=False, only=("ours",)),
    Scenario("lease_tenants", "lease 100 of 100,000 pending jobs of 1,000 tenants, limits on",
             "lease", 100_000, 20_000, {"tenants": 1000, "limits": 5}, higher_is_better=False,
             only=("ours",)),
    Scenario("drain_tenants", "drain 30,000 jobs of 1,000 tenants, limits on, concurrency 100",
             "drain", 30_000, 10_000, {"concurrency": 100, "tenants": 1000, "limits": 5},
             only=("ours",)),
]  # fmt: skip


def python_for(version: str) -> str:
    """An interpreter of this minor version: pyenv's, else one on PATH."""
    if platform.python_version().startswith(version + "."):
        return sys.executable
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = sorted(glob.glob(str(root / "versions" / f"{version}.*" / "bin" / "python")))
    if found:
        return found[-1]
    on_path = f"python{version}"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        subprocess.run([on_path, "--version"], check=True, capture_output=True)
        return on_path
    raise RuntimeError(f"no Python {version} found (pyenv or PATH)")


def peer_python(name: str, spec: dict[str, str]) -> str:
    """The peer's virtualenv interpreter, creating the venv on first use."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    requirements = HERE / spec["requirements"]
    if not stamp.exists() or stamp.stat().st_mtime < requirements.stat().st_mtime:
        print(f"setting up {name} in {venv} ...", file=sys.stderr)
        subprocess.run([python_for(spec["python"]), "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True
        )
        stamp.touch()
    return str(python)


def systems(selected: list[str] | None) -> dict[str, tuple[str, str]]:
    """name -> (python, script)."""
    found = {
        "ours": (sys.executable, str(HERE / "systems" / "ours.py")),
        "raw_sql": (sys.executable, str(HERE / "systems" / "raw_sql.py")),
        "raw_min": (sys.executable, str(HERE / "systems" / "raw_min.py")),
    }
    peers_file = HERE / "peers.json"
    peers = json.loads(peers_file.read_text()) if peers_file.exists() else {}
    for name, spec in peers.items():
        if selected and name not in selected:
            continue
        try:
            found[name] = (peer_python(name, spec), str(HERE / spec["script"]))
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"{name}: cannot set up ({exc}); skipped", file=sys.stderr)
    return {k: v for k, v in found.items() if not selected or k in selected}


def run_one(python: str, script: str, sc: Scenario, dsn: str, quick: bool, timeout: float) -> dict:
    args = [python, script, sc.scenario, "--dsn", dsn, "--n", str(sc.quick_n if quick else sc.n),
            "--timeout", str(timeout)]  # fmt: skip
    for key, value in {**sc.options, **(sc.quick_options if quick else {})}.items():
        args += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout + 60, env=env, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {"skip": f"over {timeout + 60:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skip": f"failed: {last[:120]}"}
    return json.loads(lines[-1])


def fmt(result: dict, ours: dict | None, baseline: tuple[str, dict] | None = None) -> str:
    if "skip" in result:
        return f"— ({result['skip']})"
    value = result["value"]
    text = f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"
    if "p99" in result:
        text += f" (p95 {result['p95']:.2f}, p99 {result['p99']:.2f})"
    if ours and "skip" not in ours and ours["value"]:
        text += f" · {value / ours['value']:.2f}x"
    if baseline and "skip" not in baseline[1] and baseline[1]["value"]:
        text += f" · {value / baseline[1]['value']:.2f}x {baseline[0]}"
    return text


def machine(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        version = conn.execute("SELECT version()").fetchone()[0].split(" on ")[0]
        settings = dict(
            conn.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name IN"
                " ('shared_buffers', 'synchronous_commit', 'fsync', 'max_connections',"
                " 'work_mem', 'wal_level', 'autovacuum')"
            ).fetchall()
        )
    return [
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}",
        f"- Python {platform.python_version()} (peers: see benchmarks/peers.json)",
        f"- {version}, on the same machine; " + ", ".join(f"{k}={v}" for k, v in settings.items()),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=os.environ.get("OUTBOX_DSN"))
    parser.add_argument("--quick", action="store_true", help="small sizes: under two minutes")
    parser.add_argument("--systems", help="comma-separated: ours,raw_sql,pgqueuer,...")
    parser.add_argument("--scenarios", help="comma-separated scenario names")
    parser.add_argument("--timeout", type=float, help="seconds per run (default 20 quick, 60)")
    parser.add_argument("--write", action="store_true", help="write benchmarks/RESULTS.md")
    args = parser.parse_args()
    timeout = args.timeout or (20.0 if args.quick else 60.0)
    chosen = [s for s in SCENARIOS if not args.scenarios or s.name in args.scenarios.split(",")]
    with contextlib.ExitStack() as stack:
        dsn = args.dsn
        if not dsn:
            from outbox.embedded import embedded_postgres

            dsn = stack.enter_context(embedded_postgres())
        found = systems(args.systems.split(",") if args.systems else None)
        names = list(found)
        started = time.monotonic()
        rows = []
        done: dict[str, dict[str, dict]] = {}
        for sc in chosen:
            results = {}
            for name in names:
                python, script = found[name]
                if sc.only and name not in sc.only:
                    results[name] = {"skip": "not a feature it has"}
                    continue
                results[name] = run_one(python, script, sc, dsn, args.quick, timeout)
                print(f"{sc.name:16} {name:14} {results[name]}", file=sys.stderr)
            done[sc.name] = results
            ours = results.get("ours")
            before = done.get(sc.baseline, {})
            cells = [
                fmt(results[n], ours, (sc.baseline, before[n]) if n in before else None)
                for n in names
            ]
            better = "higher" if sc.higher_is_better else "lower"
            rows.append(f"| {sc.title} ({better} is better) | " + " | ".join(cells) + " |")
        header = "| scenario | " + " | ".join(names) + " |"
        table = "\n".join([header, "|" + " --- |" * (len(names) + 1), *rows])
        elapsed = time.monotonic() - started
        command = "python benchmarks/run.py " + " ".join(sys.argv[1:])
        report = "\n".join(
            [
                *machine(dsn),
                f"- command: `{command.strip()}` ({elapsed:.0f} s)",
                "- each cell: the figure, then its ratio to ours (x ours), and where a row names"
                " one, its ratio to the same system's figure in that row of this run; units:"
                " jobs/s, latency in ms, RSS in MiB",
                "",
                table,
            ]
        )
        print(report)
        if args.write:
            results_file = HERE / "RESULTS.md"
            text = results_file.read_text() if results_file.exists() else ""
            marker = "<!-- results -->"
            head = text.split(marker)[0] if marker in text else "# Benchmark results\n\n"
            results_file.write_text(f"{head}{marker}\n{report}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

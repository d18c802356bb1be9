"""Enqueue, ours against a raw INSERT, in alternating rounds on one table: the ratio without drift.

    python benchmarks/enqueue_ab.py [--dsn DSN] [--rounds 5] [--n 3000] [--clients 1,16]

`run.py` runs each system's scenario once, one after another, each on a fresh schema; on a
2-core machine the enqueue ratios then move by ±15 % from run to run (checkpoints, the page
cache, whatever else runs). Here both sides insert into the same outbox table, one job per
transaction on autocommit connections, round after round (ours, raw, ours, raw, ...), and the
table prints each side's median and the median of the per-round ratios.

- ours: ``Outbox.enqueue(conn, "bench", {"i": i})``;
- raw: ``INSERT INTO jobs (kind, payload) VALUES (%s, %s::jsonb)``, as in `systems/raw_loop.py`.

With ``--clients 16`` each round spreads ``--n`` inserts over 16 threads, an autocommit
connection each (`systems/common.py`'s ``from_clients``). No runner waits, so no enqueue
notifies (see the ``enqueue_clients_listening`` scenario for that cost).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "systems"))
import common

from outbox import Outbox
from outbox.embedded import embedded_postgres


def rate(dsn: str, clients: int, n: int, insert: Callable[[Any, int], Any]) -> float:
    """Jobs a second for ``n`` one-job transactions spread over ``clients`` threads."""
    args = argparse.Namespace(dsn=dsn, clients=clients, n=n)
    return float(common.from_clients(args, insert)["value"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("OUTBOX_DSN"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=3000, help="inserts per side per round")
    parser.add_argument("--clients", default="1,16", help="comma-separated thread counts")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        dsn = args.dsn or stack.enter_context(embedded_postgres())
        ob = Outbox(schema=f"bench_ab_{uuid.uuid4().hex[:8]}")
        table = f'"{ob.schema}".jobs'
        raw_sql = f"INSERT INTO {table} (kind, payload) VALUES (%s, %s::jsonb)"

        def ours(conn: psycopg.Connection[Any], i: int) -> None:
            ob.enqueue(conn, "bench", {"i": i})

        def raw(conn: psycopg.Connection[Any], i: int) -> None:
            conn.execute(raw_sql, ("bench", f'{{"i": {i}}}'))

        with psycopg.connect(dsn, autocommit=True) as conn:
            ob.migrate(conn)
        try:
            print("| clients | ours jobs/s | raw INSERT jobs/s | ours / raw, per round | median |")
            print("| --- | --- | --- | --- | --- |")
            for clients in (int(c) for c in args.clients.split(",")):
                rate(dsn, clients, args.n // 10, ours)  # warm: plans, prepared statements
                rate(dsn, clients, args.n // 10, raw)
                mine, theirs = [], []
                for _ in range(args.rounds):
                    mine.append(rate(dsn, clients, args.n, ours))
                    theirs.append(rate(dsn, clients, args.n, raw))
                ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
                each = ", ".join(f"{r:.2f}" for r in ratios)
                cells = [str(clients), f"{statistics.median(mine):,.0f}",
                         f"{statistics.median(theirs):,.0f}", each,
                         f"{statistics.median(ratios):.2f}x"]  # fmt: skip
                print("| " + " | ".join(cells) + " |", flush=True)
        finally:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{ob.schema}" CASCADE')


if __name__ == "__main__":
    main()

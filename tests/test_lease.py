"""The lease reads only what the runner may take: the ranges of jobs_ready_idx that hold runnable
jobs of its kinds and queues, merged back into the global lease order (priority DESC, run_at, id).
Other kinds, other queues and jobs due later cost it nothing, however many there are."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from outbox import queries

BALLAST = 20_000


def _lease(
    conn: psycopg.Connection, schema: str, kinds: list[str], queues: list[str] | None, limit: int
) -> list[tuple[Any, ...]]:
    params = {"kinds": kinds, "queues": queues, "limit": limit, "lease_seconds": 30.0}
    return conn.execute(queries.query("lease", schema), {**params, "runner": "r"}).fetchall()


def _lease_buffers(
    conn: psycopg.Connection, schema: str, kinds: list[str], queues: list[str] | None, limit: int
) -> tuple[int, int]:
    """(rows leased, shared buffers touched) by one lease, rolled back. The function scan's
    counts include every statement run inside lease(); the second run is measured, with the
    function's plans cached as a runner's are."""
    for _ in range(2):
        with conn.transaction(force_rollback=True):
            [(plan,)] = conn.execute(
                f'EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM "{schema}".lease('
                "%s::text[], %s::text[], %s, 30, 'r')",
                (kinds, queues, limit),
            ).fetchall()
    top = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]
    return top["Actual Rows"], top["Shared Hit Blocks"] + top["Shared Read Blocks"]


def _insert(conn: psycopg.Connection, schema: str, n: int, **columns: str) -> None:
    names = ", ".join(columns)
    values = ", ".join(columns.values())
    conn.execute(
        f'INSERT INTO "{schema}".jobs ({names}) SELECT {values} FROM generate_series(1, {n}) i'
    )


def test_lease_takes_jobs_across_kinds_queues_and_priorities_in_lease_order(conn, schema):
    expected = []
    for n in range(60):
        kind, queue, priority = f"k{n % 3}", f"q{n % 2}", n % 4
        [(job_id,)] = conn.execute(
            f'INSERT INTO "{schema}".jobs (kind, queue, priority, run_at)'
            " VALUES (%s, %s, %s, now() - make_interval(secs => %s)) RETURNING id",
            (kind, queue, priority, 100 - n),
        ).fetchall()
        expected.append((-priority, n, job_id))
    order = [job_id for *_, job_id in sorted(expected)]

    first = _lease(conn, schema, ["k0", "k1", "k2"], None, 25)
    second = _lease(conn, schema, ["k0", "k1", "k2"], None, 100)

    assert sorted(row[0] for row in first) == sorted(order[:25])
    assert sorted(row[0] for row in second) == sorted(order[25:])


def test_lease_takes_only_the_kinds_and_queues_it_serves(conn, schema):
    _insert(conn, schema, 5, kind="'mine'")
    _insert(conn, schema, 5, kind="'mine'", queue="'other'")
    _insert(conn, schema, 5, kind="'theirs'", priority="5")

    leased = _lease(conn, schema, ["mine", "mine"], ["default", "default"], 100)

    assert len(leased) == 5
    assert {(row[1], row[2]) for row in leased} == {("mine", "default")}


def test_jobs_due_later_are_not_leased_even_at_a_higher_priority(conn, schema):
    _insert(conn, schema, 3, kind="'k'", priority="9", run_at="now() + interval '1 hour'")
    _insert(conn, schema, 4, kind="'k'")

    assert len(_lease(conn, schema, ["k"], None, 100)) == 4
    assert _lease(conn, schema, ["k"], None, 100) == []


@pytest.mark.parametrize(
    ("ballast", "queues"),
    [
        pytest.param({"kind": "'theirs'", "priority": "5"}, None, id="other kind, ahead"),
        pytest.param({"kind": "'mine'", "queue": "'other'", "priority": "5"}, ["default"],
                     id="other queue, ahead"),
        pytest.param({"kind": "'mine'", "priority": "5", "run_at": "now() + interval '1 hour'"},
                     None, id="due in an hour, ahead"),
    ],
)  # fmt: skip
def test_a_lease_costs_the_same_whatever_waits_that_it_may_not_take(conn, schema, ballast, queues):
    _insert(conn, schema, 50, kind="'mine'")
    conn.execute(f'ANALYZE "{schema}".jobs')
    leased, alone = _lease_buffers(conn, schema, ["mine"], queues, 20)
    assert leased == 20

    _insert(conn, schema, BALLAST, **ballast)
    conn.execute(f'VACUUM ANALYZE "{schema}".jobs')
    leased, beside = _lease_buffers(conn, schema, ["mine"], queues, 20)

    assert leased == 20
    # Stepping over the ballast cost 4x the pages (before migration 7), and more as it grew. What
    # remains: deeper index trees under the lease's own writes, and for two groups of one kind
    # (due now, due later) the pass that merges them.
    assert beside <= alone * 1.6, (alone, beside)


def _updates(conn: psycopg.Connection, schema: str) -> tuple[int, int]:
    """(updated, HOT updated) rows of the jobs table this session has not reported yet."""
    [(updated, hot)] = conn.execute(
        "SELECT pg_stat_get_xact_tuples_updated(%s::regclass),"
        " pg_stat_get_xact_tuples_hot_updated(%s::regclass)",
        (f'"{schema}".jobs', f'"{schema}".jobs'),
    ).fetchall()
    return updated, hot


def test_a_heartbeat_is_a_hot_update(conn, schema):
    # It changes only leased_until, which no index holds, and fillfactor leaves room on the page:
    # Postgres writes no index entry for it.
    _insert(conn, schema, 40, kind="'k'")
    leased = _lease(conn, schema, ["k"], None, 40)
    with conn.transaction():
        updated, hot = _updates(conn, schema)
        conn.execute(
            queries.query("heartbeat", schema),
            {"ids": [row[0] for row in leased], "attempts": [row[5] for row in leased],
             "lease_seconds": 30.0, "runner": "r"},
        )  # fmt: skip
        assert _updates(conn, schema) == (updated + 40, hot + 40)

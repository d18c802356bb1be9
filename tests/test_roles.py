"""Least privilege: what an enqueuer, a runner and a reader can and cannot do (migration 0006).

Each test makes login roles of its own (trust auth: connecting as them needs no password)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors

from outbox import HandlerMux, Job, NewJob, Outbox, Runner
from tests.helpers import eventually, running


def _denied(dsn: str, statement: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as c:
        try:
            c.execute(statement)
        except pg_errors.InsufficientPrivilege:
            return True
    return False


def test_an_enqueuer_enqueues_through_the_function_and_can_do_nothing_else(ob, conn, role):
    name, as_enqueuer = role()
    ob.grant(conn, enqueuer=name)
    mine = Outbox(schema=ob.schema, enqueue_via_function=True)
    with psycopg.connect(as_enqueuer, autocommit=True) as c:
        job_id = mine.enqueue(c, "emails.send", {"to": "a@example.com"}, tenant="acme", delay=5)
        ids = mine.enqueue_many(c, [NewJob("k", unique_key="u"), NewJob("k", unique_key="u")])
        assert ids[0] == ids[1]  # one entry per input: the duplicate gets the live job's id
    job = ob.get_job(conn, job_id)
    assert (job.kind, job.tenant, job.payload) == ("emails.send", "acme", {"to": "a@example.com"})
    assert job.run_at > job.created_at
    s = ob.schema
    for statement in (
        f'SELECT * FROM "{s}".jobs',
        f"INSERT INTO \"{s}\".jobs (kind, state, leased_until) VALUES ('k', 'running', now())",
        f"INSERT INTO \"{s}\".jobs (id, kind) VALUES (999999, 'k')",
        f"UPDATE \"{s}\".jobs SET state = 'cancelled', finished_at = now()",
        f'DELETE FROM "{s}".jobs',
        f"SELECT * FROM \"{s}\".lease(ARRAY['k'], NULL, 10, 30, 'forged')",
        f'SELECT * FROM "{s}".job_counts',
    ):
        assert _denied(as_enqueuer, statement), statement


def test_enqueue_is_no_longer_granted_to_everyone(ob, conn, role):
    _, as_stranger = role()
    conn.execute(f'GRANT USAGE ON SCHEMA "{ob.schema}" TO PUBLIC')
    assert _denied(as_stranger, f"SELECT \"{ob.schema}\".enqueue('k')")


def test_a_reader_reads_everything_and_changes_nothing(ob, conn, role):
    name, as_reader = role()
    ob.grant(conn, reader=name)
    job_id = ob.enqueue(conn, "k", {"n": 1})
    with psycopg.connect(as_reader, autocommit=True) as c:
        assert ob.get_job(c, job_id).payload == {"n": 1}
        assert ob.stats(c).totals["pending"] == 1
        assert ob.overview(c) is not None
        assert ob.limits(c) == [] and ob.blocked_keys(c) == []
    s = ob.schema
    for statement in (
        f"UPDATE \"{s}\".jobs SET state = 'cancelled', finished_at = now()",
        f'DELETE FROM "{s}".jobs',
        f"INSERT INTO \"{s}\".jobs (kind) VALUES ('k')",
        f"SELECT \"{s}\".enqueue('k')",
        f"INSERT INTO \"{s}\".limits (scope, name, max_running) VALUES ('kind', 'k', 1)",
    ):
        assert _denied(as_reader, statement), statement


async def test_a_runner_runs_jobs_and_cannot_alter_or_drop_anything(dsn, ob, conn, role):
    name, as_runner = role()
    ob.grant(conn, runner=name)
    ob.set_limit(conn, kind="k", max_running=5)  # the fair lease, with its lock and cursor
    ids = ob.enqueue_many(conn, [NewJob("k", tenant=f"t{i % 3}") for i in range(20)])
    done: list[int] = []
    mux = HandlerMux()

    @mux.register("k")
    async def k(job: Job) -> None:
        done.append(job.id)

    async with running(Runner(mux, dsn=as_runner, outbox=ob)):
        await eventually(lambda: sorted(done) == sorted(ids), timeout=20)
    s = ob.schema
    for statement in (
        f'DROP TABLE "{s}".jobs',
        f'TRUNCATE "{s}".jobs',
        f'ALTER TABLE "{s}".jobs DROP CONSTRAINT jobs_running_has_a_lease',
        f"INSERT INTO \"{s}\".limits (scope, name, max_running) VALUES ('kind', 'x', 1)",
        f'DROP FUNCTION "{s}".enqueue',
    ):
        assert _denied(as_runner, statement), statement


def test_a_running_job_without_a_lease_is_refused(ob, conn):
    with pytest.raises(pg_errors.CheckViolation):
        conn.execute(f"INSERT INTO \"{ob.schema}\".jobs (kind, state) VALUES ('k', 'running')")

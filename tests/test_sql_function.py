"""The SQL function ``<schema>.enqueue``: enqueue from triggers and other languages, same rules."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from conftest import count_jobs
from psycopg import errors as pg_errors

from outbox import JobState


def sql_enqueue(conn: psycopg.Connection, schema: str, args: str, params=()) -> int:
    [(job_id,)] = conn.execute(f'SELECT "{schema}".enqueue({args})', params).fetchall()
    return job_id


def test_sql_enqueue_returns_an_id_and_canonicalizes_the_kind(ob, conn, schema):
    job_id = sql_enqueue(conn, schema, "'Kind', '{\"a\":1}', max_attempts => 3")
    assert isinstance(job_id, int)
    job = ob.get_job(conn, job_id)
    assert (job.kind, job.payload, job.max_attempts) == ("kind", {"a": 1}, 3)
    assert job.state == JobState.PENDING
    assert (job.queue, job.priority, job.unique_key) == ("default", 0, None)


def test_sql_enqueue_takes_named_arguments(ob, conn, schema):
    run_at = datetime(2030, 6, 1, 12, tzinfo=timezone.utc)
    job_id = sql_enqueue(
        conn,
        schema,
        "kind => 'report.build', payload => %s::jsonb, run_at => %s, priority => -3, "
        "queue => ' Reports ', unique_key => 'june', max_attempts => 5",
        ('{"month": 6}', run_at),
    )
    job = ob.get_job(conn, job_id)
    assert job.kind == "report.build"
    assert job.payload == {"month": 6}
    assert job.run_at == run_at
    assert (job.priority, job.queue, job.unique_key, job.max_attempts) == (-3, "reports", "june", 5)


def test_sql_enqueue_defaults(ob, conn, schema):
    with conn.transaction():
        job_id = sql_enqueue(conn, schema, "'k'")
        [(db_now,)] = conn.execute("SELECT now()").fetchall()
    job = ob.get_job(conn, job_id)
    assert job.run_at == db_now == job.created_at  # run_at defaults to now
    assert (job.payload, job.max_attempts, job.priority, job.queue) == ({}, 20, 0, "default")


def test_sql_enqueue_null_payload_is_an_empty_object(ob, conn, schema):
    assert ob.get_job(conn, sql_enqueue(conn, schema, "'k', NULL")).payload == {}


def test_sql_enqueue_in_a_rolled_back_transaction_leaves_no_job(conn, schema):
    with count_jobs(conn, schema) as added, pytest.raises(ZeroDivisionError), conn.transaction():
        sql_enqueue(conn, schema, "'k'")
        1 / 0  # noqa: B018 - roll back
    assert added[0] == 0


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        "''",
        "'   '",
        "NULL",
        "'a b'",
        "'é'",
        "'../x'",
        "repeat('a', 65)",
        "'k', queue => 'no good'",
        "'k', queue => NULL",
        "'k', max_attempts => 0",
        "'k', max_attempts => -1",
        "'k', max_attempts => NULL",
        "'k', priority => 32768",
        "'k', priority => -32769",
        "'k', unique_key => ''",
        "'k', unique_key => repeat('x', 513)",
        "'k', tenant => ''",
        "'k', tenant => repeat('t', 129)",
        "'k', tenant => E'a\\nb'",
        "'k', ordering_key => ''",
        "'k', ordering_key => repeat('o', 513)",
    ],
)
def test_sql_enqueue_refuses_bad_input_with_invalid_parameter_value(conn, schema, args):
    with count_jobs(conn, schema) as added:
        with pytest.raises(pg_errors.InvalidParameterValue) as info:
            conn.execute(f'SELECT "{schema}".enqueue({args})')
        assert info.value.sqlstate == "22023"
        assert info.value.diag.message_primary.startswith("outbox: ")
    assert added[0] == 0


def test_sql_enqueue_refuses_a_payload_over_the_setting_with_program_limit_exceeded(conn, schema):
    conn.execute("SET outbox.max_payload_bytes = 10")
    with count_jobs(conn, schema) as added:
        with pytest.raises(pg_errors.ProgramLimitExceeded) as info:
            sql_enqueue(conn, schema, "'k', '{\"abc\": \"defghijk\"}'")
        assert info.value.sqlstate == "54000"
        assert "10 bytes" in info.value.diag.message_primary
        assert sql_enqueue(conn, schema, "'k', '[1]'")  # small payloads still pass
    assert added[0] == 1


def test_sql_enqueue_payload_limit_defaults_to_one_mebibyte(conn, schema):
    with pytest.raises(pg_errors.ProgramLimitExceeded):
        sql_enqueue(conn, schema, "'k', to_jsonb(repeat('x', 1024 * 1024))")
    assert sql_enqueue(conn, schema, "'k', to_jsonb(repeat('x', 1024 * 1024 - 2))")


def test_sql_enqueue_payload_limit_set_locally_ends_with_the_transaction(conn, schema):
    with conn.transaction():
        conn.execute("SET LOCAL outbox.max_payload_bytes = 10")
        with pytest.raises(pg_errors.ProgramLimitExceeded), conn.transaction():
            sql_enqueue(conn, schema, "'k', '{\"abc\": \"defghijk\"}'")
    # After the transaction the setting reads as '' (not NULL): the default applies again.
    assert sql_enqueue(conn, schema, "'k', '{\"abc\": \"defghijk\"}'")


# -- unique keys ---------------------------------------------------------------------------------


def test_sql_enqueue_with_a_live_unique_key_returns_the_existing_id(conn, schema):
    first = sql_enqueue(conn, schema, "'k', unique_key => 'u'")
    with count_jobs(conn, schema) as added:
        assert sql_enqueue(conn, schema, "'K ', '{\"x\": 1}', unique_key => 'u'") == first
    assert added[0] == 0
    assert sql_enqueue(conn, schema, "'other', unique_key => 'u'") != first


def test_sql_enqueue_unique_key_is_free_again_after_the_job_finishes(conn, schema):
    first = sql_enqueue(conn, schema, "'k', unique_key => 'u'")
    conn.execute(
        f"UPDATE \"{schema}\".jobs SET state = 'succeeded', finished_at = now() WHERE id = %s",
        (first,),
    )
    assert sql_enqueue(conn, schema, "'k', unique_key => 'u'") != first


def test_sql_and_python_enqueue_share_unique_keys(ob, conn, schema):
    from_python = ob.enqueue(conn, "Mail.Send", unique_key="order-7")
    assert sql_enqueue(conn, schema, "'mail.send', unique_key => 'order-7'") == from_python
    from_sql = sql_enqueue(conn, schema, "'sms', unique_key => 'order-7'")
    assert ob.enqueue(conn, "sms", unique_key="order-7") == from_sql


def test_sql_enqueue_from_a_trigger_commits_with_the_business_row(ob, conn, schema):
    conn.execute(f'CREATE TABLE "{schema}".orders (id int PRIMARY KEY, email text)')
    conn.execute(
        f"""
        CREATE FUNCTION "{schema}".order_created() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM "{schema}".enqueue('order.confirm', jsonb_build_object('order', NEW.id),
                                       unique_key => 'order-' || NEW.id);
            RETURN NEW;
        END $$;
        CREATE TRIGGER order_created AFTER INSERT ON "{schema}".orders
            FOR EACH ROW EXECUTE FUNCTION "{schema}".order_created();
        """
    )
    with pytest.raises(ZeroDivisionError), conn.transaction():
        conn.execute(f"INSERT INTO \"{schema}\".orders VALUES (1, 'a@example.com')")
        1 / 0  # noqa: B018 - roll back
    assert ob.list_jobs(conn) == []
    conn.execute(f"INSERT INTO \"{schema}\".orders VALUES (2, 'b@example.com')")
    [job] = ob.list_jobs(conn)
    assert (job.kind, job.payload, job.unique_key) == ("order.confirm", {"order": 2}, "order-2")
    assert job.run_at <= datetime.now(timezone.utc) + timedelta(seconds=5)


def test_sql_enqueue_takes_a_timeout_and_refuses_one_out_of_range(ob, conn, schema):
    job_id = conn.execute(f"SELECT \"{schema}\".enqueue('k', timeout => 1.5)").fetchone()[0]
    assert ob.get_job(conn, job_id).timeout_seconds == 1.5
    for bad in ("0", "-1", "'NaN'", "604801"):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="timeout must be"):
            conn.execute(f"SELECT \"{schema}\".enqueue('k', timeout => {bad})")


def test_sql_enqueue_takes_a_tenant_and_an_ordering_key(ob, conn, schema):
    [(job_id,)] = conn.execute(
        f'SELECT "{schema}".enqueue(\'k\', tenant => \'acme\', ordering_key => \'order-42\')'
    ).fetchall()
    job = ob.get_job(conn, job_id)
    assert (job.tenant, job.ordering_key) == ("acme", "order-42")

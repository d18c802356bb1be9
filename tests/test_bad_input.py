"""Bad input raises a typed error, writes nothing, and leaves the caller's transaction usable.

Every refusal here happens in Python before a statement is sent, so the transaction the caller
is in stays healthy: the next statement in it works.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from conftest import count_jobs

from outbox import (
    ConfigurationError,
    InvalidJobError,
    InvalidKindError,
    InvalidOptionError,
    NewJob,
    Outbox,
    PayloadTooLargeError,
    SchemaNotMigratedError,
    SchemaTooNewError,
    UnknownQueueError,
    UnserializablePayloadError,
)
from outbox.migrations import LATEST_VERSION

UTC = timezone.utc
Call = Callable[[Outbox, Any], Any]


async def done(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


@pytest.fixture(params=["sync", "async"])
def c(request):
    """The test's connection: sync ``conn`` or async ``aconn``, both autocommit."""
    return request.getfixturevalue("conn" if request.param == "sync" else "aconn")


async def assert_refused(
    ob: Outbox, c, conn, error: type[Exception], call: Call, *, count_in: str | None = None
) -> Exception:
    """Run ``call`` in a transaction: it raises ``error``, adds no job, the transaction lives."""
    with count_jobs(conn, count_in or ob.schema) as added:
        async with contextlib.AsyncExitStack() as stack:
            if isinstance(c, psycopg.AsyncConnection):
                await stack.enter_async_context(c.transaction())
            else:
                stack.enter_context(c.transaction())
            with pytest.raises(error) as info:
                await done(call(ob, c))
            # The transaction is usable: a following statement runs, and it still commits.
            cursor = await done(c.execute("SELECT 1"))
            assert await done(cursor.fetchone()) == (1,)
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert added[0] == 0
    assert type(info.value) is error, f"expected exactly {error.__name__}, got {info.value!r}"
    return info.value


def enqueue(*args: Any, **kwargs: Any) -> Call:
    return lambda ob, c: ob.enqueue(c, *args, **kwargs)


def with_limit(limit: int, *args: Any, **kwargs: Any) -> Call:
    return lambda ob, c: Outbox(schema=ob.schema, max_payload_bytes=limit).enqueue(
        c, *args, **kwargs
    )


def in_queues(queues: set[str], *args: Any, **kwargs: Any) -> Call:
    return lambda ob, c: Outbox(schema=ob.schema, queues=queues).enqueue(c, *args, **kwargs)


NAIVE = datetime(2030, 1, 1)  # no tzinfo: the point of the test

CASES: dict[str, tuple[type[Exception], Call]] = {
    # kinds: 1 to 64 of a-z 0-9 . _ -, starting with a letter or digit (after trim and lower)
    "kind-empty": (InvalidKindError, enqueue("")),
    "kind-whitespace": (InvalidKindError, enqueue("  \t ")),
    "kind-65-chars": (InvalidKindError, enqueue("a" * 65)),
    "kind-space-inside": (InvalidKindError, enqueue("a b")),
    "kind-non-ascii": (InvalidKindError, enqueue("é")),
    "kind-path": (InvalidKindError, enqueue("../x")),
    "kind-slash": (InvalidKindError, enqueue("a/b")),
    "kind-leading-dot": (InvalidKindError, enqueue(".hidden")),
    "kind-leading-dash": (InvalidKindError, enqueue("-x")),
    "kind-nul": (InvalidKindError, enqueue("a\x00")),
    "kind-newline-inside": (InvalidKindError, enqueue("a\nb")),
    "kind-int": (InvalidKindError, enqueue(42)),
    "kind-none": (InvalidKindError, enqueue(None)),
    "kind-bytes": (InvalidKindError, enqueue(b"email")),
    "kind-list": (InvalidKindError, enqueue(["email"])),
    # payloads: JSON that jsonb can hold, within the size limit
    "payload-object": (UnserializablePayloadError, enqueue("k", object())),
    "payload-set": (UnserializablePayloadError, enqueue("k", {1, 2})),
    "payload-nested-set": (UnserializablePayloadError, enqueue("k", {"a": [{"b": {1}}]})),
    "payload-bytes": (UnserializablePayloadError, enqueue("k", {"a": b"raw"})),
    "payload-int-key": (UnserializablePayloadError, enqueue("k", {1: "a"})),
    "payload-int-over-64-bits": (UnserializablePayloadError, enqueue("k", {"n": 2**64})),
    "payload-lone-surrogate": (UnserializablePayloadError, enqueue("k", {"s": "\ud800"})),
    "payload-nul-in-value": (UnserializablePayloadError, enqueue("k", {"s": "a\u0000b"})),
    "payload-nul-in-key": (UnserializablePayloadError, enqueue("k", {"\u0000": 1})),
    "payload-nul-after-backslash": (UnserializablePayloadError, enqueue("k", ["\\\u0000"])),
    "payload-over-limit": (PayloadTooLargeError, with_limit(100, "k", {"x": "y" * 93})),
    "payload-over-default-limit": (PayloadTooLargeError, enqueue("k", "x" * (1024 * 1024))),
    # run_at and delay
    "delay-negative": (InvalidOptionError, enqueue("k", delay=-1)),
    "delay-negative-timedelta": (InvalidOptionError, enqueue("k", delay=timedelta(seconds=-1))),
    "delay-nan": (InvalidOptionError, enqueue("k", delay=math.nan)),
    "delay-infinite": (InvalidOptionError, enqueue("k", delay=math.inf)),
    "delay-beyond-timestamps": (InvalidOptionError, enqueue("k", delay=1e13)),
    "delay-timedelta-max": (InvalidOptionError, enqueue("k", delay=timedelta.max)),
    "delay-str": (InvalidOptionError, enqueue("k", delay="5")),
    "delay-bool": (InvalidOptionError, enqueue("k", delay=True)),
    "run-at-and-delay": (
        InvalidOptionError,
        enqueue("k", run_at=datetime(2030, 1, 1, tzinfo=UTC), delay=5),
    ),
    "run-at-naive": (InvalidOptionError, enqueue("k", run_at=NAIVE)),
    "run-at-date": (InvalidOptionError, enqueue("k", run_at=date(2030, 1, 1))),
    "run-at-str": (InvalidOptionError, enqueue("k", run_at="2030-01-01T00:00:00Z")),
    # max_attempts: an int from 1 to 2**31 - 1
    "max-attempts-0": (InvalidOptionError, enqueue("k", max_attempts=0)),
    "max-attempts-negative": (InvalidOptionError, enqueue("k", max_attempts=-1)),
    "max-attempts-true": (InvalidOptionError, enqueue("k", max_attempts=True)),
    "max-attempts-str": (InvalidOptionError, enqueue("k", max_attempts="3")),
    "max-attempts-float": (InvalidOptionError, enqueue("k", max_attempts=3.0)),
    "max-attempts-over-int4": (InvalidOptionError, enqueue("k", max_attempts=2**31)),
    # priority: a smallint
    "priority-too-high": (InvalidOptionError, enqueue("k", priority=32768)),
    "priority-too-low": (InvalidOptionError, enqueue("k", priority=-32769)),
    "priority-bool": (InvalidOptionError, enqueue("k", priority=True)),
    "priority-str": (InvalidOptionError, enqueue("k", priority="1")),
    "priority-none": (InvalidOptionError, enqueue("k", priority=None)),
    # queues
    "queue-undeclared": (UnknownQueueError, in_queues({"a", "b"}, "k", queue="c")),
    "queue-default-undeclared": (UnknownQueueError, in_queues({"a", "b"}, "k")),
    "queue-invalid-name": (UnknownQueueError, enqueue("k", queue="a b")),
    "queue-empty": (UnknownQueueError, enqueue("k", queue="")),
    "queue-int": (UnknownQueueError, enqueue("k", queue=1)),
    # unique keys: a non-empty str of at most 512 bytes of UTF-8, without NUL
    "unique-key-empty": (InvalidOptionError, enqueue("k", unique_key="")),
    "unique-key-513-bytes": (InvalidOptionError, enqueue("k", unique_key="x" * 513)),
    "unique-key-514-bytes-of-utf8": (InvalidOptionError, enqueue("k", unique_key="é" * 257)),
    "unique-key-int": (InvalidOptionError, enqueue("k", unique_key=7)),
    "unique-key-nul": (InvalidOptionError, enqueue("k", unique_key="a\x00b")),
    # if_exists is "return" or "raise"
    "if-exists-unknown": (ConfigurationError, enqueue("k", unique_key="u", if_exists="ignore")),
    # enqueue_many: one bad job refuses the whole call
    "many-one-bad-kind": (
        InvalidKindError,
        lambda ob, c: ob.enqueue_many(c, [NewJob("ok"), NewJob("ok"), NewJob("not ok")]),
    ),
    "many-one-bad-payload": (
        UnserializablePayloadError,
        lambda ob, c: ob.enqueue_many(c, [NewJob("ok"), NewJob("ok", object())]),
    ),
    "many-not-a-newjob": (
        InvalidOptionError,
        lambda ob, c: ob.enqueue_many(c, [NewJob("ok"), {"kind": "ok"}]),
    ),
    # reads
    "get-job-str-id": (InvalidOptionError, lambda ob, c: ob.get_job(c, "1")),
    "list-unknown-state": (InvalidOptionError, lambda ob, c: ob.list_jobs(c, state="done")),
    "list-limit-0": (InvalidOptionError, lambda ob, c: ob.list_jobs(c, limit=0)),
    "list-limit-5000": (InvalidOptionError, lambda ob, c: ob.list_jobs(c, limit=5000)),
    "list-limit-str": (InvalidOptionError, lambda ob, c: ob.list_jobs(c, limit="10")),
    "list-after-id-str": (InvalidOptionError, lambda ob, c: ob.list_jobs(c, after_id="9")),
    "list-invalid-kind": (InvalidOptionError, lambda ob, c: ob.list_jobs(c, kind="a b")),
    "list-invalid-queue": (InvalidOptionError, lambda ob, c: ob.list_jobs(c, queue="")),
}


@pytest.mark.parametrize(("error", "call"), list(CASES.values()), ids=list(CASES))
async def test_bad_input_raises_typed_error_writes_nothing_and_keeps_transaction(
    ob, c, conn, error, call
):
    exc = await assert_refused(ob, c, conn, error, call)
    if isinstance(exc, InvalidJobError):
        assert isinstance(exc, ValueError)  # bad input is also a ValueError
    assert str(exc)  # never an empty message


async def test_bad_input_after_a_good_job_keeps_the_good_job(ob, c, conn, schema):
    with count_jobs(conn, schema) as added:
        if isinstance(c, psycopg.AsyncConnection):
            async with c.transaction():
                await ob.enqueue(c, "good")
                with pytest.raises(InvalidKindError):
                    await ob.enqueue(c, "bad kind")
        else:
            with c.transaction():
                ob.enqueue(c, "good")
                with pytest.raises(InvalidKindError):
                    ob.enqueue(c, "bad kind")
    assert added[0] == 1


def test_kind_is_trimmed_and_lowercased(ob, conn):
    assert ob.get_job(conn, ob.enqueue(conn, "Email.Send ", {})).kind == "email.send"
    assert ob.get_job(conn, ob.enqueue(conn, "\tA_b-1.2\n")).kind == "a_b-1.2"
    assert ob.get_job(conn, ob.enqueue(conn, "x" * 64)).kind == "x" * 64


def test_kind_error_names_the_kind_safely(ob, conn):
    with pytest.raises(InvalidKindError) as info:
        ob.enqueue(conn, "bad\nkind\x00" + "z" * 500)
    message = str(info.value)
    assert "\n" not in message and "\x00" not in message
    assert len(message) < 400


def test_payload_error_says_what_to_do(schema, conn):
    with pytest.raises(PayloadTooLargeError) as info:
        Outbox(schema=schema, max_payload_bytes=100).enqueue(conn, "k", {"x": "y" * 500})
    assert "100" in str(info.value) and "reference" in str(info.value)
    with pytest.raises(UnserializablePayloadError) as info:
        Outbox(schema=schema).enqueue(conn, "k", object())
    assert "pydantic" in str(info.value)


@pytest.mark.parametrize(
    ("jobs", "index", "error"),
    [
        ([NewJob("ok"), NewJob("ok"), NewJob("Bad Kind")], 2, InvalidKindError),
        ([NewJob("ok", max_attempts=0), NewJob("ok")], 0, InvalidOptionError),
        ([NewJob("ok")] * 5 + [NewJob("ok", {"s": "\x00"})], 5, UnserializablePayloadError),
        ([NewJob("ok"), "ok"], 1, InvalidOptionError),
    ],
)
def test_enqueue_many_error_names_the_index_of_the_bad_job(ob, conn, schema, jobs, index, error):
    with count_jobs(conn, schema) as added, pytest.raises(error) as info:
        ob.enqueue_many(conn, jobs)
    assert added[0] == 0
    assert f"job {index}" in str(info.value)


def test_enqueue_many_with_one_bad_job_among_many_writes_none(ob, conn, schema):
    jobs = [NewJob("ok", {"i": i}) for i in range(10_000)]
    jobs[7_777] = NewJob("ok", delay=-5)
    with count_jobs(conn, schema) as added, pytest.raises(InvalidOptionError, match="job 7777"):
        ob.enqueue_many(conn, jobs)
    assert added[0] == 0


# -- not a connection ----------------------------------------------------------------------------

NOT_CONNECTIONS = [
    None,
    object(),
    "postgresql://postgres@localhost/db",
    42,
    pytest.param(type("FakeConnection", (), {"execute": lambda *a: None})(), id="fake"),
]
OPERATIONS: dict[str, Call] = {
    "enqueue": lambda ob, c: ob.enqueue(c, "k"),
    "enqueue_many": lambda ob, c: ob.enqueue_many(c, [NewJob("k")]),
    "get_job": lambda ob, c: ob.get_job(c, 1),
    "list_jobs": lambda ob, c: ob.list_jobs(c),
    "stats": lambda ob, c: ob.stats(c),
    "migrate": lambda ob, c: ob.migrate(c),
}


@pytest.mark.parametrize("call", list(OPERATIONS.values()), ids=list(OPERATIONS))
@pytest.mark.parametrize("not_a_connection", NOT_CONNECTIONS)
def test_not_a_connection_raises_configuration_error(call, not_a_connection):
    with pytest.raises(ConfigurationError, match="psycopg Connection or AsyncConnection"):
        call(Outbox(schema="never_touched"), not_a_connection)


# -- bad configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    ["Bad-Name", "", "1abc", "a b", "a" * 49, 'x"; DROP TABLE y; --', "pg_catalog", "pg_x", None],
)
def test_invalid_schema_name_raises_configuration_error(schema):
    with pytest.raises(ConfigurationError, match="schema name"):
        Outbox(schema=schema)


@pytest.mark.parametrize(
    "options",
    [
        {"max_payload_bytes": 1},
        {"max_payload_bytes": "100"},
        {"queues": set()},
        {"queues": {"ok", "not ok"}},
        {"queues": "emails"},  # a str is a collection of letters, not a queue
    ],
    ids=["tiny-payload-limit", "str-payload-limit", "no-queues", "bad-queue", "str-queues"],
)
def test_invalid_outbox_options_raise_configuration_error(options):
    with pytest.raises(ConfigurationError):
        Outbox(**options)


# -- the schema is missing, behind, or ahead -----------------------------------------------------


async def test_enqueue_on_a_schema_that_does_not_exist_says_to_migrate(c, conn, schema):
    ob = Outbox(schema="never_migrated_here")
    exc = await assert_refused(ob, c, conn, SchemaNotMigratedError, enqueue("k"), count_in=schema)
    assert "outbox migrate" in str(exc)
    assert "never_migrated_here" in str(exc)


def test_enqueue_on_a_schema_with_no_recorded_migrations_says_to_migrate(dsn, conn, schema):
    conn.execute(f'DELETE FROM "{schema}".migrations')  # as if no migration ever ran
    # A fresh connection: the schema check is cached per connection.
    with (
        psycopg.connect(dsn, autocommit=True) as fresh,
        pytest.raises(SchemaNotMigratedError, match="outbox migrate"),
    ):
        Outbox(schema=schema).enqueue(fresh, "k")


def _make_too_new(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(f"INSERT INTO \"{schema}\".migrations (version, name) VALUES (999, 'future')")


async def test_enqueue_on_a_schema_migrated_by_a_newer_outbox_raises_schema_too_new(
    dsn, conn, schema
):
    _make_too_new(conn, schema)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as fresh:
        with pytest.raises(SchemaTooNewError, match="upgrade"):
            await Outbox(schema=schema).enqueue(fresh, "k")
    with psycopg.connect(dsn, autocommit=True) as fresh:
        exc = await assert_refused(
            Outbox(schema=schema), fresh, conn, SchemaTooNewError, enqueue("k")
        )
    assert "999" in str(exc)


def test_migrate_on_a_schema_migrated_by_a_newer_outbox_raises_schema_too_new(conn, schema):
    _make_too_new(conn, schema)
    with pytest.raises(SchemaTooNewError, match="999"):
        Outbox(schema=schema).migrate(conn)
    versions = conn.execute(f'SELECT version FROM "{schema}".migrations ORDER BY 1').fetchall()
    assert versions == [(v,) for v in range(1, LATEST_VERSION + 1)] + [(999,)]


def test_schema_check_is_cached_per_connection(ob, dsn, conn, schema):
    ob.enqueue(conn, "k")  # this connection has checked the schema once
    _make_too_new(conn, schema)
    ob.enqueue(conn, "k")  # not checked again on the same connection
    with psycopg.connect(dsn, autocommit=True) as fresh, pytest.raises(SchemaTooNewError):
        ob.enqueue(fresh, "k")

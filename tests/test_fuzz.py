"""A bounded fuzz pass (hypothesis): whatever it is given, enqueue (Python and SQL) and the
dashboard answer with a typed refusal or a result, write nothing on a refusal, and leave the
caller's transaction usable. OUTBOX_FUZZ_EXAMPLES sets the budget (default 150 per test)."""

from __future__ import annotations

import contextlib
import os
from datetime import timezone

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from psycopg import errors as pg_errors

from outbox import InvalidJobError, NewJob
from outbox.dashboard import create_app

EXAMPLES = int(os.environ.get("OUTBOX_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

texts = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["", " ", "k", "A.b", "\x00", "\ud800", "a" * 65, "é", "../x", "*", "\n"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
anything = st.one_of(
    texts, st.integers(), st.floats(), st.none(), st.booleans(), st.binary(max_size=8)
)
options = st.fixed_dictionaries(
    {},
    optional={
        "priority": st.one_of(st.integers(), anything),
        "max_attempts": st.one_of(st.integers(), anything),
        "queue": st.one_of(texts, anything),
        "unique_key": st.one_of(texts, anything),
        "tenant": st.one_of(texts, anything),
        "ordering_key": st.one_of(texts, anything),
        "delay": st.one_of(st.floats(), st.integers(), anything),
        "timeout": st.one_of(st.floats(), anything),
        "run_at": st.one_of(
            st.datetimes(timezones=st.just(timezone.utc)),
            st.datetimes(),
            anything,
        ),
    },
)


@FUZZ
@given(kind=st.one_of(texts, anything), payload=st.one_of(json_values, anything), opts=options)
def test_enqueue_returns_an_id_or_a_typed_refusal(ob, conn, kind, payload, opts):
    opts = {k: v for k, v in opts.items() if not (k == "delay" and "run_at" in opts)}
    with conn.transaction(force_rollback=True):  # each example leaves nothing behind
        before = ob.count(conn, state="pending")
        try:
            job_id = ob.enqueue(conn, kind, payload, **opts)
        except InvalidJobError:
            assert ob.count(conn, state="pending") == before  # nothing written, still usable
        else:
            assert ob.get_job(conn, job_id) is not None
        with contextlib.suppress(InvalidJobError):
            ob.enqueue_many(conn, [NewJob(kind, payload, **opts)])


@FUZZ
@given(
    kind=texts,
    payload=st.one_of(st.none(), st.text(max_size=30)),
    queue=texts,
    unique_key=st.one_of(st.none(), texts),
    tenant=st.one_of(st.none(), texts),
    priority=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    max_attempts=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    delay=st.one_of(st.none(), st.floats()),
)
def test_the_sql_function_returns_an_id_or_invalid_parameter_value(
    ob, conn, kind, payload, queue, unique_key, tenant, priority, max_attempts, delay
):
    args = [kind, payload, queue, unique_key, tenant]
    if any(isinstance(a, str) and ("\x00" in a or "\ud800" in a) for a in args):
        return  # the driver refuses these before Postgres sees them
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(
                f'SELECT "{ob.schema}".enqueue(%s, to_jsonb(%s::text), max_attempts => %s,'
                " priority => %s, queue => %s, unique_key => %s, tenant => %s, delay => %s)",
                (kind, payload, max_attempts, priority, queue, unique_key, tenant, delay),
            )
    except (pg_errors.InvalidParameterValue, pg_errors.ProgramLimitExceeded) as exc:
        assert exc.diag.message_primary.startswith("outbox: "), exc
    conn.execute("SELECT 1")  # the connection is fine


@pytest.fixture
async def dashboard(dsn, ob):
    app = create_app(dsn=dsn, outbox=ob, allowed_hosts=["dash.test"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://dash.test"
    ) as http:
        yield http
    await app.state.database.close()


@FUZZ
@given(
    path=st.sampled_from(["/", "/jobs", "/runners", "/flow", "/jobs/{}"]),
    params=st.dictionaries(
        st.sampled_from(["state", "kind", "queue", "after", "done", "x"]),
        st.text(max_size=30).filter(lambda t: "\x00" not in t),
        max_size=4,
    ),
    job=st.text(max_size=25).filter(lambda t: "/" not in t and "?" not in t and "#" not in t),
)
async def test_no_dashboard_request_gets_a_server_error(dashboard, path, params, job):
    try:
        response = await dashboard.get(path.format(job), params=params)
    except httpx.InvalidURL:
        assume(False)  # a URL no client could send
    # 307: /jobs/ redirects to /jobs.
    assert response.status_code in (200, 307, 400, 404), (path, params, response.text[:300])

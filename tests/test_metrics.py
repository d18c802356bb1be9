"""Prometheus metrics: a real runner, a real scrape over HTTP, and hostile rows in the table."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import ConnectionPool

from outbox import Backoff, HandlerMux, Job, JobEvent, NewJob, PermanentError, Runner, queries
from outbox.metrics import PrometheusObserver, QueueCollector, serve_metrics
from outbox.safety import LABEL_MAX_LENGTH
from tests.helpers import eventually, free_port, running, states

FAST = Backoff(base=0.01, cap=0.02)
LABEL = re.compile(rf"[a-z0-9_.-]{{1,{LABEL_MAX_LENGTH}}}")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def label_values(samples: Samples) -> set[str]:
    # `le` holds bucket bounds ("0.005", "+Inf"): prometheus_client's, not ours.
    return {v for _, labels in samples for k, v in labels if k != "le"}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics_url(registry: CollectorRegistry) -> Iterator[str]:
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(5)


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(url, timeout=10)
    assert response.status_code == 200
    return parse(response.text)


async def test_scraped_metrics_have_series_for_each_outcome_and_the_queue(
    dsn, ob, conn, registry, metrics_url
):
    registry.register(QueueCollector(dsn, schema=ob.schema, cache_seconds=0))
    mux = HandlerMux()
    release = asyncio.Event()
    calls: dict[int, int] = {}

    @mux.register("ok")
    async def ok(job: Job) -> None:
        pass

    @mux.register("flaky")
    async def flaky(job: Job) -> None:
        calls[job.id] = calls.get(job.id, 0) + 1
        if calls[job.id] == 1:
            raise RuntimeError("first attempt fails")

    @mux.register("doomed")
    async def doomed(job: Job) -> None:
        raise RuntimeError("always fails")

    @mux.register("bad")
    async def bad(job: Job) -> None:
        raise PermanentError("never retry")

    @mux.register("blocker")
    async def blocker(job: Job) -> None:
        await release.wait()

    @mux.register("later")
    async def later(job: Job) -> None:
        pass

    ob.enqueue_many(
        conn,
        [NewJob("ok") for _ in range(3)]
        + [NewJob("flaky"), NewJob("doomed", max_attempts=2), NewJob("bad")],
    )
    ob.enqueue(conn, "later", delay=3600)  # scheduled
    ob.enqueue(conn, "orphan", queue="mail")  # no handler: waits
    ob.enqueue(conn, "blocker")  # runs until released

    runner = Runner(
        mux,
        dsn=dsn,
        outbox=ob,
        poll_interval=0.1,
        backoff=FAST,
        observer=PrometheusObserver(registry=registry),
    )
    async with running(runner):
        await eventually(
            lambda: (
                states(dsn, ob.schema)
                == {"succeeded": 4, "failed": 1, "discarded": 1, "running": 1, "pending": 2}
            )
        )
        samples = await scrape(metrics_url)
        release.set()
        await eventually(lambda: states(dsn, ob.schema).get("succeeded") == 5)

    jobs = "outbox_jobs_total"
    assert value(samples, jobs, kind="ok", queue="default", outcome="succeeded") == 3
    assert value(samples, jobs, kind="flaky", queue="default", outcome="retried") == 1
    assert value(samples, jobs, kind="flaky", queue="default", outcome="succeeded") == 1
    assert value(samples, jobs, kind="doomed", queue="default", outcome="retried") == 1
    assert value(samples, jobs, kind="doomed", queue="default", outcome="failed") == 1
    assert value(samples, jobs, kind="bad", queue="default", outcome="discarded") == 1
    assert value(samples, jobs, kind="blocker", queue="default", outcome="succeeded") is None

    count = "outbox_job_duration_seconds_count"
    assert value(samples, count, kind="ok", outcome="succeeded") == 3
    assert value(samples, count, kind="doomed", outcome="failed") == 1
    assert (
        value(
            samples, "outbox_job_duration_seconds_bucket", kind="ok", outcome="succeeded", le="+Inf"
        )
        == 3
    )
    assert value(samples, "outbox_job_lag_seconds_count", kind="flaky") == 2
    assert value(samples, "outbox_job_lag_seconds_count", kind="ok") == 3
    assert value(samples, "outbox_job_lag_seconds_sum", kind="ok") >= 0

    depth = "outbox_queue_depth"
    assert value(samples, depth, queue="mail", kind="orphan", state="pending") == 1
    assert value(samples, depth, queue="mail", kind="orphan", state="scheduled") == 0
    assert value(samples, depth, queue="default", kind="later", state="scheduled") == 1
    assert value(samples, depth, queue="default", kind="later", state="pending") == 0
    assert value(samples, depth, queue="default", kind="blocker", state="running") == 1
    assert value(samples, depth, queue="default", kind="ok", state="pending") is None  # all done
    age = value(samples, "outbox_oldest_pending_age_seconds", queue="mail", kind="orphan")
    assert age is not None and 0 <= age < 60
    assert (
        value(samples, "outbox_oldest_pending_age_seconds", queue="default", kind="later") is None
    )
    assert value(samples, "outbox_collector_up") == 1

    # After the run, the same scrape sees the blocker's end and a queue without running jobs.
    after = await scrape(metrics_url)
    assert value(after, jobs, kind="blocker", queue="default", outcome="succeeded") == 1
    assert value(after, depth, queue="default", kind="blocker", state="running") is None


HOSTILE = [
    "<script>alert(1)</script>" + "X" * 500 + "\n",
    'a"b\\c}{',
    "kind\nforged_metric 1",
    "ÜNÏCÖDE-κind-日本語",
    "   ",
    "\u2028\x01\x7f",  # Postgres text holds no NUL; the observer test below sends one
    "UPPER.Case_ok-1",
]


def drop_name_checks(conn: psycopg.Connection, schema: str) -> None:
    """Let raw SQL write what the CHECK constraints refuse: a hand-edited or foreign table."""
    conn.execute(
        f'ALTER TABLE "{schema}".jobs DROP CONSTRAINT jobs_kind_is_a_name,'
        " DROP CONSTRAINT jobs_queue_is_a_name"
    )


async def test_every_scraped_label_is_bounded_even_for_hostile_rows(
    dsn, ob, conn, registry, metrics_url
):
    registry.register(QueueCollector(dsn, schema=ob.schema, cache_seconds=0))
    observer = PrometheusObserver(registry=registry)
    drop_name_checks(conn, ob.schema)
    for text in HOSTILE:
        conn.execute(
            f'INSERT INTO "{ob.schema}".jobs (kind, queue, payload) VALUES (%s, %s, %s)',
            (text, text, "{}"),
        )
        conn.execute(
            f'INSERT INTO "{ob.schema}".jobs (kind, queue, payload, run_at)'
            " VALUES (%s, 'default', '{}', now() + interval '1 hour')",
            (text,),
        )
        # The observer's own defence: a JobEvent built without job_event's bounding.
        observer(JobEvent(kind=text, queue=text, outcome="failed", duration=0.1, lag=0.2))
    observer(JobEvent(kind="nul\x00kind", queue="q\x00", outcome="failed", duration=0, lag=0))

    samples = await scrape(metrics_url)
    assert value(samples, "outbox_collector_up") == 1
    values = label_values(samples)
    assert values, "expected labelled series"
    assert all(LABEL.fullmatch(v) for v in values), [v for v in values if not LABEL.fullmatch(v)]
    # Nothing got lost when hostile names collapse into one label: all jobs are counted.
    depth = [
        v for (name, labels), v in samples.items()
        if name == "outbox_queue_depth" and ("state", "pending") in labels
    ]  # fmt: skip
    scheduled = [
        v for (name, labels), v in samples.items()
        if name == "outbox_queue_depth" and ("state", "scheduled") in labels
    ]  # fmt: skip
    assert sum(depth) == len(HOSTILE)
    assert sum(scheduled) == len(HOSTILE)
    assert (
        value(
            samples,
            "outbox_queue_depth",
            queue="upper.case_ok-1",
            kind="upper.case_ok-1",
            state="pending",
        )
        == 1
    )
    assert (
        value(samples, "outbox_queue_depth", queue="unknown", kind="unknown", state="pending")
        == 2  # "   " and the control characters
    )


@settings(max_examples=200, deadline=None, database=None)
@given(
    kind=st.text(),
    queue=st.text(),
    duration=st.floats(allow_nan=False),
    lag=st.floats(allow_nan=False),
)
def test_observer_labels_are_bounded_for_any_text(kind, queue, duration, lag):
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry=registry)
    observer(JobEvent(kind=kind, queue=queue, outcome="retried", duration=duration, lag=lag))
    samples = parse(generate_latest(registry).decode())
    assert all(LABEL.fullmatch(v) for v in label_values(samples))
    assert sum(v for (name, _), v in samples.items() if name == "outbox_jobs_total") == 1


def test_a_dead_database_gives_collector_up_0_and_no_exception(registry):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    collector = QueueCollector(dead, schema="outbox", cache_seconds=0, timeout=2)
    registry.register(collector)
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "outbox_collector_up") == 0
    assert not [key for key in samples if key[0] != "outbox_collector_up"]


def test_a_missing_schema_gives_collector_up_0(dsn, registry):
    registry.register(QueueCollector(dsn, schema="no_such_schema", cache_seconds=0))
    assert value(parse(generate_latest(registry).decode()), "outbox_collector_up") == 0


def test_the_collector_caches_its_query_for_cache_seconds(dsn, ob, conn):
    cached = QueueCollector(dsn, schema=ob.schema, cache_seconds=60)
    fresh = QueueCollector(dsn, schema=ob.schema, cache_seconds=0)

    def pending(collector: QueueCollector) -> float:
        registry = CollectorRegistry()
        registry.register(collector)
        samples = parse(generate_latest(registry).decode())
        return value(samples, "outbox_queue_depth", queue="default", kind="k", state="pending") or 0

    assert pending(cached) == pending(fresh) == 0
    ob.enqueue(conn, "k")
    assert pending(fresh) == 1
    assert pending(cached) == 0  # still the first answer


def test_concurrent_scrapes_share_one_query(dsn, ob, conn):
    ob.enqueue(conn, "k")
    collector = QueueCollector(dsn, schema=ob.schema, cache_seconds=60)
    reads = 0
    original = collector._read

    def counting_read(now: float):
        nonlocal reads
        reads += 1
        return original(now)

    collector._read = counting_read  # type: ignore[method-assign]
    results: list[int] = []

    def scrape_once() -> None:
        results.append(len(list(collector.collect())))

    threads = [threading.Thread(target=scrape_once) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [5] * 8  # depth, oldest, runners, unhandled, up
    assert reads == 1


def test_the_collector_reads_through_a_sync_pool(dsn, ob, conn):
    ob.enqueue(conn, "k", queue="mail")
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        registry = CollectorRegistry()
        registry.register(QueueCollector(pool=pool, schema=ob.schema, cache_seconds=0))
        samples = parse(generate_latest(registry).decode())
    assert value(samples, "outbox_queue_depth", queue="mail", kind="k", state="pending") == 1
    assert value(samples, "outbox_collector_up") == 1


def test_registering_the_collector_does_not_query(registry):
    # describe() gives the names without a query: registering works with the database down.
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    collector = QueueCollector(dead, cache_seconds=0)
    CollectorRegistry(auto_describe=True).register(collector)
    assert collector._snapshot is None


def test_the_queue_query_reads_only_the_partial_indexes(dsn, ob, conn):
    # Finished rows are nearly all of a real table: the query must not read them.
    conn.execute(
        f"""INSERT INTO "{ob.schema}".jobs (kind, state, finished_at)
            SELECT 'k' || (i % 10), 'succeeded', now() FROM generate_series(1, 20000) i"""
    )
    ob.enqueue_many(conn, [NewJob(f"k{i % 10}") for i in range(30)])
    conn.execute(f'ANALYZE "{ob.schema}".jobs')
    plan = "\n".join(
        row[0] for row in conn.execute(b"EXPLAIN " + queries.query("queue_depth", ob.schema))
    )
    assert "Seq Scan" not in plan, plan
    assert "jobs_ready_idx" in plan and "jobs_running_kind_idx" in plan, plan


def test_serve_metrics_serves_the_registry_over_http(registry):
    observer = PrometheusObserver(registry=registry)
    observer(JobEvent(kind="served", queue="default", outcome="succeeded", duration=0.01, lag=0.0))
    port = free_port()
    serve_metrics(port, registry=registry)
    samples = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
    assert (
        value(samples, "outbox_jobs_total", kind="served", queue="default", outcome="succeeded")
        == 1
    )


def test_a_second_observer_on_one_registry_is_refused(registry):
    PrometheusObserver(registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        PrometheusObserver(registry=registry)
    PrometheusObserver(registry=registry, namespace="other")  # another namespace is fine


def test_the_collector_counts_live_runners_and_jobs_nobody_handles(dsn, ob, conn):

    ob.enqueue(conn, "emails.sned")
    ob.enqueue(conn, "emails.sned")
    ob.enqueue(conn, "emails.send")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            f'INSERT INTO "{ob.schema}".runners (id, host, pid, version, kinds, concurrency)'
            " VALUES ('r1', 'h', 1, '0.1', ARRAY['emails.send'], 10)"
        )
    registry = CollectorRegistry()
    registry.register(QueueCollector(dsn, schema=ob.schema, cache_seconds=0))
    assert registry.get_sample_value("outbox_runners") == 1
    assert registry.get_sample_value("outbox_unhandled_jobs", {"kind": "emails.sned"}) == 2
    assert registry.get_sample_value("outbox_unhandled_jobs", {"kind": "emails.send"}) is None

"""Prometheus metrics: what the runner did (an observer) and what waits in the table (a collector).

Needs the ``prometheus`` extra (``pip install 'outbox-runner[prometheus]'``); ``import outbox``
never imports this module. Every label value passes through ``safe_label``, including values that
``JobEvent`` already bounded and values read from the table: a row written by hand with raw SQL
must not be able to forge a series or grow the scrape without bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg_pool import ConnectionPool

from outbox import queries
from outbox.db import check_dsn, run
from outbox.observe import JobEvent, get_logger
from outbox.queries import check_schema_name
from outbox.runners import list_runners_plan, unhandled_kinds_plan
from outbox.safety import safe_failure_message, safe_label

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client import start_http_server as _start_http_server
    from prometheus_client.core import GaugeMetricFamily
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "outbox.metrics needs prometheus-client: pip install 'outbox-runner[prometheus]'"
    ) from exc

__all__ = [
    "DURATION_BUCKETS",
    "LAG_BUCKETS",
    "PrometheusObserver",
    "QueueCollector",
    "serve_metrics",
]

DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""Handler durations from 5 ms (a cache write) to 5 minutes (a report); slower lands in +Inf."""

LAG_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
"""Lease lag from 5 ms (an idle runner woken by NOTIFY) to an hour (a backlog worth paging on)."""

DEFAULT_CACHE_SECONDS: Final = 5.0
"""How long a QueueCollector reuses its last query: scrapers many or frequent cost one query."""

DEFAULT_QUERY_TIMEOUT: Final = 5.0
"""Seconds a QueueCollector waits to connect and to query: under Prometheus' 10 s scrape timeout."""


def _queue_query(schema: str) -> bytes:
    return queries.query("queue_depth", schema)


class PrometheusObserver:
    """A runner observer that counts attempts and times them.

    ``Runner(mux, dsn=…, observer=PrometheusObserver())`` exports, with the default namespace:

    - ``outbox_jobs_total{kind,queue,outcome}``: attempts by how they ended;
    - ``outbox_job_duration_seconds{kind,outcome}``: handler time, start to end;
    - ``outbox_job_lag_seconds{kind}``: from a job's ``run_at`` to its handler's start.

    The metrics are created in ``registry`` (prometheus_client's global REGISTRY by default), so
    one registry holds one PrometheusObserver of a namespace; share it between runners.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, namespace: str = "outbox"
    ) -> None:
        registry = REGISTRY if registry is None else registry
        self.jobs = Counter(
            "jobs",
            "Job attempts by kind, queue and outcome.",
            ["kind", "queue", "outcome"],
            namespace=namespace,
            registry=registry,
        )
        self.duration = Histogram(
            "job_duration_seconds",
            "Seconds from a handler's start to its end, by kind and outcome.",
            ["kind", "outcome"],
            namespace=namespace,
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.lag = Histogram(
            "job_lag_seconds",
            "Seconds from a job's run_at to its handler's start, by kind.",
            ["kind"],
            namespace=namespace,
            registry=registry,
            buckets=LAG_BUCKETS,
        )

    def __call__(self, event: JobEvent) -> None:
        """Record one attempt's end."""
        kind, queue, outcome = (
            safe_label(event.kind),
            safe_label(event.queue),
            safe_label(event.outcome),
        )
        self.jobs.labels(kind, queue, outcome).inc()
        self.duration.labels(kind, outcome).observe(max(0.0, event.duration))
        self.lag.labels(kind).observe(max(0.0, event.lag))


@dataclass(frozen=True)
class _Snapshot:
    at: float
    up: bool
    rows: list[tuple[Any, ...]]
    runners: int = 0
    unhandled: list[tuple[str, int]] = field(default_factory=list)


UNHANDLED_KINDS_SHOWN = 20
"""Kinds nobody handles that get a series of their own; the rest are added up as ``other``."""


class QueueCollector:
    """A Prometheus collector of what waits in the jobs table, read at scrape time.

    ``REGISTRY.register(QueueCollector(dsn))`` exports, per queue and kind:

    - ``outbox_queue_depth{queue,kind,state}``: ``pending`` (runnable now), ``scheduled``
      (pending with a later run_at: delayed jobs and retries waiting out their backoff) and
      ``running`` jobs;
    - ``outbox_oldest_pending_age_seconds{queue,kind}``: how long the oldest runnable job has
      waited (present only where one waits);
    - ``outbox_runners``: live runners (rows refreshed within a minute);
    - ``outbox_unhandled_jobs{kind}``: runnable pending jobs of a kind no live runner serves
      (the UNHANDLED_KINDS_SHOWN largest kinds, the rest as ``other``);
    - ``outbox_collector_up``: 1 when the last query worked, else 0 (and no other series).

    It reads with one statement over the partial indexes of pending and running jobs, at most
    once per ``cache_seconds`` however many scrapers ask, with ``timeout`` seconds to connect and
    to query. With ``dsn`` it opens a connection per query (at most one per ``cache_seconds``);
    with ``pool`` (a sync psycopg_pool pool) it borrows one. A database error is logged as a
    warning and never raised: a scrape must not fail because the database does.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: ConnectionPool[Any] | None = None,
        schema: str = "outbox",
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        timeout: float = DEFAULT_QUERY_TIMEOUT,
        namespace: str = "outbox",
    ) -> None:
        if (dsn is None) == (pool is None):
            raise ValueError("give the QueueCollector a dsn or a pool (one of them)")
        if not cache_seconds >= 0 or not timeout > 0:
            raise ValueError("cache_seconds must be >= 0 and timeout > 0")
        if dsn is not None:
            check_dsn(dsn)  # refused now, without echoing it, rather than logged at each scrape
        self.dsn = dsn
        self.pool = pool
        self.schema = check_schema_name(schema)
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self.namespace = namespace
        self._query = _queue_query(schema)
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._log = get_logger(component="metrics", schema=schema)

    def describe(self) -> list[GaugeMetricFamily]:
        """The families this collector exports, without querying (for registry name checks)."""
        return self._families(_Snapshot(0.0, up=True, rows=[]))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the gauges, from the cache when it is younger than ``cache_seconds``."""
        yield from self._families(self._current())

    def _current(self) -> _Snapshot:
        # One query at a time: concurrent scrapes wait for it and then share its result.
        with self._lock:
            snapshot = self._snapshot
            now = time.monotonic()
            if snapshot is None or now - snapshot.at >= self.cache_seconds:
                snapshot = self._snapshot = self._read(now)
            return snapshot

    def _read(self, now: float) -> _Snapshot:
        try:
            if self.pool is not None:
                with self.pool.connection(timeout=self.timeout) as conn:
                    snapshot = self._query_on(conn, now)
            else:
                assert self.dsn is not None
                with psycopg.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=max(1, round(self.timeout)),
                    application_name="outbox metrics",
                ) as conn:
                    snapshot = self._query_on(conn, now)
        except Exception as exc:
            self._log.warning("metrics.queue_query_failed", error=safe_failure_message(exc))
            return _Snapshot(now, up=False, rows=[])
        return snapshot

    def _query_on(self, conn: psycopg.Connection[Any], now: float) -> _Snapshot:
        with conn.transaction():
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true)",
                (f"{round(self.timeout * 1000)}ms",),
            )
            rows = conn.execute(self._query).fetchall()
            live = run(conn, list_runners_plan(self.schema))
            unhandled = run(conn, unhandled_kinds_plan(self.schema))
        return _Snapshot(
            now, up=True, rows=rows, runners=len(live),
            unhandled=[(u.kind, u.jobs) for u in unhandled],
        )  # fmt: skip

    def _families(self, snapshot: _Snapshot) -> list[GaugeMetricFamily]:
        prefix = self.namespace
        depth = GaugeMetricFamily(
            f"{prefix}_queue_depth",
            "Jobs per queue and kind: pending (runnable now), scheduled (run_at later), running.",
            labels=["queue", "kind", "state"],
        )
        oldest = GaugeMetricFamily(
            f"{prefix}_oldest_pending_age_seconds",
            "Seconds the oldest runnable pending job of a queue and kind has waited.",
            labels=["queue", "kind"],
        )
        up = GaugeMetricFamily(
            f"{prefix}_collector_up",
            "1 when the queue collector's last query succeeded, else 0.",
            value=1.0 if snapshot.up else 0.0,
        )
        runners = GaugeMetricFamily(
            f"{prefix}_runners",
            "Live runners (their rows refreshed within a minute).",
            value=float(snapshot.runners),
        )
        unhandled = GaugeMetricFamily(
            f"{prefix}_unhandled_jobs",
            "Runnable pending jobs of a kind that no live runner handles.",
            labels=["kind"],
        )
        orphans: dict[str, float] = {}
        for rank, (kind, jobs) in enumerate(snapshot.unhandled):
            label = safe_label(kind) if rank < UNHANDLED_KINDS_SHOWN else "other"
            orphans[label] = orphans.get(label, 0.0) + float(jobs)
        for label, waiting in orphans.items():
            unhandled.add_metric([label], waiting)
        # Hostile kinds may collapse into one label value: add them up rather than repeat a series.
        counts: dict[tuple[str, str, str], float] = {}
        ages: dict[tuple[str, str], float] = {}
        for queue, kind, available, scheduled, running, age in snapshot.rows:
            labels = (safe_label(queue), safe_label(kind))
            for state, count in (
                ("pending", available),
                ("scheduled", scheduled),
                ("running", running),
            ):
                key = (*labels, state)
                counts[key] = counts.get(key, 0.0) + float(count)
            if age is not None:
                ages[labels] = max(ages.get(labels, 0.0), max(0.0, float(age)))
        for key, count in counts.items():
            depth.add_metric(list(key), count)
        for labels, age in ages.items():
            oldest.add_metric(list(labels), age)
        if not snapshot.up:
            return [depth, oldest, up]
        return [depth, oldest, runners, unhandled, up]


def serve_metrics(
    port: int, *, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> None:
    """Serve ``registry`` (the global REGISTRY by default) at ``http://addr:port/metrics``.

    The server runs in a daemon thread for the life of the process. It listens on the loopback
    interface unless ``addr`` says otherwise: exposing it is a decision, not a default.
    """
    _start_http_server(port, addr=addr, registry=REGISTRY if registry is None else registry)

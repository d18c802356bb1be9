"""The ``outbox`` command: parses arguments, calls down into the library, prints.

Exit codes: 0 done; 1 the operation failed (database unreachable, schema not migrated, job not
found); 2 bad usage (unknown option, bad DSN or argument). ``outbox run`` says more, so that an
operator (or systemd, or Kubernetes) can tell a wrong setting from an outage:

- 3 (EXIT_NOT_FIXABLE): the database refused the runner in a way waiting cannot fix: a wrong
  password, an unknown database or role, a schema not migrated or migrated by a newer outbox;
- 4 (EXIT_UNREACHABLE): the database could not be reached within ``--wait-for-db`` seconds;
- 5 (EXIT_SERVICE_FAILED): a runner service kept failing past its restart limit;
- 6 (EXIT_NOT_ALL_SUCCEEDED): ``outbox run --once`` ran attempts that did not succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect as pyinspect
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Annotated, Any, NoReturn

import psycopg
import typer

from outbox.admin import RETRYABLE_STATES
from outbox.client import DEFAULT_SCHEMA, Outbox
from outbox.db import check_dsn, execute
from outbox.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    OutboxError,
    RunnerFailedError,
    SchemaError,
)
from outbox.migrations import check_schema
from outbox.models import Job, JobState, Stats
from outbox.mux import HandlerMux
from outbox.runner import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_WAIT_FOR_DB,
    Runner,
    RunSummary,
)
from outbox.safety import safe_failure_message

__all__ = ["app", "main"]

app = typer.Typer(
    name="outbox",
    help="A Postgres-native durable outbox: migrate, run and inspect jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain: brackets (outbox-runner[dashboard]) are text, not markup.
    rich_markup_mode=None,
)

DISTRIBUTION = "outbox-runner"
"""The name outbox is installed under (``pip install outbox-runner``); it imports as outbox."""


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"outbox {version(DISTRIBUTION)} (the {DISTRIBUTION} distribution)")
        except PackageNotFoundError:
            typer.echo("outbox (not installed: running from a source tree)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """A Postgres-native durable outbox: migrate, run and inspect jobs."""


DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn", envvar="OUTBOX_DSN", help="Postgres DSN (or set OUTBOX_DSN).", show_default=False
    ),
]
SchemaOption = Annotated[
    str, typer.Option("--schema", envvar="OUTBOX_SCHEMA", help="The outbox's Postgres schema.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
PgBouncerOption = Annotated[
    bool,
    typer.Option(
        "--pgbouncer",
        envvar="OUTBOX_PGBOUNCER",
        help="The DSN goes through PgBouncer in transaction mode: make no session settings.",
    ),
]


EXIT_NOT_FIXABLE = 3
"""``outbox run``: the database refused us, or the schema is wrong; waiting will not help."""

EXIT_UNREACHABLE = 4
"""``outbox run``: the database could not be reached within ``--wait-for-db`` seconds."""

EXIT_SERVICE_FAILED = 5
"""``outbox run``: a runner service kept failing past its restart limit."""

EXIT_NOT_ALL_SUCCEEDED = 6
"""``outbox run --once``: some attempts did not succeed (they were retried, failed, ...)."""


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"outbox: {message}", err=True)
    raise typer.Exit(code)


def _require_dsn(dsn: str | None) -> str:
    if not dsn:
        _fail("no database given: pass --dsn or set OUTBOX_DSN", 2)
    try:
        check_dsn(dsn)
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    return dsn


@contextlib.contextmanager
def _connect(dsn: str | None) -> Iterator[psycopg.Connection[Any]]:
    url = _require_dsn(dsn)
    try:
        # No prepared statements: the command may reach Postgres through PgBouncer.
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10, prepare_threshold=None)
    except psycopg.Error as exc:
        _fail(f"cannot connect to the database: {str(exc).strip()}")
    with conn:
        yield conn


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn library errors into a message and an exit code."""
    try:
        yield
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    except OutboxError as exc:
        _fail(str(exc), 1)


def _outbox(schema: str) -> Outbox:
    with _errors():
        return Outbox(schema=schema)


@app.command()
def migrate(dsn: DsnOption = None, schema: SchemaOption = DEFAULT_SCHEMA) -> None:
    """Apply pending migrations (safe to run from several processes at once)."""
    ob = _outbox(schema)
    with _connect(dsn) as conn, _errors():
        applied = ob.migrate(conn)
    if applied:
        typer.echo(f"applied migrations {', '.join(map(str, applied))} to schema {schema!r}")
    else:
        typer.echo(f"schema {schema!r} is up to date")


def _stats_json(stats: Stats) -> dict[str, Any]:
    def age(value: timedelta | None) -> float | None:
        return None if value is None else round(value.total_seconds(), 3)

    return {
        "totals": {state.value: n for state, n in stats.totals.items()},
        "oldest_runnable_age_seconds": age(stats.oldest_runnable_age),
        "kinds": [
            {
                "queue": k.queue,
                "kind": k.kind,
                "counts": {state.value: n for state, n in k.counts.items()},
                "oldest_runnable_age_seconds": age(k.oldest_runnable_age),
            }
            for k in stats.by_kind
        ],
    }


def _age(value: timedelta | None) -> str:
    return "-" if value is None else f"{value.total_seconds():.1f}s"


def _print_stats(stats: Stats) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="outbox jobs")
    table.add_column("queue")
    table.add_column("kind")
    for state in JobState:
        table.add_column(state.value, justify="right")
    table.add_column("oldest runnable", justify="right")
    for k in stats.by_kind:
        age = (
            "-"
            if k.oldest_runnable_age is None
            else f"{k.oldest_runnable_age.total_seconds():.1f}s"
        )
        table.add_row(k.queue, k.kind, *(str(k.counts[s]) for s in JobState), age)
    total_age = stats.oldest_runnable_age
    table.add_row(
        "all",
        "",
        *(str(stats.totals[s]) for s in JobState),
        "-" if total_age is None else f"{total_age.total_seconds():.1f}s",
        style="bold",
    )
    Console(width=200).print(table)


@app.command()
def status(
    dsn: DsnOption = None, schema: SchemaOption = DEFAULT_SCHEMA, as_json: JsonOption = False
) -> None:
    """Count jobs per queue, kind and state."""
    ob = _outbox(schema)
    with _connect(dsn) as conn, _errors():
        stats = ob.stats(conn)
        unhandled = ob.unhandled_kinds(conn)
    if as_json:
        body = _stats_json(stats)
        body["unhandled_kinds"] = [
            {"kind": u.kind, "jobs": u.jobs, "oldest_seconds": round(u.oldest_seconds, 3)}
            for u in unhandled
        ]
        typer.echo(json.dumps(body, indent=2))
        return
    _print_stats(stats)
    for u in unhandled:
        typer.echo(
            f"warning: {u.jobs} runnable jobs of kind {_clean(u.kind)!r} wait and no live "
            f"runner handles that kind (oldest {u.oldest_seconds:.0f} s): a typo in the kind, "
            "or a deploy that forgot its handler?",
            err=True,
        )


@app.command()
def runners(
    dsn: DsnOption = None, schema: SchemaOption = DEFAULT_SCHEMA, as_json: JsonOption = False
) -> None:
    """List the live runners: what they serve, since when, how busy."""
    ob = _outbox(schema)
    with _connect(dsn) as conn, _errors():
        live = ob.runners(conn)
    if as_json:
        rows = [
            {
                "id": r.id, "host": r.host, "pid": r.pid, "version": r.version,
                "kinds": r.kinds, "queues": r.queues, "concurrency": r.concurrency,
                "running": r.running, "started_at": r.started_at.isoformat(),
                "last_seen_seconds_ago": round(r.seen_seconds_ago, 3),
            }
            for r in live
        ]  # fmt: skip
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"outbox runners ({len(live)} live)")
    for column in ("id", "host", "pid", "version", "kinds", "queues", "running", "since", "seen"):
        table.add_column(column)
    for r in live:
        table.add_row(
            _clean(r.id), _clean(r.host), str(r.pid), _clean(r.version),
            _clean(", ".join(r.kinds)), "all" if r.queues is None else _clean(", ".join(r.queues)),
            f"{r.running}/{r.concurrency}", r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            f"{r.seen_seconds_ago:.0f}s ago",
        )  # fmt: skip
    Console(width=200).print(table)


KindOption = Annotated[str | None, typer.Option("--kind", help="The limit of this kind.")]
TenantOption = Annotated[
    str | None, typer.Option("--tenant", help="The limit of this tenant ('*': every tenant).")
]


@app.command()
def limits(
    dsn: DsnOption = None, schema: SchemaOption = DEFAULT_SCHEMA, as_json: JsonOption = False
) -> None:
    """List the flow limits, with the jobs running and waiting under each."""
    ob = _outbox(schema)
    with _connect(dsn) as conn, _errors():
        found = ob.limits(conn)
    if as_json:
        typer.echo(json.dumps([lim.model_dump() for lim in found], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"outbox limits ({len(found)})")
    for column in (
        "scope",
        "name",
        "max running",
        "rate",
        "weight",
        "running",
        "tokens",
        "waiting",
    ):
        table.add_column(column)
    for lim in found:
        rate = "-" if lim.rate is None else f"{lim.rate}/{lim.per_seconds:g}s"
        table.add_row(
            lim.scope, _clean(lim.name), str(lim.max_running or "-"), rate, str(lim.weight),
            str(lim.running), "-" if lim.tokens is None else str(lim.tokens), str(lim.waiting),
        )  # fmt: skip
    Console(width=200).print(table)


@app.command()
def grant(
    enqueuer: Annotated[
        str | None, typer.Option(help="A role that may only enqueue (through the function).")
    ] = None,
    runner: Annotated[str | None, typer.Option(help="A role that runs jobs.")] = None,
    reader: Annotated[str | None, typer.Option(help="A role that may only read.")] = None,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
) -> None:
    """Give existing roles least-privilege rights on the schema (run as its owner)."""
    ob = _outbox(schema)
    with _connect(dsn) as conn, _errors():
        ob.grant(conn, enqueuer=enqueuer, runner=runner, reader=reader)
    for part, role in (("enqueuer", enqueuer), ("runner", runner), ("reader", reader)):
        if role is not None:
            typer.echo(f"granted {part} rights on schema {ob.schema!r} to {role!r}")


@app.command("set-limit")
def set_limit(
    kind: KindOption = None,
    tenant: TenantOption = None,
    max_running: Annotated[
        int | None, typer.Option(help="At most this many running at once, across every runner.")
    ] = None,
    rate: Annotated[int | None, typer.Option(help="At most this many starts per --per.")] = None,
    per: Annotated[float, typer.Option(help="The rate's period in seconds.")] = 1.0,
    weight: Annotated[int | None, typer.Option(help="A tenant's share of each lease.")] = None,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
) -> None:
    """Limit a kind or a tenant (replacing its previous limit)."""
    ob = _outbox(schema)
    with _connect(dsn) as conn, _errors():
        ob.set_limit(
            conn, kind=kind, tenant=tenant, max_running=max_running, rate=rate, per=per,
            weight=weight,
        )  # fmt: skip
    typer.echo(f"limit set for {'kind ' + repr(kind) if kind else 'tenant ' + repr(tenant)}")


@app.command("remove-limit")
def remove_limit(
    kind: KindOption = None,
    tenant: TenantOption = None,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
) -> None:
    """Remove the limit of a kind or a tenant."""
    ob = _outbox(schema)
    with _connect(dsn) as conn, _errors():
        removed = ob.remove_limit(conn, kind=kind, tenant=tenant)
    if not removed:
        _fail("no such limit", 1)
    typer.echo("limit removed")


@app.command("blocked-keys")
def blocked_keys(
    dsn: DsnOption = None, schema: SchemaOption = DEFAULT_SCHEMA, as_json: JsonOption = False
) -> None:
    """List the ordering keys whose head waits for a retry (cancel the head to move on)."""
    ob = _outbox(schema)
    with _connect(dsn) as conn, _errors():
        found = ob.blocked_keys(conn)
    if as_json:
        typer.echo(json.dumps([k.model_dump(mode="json") for k in found], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"blocked ordering keys ({len(found)})")
    for column in ("key", "head", "kind", "attempts", "retry at", "waiting", "last error"):
        table.add_column(column)
    for k in found:
        table.add_row(
            _clean(k.ordering_key), str(k.head_id), k.kind, str(k.attempts),
            k.run_at.strftime("%Y-%m-%d %H:%M:%S"), str(k.waiting), _clean(k.last_error or "-"),
        )  # fmt: skip
    Console(width=200).print(table)


def _clean(text: str) -> str:
    """Text from the database, safe to print: no control characters, no rich markup."""
    from rich.markup import escape

    return escape("".join(ch if ch.isprintable() else " " for ch in text))


@app.command()
def cancel(
    job_id: Annotated[int, typer.Argument(help="The job's id.")],
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
) -> None:
    """Cancel a pending or running job."""
    _end_live_job(dsn, schema, job_id, "cancelled", lambda ob, conn: ob.cancel(conn, job_id))


@app.command()
def discard(
    job_id: Annotated[int, typer.Argument(help="The job's id.")],
    reason: Annotated[str, typer.Option(help="Why: stored as the job's last error.")] = "",
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
) -> None:
    """Discard a pending or running job (it ends 'discarded', with the reason stored)."""
    _end_live_job(
        dsn, schema, job_id, "discarded", lambda ob, conn: ob.discard(conn, job_id, reason)
    )


def _end_live_job(
    dsn: str | None,
    schema: str,
    job_id: int,
    verb: str,
    action: Callable[[Outbox, psycopg.Connection[Any]], bool],
) -> None:
    ob = _outbox(schema)
    with _connect(dsn) as conn, _errors():
        done = action(ob, conn)
    if not done:
        _fail(f"job {job_id} is not pending or running (finished, or no such job)")
    typer.echo(f"{verb} job {job_id}")


@app.command()
def retry(
    job_ids: Annotated[
        list[int] | None, typer.Argument(help="Ids of jobs to retry (else use the filters).")
    ] = None,
    state: Annotated[
        str, typer.Option(help="Bulk: retry the jobs in this state.")
    ] = JobState.FAILED.value,
    kind: Annotated[str | None, typer.Option(help="Bulk: only jobs of this kind.")] = None,
    queue: Annotated[str | None, typer.Option(help="Bulk: only jobs in this queue.")] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Bulk: every job in --state, of any kind and queue.")
    ] = False,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
) -> None:
    """Run jobs again now: the ids given, or all in --state (default failed) of --kind/--queue."""
    ob = _outbox(schema)
    retryable = [s.value for s in RETRYABLE_STATES]
    if state not in retryable:
        _fail(f"--state must be one of {', '.join(retryable)}, got {state!r}", 2)
    if job_ids and (kind or queue or every):
        _fail("give job ids, or --kind/--queue/--all, not both", 2)
    if not job_ids and not (kind or queue or every):
        _fail("give job ids, or choose the jobs with --kind, --queue or --all", 2)
    with _connect(dsn) as conn, _errors():
        if job_ids:
            missed = [job_id for job_id in job_ids if not ob.retry(conn, job_id)]
            for job_id in job_ids:
                if job_id not in missed:
                    typer.echo(f"retried job {job_id}")
            if missed:
                _fail(f"not retried (running, succeeded, or no such job): {missed}")
            return
        total = ob.count(conn, state=state, kind=kind, queue=queue)
        with _progress(total, f"retrying {state} jobs") as advance:
            retried = ob.retry_many(conn, state=state, kind=kind, queue=queue, progress=advance)
    skipped = total - retried
    note = f" ({skipped} skipped: running meanwhile or unique key in use)" if skipped > 0 else ""
    typer.echo(f"retried {retried} {state} jobs{note}")


@contextlib.contextmanager
def _progress(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr for bulk operations (hidden when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@app.command()
def inspect(
    job_id: Annotated[int, typer.Argument(help="The job's id.")],
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    as_json: JsonOption = False,
) -> None:
    """Show one job: its state, attempts, payload, error history and result."""
    ob = _outbox(schema)
    with _connect(dsn) as conn, _errors():
        job = ob.get_job(conn, job_id)
    if job is None:
        _fail(f"no job {job_id} in schema {schema!r}")
    if as_json:
        typer.echo(job.model_dump_json(indent=2))
        return
    _print_job(job)


def _print_job(job: Job) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=200)
    fields = Table.grid(padding=(0, 2))
    for name in ("id", "kind", "queue", "state", "priority", "attempts", "max_attempts",
                 "run_at", "created_at", "attempted_at", "updated_at", "finished_at",
                 "leased_by", "leased_until", "timeout_seconds", "unique_key", "tenant",
                 "ordering_key"):  # fmt: skip
        value = getattr(job, name)
        fields.add_row(f"[bold]{name}[/]", _clean("-" if value is None else str(value)))
    fields.add_row("[bold]payload[/]", escape(json.dumps(job.payload, ensure_ascii=False)))
    if job.result is not None:
        fields.add_row("[bold]result[/]", escape(json.dumps(job.result, ensure_ascii=False)))
    console.print(fields)
    if job.errors:
        errors = Table("attempt", "at", "error", title="errors, oldest first")
        for entry in job.errors:
            errors.add_row(
                str(entry.get("attempt")), _clean(str(entry.get("at"))), _clean(str(entry["error"]))
            )
        console.print(errors)


@app.command()
def prune(
    older_than: Annotated[
        float, typer.Option("--older-than", min=0, help="Age in days of the jobs to delete.")
    ] = 7.0,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
) -> None:
    """Delete finished jobs older than --older-than days, in small batches."""
    ob = _outbox(schema)
    with _connect(dsn) as conn, _errors():
        deleted = ob.prune(conn, timedelta(days=older_than))
    typer.echo(f"deleted {deleted} finished jobs older than {older_than:g} days")


@app.command()
def flush(
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only jobs in this queue.")] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every unfinished job (when no filter is given).")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
) -> None:
    """Delete unfinished (pending and running) jobs of a kind or queue, for good."""
    ob = _outbox(schema)
    if kind is None and queue is None and not everything:
        _fail("flush needs --kind or --queue (or --all for every unfinished job)", 2)
    with _connect(dsn) as conn, _errors():
        what = " and ".join(
            [f"kind {kind!r}"] * (kind is not None) + [f"queue {queue!r}"] * (queue is not None)
        )
        found = ob.count_unfinished(conn, kind=kind, queue=queue)
        label = f"{found} unfinished jobs" + (f" of {what}" if what else "")
        if found and not yes and not typer.confirm(f"delete {label} for good?", default=False):
            _fail("nothing deleted", 1)
        deleted = ob.flush(conn, kind=kind, queue=queue, everything=everything)
    typer.echo(f"flushed {deleted} unfinished jobs" + (f" of {what}" if what else ""))


def _load_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        _fail(f"expected module:attribute (like myapp.jobs:mux), got {target!r}", 2)
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        _fail(f"cannot import {module_name!r}: {exc}", 2)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            _fail(f"module {module_name!r} has no attribute {attr!r}", 2)
    if not isinstance(obj, HandlerMux | Runner) and callable(obj):
        obj = _call_factory(target, obj)
    if not isinstance(obj, HandlerMux | Runner):
        _fail(f"{target} is a {type(obj).__name__}, expected a HandlerMux or a Runner", 2)
    return obj


def _call_factory(target: str, factory: Callable[..., Any]) -> Any:
    """Call a factory of a mux or runner; anything else gets one line and exit 2."""
    try:
        required = [
            p
            for p in pyinspect.signature(factory).parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
    except (TypeError, ValueError):  # no signature to read (a builtin): call it and see
        required = []
    if required:
        _fail(
            f"{target} is a function taking arguments (a handler?); expected a HandlerMux, a "
            "Runner or a factory of one that takes no arguments",
            2,
        )
    try:
        return factory()
    except Exception as exc:
        _fail(f"{target}() failed: {safe_failure_message(exc)}", 2)


async def _run_once(runner: Runner, until_empty: bool, max_seconds: float | None) -> RunSummary:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    return await runner.run_once(until_empty=until_empty, max_seconds=max_seconds)


async def _run_until_signalled(runner: Runner) -> None:
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        runner.stop(now=signals > 1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await runner.run()


@app.command()
def run(
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:ATTR",
            help="module:attribute naming a HandlerMux, a Runner or a factory.",
        ),
    ],
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs running at once.")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Most jobs leased at once.")] = 100,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues to serve (default: all).")
    ] = None,
    lease: Annotated[
        float, typer.Option(min=1, help="Lease duration in seconds; heartbeats every third.")
    ] = DEFAULT_LEASE_SECONDS,
    shutdown_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for running jobs on stop.")
    ] = DEFAULT_SHUTDOWN_TIMEOUT,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            envvar="OUTBOX_METRICS_PORT",
            show_default=False,
            help="Serve Prometheus metrics on this port (needs outbox-runner[prometheus]).",
        ),
    ] = None,
    metrics_addr: Annotated[
        str, typer.Option(envvar="OUTBOX_METRICS_ADDR", help="Address the metrics server binds.")
    ] = "127.0.0.1",
    error_sink: Annotated[
        str | None,
        typer.Option(
            envvar="OUTBOX_ERROR_SINK_URL",
            show_default=False,
            help="POST retried, failed and discarded attempts to this URL as CloudEvents.",
        ),
    ] = None,
    wait_for_db: Annotated[
        float,
        typer.Option(
            min=0,
            envvar="OUTBOX_WAIT_FOR_DB",
            help="Seconds to wait at start-up for a database that cannot be reached yet "
            "(0: fail at once).",
        ),
    ] = DEFAULT_WAIT_FOR_DB,
    health_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            envvar="OUTBOX_HEALTH_PORT",
            show_default=False,
            help="Serve GET /livez and /readyz on this port.",
        ),
    ] = None,
    health_addr: Annotated[
        str,
        typer.Option(
            envvar="OUTBOX_HEALTH_ADDR",
            help="Address the probe server binds (0.0.0.0 for Kubernetes' kubelet).",
        ),
    ] = "127.0.0.1",
    once: Annotated[
        bool,
        typer.Option(
            "--once", help="Run the jobs due now, write their outcomes, print a summary, exit."
        ),
    ] = False,
    until_empty: Annotated[
        bool,
        typer.Option(
            "--until-empty",
            help="Like --once, and also wait for jobs falling due (retries) until none is left.",
        ),
    ] = False,
    max_seconds: Annotated[
        float | None,
        typer.Option(min=0, show_default=False, help="With --once: stop after this long."),
    ] = None,
    pgbouncer: PgBouncerOption = False,
    listen_dsn: Annotated[
        str | None,
        typer.Option(
            envvar="OUTBOX_LISTEN_DSN",
            show_default=False,
            help="A direct DSN to Postgres for LISTEN, when --dsn goes through PgBouncer.",
        ),
    ] = None,
    vacuum: Annotated[
        bool,
        typer.Option(
            "--vacuum/--no-vacuum",
            envvar="OUTBOX_VACUUM",
            help="VACUUM the jobs table when autovacuum lags far behind (looked at every 2.5 s) "
            "(needs the table's ownership, or MAINTAIN on PostgreSQL 17+).",
        ),
    ] = True,
) -> None:
    """Run jobs until SIGTERM or SIGINT (a second signal stops at once).

    Exit codes: 0 stopped by a signal (or --once: every attempt succeeded); 3 the database
    refused us or the schema is wrong; 4 the database stayed unreachable past --wait-for-db;
    5 a service kept failing; 6 --once ran attempts that did not succeed.
    """
    obj = _load_target(target)
    with _errors():
        if isinstance(obj, Runner):
            runner = obj
        else:
            runner = Runner(
                obj,
                dsn=_require_dsn(dsn),
                outbox=Outbox(schema=schema),
                concurrency=concurrency,
                batch_size=batch_size,
                queues=None if queues is None else [q for q in queues.split(",") if q.strip()],
                lease_seconds=lease,
                shutdown_timeout=shutdown_timeout,
                wait_for_db=wait_for_db,
                pgbouncer=pgbouncer,
                listen_dsn=listen_dsn,
                vacuum=vacuum,
            )
        close_sink = _add_observers(runner, dsn, metrics_port, metrics_addr, error_sink)
    probes = None
    if health_port is not None:
        from outbox.probes import ProbeServer

        try:
            probes = ProbeServer(runner, port=health_port, host=health_addr).start()
        except OSError as exc:
            _fail(f"cannot serve health probes on {health_addr}:{health_port}: {exc}", 2)
    try:
        if once or until_empty:
            summary = asyncio.run(_run_once(runner, until_empty, max_seconds))
            typer.echo(f"outbox: ran {summary}")
            if not summary.ok:
                raise typer.Exit(EXIT_NOT_ALL_SUCCEEDED)
        else:
            asyncio.run(_run_until_signalled(runner))
    except DatabaseUnavailableError as exc:
        _fail(str(exc), EXIT_UNREACHABLE)
    except (SchemaError, DatabaseError) as exc:
        _fail(str(exc), EXIT_NOT_FIXABLE)
    except RunnerFailedError as exc:
        _fail(f"{exc} (last error: {exc.__cause__!r:.300})", EXIT_SERVICE_FAILED)
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    except OutboxError as exc:
        _fail(str(exc), 1)
    finally:
        close_sink()
        if probes is not None:
            probes.close()


def _add_observers(
    runner: Runner,
    dsn: str | None,
    metrics_port: int | None,
    metrics_addr: str,
    error_sink: str | None,
) -> Callable[[], object]:
    """Chain the metrics observer and the error-event sink after the runner's own observer."""
    from outbox.events import CloudEventsSink
    from outbox.observe import Observer, observers

    extra: list[Observer] = []
    if metrics_port is not None:
        try:
            from outbox.metrics import PrometheusObserver, QueueCollector, serve_metrics
        except ImportError as exc:
            _fail(str(exc), 2)
        from prometheus_client import REGISTRY

        extra.append(PrometheusObserver())
        if dsn:  # a Runner from a factory may use a pool we cannot see: then no queue gauges
            REGISTRY.register(QueueCollector(dsn, schema=runner.outbox.schema))
        try:
            serve_metrics(metrics_port, addr=metrics_addr)
        except OSError as exc:
            _fail(f"cannot serve metrics on {metrics_addr}:{metrics_port}: {exc}")
    sink = CloudEventsSink(error_sink, source=f"outbox/{runner.outbox.schema}")
    if sink.enabled:
        extra.append(sink)
    runner.observer = observers(runner.observer, *extra)
    return sink.close


@app.command()
def dashboard(
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but 127.0.0.1 exposes it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Hide every action; refuse every POST.")
    ] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="A host name the dashboard answers to (repeatable; default: the bind "
            "address and localhost). Requests for any other get 400.",
        ),
    ] = None,
    pgbouncer: PgBouncerOption = False,
) -> None:
    """Serve the web dashboard (needs outbox-runner[dashboard]); it has no login of its own."""
    url = _require_dsn(dsn)
    ob = _outbox(schema)
    try:
        import uvicorn

        from outbox.dashboard import create_app
    except ImportError as exc:
        _fail(f"the dashboard needs its extra: pip install 'outbox-runner[dashboard]' ({exc})", 2)
    with _connect(url) as conn, _errors():
        execute(conn, check_schema(ob.schema))  # an unmigrated schema fails here, clearly
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"outbox dashboard on http://{shown}:{port}/ (schema {ob.schema!r}; Ctrl-C stops)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"outbox: serving on {host}: put it behind your own authentication", err=True)
    hosts = allowed_host or [h for h in dict.fromkeys([host, "localhost", "127.0.0.1", "::1"])]
    web = create_app(
        dsn=url, outbox=ob, read_only=read_only, allowed_hosts=hosts, pgbouncer=pgbouncer
    )
    # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal again against the
    # handlers it found: with these, that second delivery ends nothing and the exit code is 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda received, frame: None)
    uvicorn.run(web, host=host, port=port, log_level="warning")


@app.command()
def demo(dsn: DsnOption = None) -> None:
    """Enqueue jobs in business transactions and run them (embedded Postgres without a DSN)."""
    from outbox import demo as demo_module

    with _errors():
        demo_module.main(dsn)


def main() -> None:
    """Entry point of the ``outbox`` command."""
    app()


if __name__ == "__main__":
    main()

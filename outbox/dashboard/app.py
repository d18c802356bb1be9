"""The dashboard's Starlette app: pages that read, forms that act (retry, cancel, discard).

Server-rendered with Jinja2 (autoescaped: job text is always shown as text), readable with
JavaScript off. Every action is a POST carrying a CSRF token (see ``csrf.py``); in read-only
mode there are no forms and every POST is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from outbox.client import Outbox
from outbox.dashboard import csrf
from outbox.db import check_dsn
from outbox.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    DuplicateJobError,
    InvalidOptionError,
    OutboxError,
)
from outbox.models import Job, JobState
from outbox.status import OVERVIEW_STATES

__all__ = ["LOCAL_HOSTS", "PAGE_SIZE", "create_app"]

PAGE_SIZE = 50
"""Jobs on one page of the job list."""

ACTIONS = ("retry", "cancel", "discard")
"""What the forms can do to a job."""

CONNECT_TIMEOUT_SECONDS = 3
"""How long the dashboard waits for its database before answering 503."""

STATEMENT_TIMEOUT_MS = 5000
"""The longest a statement of the dashboard's own pool may run."""

REFRESH_SECONDS = 5
"""How often the overview reloads itself (a meta refresh: no JavaScript needed)."""


@dataclass
class _Database:
    """The dashboard's pool: the caller's, or its own, opened on first use.

    A mounted app's lifespan never runs, so opening cannot wait for start-up.
    """

    dsn: str | None
    pool: AsyncConnectionPool[Any] | None
    pgbouncer: bool = False
    own: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self) -> AsyncConnectionPool[Any]:
        if self.pool is None:
            async with self.lock:
                if self.pool is None:
                    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                        self.dsn or "",
                        min_size=1,
                        max_size=4,
                        kwargs={
                            "autocommit": True,
                            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                            "application_name": "outbox dashboard",
                            "prepare_threshold": None,
                            # A page must never keep the database busy for long. PgBouncer
                            # refuses startup options: there its own query_timeout applies.
                            **(
                                {}
                                if self.pgbouncer
                                else {"options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"}
                            ),
                        },
                        open=False,
                    )
                    try:
                        await pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS + 1)
                    except PoolTimeout:
                        await pool.close()
                        raise DatabaseUnavailableError(
                            "the dashboard cannot reach its database: check that Postgres is "
                            "up and the DSN is right"
                        ) from None
                    self.pool, self.own = pool, True
        return self.pool

    async def close(self) -> None:
        if self.own and self.pool is not None:
            await self.pool.close()
            self.pool = None


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
"""The hosts the dashboard answers to unless told others."""


def create_app(
    *,
    dsn: str | None = None,
    pool: AsyncConnectionPool[Any] | None = None,
    outbox: Outbox | None = None,
    read_only: bool = False,
    title: str = "outbox",
    allowed_hosts: Sequence[str] = LOCAL_HOSTS,
    pgbouncer: bool = False,
) -> Starlette:
    """Build the dashboard, to mount in your app (behind your own auth) or serve on its own.

    Give it a ``dsn`` (it opens a small pool of its own on first use) or your ``pool``
    (autocommit connections). ``read_only`` hides every action and refuses every POST.
    ``allowed_hosts`` are the names it answers to (the ``Host`` header; ``*.example.com``
    patterns allowed): any other gets 400, which stops DNS-rebinding attacks. Mounted under a
    public name, list that name. ``pgbouncer=True`` when ``dsn`` goes through PgBouncer in
    transaction mode (no startup options: set PgBouncer's ``query_timeout`` instead).
    """
    if (dsn is None) == (pool is None):
        raise ConfigurationError("give the dashboard a dsn or a pool (one of them)")
    if dsn is not None:
        check_dsn(dsn)
    if (
        isinstance(allowed_hosts, str)
        or not all(isinstance(h, str) and h for h in allowed_hosts)
        or not allowed_hosts
    ):
        raise ConfigurationError(
            f"allowed_hosts must be a list of host names, got {allowed_hosts!r}"
        )
    ob = outbox or Outbox()
    db = _Database(dsn, pool, pgbouncer)
    env = Environment(
        loader=PackageLoader("outbox.dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty_json"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
    env.filters["age"] = _age

    def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
        token = csrf.token_for(request)
        html = env.get_template(template).render(
            request=request, title=title, read_only=read_only, csrf_token=token,
            schema=ob.schema, states=[s.value for s in JobState], **context,
        )  # fmt: skip
        response = HTMLResponse(html, status_code=status)
        csrf.remember(request, response, token)
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"  # pages hold job data
        return response

    def page(
        handler: Callable[[Request, AsyncConnectionPool[Any]], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request, await db.get())
            except (InvalidOptionError, ValueError) as exc:
                return render(request, "error.html", 400, message=str(exc))
            except OutboxError as exc:
                return render(request, "error.html", 503, message=str(exc))

        return endpoint

    async def overview(request: Request, pool: AsyncConnectionPool[Any]) -> Response:
        async with pool.connection() as conn:
            data = await ob.overview(conn)
            unhandled = await ob.unhandled_kinds(conn)
            live = await ob.runners(conn)
        return render(
            request, "overview.html", overview=data, columns=OVERVIEW_STATES,
            refresh=REFRESH_SECONDS, unhandled=unhandled, runner_count=len(live),
        )  # fmt: skip

    async def runners(request: Request, pool: AsyncConnectionPool[Any]) -> Response:
        async with pool.connection() as conn:
            live = await ob.runners(conn)
        return render(request, "runners.html", runners=live)

    async def flow(request: Request, pool: AsyncConnectionPool[Any]) -> Response:
        async with pool.connection() as conn:
            found = await ob.limits(conn)
            blocked = await ob.blocked_keys(conn)
        return render(request, "flow.html", limits=found, blocked=blocked)

    async def jobs(request: Request, pool: AsyncConnectionPool[Any]) -> Response:
        query = request.query_params
        filters = {name: query.get(name) or None for name in ("state", "kind", "queue")}
        after = _int_or_none(query.get("after"))
        async with pool.connection() as conn:
            found = await ob.list_jobs(conn, **filters, limit=PAGE_SIZE + 1, after_id=after)
        more = len(found) > PAGE_SIZE
        found = found[:PAGE_SIZE]
        kept = {k: v for k, v in filters.items() if v}
        next_url = (
            f"{request.url_for('jobs')}?{urlencode({**kept, 'after': found[-1].id})}"
            if more
            else None
        )
        return render(
            request, "jobs.html", jobs=found, filters=filters, next_url=next_url,
            done=query.get("done"), actions=ACTIONS,
        )  # fmt: skip

    async def job(request: Request, pool: AsyncConnectionPool[Any]) -> Response:
        job_id = _job_id(request.path_params["job_id"])
        async with pool.connection() as conn:
            found = await ob.get_job(conn, job_id)
        if found is None:
            return render(request, "error.html", 404, message=f"There is no job {job_id}.")
        return render(
            request, "job.html", job=found, done=request.query_params.get("done"),
            actions=_actions_for(found),
        )  # fmt: skip

    async def act(request: Request, pool: AsyncConnectionPool[Any]) -> Response:
        form = await request.form()
        if read_only:
            return render(request, "error.html", 403, message="This dashboard is read-only.")
        if not csrf.valid(request, form.get("csrf_token")):
            return render(
                request, "error.html", 403,
                message="The form's security token is missing or stale: reload the page and "
                "try again.",
            )  # fmt: skip
        action = str(form.get("action", ""))
        if action not in ACTIONS:
            raise InvalidOptionError(f"unknown action {action!r}")
        ids = [_job_id(str(value)) for value in form.getlist("job_id")]
        if not ids:
            raise InvalidOptionError("no job chosen")
        reason = str(form.get("reason") or "from the dashboard")
        done = 0
        async with pool.connection() as conn:
            for job_id in ids:
                try:
                    if action == "retry":
                        done += await ob.retry(conn, job_id)
                    elif action == "cancel":
                        done += await ob.cancel(conn, job_id)
                    else:
                        done += await ob.discard(conn, job_id, reason)
                except DuplicateJobError:
                    pass  # another live job holds its unique key: counted as not done
        outcome = f"{action}: {done} of {len(ids)}"
        back = str(form.get("back") or "")
        if len(ids) == 1 and back != "list":
            target = request.url_for("job", job_id=ids[0])
        else:
            target = request.url_for("jobs")
        return RedirectResponse(f"{target}?{urlencode({'done': outcome})}", status_code=303)

    async def refuse_get(request: Request) -> Response:
        return render(request, "error.html", 405, message="Actions are POSTed by the forms.")

    static = StaticFiles(packages=[("outbox.dashboard", "static")])
    routes = [
        Route("/", page(overview), name="overview"),
        Route("/jobs", page(jobs), name="jobs"),
        Route("/runners", page(runners), name="runners"),
        Route("/flow", page(flow), name="flow"),
        Route("/jobs/{job_id}", page(job), name="job"),
        Route("/actions", page(act), methods=["POST"], name="act"),
        Route("/actions", refuse_get, methods=["GET"]),
        Mount("/static", static, name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await db.close()

    hosts = Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[hosts])
    app.state.database = db
    return app


def _actions_for(job: Job) -> list[str]:
    if job.state in (JobState.PENDING, JobState.RUNNING):
        return ["cancel", "discard"] + (["retry"] if job.state == JobState.PENDING else [])
    if job.state == JobState.SUCCEEDED:
        return []
    return ["retry"]


def _int_or_none(value: str | None) -> int | None:
    return None if not value else _job_id(value)


def _job_id(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) < 2**63:
        raise InvalidOptionError(f"{value!r} is not a job id")
    return int(value)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"

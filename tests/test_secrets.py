"""No output ever carries a password: a malformed or unreachable DSN is reported without it, by
the CLI, the runner, the dashboard and the metrics collector."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from outbox import ConfigurationError, HandlerMux, Runner, safe_failure_message
from outbox.dashboard import create_app
from outbox.metrics import QueueCollector
from tests.helpers import ROOT

SECRET = "S3cretPW"
DSNS = {
    "malformed": f"postgresql://app:{SECRET}%zz@127.0.0.1:5432/db",
    "unreachable": f"postgresql://app:{SECRET}@127.0.0.1:1/db",
    "keyword": f"host=127.0.0.1 port=1 user=app password={SECRET} dbname=db",
}
COMMANDS = [
    ["status"],
    ["migrate"],
    ["runners"],
    ["limits"],
    ["run", "tests.jobs_app:mux", "--wait-for-db", "0"],
    ["run", "tests.jobs_app:mux", "--once", "--wait-for-db", "0"],
    ["dashboard", "--port", "1"],
]


def _leaks(text: str) -> bool:
    return SECRET in text or SECRET[:4] in text or "zz@" in text


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("kind", list(DSNS))
def test_no_command_prints_the_password_of_a_bad_dsn(command, kind):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    done = subprocess.run(
        [sys.executable, "-m", "outbox.cli", *command, "--dsn", DSNS[kind]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert output.strip(), "a failure must say what is wrong"
    assert not _leaks(output), output


@pytest.mark.parametrize("kind", ["unreachable", "keyword"])
def test_the_collector_never_logs_the_password(kind, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    collector = QueueCollector(DSNS[kind], schema="outbox", cache_seconds=0, timeout=2)
    families = {f.name: f for f in collector.collect()}
    assert families["outbox_collector_up"].samples[0].value == 0.0
    captured = capsys.readouterr()
    assert not _leaks(caplog.text + captured.out + captured.err)


def _mux() -> HandlerMux:
    mux = HandlerMux()
    mux.register("k", lambda job: None)
    return mux


def test_a_malformed_dsn_is_refused_up_front_without_echoing_it():
    for build in (
        lambda: QueueCollector(DSNS["malformed"], schema="outbox"),
        lambda: create_app(dsn=DSNS["malformed"]),
        lambda: Runner(_mux(), dsn=DSNS["malformed"]),
    ):
        with pytest.raises(ConfigurationError) as info:
            build()
        assert "invalid DSN" in str(info.value) and not _leaks(str(info.value))


@pytest.mark.parametrize(
    "message",
    [
        f'ProgrammingError: invalid percent-encoded token: "{SECRET}%zz"',
        f'missing "=" after "{SECRET}" in connection info string',
        f"connection to postgresql://app:{SECRET}@db failed",
        f"could not connect: host=db password={SECRET} user=app",
    ],
)
def test_safe_failure_message_redacts_what_libpq_and_urls_quote(message):
    assert not _leaks(safe_failure_message(message))

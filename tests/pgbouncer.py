"""A real PgBouncer in transaction mode in front of the test database (Debian's `pgbouncer`).

.ci/run installs it; elsewhere `apt-get install pgbouncer`. PgBouncer refuses to run as root,
so as root it runs as the `postgres` user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.faultproxy import FaultProxy
from tests.helpers import free_port


@contextlib.contextmanager
def pgbouncer(dsn: str) -> Iterator[str]:
    """Run PgBouncer (pool_mode = transaction) in front of ``dsn``; yield a DSN through it."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        message = "PgBouncer is not installed: apt-get install pgbouncer (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    target = psycopg.conninfo.conninfo_to_dict(dsn)
    user = target.get("user") or "postgres"
    dbname = target.get("dbname") or user
    port = free_port()
    # PgBouncer runs as `postgres`, which may not reach the server's Unix socket (the embedded
    # server's lives in a private directory): it goes through a TCP forwarder of ours.
    forward = FaultProxy(str(target.get("host") or "127.0.0.1"), int(target.get("port") or 5432))
    with forward, tempfile.TemporaryDirectory() as work:
        os.chmod(work, 0o777)
        users = os.path.join(work, "users.txt")
        with open(users, "w") as f:
            f.write(f'"{user}" ""\n')
        config = os.path.join(work, "pgbouncer.ini")
        with open(config, "w") as f:
            f.write(
                f"[databases]\n{dbname} = host=127.0.0.1 port={forward.port}"
                f" dbname={dbname} user={user}\n"
                "[pgbouncer]\n"
                f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
                f"auth_type = trust\nauth_file = {users}\npool_mode = transaction\n"
                "max_client_conn = 200\ndefault_pool_size = 10\n"
                "server_connect_timeout = 5\nquery_wait_timeout = 20\n"
                "ignore_startup_parameters = extra_float_digits\n"
                f"logfile = {work}/pgbouncer.log\npidfile = {work}/pgbouncer.pid\n"
            )
        for path in (users, config):
            os.chmod(path, 0o644)
        args = [binary, config]
        if os.geteuid() == 0:
            args = [binary, "-u", pwd.getpwnam("postgres").pw_name, config]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        through = f"postgresql://{user}@127.0.0.1:{port}/{dbname}"
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    with psycopg.connect(through, connect_timeout=2, prepare_threshold=None) as c:
                        c.execute("SELECT 1")  # PgBouncer reaches the server, too
                        break
                except psycopg.Error:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log = proc.stdout.read().decode() if proc.stdout else ""
                        raise AssertionError(f"PgBouncer did not start: {log}") from None
                    time.sleep(0.1)
            yield through
        finally:
            proc.terminate()
            proc.wait(10)
            if proc.stdout:
                proc.stdout.close()

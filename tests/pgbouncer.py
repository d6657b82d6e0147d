"""Test helper: a real PgBouncer in transaction pooling mode in front of the shared PostgreSQL.

PgBouncer does not forward the ``options`` startup parameter, and a ``SET search_path`` would not survive
transaction pooling, so the tests' usual ``?options=-csearch_path=...`` cannot pick a scratch schema
through it. Each :class:`PgBouncer` instead gets a role of its own whose default ``search_path`` (``ALTER
ROLE ... SET search_path``) is a schema of its own, which is also what users behind PgBouncer do.

The pool holds one server connection (``default_pool_size = 1``): every client's transactions share it,
so anything that relies on session state (a prepared statement, a session lock, a ``SET``) shows up at
once instead of by chance.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import BinaryIO

import psycopg
import pytest
from sqlalchemy.engine import URL
from tcp_proxy import free_port

#: Seconds PgBouncer may take to listen.
START_TIMEOUT_S = 10.0
#: Seconds a client waits for the pool's server connection before PgBouncer gives up on it (a test that
#: deadlocks on the pool fails this fast instead of hanging).
QUERY_WAIT_TIMEOUT_S = 20

#: What makes the tests skip on a machine without PgBouncer (``./dev test`` installs it; CI must have it).
MISSING = "pgbouncer is not installed (apt-get install pgbouncer; ./dev test installs it when run as root)"


#: The statement timeout of the role the tests connect through PgBouncer as (what users set with ALTER ROLE).
STATEMENT_TIMEOUT = "30s"


def pgbouncer_binary() -> str:
    """The ``pgbouncer`` program; skips the test if it is missing, except in CI, where it fails."""
    binary = shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)), None
    )
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return binary


class PgBouncer:
    """A PgBouncer on a free 127.0.0.1 port forwarding database ``test`` to the shared PostgreSQL, with a
    role and schema of its own. Use as a context manager; everything is removed at the end.

    Parameters:
      postgres_url(URL): the shared PostgreSQL (as the ``postgres`` superuser), for setup and teardown.
      folder(Path): where its configuration and log go.
    """

    def __init__(self, postgres_url: URL, folder: Path) -> None:
        self.postgres_url = postgres_url
        self.folder = folder
        #: The role (and its schema) of this bouncer's user.
        self.role = f"opm_bouncer_{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.log = folder / "pgbouncer.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: BinaryIO | None = None

    @property
    def url(self) -> URL:
        """The metrics database through PgBouncer, with psycopg's prepared statements off."""
        return URL.create(
            "postgresql+psycopg",
            username=self.role,
            host="127.0.0.1",
            port=self.port,
            database=self.postgres_url.database,
            query={"prepare_threshold": "none"},
        )

    @property
    def url_with_prepared_statements(self) -> URL:
        """:attr:`url` without ``prepare_threshold=none`` (what not to do)."""
        return self.url.difference_update_query(["prepare_threshold"])

    @property
    def direct_url(self) -> URL:
        """The same role and schema on PostgreSQL itself, past PgBouncer."""
        return self.url.set(host=self.postgres_url.host, port=self.postgres_url.port)

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        conninfo = self.postgres_url.set(drivername="postgresql").render_as_string(hide_password=False)
        return psycopg.connect(conninfo, autocommit=True)

    def __enter__(self) -> PgBouncer:
        binary = pgbouncer_binary()
        with self._admin() as admin:
            admin.execute(f"CREATE ROLE {self.role} LOGIN")
            admin.execute(f"CREATE SCHEMA {self.role} AUTHORIZATION {self.role}")
            admin.execute(f"ALTER ROLE {self.role} SET search_path = {self.role}")
            # PgBouncer refuses the ``options`` startup parameter: the statement timeout is the role's.
            admin.execute(f"ALTER ROLE {self.role} SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        try:
            self._start(binary)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self, binary: str) -> None:
        (self.folder / "userlist.txt").write_text(f'"{self.role}" ""\n')
        (self.folder / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{self.postgres_url.database} = host={self.postgres_url.host} port={self.postgres_url.port}"
            f" dbname={self.postgres_url.database}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.folder / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            "default_pool_size = 1\n"
            "max_client_conn = 100\n"
            f"query_wait_timeout = {QUERY_WAIT_TIMEOUT_S}\n"
            "logfile =\n"  # standard error, which goes to self.log: PgBouncer opens a logfile as its user
            "pidfile =\n"
        )
        # PgBouncer refuses to run as root; it reads its files before it switches to the user.
        user = ["-u", "postgres"] if os.geteuid() == 0 else []
        self._log_file = self.log.open("wb")
        self._process = subprocess.Popen(
            [binary, *user, str(self.folder / "pgbouncer.ini")], stdout=subprocess.DEVNULL, stderr=self._log_file
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start: {self.log_text()}")
            time.sleep(0.05)

    def log_text(self) -> str:
        """What PgBouncer logged so far."""
        return self.log.read_text() if self.log.exists() else ""

    def __exit__(self, *_exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._log_file is not None:
            self._log_file.close()
        with self._admin() as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (self.role,))
            admin.execute(f"DROP SCHEMA IF EXISTS {self.role} CASCADE")
            admin.execute(f"DROP OWNED BY {self.role}")
            admin.execute(f"DROP ROLE {self.role}")

"""Test helper: a throwaway PostgreSQL cluster that a test may stop, SIGSTOP and SIGCONT.

The shared PostgreSQL on 5432 must never be paused or stopped; faults are made on a cluster of their own::

    with PgCluster() as cluster:            # initdb + pg_ctl start on a free port of 127.0.0.1
        upgrade(cluster.url)
        cluster.pause()                     # SIGSTOP the postmaster and every backend: the kernel still ACKs
        ...
        cluster.resume()                    # SIGCONT

The cluster lives in a temporary folder under /tmp (``initdb`` refuses to run as root, so as root it runs
as the ``postgres`` user, who cannot enter pytest's root-only ``tmp_path``). It runs with ``fsync`` off: it
is made to be thrown away. :meth:`PgCluster.close` stops it (resuming it first) and removes the folder; an
``atexit`` hook does the same if a test run dies before the fixture's teardown.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg
from sqlalchemy.engine import URL
from tcp_proxy import free_port

#: The user that runs the cluster when the tests run as root.
CLUSTER_USER = "postgres"
#: Seconds ``pg_ctl`` may take to start or stop the cluster.
PG_CTL_TIMEOUT_S = 30


def postgres_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has ``initdb`` and ``pg_ctl``."""
    candidates = sorted(
        (Path(path) for path in glob.glob("/usr/lib/postgresql/*/bin") if Path(path, "initdb").is_file()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    return candidates[-1]


class PgCluster:
    """A PostgreSQL cluster of its own on 127.0.0.1:``port``, started by the constructor.

    Attributes:
      port(int): the TCP port it listens on.
      url(URL): ``postgresql+psycopg://postgres@127.0.0.1:port/postgres`` (trust authentication).
      paused(bool): whether :meth:`pause` stopped it.
    """

    def __init__(self) -> None:
        self.bin_dir = postgres_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="opmetrics-pg-"))
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self.port = free_port()
        self.url = URL.create(
            "postgresql+psycopg", username="postgres", host="127.0.0.1", port=self.port, database="postgres"
        )
        self.paused = False
        self._closed = False
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", CLUSTER_USER, "--"]
            user = pwd.getpwnam(CLUSTER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        atexit.register(self.close)
        try:
            self._run("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
            self.start()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _traceback: TracebackType | None
    ) -> None:
        self.close()

    def conninfo(self, database: str = "postgres") -> str:
        """The libpq connection string of ``database`` on this cluster."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database} connect_timeout=5"

    def start(self) -> None:
        """Start the cluster (after :meth:`stop`, or to make sure it runs); waits until it accepts connections."""
        self.resume()
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        status = self._pg_ctl("status", check=False)
        if status.returncode != 0:
            self._pg_ctl("start", "-w", "-t", str(PG_CTL_TIMEOUT_S), "-l", str(self.log_file), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``mode``: ``smart``, ``fast`` or ``immediate``, as for ``pg_ctl stop -m``)."""
        self.resume()
        if self._pg_ctl("status", check=False).returncode == 0:
            self._pg_ctl("stop", "-w", "-t", str(PG_CTL_TIMEOUT_S), "-m", mode)

    def postmaster_pid(self) -> int | None:
        """The postmaster's process id, or None if the cluster is not running."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def processes(self) -> list[int]:
        """The postmaster and every process it forked (backends, checkpointer, ...)."""
        postmaster = self.postmaster_pid()
        if postmaster is None:
            return []
        return [postmaster, *_children_of(postmaster)]

    def pause(self) -> None:
        """SIGSTOP the postmaster and all its children: connections stay open, nothing is ever answered."""
        postmaster = self.postmaster_pid()
        if postmaster is None:
            raise RuntimeError("the cluster is not running")
        # The postmaster first: once stopped it forks no new backend that the walk below could miss.
        os.kill(postmaster, signal.SIGSTOP)
        self.paused = True
        for pid in _children_of(postmaster):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT what :meth:`pause` stopped (a no-op when not paused)."""
        if not self.paused:
            return
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.paused = False

    def create_database(self, name: str) -> URL:
        """Create database ``name`` and return its URL."""
        with psycopg.connect(self.conninfo(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url.set(database=name)

    def close(self) -> None:
        """Stop the cluster at once (even when paused) and remove its folder; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            if self.postmaster_pid() is not None:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", "-D", str(self.data_dir), *args, check=check)

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [*self._as_user, str(self.bin_dir / program), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=PG_CTL_TIMEOUT_S + 10, check=False)
        if check and result.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}\n{log}")
        return result


def _children_of(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after the last ')' are fixed.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            children.append(int(entry))
    return children


def wait_for_connections(cluster: PgCluster, timeout_s: float = 10.0) -> None:
    """Wait until ``cluster`` accepts a connection again (after :meth:`PgCluster.resume`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(cluster.conninfo(), connect_timeout=2) as connection:
                connection.execute("SELECT 1")
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

"""The fault suite's own helpers do what the other fault tests rely on."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy.engine import URL

from faults.pg_cluster import PgCluster, wait_for_connections
from faults.silent_server import SilentServer


def test_a_paused_cluster_accepts_connections_at_tcp_level_but_answers_nothing(
    pg_cluster: PgCluster, cluster_url: URL
) -> None:
    conninfo = pg_cluster.conninfo(cluster_url.database or "")
    with psycopg.connect(conninfo, autocommit=True) as connection:
        backend = connection.info.backend_pid
        assert backend in pg_cluster.processes()
        pg_cluster.pause()
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(conninfo + " connect_timeout=2")
        assert 1.5 < time.monotonic() - started < 5
        pg_cluster.resume()
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_a_stopped_cluster_starts_again(pg_cluster: PgCluster, cluster_url: URL) -> None:
    pg_cluster.stop()
    assert pg_cluster.postmaster_pid() is None
    pg_cluster.start()
    wait_for_connections(pg_cluster)


def test_the_silent_server_accepts_and_never_answers(silent_server: SilentServer) -> None:
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"host=127.0.0.1 port={silent_server.port} user=postgres connect_timeout=2")
    assert 1.5 < time.monotonic() - started < 5
    assert silent_server.accepted >= 1

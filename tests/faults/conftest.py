"""Fixtures of the fault suite: a throwaway PostgreSQL cluster that tests pause, and a silent TCP server.

``pg_cluster`` is one cluster for the whole session (initdb takes a few seconds); ``cluster_url`` gives each
test a database of its own on it and makes sure, whatever the test did, that the cluster runs again after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import URL

from faults.pg_cluster import PgCluster
from faults.silent_server import SilentServer


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL cluster of the session's own, on a free port; stopped and removed at the end."""
    with PgCluster() as cluster:
        yield cluster


@pytest.fixture
def cluster_url(pg_cluster: PgCluster) -> Iterator[URL]:
    """An empty database of the test's own on :func:`pg_cluster`; the cluster is resumed (and started) after."""
    pg_cluster.start()
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_cluster.create_database(name)
    try:
        yield url
    finally:
        pg_cluster.start()  # resumes a paused cluster, starts a stopped one
        with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    with SilentServer() as server:
        yield server

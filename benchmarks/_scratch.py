"""Benchmark helper: a migrated scratch PostgreSQL schema of the benchmark's own, dropped afterwards."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
from sqlalchemy.engine import URL, make_url

from dramatiq_opmetrics.migrate import upgrade

#: The database the benchmarks use when ``$OPMETRICS_TEST_DATABASE_URL`` is not set: the local ``test`` one.
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def database_url() -> URL:
    """``$OPMETRICS_TEST_DATABASE_URL``, else :data:`DEFAULT_URL`."""
    return make_url(os.environ.get("OPMETRICS_TEST_DATABASE_URL", DEFAULT_URL))


def libpq(url: URL) -> str:
    """``url`` as a libpq connection string for ``psycopg.connect`` (its query, e.g. the search_path, kept)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def scratch_schema(base: URL) -> Iterator[URL]:
    """Create a fresh schema in ``base``'s database, migrate it and yield the URL whose search_path is that
    schema; drop the schema (and all in it) afterwards, whatever happened."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq(base), autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        url = base.update_query_dict({"options": f"-csearch_path={schema}"})
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(libpq(base), autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")

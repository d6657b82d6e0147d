"""Test harness: every test gets its own PostgreSQL schema or SQLite file, on the real services.

Environment:
  OPMETRICS_TEST_DATABASE_URL: the PostgreSQL database to make scratch schemas in
    (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
  OPMETRICS_TEST_REDIS_URL: the Redis server (default redis://127.0.0.1:6379/0).
  OPMETRICS_TEST_RABBITMQ_URL: the RabbitMQ server (default amqp://guest:guest@127.0.0.1:5672/%2F).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.migrate import upgrade

POSTGRES_URL = make_url(
    os.environ.get("OPMETRICS_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
)
REDIS_URL = os.environ.get("OPMETRICS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("OPMETRICS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def libpq_conninfo(url: URL) -> str:
    """The libpq form of a SQLAlchemy PostgreSQL URL (for psycopg.connect)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def postgres_url() -> Iterator[URL]:
    """An empty scratch schema of its own on the real PostgreSQL, as a URL whose search_path points at it."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conninfo = libpq_conninfo(POSTGRES_URL)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield POSTGRES_URL.update_query_dict({"options": f"-csearch_path={schema}"})
    finally:
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> URL:
    """An empty SQLite file of its own."""
    return make_url(f"sqlite:///{tmp_path / 'metrics.sqlite3'}")


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> URL:
    """An empty database, once on PostgreSQL and once on SQLite."""
    fixture = "postgres_url" if request.param == "postgresql" else "sqlite_url"
    url: URL = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def migrated_url(database_url: URL) -> URL:
    """A database (each dialect) migrated to head."""
    upgrade(database_url)
    return database_url


@pytest.fixture
def engine(migrated_url: URL) -> Iterator[Engine]:
    """An engine on a migrated database (each dialect)."""
    engine = make_engine(migrated_url)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_engine(postgres_url: URL) -> Iterator[Engine]:
    """An engine on a migrated PostgreSQL scratch schema."""
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def opmetrics_caplog(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """``caplog`` that sees dramatiq_opmetrics' loggers even after a test ran an application's Alembic env.py
    (its ``fileConfig`` disables every logger that existed)."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("dramatiq_opmetrics") and isinstance(logger, logging.Logger):
            monkeypatch.setattr(logger, "disabled", False)
    return caplog

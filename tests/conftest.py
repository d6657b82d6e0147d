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
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import psycopg
import pytest
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, xq_name
from notification_servers import alertmanager, json_server, smtp_server  # noqa: F401 (fixtures for every test)
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
def redis_broker() -> Iterator[RedisBroker]:
    """A RedisBroker on the real Redis with a key namespace of its own; every key in it is deleted after."""
    namespace = f"opm-test-{uuid.uuid4().hex[:12]}"
    broker = RedisBroker(url=REDIS_URL, namespace=namespace)
    try:
        yield broker
    finally:
        keys = list(broker.client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            broker.client.delete(*keys)
        broker.close()
        broker.client.close()


@pytest.fixture
def redis_url() -> str:
    """The real Redis server's URL (for tests whose own modules cannot import this conftest by name)."""
    return REDIS_URL


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A Redis key namespace of the test's own on the real Redis; every key in it is deleted after."""
    namespace = f"opmetrics-test-{uuid.uuid4().hex[:10]}"
    yield namespace
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def rabbitmq_broker() -> Iterator[RabbitmqBroker]:
    """A RabbitmqBroker on the real RabbitMQ; use unique queue names (``unique_queue``), deleted after.

    Every queue the broker declared, plus its ``.DQ`` and ``.XQ``, is deleted afterwards.
    """
    broker = RabbitmqBroker(url=RABBITMQ_URL)
    try:
        yield broker
    finally:
        broker.close()
        connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        try:
            channel = connection.channel()
            for name in broker.get_declared_queues():
                for queue in (name, dq_name(name), xq_name(name)):
                    channel.queue_delete(queue)
        finally:
            connection.close()


@pytest.fixture
def unique_queue() -> Callable[[str], str]:
    """Makes queue names no other test (or helper) uses: ``unique_queue("emails")``."""
    run = uuid.uuid4().hex[:10]
    return lambda name: f"opm-{run}-{name}"


@pytest.fixture(autouse=True)
def queue_depth_sampling_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers sample queue depth and fold the recent tier only in tests that ask for it
    (``queue_depth_interval_s=...``, ``recent_fold_interval_s=...``).

    Otherwise a worker that happens to run across a wall-clock interval boundary would add ``queue_depth``
    rows to tests that count rows exactly, or fold (and log about) a database the test is taking down.
    """
    monkeypatch.setenv("OPMETRICS_QUEUE_DEPTH_INTERVAL_S", "0")
    monkeypatch.setenv("OPMETRICS_RECENT_FOLD_INTERVAL_S", "0")


@pytest.fixture(autouse=True)
def opmetrics_loggers_enabled() -> None:
    """Re-enable our loggers: an application's Alembic ``env.py`` (run by tests/test_migrate.py) calls
    ``logging.config.fileConfig``, which disables every logger that exists, and tests read our log lines
    (whichever test ran before in the same process). Apprise's are left as that left them: ``notifiers``
    copes with a silenced Apprise itself."""
    for name, logger in logging.Logger.manager.loggerDict.items():
        if name.startswith("dramatiq_opmetrics") and isinstance(logger, logging.Logger):
            logger.disabled = False

"""Engines for the metrics database, set up per backend.

Engines are created per process and never shared across a fork: create one after the process starts
(dramatiq's worker processes are forked from the main process).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchModuleError

from .config import ConfigurationError, resolve_database_url

#: The database backends whose migrations and queries dramatiq-opmetrics ships.
SUPPORTED_BACKENDS = ("postgresql", "sqlite")
#: How long a SQLite connection waits for a lock held by another process, in seconds.
SQLITE_BUSY_TIMEOUT_S = 30


def make_engine(database_url: str | URL | None = None, **engine_options: Any) -> Engine:
    """Create an engine for the metrics database (see :func:`~dramatiq_opmetrics.config.resolve_database_url`).

    SQLite connections use WAL journaling and a busy timeout so that several processes can write one file.

    Raises:
      ConfigurationError: no URL is configured, it cannot be parsed, or its dialect or driver is missing or
        not supported (see :func:`check_driver`).
    """
    url = resolve_database_url(database_url)
    check_driver(url)
    if url.get_backend_name() == "sqlite":
        engine_options.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_S})
        engine = create_engine(url, **engine_options)
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    engine_options.setdefault("pool_pre_ping", True)
    return create_engine(url, **engine_options)


def check_driver(url: URL) -> None:
    """Refuse, with a message saying what to install or use, a URL whose dialect or driver is missing,
    not PostgreSQL or SQLite, or an asyncio driver (dramatiq-opmetrics' threads use blocking drivers).

    Raises:
      ConfigurationError: naming the problem.
    """
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise ConfigurationError(
            f"unknown database {url.drivername!r} in the metrics database URL; use postgresql+psycopg:// or sqlite://"
        ) from None
    if url.get_backend_name() not in SUPPORTED_BACKENDS:
        raise ConfigurationError(
            f"dramatiq-opmetrics stores metrics in PostgreSQL or SQLite, not {url.get_backend_name()!r}"
        )
    if dialect.is_async:
        raise ConfigurationError(
            f"{url.drivername!r} is an asyncio driver; use a blocking one (postgresql+psycopg:// or sqlite://)"
        )
    try:
        dialect.import_dbapi()
    except ImportError as error:
        raise ConfigurationError(
            f"the driver of {url.drivername!r} is not installed ({error.name or error} is missing);"
            " use postgresql+psycopg:// (installed with dramatiq-opmetrics) or sqlite://"
        ) from None


@contextlib.contextmanager
def engine_for(database_url: str | URL | None = None, **engine_options: Any) -> Iterator[Engine]:
    """:func:`make_engine` for one job: yields the engine and disposes of its connections afterwards."""
    engine = make_engine(database_url, **engine_options)
    try:
        yield engine
    finally:
        engine.dispose()


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()

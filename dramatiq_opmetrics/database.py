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
#: The URL query parameter (PostgreSQL) that sets psycopg's ``prepare_threshold``: ``none`` turns
#: server-side prepared statements off, as PgBouncer in transaction pooling mode needs (before 1.21); a
#: number N prepares a query from its (N+1)th run on a connection (psycopg's default is 5).
PREPARE_THRESHOLD_PARAMETER = "prepare_threshold"
#: How long a SQLite connection waits for a lock held by another process, in seconds.
SQLITE_BUSY_TIMEOUT_S = 30


def make_engine(database_url: str | URL | None = None, **engine_options: Any) -> Engine:
    """Create an engine for the metrics database (see :func:`~dramatiq_opmetrics.config.resolve_database_url`).

    SQLite connections use WAL journaling and a busy timeout so that several processes can write one file.

    Behind PgBouncer in transaction pooling mode, add ``?prepare_threshold=none`` to the URL
    (:data:`PREPARE_THRESHOLD_PARAMETER`): psycopg then never prepares statements on the server, where
    the next transaction may run on another connection. PgBouncer does not forward the ``options`` startup
    parameter either: set a schema with ``ALTER ROLE ... SET search_path`` instead of ``?options=-csearch_path``.

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
    url = _take_prepare_threshold(url, engine_options)
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


def _take_prepare_threshold(url: URL, engine_options: dict[str, Any]) -> URL:
    """Move :data:`PREPARE_THRESHOLD_PARAMETER` from the URL's query to psycopg's connection arguments."""
    if PREPARE_THRESHOLD_PARAMETER not in url.query:
        return url
    value = url.query[PREPARE_THRESHOLD_PARAMETER]
    text = (value if isinstance(value, str) else value[-1]).strip().lower()
    if text == "none":
        threshold = None
    elif text.isdigit():
        threshold = int(text)
    else:
        raise ConfigurationError(
            f"the metrics database URL's {PREPARE_THRESHOLD_PARAMETER} must be 'none' or a whole number, got {text!r}"
        )
    engine_options["connect_args"] = {**engine_options.get("connect_args", {}), "prepare_threshold": threshold}
    return url.difference_update_query([PREPARE_THRESHOLD_PARAMETER])


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

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

from .config import resolve_database_url

#: How long a SQLite connection waits for a lock held by another process, in seconds.
SQLITE_BUSY_TIMEOUT_S = 30


def make_engine(database_url: str | URL | None = None, **engine_options: Any) -> Engine:
    """Create an engine for the metrics database (see :func:`~dramatiq_opmetrics.config.resolve_database_url`).

    SQLite connections use WAL journaling and a busy timeout so that several processes can write one file.
    """
    url = resolve_database_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine_options.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_S})
        engine = create_engine(url, **engine_options)
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    engine_options.setdefault("pool_pre_ping", True)
    return create_engine(url, **engine_options)


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

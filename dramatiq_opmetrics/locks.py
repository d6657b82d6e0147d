"""PostgreSQL advisory locks that serialise dramatiq-opmetrics' jobs across processes and hosts.

Advisory locks are database-wide, so each key is derived from the lock's name *and* the current schema:
two installations in different schemas of one database never block each other. On other backends there
are no advisory locks; SQLite serialises writers by itself, so :func:`try_advisory_xact_lock` returns True
and :func:`advisory_xact_lock` returns at once, and :func:`write_xact_lock` takes the database's write lock.

Maintenance that needs a table lock writers would queue behind (dropping or attaching a partition of the
raw table) asks for it under a short ``lock_timeout`` (:func:`short_lock_wait`, :data:`DEFAULT_LOCK_TIMEOUT_MS`):
PostgreSQL queues every later lock request behind a waiting exclusive one, so a prune waiting behind a long
reader would otherwise make every writer's COPY wait as long. Under the timeout, writers wait at most that
long, the maintenance gives up (:func:`is_lock_timeout`) and tries again later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import Connection, exc, text

from .database import local_settings

#: How long, in milliseconds, maintenance waits for a lock on the raw table that writers would queue behind
#: (the prune's ``DROP`` of a partition, the creation of one) before giving up and retrying later.
DEFAULT_LOCK_TIMEOUT_MS = 50


def advisory_lock_key(name: str, schema: str) -> int:
    """A signed 64-bit advisory lock key for lock ``name`` in ``schema``."""
    digest = hashlib.blake2b(f"dramatiq-opmetrics:{schema}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _key(connection: Connection, name: str) -> int:
    schema = connection.execute(text("SELECT current_schema()")).scalar_one()
    return advisory_lock_key(name, schema)


def advisory_xact_lock(connection: Connection, name: str) -> None:
    """Wait for the transaction-level lock ``name``; it is released when the transaction ends."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _key(connection, name)})


def try_advisory_xact_lock(connection: Connection, name: str) -> bool:
    """Take the transaction-level lock ``name`` if it is free; return whether it was taken."""
    if connection.dialect.name != "postgresql":
        return True
    taken = connection.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _key(connection, name)})
    return bool(taken.scalar_one())


def write_xact_lock(connection: Connection, name: str) -> None:
    """Serialise with every other holder of ``name`` until the transaction ends: the advisory lock
    ``name`` on PostgreSQL; on SQLite the database's write lock, which every writer shares.

    Call it first in a transaction: on SQLite it starts an immediate (write) transaction, waiting up to the
    busy timeout.
    """
    if connection.dialect.name == "sqlite":
        if not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        return
    advisory_xact_lock(connection, name)


@contextmanager
def short_lock_wait(connection: Connection, timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS) -> Iterator[None]:
    """Inside, a statement waits at most ``timeout_ms`` milliseconds for a lock, then fails
    (:func:`is_lock_timeout`): PostgreSQL's ``lock_timeout`` for the current transaction, put back afterwards
    (:func:`~dramatiq_opmetrics.database.local_settings`). Nothing happens on other databases.

    Parameters:
      connection(Connection): a connection in a transaction.
      timeout_ms(int): milliseconds; default :data:`DEFAULT_LOCK_TIMEOUT_MS` (50).
    """
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms < 1:
        raise ValueError(f"lock_timeout_ms must be a whole number of milliseconds, at least 1; got {timeout_ms!r}")
    with local_settings(connection, {"lock_timeout": f"{timeout_ms}ms"}):
        yield


def is_lock_timeout(error: BaseException) -> bool:
    """Whether ``error`` is PostgreSQL giving up on a lock after ``lock_timeout`` (SQLSTATE 55P03)."""
    original = error.orig if isinstance(error, exc.DBAPIError) else error
    return isinstance(original, psycopg.errors.LockNotAvailable)

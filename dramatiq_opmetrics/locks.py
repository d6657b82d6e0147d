"""PostgreSQL advisory locks that serialise dramatiq-opmetrics' jobs across processes and hosts.

Advisory locks are database-wide, so each key is derived from the lock's name *and* the current schema:
two installations in different schemas of one database never block each other. On other backends there
are no advisory locks; SQLite serialises writers by itself, so :func:`try_advisory_xact_lock` returns True
and :func:`advisory_xact_lock` returns at once, and :func:`write_xact_lock` takes the database's write lock.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, text


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

"""Run dramatiq-opmetrics' Alembic migrations from an installed package or a checkout.

The migration scripts travel inside the wheel (``dramatiq_opmetrics/alembic``); in a checkout they are
the top-level ``alembic/`` folder. They keep their own version table, :data:`VERSION_TABLE`, so they never
touch an application's own Alembic history in the same database.

Each run is one transaction (PostgreSQL and SQLite both change their schema transactionally): it applies
every migration or none. Concurrent runs (every worker host running ``dramatiq-opmetrics migrate`` at
deploy time) serialise on a lock taken first in that transaction: on PostgreSQL a transaction-level
advisory lock (:data:`MIGRATE_LOCK`, per schema), on SQLite the database's write lock (an immediate
transaction). The run that waited finds the work done and does nothing. Nothing depends on the session
outside that transaction, so ``migrate`` also works through PgBouncer in transaction pooling mode, given
what every connection through it needs (see :func:`~dramatiq_opmetrics.database.make_engine`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from alembic import command

from .config import resolve_database_url
from .database import engine_for
from .locks import write_xact_lock
from .partitions import DEFAULT_PARTITION_DAYS_AHEAD, ensure_partitions

#: The Alembic version table of dramatiq-opmetrics' migrations.
VERSION_TABLE = "opmetrics_alembic_version"
#: The name of the advisory lock under which migrations run (see :mod:`~dramatiq_opmetrics.locks`).
MIGRATE_LOCK = "migrate"


def script_location() -> Path:
    """The folder holding ``env.py`` and ``versions/``: inside the package when installed, else the repo's."""
    packaged = Path(__file__).parent / "alembic"
    if (packaged / "env.py").is_file():
        return packaged
    checkout = Path(__file__).parent.parent / "alembic"
    if (checkout / "env.py").is_file():
        return checkout
    raise FileNotFoundError("dramatiq-opmetrics' migration scripts are missing from this installation")


def alembic_config(database_url: str | URL | None = None, *, connection: Connection | None = None) -> Config:
    """An Alembic :class:`~alembic.config.Config` for our migrations.

    Pass ``connection`` to run them on an existing connection (inside an application's own migration run);
    otherwise the URL is resolved like everywhere else (argument, ``OPMETRICS_DATABASE_URL``,
    ``DATABASE_URL``).
    """
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.attributes["configure_logging"] = False
    if connection is not None:
        config.attributes["connection"] = connection
    else:
        url = resolve_database_url(database_url)
        # Alembic's Config interpolates '%', so escape it in the URL.
        config.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


@contextlib.contextmanager
def migration_connection(database_url: str | URL | None = None) -> Iterator[Connection]:
    """A connection in the transaction of one migration run, holding the lock that serialises migration
    runs; committed at the end of the block, rolled back if it raises.

    Waiting for the lock counts against the busy timeout on SQLite, and against ``lock_timeout`` and
    ``statement_timeout`` on PostgreSQL if they are set.
    """
    with engine_for(database_url, maintenance=True) as engine, engine.begin() as connection:
        write_xact_lock(connection, MIGRATE_LOCK)
        yield connection


def upgrade(
    database_url: str | URL | None = None,
    revision: str = "head",
    *,
    partition_days_ahead: int = DEFAULT_PARTITION_DAYS_AHEAD,
) -> None:
    """Migrate the metrics database to ``revision`` and, on PostgreSQL, create partitions from today on.

    Safe to run from several processes at once (see the module's docstring).
    """
    with migration_connection(database_url) as connection:
        command.upgrade(alembic_config(connection=connection), revision)
        if revision == "head":
            today = dt.datetime.now(dt.UTC).date()
            ensure_partitions(connection, today, today + dt.timedelta(days=partition_days_ahead))


def downgrade(database_url: str | URL | None = None, revision: str = "base") -> None:
    """Migrate the metrics database down to ``revision`` (``base`` removes every table of ours)."""
    with migration_connection(database_url) as connection:
        command.downgrade(alembic_config(connection=connection), revision)


def current_revision(database_url: str | URL | None = None) -> str | None:
    """The revision the metrics database is at, or None if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine_for(database_url) as engine, engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()

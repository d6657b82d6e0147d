"""Alembic environment for dramatiq-opmetrics' own migrations.

The version table is ``opmetrics_alembic_version``, so these migrations live beside an application's
own Alembic history in the same database. The URL comes from, in order: a connection passed in
``config.attributes["connection"]`` (to run inside an application's transaction), the
``sqlalchemy.url`` option, then ``OPMETRICS_DATABASE_URL`` or ``DATABASE_URL``.
"""

from __future__ import annotations

from logging.config import fileConfig

from sqlalchemy import Connection

from alembic import context
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.migrate import VERSION_TABLE
from dramatiq_opmetrics.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Migrations may rewrite big tables: the long statement timeout of maintenance jobs.
    engine = make_engine(config.get_main_option("sqlalchemy.url") or None, maintenance=True)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("dramatiq-opmetrics migrations need a live database connection (no --sql mode)")
run_migrations_online()

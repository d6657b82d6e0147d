"""Run the application's migrations and dramatiq-opmetrics' on one connection, in one transaction.

dramatiq-opmetrics keeps its own Alembic version table (``opmetrics_alembic_version``), so its history never
mixes with the application's ``alembic_version``: two ``command.upgrade`` calls, one per history, share the
connection. If either fails, neither is committed.

Run it::

    python -m examples.own_alembic.migrate_all postgresql+psycopg://user@host/app
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from alembic.config import Config
from sqlalchemy import create_engine

from alembic import command
from dramatiq_opmetrics.migrate import DEFAULT_PARTITION_DAYS_AHEAD, alembic_config
from dramatiq_opmetrics.partitions import ensure_partitions

#: The application's own alembic.ini.
APP_ALEMBIC_INI = Path(__file__).with_name("alembic.ini")


def migrate_all(database_url: str) -> None:
    """Upgrade the application's tables, then dramatiq-opmetrics' tables, in one transaction."""
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            app_config = Config(str(APP_ALEMBIC_INI))
            app_config.attributes["connection"] = connection
            command.upgrade(app_config, "head")
            command.upgrade(alembic_config(connection=connection), "head")
            # On PostgreSQL, have the raw table's day partitions ready (a no-op elsewhere).
            today = dt.datetime.now(dt.UTC).date()
            ensure_partitions(connection, today, today + dt.timedelta(days=DEFAULT_PARTITION_DAYS_AHEAD))
    finally:
        engine.dispose()


if __name__ == "__main__":
    migrate_all(sys.argv[1])
    print("application and dramatiq-opmetrics migrations are at head")

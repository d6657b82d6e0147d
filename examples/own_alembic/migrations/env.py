"""The example application's Alembic environment.

It follows Alembic's cookbook recipe "Sharing a Connection across one or more programmatic migration
commands": a connection passed in ``config.attributes["connection"]`` is used as is, so ``migrate_all.py``
can run the application's migrations and dramatiq-opmetrics' in one transaction. Run alone (``alembic -c
examples/own_alembic/alembic.ini upgrade head``), it reads ``APP_DATABASE_URL``.
"""

from __future__ import annotations

import os

from sqlalchemy import Connection, create_engine

from alembic import context


def run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = create_engine(os.environ["APP_DATABASE_URL"])
    with engine.begin() as own_connection:
        run(own_connection)
    engine.dispose()

"""Add the metric types ``oldest_message_age``, ``worker_threads`` and ``busy_threads``.

Why: queue depth tells how many messages wait, not for how long, and wait time is only recorded when a
worker picks a message up, so a stuck queue recorded nothing. ``oldest_message_age`` (sampled with queue
depth) shows it. ``worker_threads`` and ``busy_threads``, recorded by every worker process each interval,
make "workers online" and "utilisation" series like any other. All three need a place in the metric type
column.

As in 0003: on PostgreSQL the values are added to the enum type ``opmetrics_metric_type`` (inside the
migration's transaction from PostgreSQL 12 on, in an Alembic autocommit block before, where ``ALTER TYPE
... ADD VALUE`` cannot run in a transaction block); on SQLite both tables are rebuilt with the wider CHECK
constraint (batch mode copies their rows).

Downgrade deletes the raw and daily rows of the three types. On SQLite it restores the narrower CHECK
constraint; PostgreSQL cannot drop a value from an enum type, so there the values stay in the type
(unused, harmless, and upgrading again is a no-op for them).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ENUM_NAME = "opmetrics_metric_type"
NEW_TYPES = ("oldest_message_age", "worker_threads", "busy_threads")
OLD_TYPES = (
    "processing_time",
    "wait_time",
    "error",
    "skipped",
    "queue_depth",
    "prompt_tokens",
    "completion_tokens",
    "confidence",
    "dropped_samples",
    "rejected_samples",
    "clock_skew",
)
TABLES = ("operational_metrics", "operational_metrics_daily")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        statements = [f"ALTER TYPE {ENUM_NAME} ADD VALUE IF NOT EXISTS '{value}'" for value in NEW_TYPES]
        if (bind.dialect.server_version_info or (0,)) >= (12,):
            for statement in statements:
                op.execute(statement)
        else:
            with op.get_context().autocommit_block():
                for statement in statements:
                    op.execute(statement)
        return
    _replace_check_constraint(OLD_TYPES, OLD_TYPES + NEW_TYPES)


def downgrade() -> None:
    bind = op.get_bind()
    listed = ", ".join(f"'{value}'" for value in NEW_TYPES)
    for table in TABLES:
        op.execute(f"DELETE FROM {table} WHERE metric_type IN ({listed})")
    if bind.dialect.name != "postgresql":
        _replace_check_constraint(OLD_TYPES + NEW_TYPES, OLD_TYPES)


def _replace_check_constraint(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    """Rebuild both tables with ``metric_type`` checked against ``new`` (SQLite's only way to alter a CHECK)."""
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.alter_column(
                "metric_type",
                existing_type=sa.Enum(*old, name=ENUM_NAME, create_constraint=True),
                type_=sa.Enum(*new, name=ENUM_NAME, create_constraint=True),
                existing_nullable=False,
            )

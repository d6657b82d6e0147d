"""Add the metric types ``rejected_samples`` and ``clock_skew``.

Why: the writer no longer retries forever a batch the database refuses; it drops only the refused samples
and counts them as ``rejected_samples``. A message whose due time is not a plausible time records a
``clock_skew`` sample instead of an absurd wait time. Both need a place in the metric type column.

On PostgreSQL the values are added to the enum type ``opmetrics_metric_type``. From PostgreSQL 12 on that
runs inside the migration's transaction (so it stays atomic, and works on an application's connection
inside its own transaction); before 12 ``ALTER TYPE ... ADD VALUE`` cannot run in a transaction block, so
it runs in an Alembic autocommit block. On SQLite the type is a CHECK constraint on two tables, which
SQLite cannot alter: both tables are rebuilt with the wider constraint (batch mode copies their rows).

Downgrade deletes the raw and daily rows of the two types. On SQLite it restores the narrower CHECK
constraint; PostgreSQL cannot drop a value from an enum type, so there the two values stay in the type
(unused, harmless, and upgrading again is a no-op for them).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ENUM_NAME = "opmetrics_metric_type"
NEW_TYPES = ("rejected_samples", "clock_skew")
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

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

from alembic import op
from dramatiq_opmetrics.metric_type_migrations import add_metric_types, remove_metric_types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

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


def upgrade() -> None:
    add_metric_types(op, OLD_TYPES, NEW_TYPES)


def downgrade() -> None:
    remove_metric_types(op, OLD_TYPES, NEW_TYPES)

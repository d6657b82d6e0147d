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

from alembic import op
from dramatiq_opmetrics.metric_type_migrations import add_metric_types, remove_metric_types

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

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


def upgrade() -> None:
    add_metric_types(op, OLD_TYPES, NEW_TYPES)


def downgrade() -> None:
    remove_metric_types(op, OLD_TYPES, NEW_TYPES)

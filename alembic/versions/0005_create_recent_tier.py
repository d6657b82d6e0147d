"""Create the recent tier: per-minute and per-10-minute aggregates of the raw rows, and its fold state.

Why: charts of the last hours (1-minute buckets for an hour, 10-minute buckets for a day) read
``opmetrics_recent_aggregates`` instead of every raw row of the range, so they stay fast at fleet scale.
One row per (width, bucket start, metric type, label set) holds the count, sum, min and max of the raw rows
folded into it and the multiset of their histogram bucket keys (``keys``: an ``integer[]`` on PostgreSQL, a
JSON list on SQLite), from which percentiles within 1% are read; ``p50``/``p95``/``p99`` are those
percentiles once computed (NULL until then, and again when more rows are folded into the bucket).
``opmetrics_recent_state`` (one row) holds the fold's watermark: every raw row with an id up to
``folded_id`` and a ``recorded_at`` from ``floor`` on is counted in the tier, exactly once.
See ``dramatiq_opmetrics/recent_tier.py``.

The raw rows stay the source of truth: downgrading drops both tables and loses nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        metric_type: sa.types.TypeEngine[str] = postgresql.ENUM(name="opmetrics_metric_type", create_type=False)
        keys_type: sa.types.TypeEngine[object] = postgresql.ARRAY(sa.Integer())
    else:
        # SQLite: the CHECK constraint of metric types lives on the raw and daily tables only; this table is
        # written from them.
        metric_type = sa.Text()
        keys_type = sa.JSON()
    op.create_table(
        "opmetrics_recent_aggregates",
        sa.Column("width_minutes", sa.SmallInteger(), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metric_type", metric_type, nullable=False),
        sa.Column("label_set_id", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("keys", keys_type, nullable=False),
        sa.Column("p50", sa.Float(), nullable=True),
        sa.Column("p95", sa.Float(), nullable=True),
        sa.Column("p99", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint(
            "width_minutes", "bucket_start", "metric_type", "label_set_id", name="pk_opmetrics_recent_aggregates"
        ),
    )
    # The fold computes the percentiles of the buckets that lack them: find those without a scan.
    op.create_index(
        "ix_opmetrics_recent_aggregates_unsettled",
        "opmetrics_recent_aggregates",
        ["bucket_start"],
        postgresql_where=sa.text("p50 IS NULL"),
        sqlite_where=sa.text("p50 IS NULL"),
    )
    op.create_table(
        "opmetrics_recent_state",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("folded_id", sa.BigInteger(), nullable=False),
        sa.Column("floor", sa.DateTime(timezone=True), nullable=False),
        sa.Column("candidate_id", sa.BigInteger(), nullable=True),
        sa.Column("candidate_holders", sa.JSON(), nullable=True),
        sa.Column("folded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_opmetrics_recent_state"),
    )


def downgrade() -> None:
    op.drop_table("opmetrics_recent_state")
    op.drop_index("ix_opmetrics_recent_aggregates_unsettled", table_name="opmetrics_recent_aggregates")
    op.drop_table("opmetrics_recent_aggregates")

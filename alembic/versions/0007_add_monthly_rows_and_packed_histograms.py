"""Add monthly aggregates and packed histograms, so that a year is read as 12 rows per label set.

Why: a range read merged the JSON histogram of every daily row in the range: a year of 200 label sets is
37 million JSON buckets to expand, 50 times the time it takes to read the rows. Two additions, both next to
what exists (the daily rows keep their columns and their meaning):

- ``operational_metrics_daily.histogram_packed``: the daily histogram packed as an array of counts
  (``dramatiq_opmetrics/packed_histograms.py``), merged without parsing. The rollup writes it with every
  daily row; rows rolled up before this migration get it when the rollup next merges their month.
- ``operational_metrics_monthly``: per (metric type, calendar month, label set) one row of the whole month
  (``part`` 0) and one per third of it (days 1-10, 11-20, 21-end: ``part`` 1, 2, 3), the daily rows merged
  (count, sum and its exact parts, min, max, packed histogram, percentiles, which days the period has).
  The rollup re-merges a month whenever it writes one of its days, and its catch-up merges every month
  whose daily rows changed (every month, the first time after this migration), so the migration itself
  reads no rows and runs in milliseconds.

Downgrading drops the table and the column; nothing is lost (both are derived from the daily rows'
JSON histograms, which stay).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column("operational_metrics_daily", sa.Column("histogram_packed", sa.LargeBinary(), nullable=True))
    if postgres:
        metric_type: sa.types.TypeEngine[str] = postgresql.ENUM(name="opmetrics_metric_type", create_type=False)
        labels_type: sa.types.TypeEngine[object] = postgresql.JSONB()
        floats_type: sa.types.TypeEngine[object] = postgresql.ARRAY(sa.Float())
    else:
        # SQLite: the CHECK constraint of metric types lives on the raw and daily tables only; this table is
        # written from the daily one.
        metric_type, labels_type, floats_type = sa.Text(), sa.JSON(), sa.JSON()
    op.create_table(
        "operational_metrics_monthly",
        sa.Column("metric_type", metric_type, nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("part", sa.SmallInteger(), nullable=False),
        sa.Column("labels_key", sa.Text(), nullable=False),
        sa.Column("labels", labels_type, nullable=False),
        sa.Column("sample_count", sa.BigInteger(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("sum_parts", floats_type, nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("p50", sa.Float(), nullable=True),
        sa.Column("p95", sa.Float(), nullable=True),
        sa.Column("p99", sa.Float(), nullable=True),
        sa.Column("histogram_packed", sa.LargeBinary(), nullable=True),
        sa.Column("daily_rows", sa.Integer(), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.Column("source_rolled_up_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("metric_type", "month", "part", "labels_key", name="pk_operational_metrics_monthly"),
    )
    # A range read finds the periods it covers from this index alone.
    op.create_index(
        "ix_operational_metrics_monthly_month",
        "operational_metrics_monthly",
        ["month", "part", "first_day", "last_day"],
    )


def downgrade() -> None:
    op.drop_index("ix_operational_metrics_monthly_month", table_name="operational_metrics_monthly")
    op.drop_table("operational_metrics_monthly")
    op.drop_column("operational_metrics_daily", "histogram_packed")

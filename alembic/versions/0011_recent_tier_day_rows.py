"""Add the recent tier's day rows.

Why: reading a day not rolled up yet (today, and yesterday before the nightly rollup) was the costly part
of every range read: a day of 5.4 million raw rows took 4.75 times one plain ``GROUP BY`` of its partition,
to collect the bucket key of every value; from day rows it is a few thousand rows plus the raw rows of the
last hour. ``opmetrics_recent_days`` holds per (UTC day, metric type, label set) the ``count``, ``sum``,
``min``, ``max`` and packed histogram (:mod:`~dramatiq_opmetrics.packed_histograms`) of the tier's hourly
buckets of that day, merged once an hour by the fold (:mod:`~dramatiq_opmetrics.recent_tier`);
``opmetrics_recent_state.built_days_until`` says up to where (NULL: not started yet; the first fold after
this migration merges the hourly buckets already built).

The day rows are derived from the tier: downgrading drops them and the column.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_TABLE = "opmetrics_recent_days"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    metric_type: sa.types.TypeEngine[str] = (
        postgresql.ENUM(name="opmetrics_metric_type", create_type=False) if postgres else sa.Text()
    )
    op.create_table(
        _TABLE,
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("metric_type", metric_type, nullable=False),
        sa.Column("label_set_id", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("histogram_packed", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("day", "metric_type", "label_set_id", name=f"pk_{_TABLE}"),
    )
    with op.batch_alter_table("opmetrics_recent_state") as batch:
        batch.add_column(sa.Column("built_days_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("opmetrics_recent_state") as batch:
        batch.drop_column("built_days_until")
    op.drop_table(_TABLE)

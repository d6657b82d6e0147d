"""Add the recent tier's hour rows.

Why: the percentiles of totals over a window of hours (``report --last 24h``, alert rules over hours) merged
the histogram key of every value of the window, read from the tier's hourly buckets: 3 s for 24 hours at 20
million raw rows a day and 200 label sets. ``opmetrics_recent_hours`` holds per (UTC hour, metric type,
label set) the ``count``, ``sum``, ``min``, ``max`` and packed histogram
(:mod:`~dramatiq_opmetrics.packed_histograms`) of the tier's 10-minute buckets of that hour, merged by the
fold with the day rows (:mod:`~dramatiq_opmetrics.recent_tier`): a few hundred bytes a row, merged in
Python without parsing.

Both are kept up to ``opmetrics_recent_state.built_days_until``, so upgrading empties the day rows and
resets that watermark: the first fold after it merges the 10-minute buckets already built into both (a
second or two for three days of buckets); readers meanwhile read those days from the tier and the raw rows.
The hour rows are derived from the tier: downgrading drops them (and leaves the day rows to be merged anew
the same way).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_TABLE = "opmetrics_recent_hours"


def _merge_day_rows_anew() -> None:
    op.execute("DELETE FROM opmetrics_recent_days")
    op.execute("UPDATE opmetrics_recent_state SET built_days_until = NULL")


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    metric_type: sa.types.TypeEngine[str] = (
        postgresql.ENUM(name="opmetrics_metric_type", create_type=False) if postgres else sa.Text()
    )
    op.create_table(
        _TABLE,
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metric_type", metric_type, nullable=False),
        sa.Column("label_set_id", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("histogram_packed", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "metric_type", "label_set_id", name=f"pk_{_TABLE}"),
    )
    _merge_day_rows_anew()


def downgrade() -> None:
    op.drop_table(_TABLE)
    _merge_day_rows_anew()

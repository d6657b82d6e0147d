"""A B-tree time index on the raw table's default partition.

Why: readers ask which days of a range may hold raw rows (``query_metrics`` for the days not rolled up yet,
the report over a window, the dashboard's pages, the Prometheus exporter's fleet totals, the prune). On
PostgreSQL the days with a partition are read from the catalogue, but the days with rows in the default
partition (rows of days without a partition: the rollup that creates them ahead not scheduled, a partition
not created because the raw table was busy) were found by grouping every row of it by day, on every read:
1.26 s at 4 million rows there, and the exporter asks every scrape. The time index of the partitions is a
BRIN one, which cannot find a smallest value; a B-tree on ``recorded_at`` of the default partition alone
finds each day holding rows in one probe (:func:`~dramatiq_opmetrics.partitions.default_partition_days`:
1.5 ms at those 4 million rows), and lets the move of a day's rows into its new partition read only them.

It costs writes nothing while the default partition stays empty, which it is when the rollup creates the
partitions ahead (:data:`~dramatiq_opmetrics.partitions.DEFAULT_PARTITION_DAYS_AHEAD` days); the rows that
land there pay one B-tree entry each. Day partitions do not get it: the index is the default partition's
own, not the partitioned table's. Building it holds off writes to days without a partition while it reads
the default partition (an instant when it is empty, about a second per 4 million rows otherwise).

PostgreSQL only: SQLite, the embedded backend of small setups, has a plain raw table with its own index.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_INDEX = "ix_operational_metrics_default_recorded_at"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE INDEX {_INDEX} ON operational_metrics_default (recorded_at)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX {_INDEX}")

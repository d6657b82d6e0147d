"""The recent tier's read index by metric type first: a read of some metric types over a range reads only
their entries.

Why: migration 0009's read index is ordered by ``(width_minutes, bucket_start, metric_type, label_set_id)``,
so a read of one metric type over a range (every chart, the report's tables, alerting, the exporter's
counted types) went through the index entries of every metric type of the range and dropped the others
one by one: the last hour per minute of processing times at 200 actors read 24,000 entries to keep 12,800
(9 ms of a 100 ms series read). Ordered by ``(width_minutes, metric_type, bucket_start, label_set_id)``,
with the same included columns, it reads one range per metric type asked for. A read of every metric type
asks for each of them (:mod:`~dramatiq_opmetrics.series`); the fold, the builds and the look-ups of keys use
the primary key, as before.

The index is rebuilt on each partition of the tier (three days of buckets by default: seconds), holding off
the fold (the tier's only writer) and its readers meanwhile. Downgrading rebuilds 0009's order.

PostgreSQL only: SQLite, the embedded backend of small setups, keeps its primary keys.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_TABLE = "opmetrics_recent_aggregates"
_INDEX = "opmetrics_recent_aggregates_read_idx"
_INCLUDED = "INCLUDE (count, sum, min, max, p50, p95, p99)"


def _rebuild(columns: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP INDEX {_INDEX}")
    op.execute(f"CREATE INDEX {_INDEX} ON {_TABLE} ({columns}) {_INCLUDED}")


def upgrade() -> None:
    _rebuild("width_minutes, metric_type, bucket_start, label_set_id")


def downgrade() -> None:
    _rebuild("width_minutes, bucket_start, metric_type, label_set_id")

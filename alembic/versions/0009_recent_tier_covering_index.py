"""Reads of the recent tier without keys, and of the daily rows without histograms, read indexes of small
entries, not the tables' rows.

Why: migration 0006 meant reads of buckets without their keys to read rows of about 100 bytes, the keys
stored out of line (``toast_tuple_target`` 512, storage ``EXTERNAL``). PostgreSQL moves values out of line
only once a row passes about 2 KB, whatever ``toast_tuple_target`` says, so a 10-minute bucket of a label
set with a few hundred samples (about 1.4 KB of keys) stays whole in its row: a day of 10-minute buckets
of 200 label sets read 90 MB to use 3 MB. This index holds each bucket's key columns and every column a
read without keys needs (``count``, ``sum``, ``min``, ``max``, ``p50``, ``p95``, ``p99``), so those reads
are index-only scans; keys are still read by primary key, only for the points that merge buckets.

Index-only scans skip the table only for pages that VACUUM marked all-visible, so each partition is
vacuumed after far fewer inserts than by default (``autovacuum_vacuum_insert_scale_factor``): the tier
grows by a minute's buckets at a time.

The daily rows' read index does the same for reads of a range's counts, sums, p95 and rollup times without
histograms (the dashboard's trends and their fingerprint): a year of 200 actors' daily rows is 490 MB of
rows with their histograms and 40 MB of index; the trends of the 365-day overview read it in 0.15 s instead
of 0.7 s. Building it on a long history takes a while and holds off the rollup (the only writer of daily
rows) meanwhile.

PostgreSQL only: SQLite, the embedded backend of small setups, keeps its primary keys.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TABLE = "opmetrics_recent_aggregates"
_INDEX = "opmetrics_recent_aggregates_read_idx"
_DAILY_INDEX = "operational_metrics_daily_read_idx"
#: The widths of the buckets, each a partition of the tier (migration 0006).
_WIDTHS_MINUTES = (1, 10, 60)
#: Inserted rows, as a share of a partition's rows, after which autovacuum vacuums it.
_INSERT_SCALE_FACTOR = 0.005


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"CREATE INDEX {_INDEX} ON {_TABLE} (width_minutes, bucket_start, metric_type, label_set_id)"
        " INCLUDE (count, sum, min, max, p50, p95, p99)"
    )
    for width in _WIDTHS_MINUTES:
        op.execute(
            f"ALTER TABLE {_TABLE}_{width}m SET (autovacuum_vacuum_insert_scale_factor = {_INSERT_SCALE_FACTOR})"
        )
    op.execute(
        f"CREATE INDEX {_DAILY_INDEX} ON operational_metrics_daily (date, metric_type)"
        " INCLUDE (labels_key, sample_count, sum, p95, rolled_up_at)"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for width in _WIDTHS_MINUTES:
        op.execute(f"ALTER TABLE {_TABLE}_{width}m RESET (autovacuum_vacuum_insert_scale_factor)")
    op.execute(f"DROP INDEX {_DAILY_INDEX}")
    op.execute(f"DROP INDEX {_INDEX}")

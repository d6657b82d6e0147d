"""The recent tier folds complete minutes only, keeps hourly buckets too, and always holds its percentiles.

Why: keeping the tier current must cost a small fraction of writing the raw rows, and reads must not sort
keys. Three changes to ``opmetrics_recent_state`` and the meaning of its rows:

- ``cutoff``: the tier holds the raw rows recorded before it (whole minutes), so a fold writes each minute's
  buckets once, when the minute is over, instead of rewriting the minute in progress at every fold;
  ``skipped_id``, the smallest id of a row left for later because it was recorded from the cutoff on, lets
  the next fold find those rows by id instead of by time.
- ``built_10m_until`` and ``built_60m_until``: 10-minute and hourly buckets are built once from the finer
  buckets when they are complete (up to these times), instead of being rewritten at every fold; hourly
  buckets (``width_minutes`` 60) are new, for 72-hour views.
- ``p50``/``p95``/``p99`` are written with every bucket (and recomputed when late rows are folded in), so the
  partial index that found buckets without them goes.
- On PostgreSQL the table is partitioned by width (a day of 10-minute buckets is read without touching the
  pages of 1-minute ones), and ``keys`` is stored out of line once a row would pass 512 bytes
  (``toast_tuple_target``, storage ``EXTERNAL``: no compression to pay when folding), so reading buckets
  without their keys reads rows of about 100 bytes.

The tier is derived from the raw rows: its rows are deleted in both directions and the next fold rebuilds
them from the raw rows of its retention.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COLUMNS = ("cutoff", "built_10m_until", "built_60m_until")
_TABLE = "opmetrics_recent_aggregates"
#: The widths of the buckets (each a partition on PostgreSQL).
_WIDTHS_MINUTES = (1, 10, 60)


def _columns(keys_type: sa.types.TypeEngine[object], metric_type: sa.types.TypeEngine[str]) -> list[sa.Column[object]]:
    return [
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
    ]


def upgrade() -> None:
    op.execute("DELETE FROM opmetrics_recent_state")
    with op.batch_alter_table("opmetrics_recent_state") as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, sa.DateTime(timezone=True), nullable=False))
        batch.add_column(sa.Column("skipped_id", sa.BigInteger(), nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        op.execute(f"DELETE FROM {_TABLE}")
        op.drop_index("ix_opmetrics_recent_aggregates_unsettled", table_name=_TABLE)
        return
    op.drop_table(_TABLE)
    op.execute(
        f"CREATE TABLE {_TABLE} (width_minutes smallint NOT NULL, bucket_start timestamptz NOT NULL,"
        " metric_type opmetrics_metric_type NOT NULL, label_set_id integer NOT NULL, count bigint NOT NULL,"
        " sum float8 NOT NULL, min float8 NOT NULL, max float8 NOT NULL, keys integer[] NOT NULL,"
        " p50 float8, p95 float8, p99 float8,"
        " CONSTRAINT pk_opmetrics_recent_aggregates PRIMARY KEY (width_minutes, bucket_start, metric_type,"
        " label_set_id)) PARTITION BY LIST (width_minutes)"
    )
    for width in _WIDTHS_MINUTES:
        partition = f"{_TABLE}_{width}m"
        op.execute(f"CREATE TABLE {partition} PARTITION OF {_TABLE} FOR VALUES IN ({width})")
        op.execute(f"ALTER TABLE {partition} SET (toast_tuple_target = 512)")
        op.execute(f"ALTER TABLE {partition} ALTER COLUMN keys SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.execute("DELETE FROM opmetrics_recent_state")
    with op.batch_alter_table("opmetrics_recent_state") as batch:
        for name in (*_COLUMNS, "skipped_id"):
            batch.drop_column(name)
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.drop_table(_TABLE)
        op.create_table(
            _TABLE,
            *_columns(postgresql.ARRAY(sa.Integer()), postgresql.ENUM(name="opmetrics_metric_type", create_type=False)),
            sa.PrimaryKeyConstraint(
                "width_minutes", "bucket_start", "metric_type", "label_set_id", name="pk_opmetrics_recent_aggregates"
            ),
        )
    else:
        op.execute(f"DELETE FROM {_TABLE}")
    op.create_index(
        "ix_opmetrics_recent_aggregates_unsettled",
        _TABLE,
        ["bucket_start"],
        postgresql_where=sa.text("p50 IS NULL"),
        sqlite_where=sa.text("p50 IS NULL"),
    )

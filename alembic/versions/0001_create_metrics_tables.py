"""Create the label-set, raw and daily metric tables.

Why: dramatiq-opmetrics stores raw samples for the retention period and permanent daily aggregates.
Raw rows reference their labels (stored once per distinct set in ``opmetrics_label_sets``) so a raw row
stays under 100 bytes with its index on PostgreSQL. There the raw table is partitioned by day on
``recorded_at`` with a default partition that catches days without one; retention drops partitions.
On SQLite (the embedded default) the raw table is a plain table.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

METRIC_TYPES = (
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
    postgres = op.get_bind().dialect.name == "postgresql"
    json_type = postgresql.JSONB() if postgres else sa.JSON()
    if postgres:
        metric_type = postgresql.ENUM(*METRIC_TYPES, name="opmetrics_metric_type", create_type=False)
        metric_type.create(op.get_bind())
    else:
        metric_type = sa.Enum(*METRIC_TYPES, name="opmetrics_metric_type", create_constraint=True)

    op.create_table(
        "opmetrics_label_sets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("labels_key", sa.Text(), nullable=False),
        sa.Column("labels", json_type, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_opmetrics_label_sets"),
        sa.UniqueConstraint("labels_key", name="uq_opmetrics_label_sets_labels_key"),
    )

    if postgres:
        # Column order puts the 8-byte columns first so the row has no alignment padding.
        op.execute("CREATE SEQUENCE operational_metrics_id_seq AS bigint")
        op.execute(
            """
            CREATE TABLE operational_metrics (
                id bigint NOT NULL DEFAULT nextval('operational_metrics_id_seq'),
                recorded_at timestamptz NOT NULL,
                value double precision NOT NULL,
                label_set_id integer NOT NULL,
                metric_type opmetrics_metric_type NOT NULL,
                CONSTRAINT pk_operational_metrics PRIMARY KEY (id, recorded_at)
            ) PARTITION BY RANGE (recorded_at)
            """
        )
        op.execute("ALTER SEQUENCE operational_metrics_id_seq OWNED BY operational_metrics.id")
        op.execute("CREATE TABLE operational_metrics_default PARTITION OF operational_metrics DEFAULT")
        # BRIN costs almost nothing per row and serves time-range scans of the default partition.
        op.execute("CREATE INDEX ix_operational_metrics_recorded_at ON operational_metrics USING brin (recorded_at)")
    else:
        op.create_table(
            "operational_metrics",
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("metric_type", metric_type, nullable=False),
            sa.Column("value", sa.Float(), nullable=False),
            sa.Column("label_set_id", sa.Integer(), nullable=False),
            sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id", name="pk_operational_metrics"),
        )
        op.create_index("ix_operational_metrics_recorded_at", "operational_metrics", ["recorded_at"])

    op.create_table(
        "operational_metrics_daily",
        sa.Column("metric_type", metric_type, nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("labels_key", sa.Text(), nullable=False),
        sa.Column("labels", json_type, nullable=False),
        sa.Column("sample_count", sa.BigInteger(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("avg", sa.Float(), nullable=False),
        sa.Column("p50", sa.Float(), nullable=True),
        sa.Column("p95", sa.Float(), nullable=True),
        sa.Column("p99", sa.Float(), nullable=True),
        sa.Column("histogram", json_type, nullable=True),
        sa.Column("rolled_up_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("metric_type", "date", "labels_key", name="pk_operational_metrics_daily"),
    )
    op.create_index("ix_operational_metrics_daily_date", "operational_metrics_daily", ["date"])


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.drop_index("ix_operational_metrics_daily_date", table_name="operational_metrics_daily")
    op.drop_table("operational_metrics_daily")
    if postgres:
        # Dropping the parent drops every partition and the owned sequence.
        op.execute("DROP TABLE operational_metrics")
    else:
        op.drop_index("ix_operational_metrics_recorded_at", table_name="operational_metrics")
        op.drop_table("operational_metrics")
    op.drop_table("opmetrics_label_sets")
    if postgres:
        op.execute("DROP TYPE opmetrics_metric_type")

"""Create the interval claims table.

Why: queue depth is sampled by every worker process, yet the fleet must write one sample per queue per
interval. On brokers other than Redis the processes agree through this table: each tries to insert
``(job, interval_start)`` and only the one whose insert succeeds samples. A transaction-scoped advisory
lock is not enough, because a second process could take it just after the first committed and sample the
same interval again; a row keyed by the interval start cannot be inserted twice. Rows are pruned after an
hour, so the table stays small.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "opmetrics_interval_claims",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("interval_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job", "interval_start", name="pk_opmetrics_interval_claims"),
    )


def downgrade() -> None:
    op.drop_table("opmetrics_interval_claims")

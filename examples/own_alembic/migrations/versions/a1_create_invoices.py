"""The example application's first migration: its own ``example_invoices`` table.

Revision ID: a1
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "a1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "example_invoices",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("customer", sa.String(100), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("example_invoices")

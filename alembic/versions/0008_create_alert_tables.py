"""Create the alerting tables: alert states, their history, silences and the delivery outbox.

Why: alerting (``dramatiq_opmetrics/alert_evaluator.py``) must survive a restart and a change of evaluating
process without losing a firing alert or sending it twice, so everything it knows lives in the database,
written in the evaluation's one transaction:

- ``opmetrics_alert_states``: per rule and group (the rule's ``group_by`` labels) its state (``ok``,
  ``pending``, ``firing``), since when, the last value and evaluation, and what the notifiers were last told
  (``notified_state``, ``last_notified_at``: a new evaluator sends only what they have not heard);
- ``opmetrics_alert_transitions``: the history of state changes;
- ``opmetrics_alert_silences``: rules whose notifications are held back until a time;
- ``opmetrics_alert_deliveries``: the outbox, one row per notification and target, so a notifier that is
  down gets the notification when it is back (attempts, next attempt, delivered at, last error).

All tables are small (rules times groups, plus a few rows per notification) and plain on both backends.
Downgrading drops them: the alerts' states and history are lost, the metrics are not touched.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    json_type: sa.types.TypeEngine[object] = postgresql.JSONB() if postgres else sa.JSON()
    when = sa.DateTime(timezone=True)
    op.create_table(
        "opmetrics_alert_states",
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("group_labels", json_type, nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("since", when, nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("evaluated_at", when, nullable=False),
        sa.Column("notified_state", sa.Text(), nullable=True),
        sa.Column("last_notified_at", when, nullable=True),
        sa.CheckConstraint("state IN ('ok', 'pending', 'firing')", name="ck_opmetrics_alert_states_state"),
        sa.PrimaryKeyConstraint("rule", "group_key", name="pk_opmetrics_alert_states"),
    )
    op.create_table(
        "opmetrics_alert_transitions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("from_state", sa.Text(), nullable=False),
        sa.Column("to_state", sa.Text(), nullable=False),
        sa.Column("at", when, nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_opmetrics_alert_transitions"),
    )
    op.create_index("ix_opmetrics_alert_transitions_rule_at", "opmetrics_alert_transitions", ["rule", "at"])
    op.create_table(
        "opmetrics_alert_silences",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("until", when, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_opmetrics_alert_silences"),
    )
    op.create_table(
        "opmetrics_alert_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("alert_key", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("notification", json_type, nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", when, nullable=True),
        sa.Column("delivered_at", when, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_opmetrics_alert_deliveries"),
    )
    # The delivery loop reads the rows still to send, in order.
    op.create_index(
        "ix_opmetrics_alert_deliveries_pending",
        "opmetrics_alert_deliveries",
        ["target", "id"],
        postgresql_where=sa.text("delivered_at IS NULL"),
        sqlite_where=sa.text("delivered_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_opmetrics_alert_deliveries_pending", table_name="opmetrics_alert_deliveries")
    op.drop_table("opmetrics_alert_deliveries")
    op.drop_table("opmetrics_alert_silences")
    op.drop_index("ix_opmetrics_alert_transitions_rule_at", table_name="opmetrics_alert_transitions")
    op.drop_table("opmetrics_alert_transitions")
    op.drop_table("opmetrics_alert_states")

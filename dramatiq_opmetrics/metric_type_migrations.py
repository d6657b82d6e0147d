"""The two steps of a migration that adds metric types, shared by the migrations that add them (0003, 0004).

A metric type lives in the ``metric_type`` column of the raw and daily tables. On PostgreSQL it is the enum
type ``opmetrics_metric_type``: a new value is added with ``ALTER TYPE ... ADD VALUE IF NOT EXISTS``, inside
the migration's transaction from PostgreSQL 12 on (so ``migrate`` stays one transaction under its lock),
in an Alembic autocommit block before 12, where the statement cannot run in a transaction block. PostgreSQL
cannot drop a value from an enum type, so a downgrade deletes the rows of the removed types and leaves the
values (unused, harmless; upgrading again is a no-op for them). On SQLite the column carries a CHECK
constraint listing the types, which only a rebuild of both tables changes (Alembic's batch mode copies
their rows).

Each migration passes the types as they were at its revision, never :class:`MetricType` as it is today, so
that a migration keeps doing what it did when it was written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from .metric_types import METRIC_TYPE_ENUM_NAME

#: The tables whose ``metric_type`` column holds metric types.
METRIC_TYPE_TABLES = ("operational_metrics", "operational_metrics_daily")


def add_metric_types(op: Any, old_types: Sequence[str], new_types: Sequence[str]) -> None:
    """Let the ``metric_type`` columns hold ``new_types`` besides ``old_types`` (Alembic ``op``)."""
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        statements = [f"ALTER TYPE {METRIC_TYPE_ENUM_NAME} ADD VALUE IF NOT EXISTS '{value}'" for value in new_types]
        if (bind.dialect.server_version_info or (0,)) >= (12,):
            for statement in statements:
                op.execute(statement)
        else:
            with op.get_context().autocommit_block():
                for statement in statements:
                    op.execute(statement)
        return
    _replace_check_constraint(op, tuple(old_types), (*old_types, *new_types))


def remove_metric_types(op: Any, old_types: Sequence[str], new_types: Sequence[str]) -> None:
    """Undo :func:`add_metric_types`: delete the rows of ``new_types`` and, on SQLite, narrow the constraint."""
    listed = ", ".join(f"'{value}'" for value in new_types)
    for table in METRIC_TYPE_TABLES:
        op.execute(f"DELETE FROM {table} WHERE metric_type IN ({listed})")
    if op.get_bind().dialect.name != "postgresql":
        _replace_check_constraint(op, (*old_types, *new_types), tuple(old_types))


def _replace_check_constraint(op: Any, old: tuple[str, ...], new: tuple[str, ...]) -> None:
    """Rebuild both tables with ``metric_type`` checked against ``new`` (SQLite's only way to alter a CHECK)."""
    for table in METRIC_TYPE_TABLES:
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.alter_column(
                "metric_type",
                existing_type=sa.Enum(*old, name=METRIC_TYPE_ENUM_NAME, create_constraint=True),
                type_=sa.Enum(*new, name=METRIC_TYPE_ENUM_NAME, create_constraint=True),
                existing_nullable=False,
            )

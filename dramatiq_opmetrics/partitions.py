"""Daily partitions of the raw table on PostgreSQL.

The raw table ``operational_metrics`` is partitioned by range of ``recorded_at``, one partition per UTC
day, named ``operational_metrics_pYYYYMMDD``. A default partition, ``operational_metrics_default``, catches
rows of days that have no partition yet, so an insert never fails. Partitions are created ahead of time
(:func:`ensure_partitions`); creating the partition of a day that already has rows in the default
partition moves those rows into it. Retention drops whole partitions (:func:`drop_partition`) instead of
deleting rows.

On other backends the raw table is a plain table and every function here is a no-op.
"""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import Connection, text

from .locks import advisory_xact_lock
from .models import RAW_TABLE

#: How many days ahead of today partitions are kept ready.
DEFAULT_PARTITION_DAYS_AHEAD = 7
#: The partition that catches rows of days that have no partition.
DEFAULT_PARTITION = f"{RAW_TABLE}_default"

_PARTITION_NAME = re.compile(rf"{RAW_TABLE}_p(\d{{8}})\Z")


def is_partitioned(connection: Connection) -> bool:
    """Whether the raw table is partitioned (PostgreSQL)."""
    return connection.dialect.name == "postgresql"


def partition_name(day: dt.date) -> str:
    """The name of the raw table's partition for ``day``."""
    return f"{RAW_TABLE}_p{day:%Y%m%d}"


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The UTC instants where ``day`` starts (inclusive) and ends (exclusive)."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


def list_partitions(connection: Connection) -> dict[dt.date, str]:
    """The raw table's day partitions in the current schema, by day (the default partition excluded)."""
    if not is_partitioned(connection):
        return {}
    rows = connection.execute(
        text(
            "SELECT c.relname FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent"
            " WHERE p.relname = :parent AND p.relnamespace = current_schema()::regnamespace"
        ),
        {"parent": RAW_TABLE},
    )
    found = {}
    for (name,) in rows:
        match = _PARTITION_NAME.match(name)
        if match:
            found[dt.datetime.strptime(match.group(1), "%Y%m%d").date()] = name
    return dict(sorted(found.items()))


def ensure_partitions(connection: Connection, first_day: dt.date, last_day: dt.date) -> list[dt.date]:
    """Create the missing day partitions from ``first_day`` to ``last_day`` inclusive; return their days.

    Rows already in the default partition for such a day are moved into its new partition. Runs in the
    caller's transaction and takes a transaction-level advisory lock so that concurrent callers serialise.
    """
    if not is_partitioned(connection) or last_day < first_day:
        return []
    advisory_xact_lock(connection, "partitions")
    existing = list_partitions(connection)
    created = []
    day = first_day
    while day <= last_day:
        if day not in existing:
            _create_partition(connection, day)
            created.append(day)
        day += dt.timedelta(days=1)
    return created


def _create_partition(connection: Connection, day: dt.date) -> None:
    name = partition_name(day)
    start, end = day_bounds(day)
    bounds = {"start": start, "end": end}
    stranded = connection.execute(
        text(f"SELECT 1 FROM {DEFAULT_PARTITION} WHERE recorded_at >= :start AND recorded_at < :end LIMIT 1"),
        bounds,
    ).first()
    literal_bounds = f"FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    if stranded is None:
        connection.execute(text(f"CREATE TABLE {name} PARTITION OF {RAW_TABLE} FOR VALUES {literal_bounds}"))
        return
    # A day with rows in the default partition cannot simply be created: move them out first.
    connection.execute(text(f"CREATE TABLE {name} (LIKE {RAW_TABLE} INCLUDING DEFAULTS)"))
    connection.execute(
        text(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION}"
            " WHERE recorded_at >= :start AND recorded_at < :end RETURNING *)"
            f" INSERT INTO {name} SELECT * FROM moved"
        ),
        bounds,
    )
    connection.execute(text(f"ALTER TABLE {RAW_TABLE} ATTACH PARTITION {name} FOR VALUES {literal_bounds}"))


def drop_partition(connection: Connection, day: dt.date) -> bool:
    """Drop the partition of ``day`` with all its rows; return whether there was one."""
    if not is_partitioned(connection) or day not in list_partitions(connection):
        return False
    connection.execute(text(f"DROP TABLE {partition_name(day)}"))
    return True

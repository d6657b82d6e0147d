"""Daily partitions of the raw table on PostgreSQL.

The raw table ``operational_metrics`` is partitioned by range of ``recorded_at``, one partition per UTC
day, named ``operational_metrics_pYYYYMMDD``. A default partition, ``operational_metrics_default``, catches
rows of days that have no partition yet, so an insert never fails. Partitions are created ahead of time
(:func:`ensure_partitions`); creating the partition of a day that already has rows in the default
partition moves those rows into it. Retention detaches and drops whole partitions
(:func:`detach_partition`, then ``DROP TABLE``) instead of deleting rows.

Locks, because writers must never wait behind maintenance. ``CREATE TABLE ... PARTITION OF`` takes an
ACCESS EXCLUSIVE lock on the parent: behind a long reader of the raw table (a Grafana panel, a report) it
waits, and every writer's COPY queues behind it. So a partition is created as a table of its own and then
attached: ``ATTACH PARTITION`` takes only a SHARE UPDATE EXCLUSIVE lock on the parent (PostgreSQL 12 and
later), which neither readers nor writers conflict with, and an ACCESS EXCLUSIVE lock on the default
partition, which it scans. That one can wait behind a reader too (and readers of the parent queue behind
it), so each partition is attached under a short ``lock_timeout``
(:data:`~dramatiq_opmetrics.locks.DEFAULT_LOCK_TIMEOUT_MS`, in a savepoint of its own): a day whose lock is
not granted in time is logged and left to the next call, days ahead of need, while the default partition
catches its rows meanwhile. Detaching (or dropping) a partition locks the parent exclusively whatever the
version; the prune asks for that under the same timeout (:mod:`~dramatiq_opmetrics.retention`).

The time index of each partition is a BRIN index, which has no entry for the pages written since it was
last summarised: a read of any time range of the partition reads all of those pages. Vacuum summarises
them, but autovacuum comes to a partition only after about a fifth more rows than it had (hours of a busy
day), or never where it is off. So the fleet's fold summarises the new pages of the partitions being
written every minute (:func:`summarize_new_pages`).

The default partition has, besides, a B-tree time index of its own (migration 0014, not the day
partitions'): readers ask on every read which days hold raw rows, and the days of its rows are found with
one probe of it per day (:func:`default_partition_days`) where a BRIN index would make them read every row.

On other backends the raw table is a plain table and every function here is a no-op.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable

from sqlalchemy import Connection, text

from .locks import DEFAULT_LOCK_TIMEOUT_MS, advisory_xact_lock, is_lock_timeout, short_lock_wait
from .models import RAW_TABLE

#: How many days ahead of today partitions are kept ready.
DEFAULT_PARTITION_DAYS_AHEAD = 7
#: The partition that catches rows of days that have no partition.
DEFAULT_PARTITION = f"{RAW_TABLE}_default"

logger = logging.getLogger(__name__)

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
    return _by_day(name for (name,) in rows)


#: The default partition's own B-tree time index (migration 0014), which finds its days without reading them.
DEFAULT_PARTITION_TIME_INDEX = "ix_operational_metrics_default_recorded_at"

#: The days holding rows in the default partition, from ``:low`` to before ``:high``, one probe of its B-tree
#: per day found (a "skip scan"): the first row from ``:low`` on, then the first from the next day on, and so on.
_DEFAULT_PARTITION_DAYS_SQL = (
    "WITH RECURSIVE found(at) AS ("
    f" SELECT (SELECT min(recorded_at) FROM {DEFAULT_PARTITION} WHERE recorded_at >= :low AND recorded_at < :high)"
    f" UNION ALL SELECT (SELECT min(recorded_at) FROM {DEFAULT_PARTITION}"
    "  WHERE recorded_at >= (date_trunc('day', found.at AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC'"
    "  AND recorded_at < :high)"
    " FROM found WHERE found.at IS NOT NULL)"
    " SELECT CAST(at AT TIME ZONE 'UTC' AS date) FROM found WHERE at IS NOT NULL"
)


def default_partition_days(
    connection: Connection, first_day: dt.date | None = None, last_day: dt.date | None = None
) -> list[dt.date]:
    """The UTC days from ``first_day`` to ``last_day`` (inclusive; None: unbounded) that have rows in the
    default partition (rows of days without a partition of their own), oldest first; ``[]`` on other backends.

    Each day found costs one probe of the default partition's B-tree time index (migration 0014), whatever
    its number of rows: 1.5 ms at 4 million rows, where grouping them by day took 1.26 s. On a database not
    migrated to 0014 yet, the default partition's rows of the range are grouped by day instead.
    """
    if not is_partitioned(connection):
        return []
    indexed = connection.execute(
        text("SELECT to_regclass(:index) IS NOT NULL"), {"index": DEFAULT_PARTITION_TIME_INDEX}
    ).scalar_one()
    if not indexed:
        return list(default_partition_counts(connection, first_day, last_day))
    bounds = _bounds_of_days(first_day, last_day)
    return list(connection.execute(text(_DEFAULT_PARTITION_DAYS_SQL), bounds).scalars())


def default_partition_counts(
    connection: Connection, first_day: dt.date | None = None, last_day: dt.date | None = None
) -> dict[dt.date, int]:
    """The number of rows per UTC day in the default partition (rows of days without a partition), from
    ``first_day`` to ``last_day`` (inclusive; None: unbounded), oldest first: every row of those days is read
    (the nightly counts need them; :func:`default_partition_days` finds the days alone by the index)."""
    rows = connection.execute(
        text(
            f"SELECT CAST(recorded_at AT TIME ZONE 'UTC' AS date) AS day, count(*) FROM {DEFAULT_PARTITION}"
            " WHERE recorded_at >= :low AND recorded_at < :high GROUP BY day ORDER BY day"
        ),
        _bounds_of_days(first_day, last_day),
    )
    return {day: int(count) for day, count in rows}


def _bounds_of_days(first_day: dt.date | None, last_day: dt.date | None) -> dict[str, dt.datetime]:
    """``:low`` and ``:high`` of the UTC days ``first_day`` to ``last_day`` (None: unbounded)."""
    return {
        "low": day_bounds(first_day)[0] if first_day is not None else dt.datetime.min.replace(tzinfo=dt.UTC),
        "high": day_bounds(last_day)[1] if last_day is not None else dt.datetime.max.replace(tzinfo=dt.UTC),
    }


def _by_day(names: Iterable[str]) -> dict[dt.date, str]:
    """The names of day partitions among ``names``, by day, oldest first."""
    found = {}
    for name in names:
        match = _PARTITION_NAME.match(name)
        if match:
            found[dt.datetime.strptime(match.group(1), "%Y%m%d").date()] = name
    return dict(sorted(found.items()))


def ensure_partitions(
    connection: Connection, first_day: dt.date, last_day: dt.date, *, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
) -> list[dt.date]:
    """Create the missing day partitions from ``first_day`` to ``last_day`` inclusive; return their days.

    Rows already in the default partition for such a day are moved into its new partition. Runs in the
    caller's transaction and takes a transaction-level advisory lock so that concurrent callers serialise.
    Each day is created in a savepoint and attached under a ``lock_timeout`` of ``lock_timeout_ms``: a day
    whose locks are not granted in time (a long reader of the raw table) is logged, left out of the result
    and created by a later call; writers never wait longer than that (see the module documentation).

    Parameters:
      connection(Connection): a PostgreSQL connection in a transaction (elsewhere nothing happens).
      first_day(date), last_day(date): the UTC days, inclusive.
      lock_timeout_ms(int): milliseconds to wait for each day's locks; default
        :data:`~dramatiq_opmetrics.locks.DEFAULT_LOCK_TIMEOUT_MS` (50).
    """
    if not is_partitioned(connection) or last_day < first_day:
        return []
    advisory_xact_lock(connection, "partitions")
    existing = list_partitions(connection)
    created = []
    day = first_day
    while day <= last_day:
        if day not in existing and _create_partition(connection, day, lock_timeout_ms):
            created.append(day)
        day += dt.timedelta(days=1)
    return created


def _create_partition(connection: Connection, day: dt.date, lock_timeout_ms: int) -> bool:
    """Create the partition of ``day`` in a savepoint; False if its locks were not granted in time."""
    name = partition_name(day)
    start, end = day_bounds(day)
    bounds = {"start": start, "end": end}
    try:
        with connection.begin_nested(), short_lock_wait(connection, lock_timeout_ms):
            connection.execute(text(f"CREATE TABLE {name} (LIKE {RAW_TABLE} INCLUDING DEFAULTS)"))
            # Rows of the day in the default partition would make the attach fail: move them in first.
            connection.execute(
                text(
                    f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION}"
                    " WHERE recorded_at >= :start AND recorded_at < :end RETURNING *)"
                    f" INSERT INTO {name} SELECT * FROM moved"
                ),
                bounds,
            )
            connection.execute(
                text(
                    f"ALTER TABLE {RAW_TABLE} ATTACH PARTITION {name}"
                    f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                )
            )
    except Exception as error:
        if not is_lock_timeout(error):
            raise
        logger.warning(
            "Did not create the raw partition of day %s: the raw table is busy (a lock was not granted within"
            " %d ms); the next rollup or migrate creates it, and its rows go to the default partition meanwhile.",
            day,
            lock_timeout_ms,
            extra={"event": "partition_busy", "day": day.isoformat(), "lock_timeout_ms": lock_timeout_ms},
        )
        return False
    return True


def summarize_new_pages(connection: Connection, days: Iterable[dt.date]) -> int:
    """Summarise, in the time (BRIN) index of the partitions of ``days`` and of the default partition, the page
    ranges written since it was last summarised; how many ranges were (0 on other backends, for a day with no
    partition, or when the locks were not granted in time).

    Without it, a read of a time range of a partition (the edges of a series, the minutes the recent tier does
    not hold yet, today's raw rows of a report) reads every page written since the last vacuum of that
    partition: at 20 million rows a day, up to a fifth of the day's rows, which took a read of the last hour
    from 0.1 s to 1.1 s when none was summarised. After it, at most the range being filled (128 pages, about a
    minute of such a fleet's rows) is read whole. It reads the new pages once (about 12 microseconds each) and
    needs the same lock as a vacuum of the partition (SHARE UPDATE EXCLUSIVE, which neither readers nor writers
    conflict with): behind a vacuum of the partition it waits at most
    :data:`~dramatiq_opmetrics.locks.DEFAULT_LOCK_TIMEOUT_MS` and summarises nothing (that vacuum does it).
    Only the owner of the raw table may summarise its indexes: another role gets the error.

    Parameters:
      connection(Connection): a connection in a transaction (the summaries are written as it commits).
      days(Iterable[date]): the UTC days whose partitions are summarised (the ones being written).
    """
    if not is_partitioned(connection):
        return 0
    names = sorted({partition_name(day) for day in days} | {DEFAULT_PARTITION})
    try:
        with connection.begin_nested(), short_lock_wait(connection):
            summarised = connection.execute(
                text(
                    "SELECT COALESCE(sum(brin_summarize_new_values(i.indexrelid)), 0) FROM pg_index AS i"
                    " JOIN pg_class AS c ON c.oid = i.indexrelid JOIN pg_am AS am ON am.oid = c.relam"
                    " WHERE am.amname = 'brin'"
                    " AND i.indrelid IN (SELECT to_regclass(name) FROM unnest(CAST(:names AS text[])) AS name)"
                ),
                {"names": names},
            ).scalar_one()
    except Exception as error:
        if not is_lock_timeout(error):
            raise
        return 0
    return int(summarised)


def list_detached_partitions(connection: Connection) -> dict[dt.date, str]:
    """Tables in the current schema named like a day partition that are not attached to the raw table, by day:
    what a prune interrupted between its detach and its drop left (:mod:`~dramatiq_opmetrics.retention`)."""
    if not is_partitioned(connection):
        return {}
    rows = connection.execute(
        text(
            "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
            " AND relkind = 'r' AND NOT relispartition AND starts_with(relname, :prefix)"
        ),
        {"prefix": f"{RAW_TABLE}_p"},
    )
    return _by_day(name for (name,) in rows)


def detach_partition(connection: Connection, day: dt.date) -> bool:
    """Detach the partition of ``day`` from the raw table, leaving it a table of its own (rows included);
    return whether there was one.

    Locks the raw table's parent exclusively until the transaction ends, and writers queue behind it while
    it waits: call it under :func:`~dramatiq_opmetrics.locks.short_lock_wait`, as the prune does.
    """
    if not is_partitioned(connection) or day not in list_partitions(connection):
        return False
    connection.execute(text(f"ALTER TABLE {RAW_TABLE} DETACH PARTITION {partition_name(day)}"))
    return True


def drop_partition(connection: Connection, day: dt.date) -> bool:
    """Drop the partition of ``day`` with all its rows; return whether there was one.

    The ``DROP`` locks the raw table's parent exclusively, and writers queue behind it while it waits: call it
    under :func:`~dramatiq_opmetrics.locks.short_lock_wait`, as the prune does.
    """
    if not is_partitioned(connection) or day not in list_partitions(connection):
        return False
    connection.execute(text(f"DROP TABLE {partition_name(day)}"))
    return True

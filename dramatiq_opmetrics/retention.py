"""Retention: remove raw rows older than the retention period, only for days that are rolled up.

Daily rows are kept forever; raw rows only serve to build them, so a raw day older than the retention (30
days by default) is removed once its daily rows count every one of its raw rows. A day that is not rolled
up, or has late samples its daily rows do not count yet, is kept (and logged) until a rollup catches up:
a raw row of a day that is not rolled up is never removed.

A sample recorded for a day *after* that day's raw rows were removed cannot join the day's exact aggregates
(they would have to be recomputed from rows that are gone): the rollup logs a warning for such a day and
leaves its daily rows as they are, and the next prune removes the sample.

On PostgreSQL a day is removed by dropping its partition (well under a second for millions of rows), plus a
``DELETE`` of any of its rows in the default partition. On SQLite rows are deleted in batches of
:data:`PRUNE_BATCH_ROWS`, one short transaction each, so that writers are never blocked for long; an
interrupted prune resumes at the next run.

Example::

    from dramatiq_opmetrics.retention import prune
    result = prune(engine, retention_days=30, dry_run=True)
    for day in result.pruned:
        print("would remove", day.day, day.rows)
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from sqlalchemy import Engine, delete, func, select, text

from .aggregate import default_partition_counts, raw_count, raw_counts_by_day
from .models import OperationalMetric
from .partitions import DEFAULT_PARTITION, day_bounds, drop_partition, list_partitions, partition_name
from .rollup import daily_totals, lock_for_rollup, utc_today

logger = logging.getLogger(__name__)

#: How many days of raw rows are kept, today included among them (older days are removed once rolled up).
DEFAULT_RETENTION_DAYS = 30
#: Raw rows deleted per transaction on SQLite.
PRUNE_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class PrunedDay:
    """One day of raw rows removed (or, in a dry run, that would be removed).

    Parameters:
      day(date): the UTC day.
      rows(int): raw rows removed.
      method(str): ``"partition"`` (dropped a partition, PostgreSQL) or ``"delete"`` (deleted rows).
    """

    day: dt.date
    rows: int
    method: str


@dataclass(frozen=True)
class KeptDay:
    """A day older than the retention whose raw rows were kept, and why.

    Parameters:
      day(date): the UTC day.
      rows(int): its raw rows.
      reason(str): why they were kept (not rolled up, or late samples not rolled up yet).
    """

    day: dt.date
    rows: int
    reason: str


@dataclass(frozen=True)
class PruneResult:
    """What a prune did.

    Parameters:
      cutoff(date): raw rows of days before this UTC day were considered.
      dry_run(bool): nothing was removed; ``pruned`` is what would have been.
      pruned(list[PrunedDay]): days removed, oldest first.
      kept(list[KeptDay]): days old enough to remove but kept, because they are not rolled up.
    """

    cutoff: dt.date
    dry_run: bool
    pruned: list[PrunedDay] = field(default_factory=list)
    kept: list[KeptDay] = field(default_factory=list)


def retention_cutoff(retention_days: int, today: dt.date) -> dt.date:
    """The first UTC day whose raw rows are kept for a retention of ``retention_days`` days."""
    if isinstance(retention_days, bool) or not isinstance(retention_days, int) or retention_days < 1:
        raise ValueError(f"retention_days must be a whole number of days, at least 1; got {retention_days!r}")
    return today - dt.timedelta(days=retention_days)


def prune(
    engine: Engine,
    *,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> PruneResult:
    """Remove the raw rows of rolled-up days before the retention cutoff; return what was (or would be) removed.

    Parameters:
      engine(Engine): the metrics database.
      retention_days(int): days of raw rows kept (default :data:`DEFAULT_RETENTION_DAYS`): a day ``D`` is
        removed when ``D < today - retention_days`` (UTC) and it is rolled up.
      dry_run(bool): only report what would be removed.
      now(datetime | None): the current time (timezone-aware), for tests; default: now.

    Raises:
      ValueError: ``retention_days`` is not a whole number of days of at least 1.
    """
    cutoff = retention_cutoff(retention_days, utc_today(now))
    result = PruneResult(cutoff=cutoff, dry_run=dry_run)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Every raw row is in a day partition or the default one: no need to count the partitions here.
            days = set(list_partitions(connection)) | set(default_partition_counts(connection))
        else:
            days = set(raw_counts_by_day(connection))
    old_days = {day for day in days if day < cutoff}
    for day in sorted(old_days):
        _prune_day(engine, day, dry_run, result)
    return result


def _prune_day(engine: Engine, day: dt.date, dry_run: bool, result: PruneResult) -> None:
    raw = OperationalMetric.__table__
    start, end = day_bounds(day)
    with engine.begin() as connection:
        lock_for_rollup(connection)
        partitioned = day in list_partitions(connection)
        if connection.dialect.name == "postgresql" and not dry_run:
            # No sample may slip in between the count below and the removal.
            tables = ([partition_name(day)] if partitioned else []) + [DEFAULT_PARTITION]
            connection.execute(text(f"LOCK TABLE {', '.join(tables)} IN SHARE MODE"))
        rows = raw_count(connection, day)
        rolled_up = daily_totals(connection, day).get(day)
        if rows and (rolled_up is None or rows > rolled_up):
            reason = "not rolled up" if rolled_up is None else f"{rows - rolled_up} samples not rolled up yet"
            result.kept.append(KeptDay(day, rows, reason))
            logger.warning(
                "Kept raw rows of day %s past the retention: rows=%d reason=%s",
                day,
                rows,
                reason,
                extra={"event": "prune_day_kept", "day": day.isoformat(), "rows": rows, "reason": reason},
            )
            return
        method = "partition" if partitioned else "delete"
        if not dry_run and connection.dialect.name == "postgresql":
            if partitioned:
                drop_partition(connection, day)
            # Rows of the day in the default partition (recorded before its partition existed) go too.
            connection.execute(
                text(f"DELETE FROM {DEFAULT_PARTITION} WHERE recorded_at >= :start AND recorded_at < :end"),
                {"start": start, "end": end},
            )
        # Rows counted above have ids up to this one; a row recorded for the day later is not touched.
        last_id = None
        if connection.dialect.name != "postgresql":
            last_id = connection.execute(
                select(func.max(raw.c.id)).where(raw.c.recorded_at >= start, raw.c.recorded_at < end)
            ).scalar()
    if not dry_run and last_id is not None:
        _delete_in_batches(engine, day, last_id)
    result.pruned.append(PrunedDay(day, rows, method))
    logger.info(
        "%s raw rows of day %s: rows=%d method=%s",
        "Would remove" if dry_run else "Removed",
        day,
        rows,
        method,
        extra={"event": "prune_day", "day": day.isoformat(), "rows": rows, "method": method, "dry_run": dry_run},
    )


def _delete_in_batches(engine: Engine, day: dt.date, last_id: int) -> None:
    start, end = day_bounds(day)
    raw = OperationalMetric.__table__
    while True:
        with engine.begin() as connection:
            lock_for_rollup(connection)
            batch = (
                select(raw.c.id)
                .where(raw.c.recorded_at >= start, raw.c.recorded_at < end, raw.c.id <= last_id)
                .limit(PRUNE_BATCH_ROWS)
                .scalar_subquery()
            )
            deleted = connection.execute(delete(OperationalMetric).where(OperationalMetric.id.in_(batch))).rowcount
        if deleted < PRUNE_BATCH_ROWS:
            return

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

A prune never makes a writer wait behind a reader. Removing a partition needs an ACCESS EXCLUSIVE lock on the
raw table's parent, which waits for every reader of the parent (a Grafana panel, a report), and PostgreSQL
queues every later request, each writer's COPY included, behind the waiting one: with a 3 s reader, writes
took up to 2.9 s instead of 13 ms. So the removal asks for its lock under a short ``lock_timeout``
(``lock_timeout_ms``, :data:`~dramatiq_opmetrics.locks.DEFAULT_LOCK_TIMEOUT_MS`): writers wait at most that
long, and the day's transaction (count, check, removal) is rolled back and tried again after
:data:`PRUNE_LOCK_RETRY_S`, doubling, ``lock_attempts`` times in all. A day still busy after that is kept
(and logged) for the next run. The lock is asked for last, after the count and the ``DELETE`` from the
default partition, and the partition is detached there (a commit that deletes no file need not wait for the
WAL flush, and is told not to) and dropped in a transaction of its own right after: the parent's lock is held
for the ``DETACH`` and its commit only. A table a prune detached and could not drop (the process died in
between) is found by the next prune (:func:`~dramatiq_opmetrics.partitions.list_detached_partitions`) and
dropped after the same check against the day's daily rows.

``ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY`` (PostgreSQL 14 and later) would need no exclusive lock
at all, but PostgreSQL refuses it on a table with a default partition ("cannot detach partitions
concurrently when a default partition exists"), and the raw table has one so that an insert never fails.

Example::

    from dramatiq_opmetrics.retention import prune
    result = prune(engine, retention_days=30, dry_run=True)
    for day in result.pruned:
        print("would remove", day.day, day.rows)
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine, delete, func, select, text

from .aggregate import raw_count, raw_counts_by_day
from .locks import DEFAULT_LOCK_TIMEOUT_MS, is_lock_timeout, short_lock_wait
from .models import OperationalMetric
from .partitions import (
    DEFAULT_PARTITION,
    day_bounds,
    default_partition_days,
    detach_partition,
    list_detached_partitions,
    list_partitions,
    partition_name,
)
from .rollup import daily_totals, lock_for_rollup, utc_today

logger = logging.getLogger(__name__)

#: How many days of raw rows are kept, today included among them (older days are removed once rolled up).
DEFAULT_RETENTION_DAYS = 30
#: Raw rows deleted per transaction on SQLite.
PRUNE_BATCH_ROWS = 10_000
#: How many times a prune tries to remove a day whose partition's lock is not granted in time (PostgreSQL).
DEFAULT_PRUNE_LOCK_ATTEMPTS = 8
#: Seconds before the second attempt at such a day; each later wait doubles (0.5, 1, 2 ... 32 s: about a
#: minute in all with the default attempts).
PRUNE_LOCK_RETRY_S = 0.5


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
      reason(str): why they were kept (not rolled up, late samples not rolled up yet, or the raw table was
        too busy to drop its partition: the next run tries again).
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
      kept(list[KeptDay]): days old enough to remove but kept, because they are not rolled up (or their
        partition's lock was not granted: see :func:`prune`).
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
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    lock_attempts: int = DEFAULT_PRUNE_LOCK_ATTEMPTS,
) -> PruneResult:
    """Remove the raw rows of rolled-up days before the retention cutoff; return what was (or would be) removed.

    Parameters:
      engine(Engine): the metrics database.
      retention_days(int): days of raw rows kept (default :data:`DEFAULT_RETENTION_DAYS`): a day ``D`` is
        removed when ``D < today - retention_days`` (UTC) and it is rolled up.
      dry_run(bool): only report what would be removed.
      now(datetime | None): the current time (timezone-aware), for tests; default: now.
      lock_timeout_ms(int): PostgreSQL: milliseconds the ``DROP`` of a partition waits for its lock (writers
        wait behind it meanwhile) before the day is tried again; default
        :data:`~dramatiq_opmetrics.locks.DEFAULT_LOCK_TIMEOUT_MS` (50).
      lock_attempts(int): PostgreSQL: attempts at a day whose lock is not granted in time, waiting
        :data:`PRUNE_LOCK_RETRY_S` (0.5 s) before the second, doubling; then it is kept for the next run.
        Default :data:`DEFAULT_PRUNE_LOCK_ATTEMPTS` (8).

    Raises:
      ValueError: ``retention_days`` is not a whole number of days of at least 1, ``lock_timeout_ms`` not a
        whole number of milliseconds of at least 1, or ``lock_attempts`` not a whole number of at least 1.
    """
    if isinstance(lock_attempts, bool) or not isinstance(lock_attempts, int) or lock_attempts < 1:
        raise ValueError(f"lock_attempts must be a whole number, at least 1; got {lock_attempts!r}")
    if isinstance(lock_timeout_ms, bool) or not isinstance(lock_timeout_ms, int) or lock_timeout_ms < 1:
        raise ValueError(f"lock_timeout_ms must be a whole number of milliseconds, at least 1; got {lock_timeout_ms!r}")
    cutoff = retention_cutoff(retention_days, utc_today(now))
    result = PruneResult(cutoff=cutoff, dry_run=dry_run)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Every raw row is in a day partition or the default one: no need to count the partitions here.
            days = (
                set(list_partitions(connection))
                | set(list_detached_partitions(connection))
                | set(default_partition_days(connection))
            )
        else:
            days = set(raw_counts_by_day(connection))
    old_days = {day for day in days if day < cutoff}
    for day in sorted(old_days):
        _prune_day_retrying(engine, day, dry_run, result, lock_timeout_ms, lock_attempts)
    return result


class _RawTableBusy(Exception):
    """A lock the removal of a day needs was not granted within the lock timeout; nothing was removed."""

    def __init__(self, rows: int) -> None:
        super().__init__(rows)
        self.rows = rows


def _prune_day_retrying(
    engine: Engine, day: dt.date, dry_run: bool, result: PruneResult, lock_timeout_ms: int, lock_attempts: int
) -> None:
    """:func:`_prune_day`, tried again while the raw table is too busy to lock, up to ``lock_attempts``."""
    wait_s = PRUNE_LOCK_RETRY_S
    for attempt in range(1, lock_attempts + 1):
        try:
            _prune_day(engine, day, dry_run, result, lock_timeout_ms)
            return
        except _RawTableBusy as busy:
            rows = busy.rows
        logger.info(
            "Raw table busy while removing day %s (attempt %d of %d, no lock within %d ms); writers went on.",
            day,
            attempt,
            lock_attempts,
            lock_timeout_ms,
            extra={"event": "prune_day_busy", "day": day.isoformat(), "attempt": attempt},
        )
        if attempt < lock_attempts:
            time.sleep(wait_s)
            wait_s *= 2
    reason = (
        f"raw table busy: its lock was not granted within {lock_timeout_ms} ms, {lock_attempts} times;"
        " the next run tries again"
    )
    _keep(result, day, rows, reason)


def _keep(result: PruneResult, day: dt.date, rows: int, reason: str) -> None:
    result.kept.append(KeptDay(day, rows, reason))
    logger.warning(
        "Kept raw rows of day %s past the retention: rows=%d reason=%s",
        day,
        rows,
        reason,
        extra={"event": "prune_day_kept", "day": day.isoformat(), "rows": rows, "reason": reason},
    )


def _prune_day(engine: Engine, day: dt.date, dry_run: bool, result: PruneResult, lock_timeout_ms: int) -> None:
    """Remove the raw rows of ``day`` if it is rolled up; raise :class:`_RawTableBusy` if a lock is not granted."""
    raw = OperationalMetric.__table__
    start, end = day_bounds(day)
    rows = 0
    try:
        with engine.begin() as connection:
            lock_for_rollup(connection)
            partitioned = day in list_partitions(connection)
            detached = list_detached_partitions(connection).get(day)
            postgresql = connection.dialect.name == "postgresql"
            # Waits behind other rollups and prunes (above) are fine; waits writers could queue behind are not.
            with short_lock_wait(connection, lock_timeout_ms):
                if postgresql and not dry_run:
                    # No sample may slip in between the count below and the removal.
                    tables = ([partition_name(day)] if partitioned else []) + [DEFAULT_PARTITION]
                    connection.execute(text(f"LOCK TABLE {', '.join(tables)} IN SHARE MODE"))
                rows = raw_count(connection, day)
                if detached is not None:
                    rows += connection.execute(text(f"SELECT count(*) FROM {detached}")).scalar_one()
                rolled_up = daily_totals(connection, day).get(day)
                if rows and (rolled_up is None or rows > rolled_up):
                    reason = "not rolled up" if rolled_up is None else f"{rows - rolled_up} samples not rolled up yet"
                    _keep(result, day, rows, reason)
                    return
                if postgresql and not dry_run:
                    # Rows of the day in the default partition (recorded before its partition existed) go too.
                    connection.execute(
                        text(f"DELETE FROM {DEFAULT_PARTITION} WHERE recorded_at >= :start AND recorded_at < :end"),
                        {"start": start, "end": end},
                    )
                    if detached is not None:  # left by a prune interrupted after its detach
                        connection.execute(text(f"DROP TABLE {detached}"))
                    if partitioned:
                        # Last, and detached rather than dropped: the exclusive lock on the parent is then held
                        # for the DETACH and a commit that deletes no file, which PostgreSQL lets return
                        # before the WAL is on disk (a DROP's commit always waits for that flush, hundreds of
                        # milliseconds on a busy disk, and writers would wait as long). Lost in a crash, the
                        # detach is done again by the next prune.
                        connection.execute(text("SELECT set_config('synchronous_commit', 'off', true)"))
                        detach_partition(connection, day)
            # Rows counted above have ids up to this one; a row recorded for the day later is not touched.
            last_id = None
            if not postgresql:
                last_id = connection.execute(
                    select(func.max(raw.c.id)).where(raw.c.recorded_at >= start, raw.c.recorded_at < end)
                ).scalar()
    except Exception as error:
        if is_lock_timeout(error):
            raise _RawTableBusy(rows) from error
        raise
    if partitioned and not dry_run:
        # A table of its own now: dropping it locks nothing that readers or writers of the raw table use.
        with engine.begin() as connection:
            connection.execute(text(f"DROP TABLE IF EXISTS {partition_name(day)}"))
    if not dry_run and last_id is not None:
        _delete_in_batches(engine, day, last_id)
    method = "partition" if partitioned or detached is not None else "delete"
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

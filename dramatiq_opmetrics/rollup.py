"""The daily rollup: raw rows of each complete UTC day become permanent rows of ``operational_metrics_daily``.

One daily row per (metric type, UTC date, label set) holds ``sample_count``, ``sum``, ``min``, ``max``,
``avg``, the exact ``p50``/``p95``/``p99`` of the day and the day's mergeable histogram
(:mod:`~dramatiq_opmetrics.sketch`), so that percentiles over any range of days can be computed later from
daily rows alone (:mod:`~dramatiq_opmetrics.query`).

Which days are rolled up (catch-up, stateless): raw rows are insert-only until retention removes whole
rolled-up days, so a day's daily rows are up to date exactly when their ``sample_count`` adds up to the
day's number of raw rows. Each run rolls up every complete day (before today, UTC) that has raw rows and
either no daily rows or fewer samples in them than raw rows (late samples): missed nights heal themselves.
A day with *more* samples in its daily rows than raw rows has had raw rows removed by retention and is
never rolled up again, since that would overwrite its aggregates with what is left.

Each day is rolled up in its own transaction under an advisory lock (PostgreSQL) or an immediate write
transaction (SQLite), and the daily rows are upserted, so concurrent runs (two schedulers, a manual run
during the scheduled one) serialise, and a second run finds the day up to date. Running a rollup of a day
twice leaves identical rows (``rolled_up_at`` only changes when the aggregates do).

Monthly rows: ``operational_metrics_monthly`` holds, per (metric type, calendar month, label set), the
month's daily rows merged, and the same per third of the month (days 1-10, 11-20, 21-end)
(:class:`~dramatiq_opmetrics.models.OperationalMetricMonthly`), so that a range read takes a year as 12 rows
per label set instead of 365, plus at most two thirds and nine days where it starts mid-month
(:mod:`~dramatiq_opmetrics.query`). Every daily
row also carries its histogram packed (:mod:`~dramatiq_opmetrics.packed_histograms`), which merges without
parsing JSON. A month's rows are always rebuilt whole from its daily rows (:func:`merge_month`), never
updated by adding a day to them: a day rolled up again (late samples) then can never be counted twice.

- The rollup of a day re-merges its month in the same transaction, so a reader sees the day's daily rows
  and the month's rows change together (a range read takes a month from its monthly rows only when it
  covers every day those rows hold, in one statement).
- Each run then heals what changed otherwise (:func:`merge_months`): a month whose daily rows differ from
  what its monthly rows say they merged (number of rows, samples, latest ``rolled_up_at``), or that has
  daily rows without a packed histogram, is re-merged in a transaction of its own, which also packs those
  rows. The first run after migration 0007 so merges (and packs) the whole history, one month at a time;
  until then reads are right but slower. Daily rows written by other means than the rollup (an import, a
  test fixture) are merged by the next run in the same way.

Example::

    from dramatiq_opmetrics.rollup import rollup
    for day in rollup(engine):  # every complete day not rolled up yet
        print(day.day, day.rows)
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from .aggregate import PERCENTILES, Aggregate, aggregate_raw, raw_counts_by_day
from .locks import write_xact_lock
from .models import LabelSet, OperationalMetricDaily, OperationalMetricMonthly
from .packed_histograms import HistogramSum, pack
from .partitions import DEFAULT_PARTITION_DAYS_AHEAD, day_bounds, ensure_partitions
from .sketch import Histogram
from .value_lists import in_values

logger = logging.getLogger(__name__)

#: The advisory lock that serialises rollups and prunes of one installation.
ROLLUP_LOCK = "rollup"
#: The ``part`` of a monthly row that merges the whole month (1, 2 and 3 merge its thirds).
WHOLE_MONTH = 0

_VALUE_COLUMNS = (
    "labels",
    "sample_count",
    "sum",
    "min",
    "max",
    "avg",
    "p50",
    "p95",
    "p99",
    "histogram",
    "histogram_packed",
)


@dataclass(frozen=True)
class DayRollup:
    """What the rollup of one day did.

    Parameters:
      day(date): the UTC day.
      rows(int): raw rows aggregated.
      label_sets(int): distinct label sets among them.
      daily_rows(int): daily rows written (one per metric type and label set).
      duration_s(float): how long the day took, in seconds.
    """

    day: dt.date
    rows: int
    label_sets: int
    daily_rows: int
    duration_s: float


@dataclass(frozen=True)
class MonthMerge:
    """What the merge of one month's daily rows into monthly rows did.

    Parameters:
      month(date): the first day of the month.
      daily_rows(int): daily rows merged.
      monthly_rows(int): monthly rows written (per metric type and label set, the month and its thirds).
      packed(int): daily rows that got their packed histogram in this merge.
      duration_s(float): how long the merge took, in seconds.
    """

    month: dt.date
    daily_rows: int
    monthly_rows: int
    packed: int
    duration_s: float


def utc_today(now: dt.datetime | None = None) -> dt.date:
    """The current UTC date (of ``now`` if given, which must be timezone-aware)."""
    if now is None:
        now = dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(dt.UTC).date()


def lock_for_rollup(connection: Connection) -> None:
    """Serialise with every other rollup and prune of this installation until the transaction ends.

    Call it first in a transaction: on SQLite it starts an immediate (write) transaction.
    """
    write_xact_lock(connection, ROLLUP_LOCK)


def daily_totals(connection: Connection, day: dt.date | None = None) -> dict[dt.date, int]:
    """The sum of ``sample_count`` of the daily rows per day (of ``day`` only, if given)."""
    daily = OperationalMetricDaily.__table__
    query = select(daily.c.date, func.sum(daily.c.sample_count)).group_by(daily.c.date)
    if day is not None:
        query = query.where(daily.c.date == day)
    return {row_day: int(total) for row_day, total in connection.execute(query)}


def needs_rollup(raw_rows: int, daily_samples: int | None) -> bool:
    """Whether a day with ``raw_rows`` raw rows and ``daily_samples`` samples in its daily rows (None: no
    daily rows) must be rolled up: it has raw rows its daily rows do not count (never when raw rows were
    removed, i.e. there are fewer raw rows than rolled-up samples)."""
    return raw_rows > 0 and (daily_samples is None or raw_rows > daily_samples)


def days_to_roll_up(connection: Connection, today: dt.date, since: dt.date | None = None) -> dict[dt.date, int]:
    """The complete days (before ``today``, from ``since`` on) whose daily rows are missing or out of date,
    with their raw row counts."""
    totals = daily_totals(connection)
    days = {}
    for day, rows in raw_counts_by_day(connection).items():
        if day >= today or (since is not None and day < since):
            continue
        if needs_rollup(rows, totals.get(day)):
            days[day] = rows
        elif totals.get(day, 0) > rows:
            logger.warning(
                "Day %s has %d raw rows but %d rolled-up samples: retention removed its raw rows, so it is"
                " not rolled up again (rows recorded for it after the prune are not counted).",
                day,
                rows,
                totals[day],
                extra={"event": "rollup_day_pruned", "day": day.isoformat(), "raw_rows": rows},
            )
    return days


def rollup(
    engine: Engine,
    *,
    day: dt.date | None = None,
    since: dt.date | None = None,
    now: dt.datetime | None = None,
) -> list[DayRollup]:
    """Roll up complete UTC days; return what was rolled up, oldest day first.

    Without arguments, every complete day that is not rolled up or has late samples (catch-up). With
    ``since``, only such days from ``since`` on. With ``day``, that day, even if up to date (the rows come out
    identical), unless its raw rows are gone. Partitions for today and the next
    :data:`~dramatiq_opmetrics.partitions.DEFAULT_PARTITION_DAYS_AHEAD` days are created first (PostgreSQL).
    Every month whose monthly rows are out of date is merged last (:func:`merge_months`).

    Parameters:
      engine(Engine): the metrics database (each day is rolled up in a transaction of its own).
      day(date | None): roll up this day only; it must be before today (UTC).
      since(date | None): first day to consider (catch-up from there).
      now(datetime | None): the current time (timezone-aware), for tests; default: now.

    Raises:
      ValueError: ``day`` is today or later (not complete yet), or both ``day`` and ``since`` are given.
    """
    today = utc_today(now)
    if day is not None and since is not None:
        raise ValueError("pass either day or since, not both")
    if day is not None and day >= today:
        raise ValueError(f"day {day} is not complete yet (today is {today} UTC); only earlier days roll up")
    with engine.begin() as connection:
        created = ensure_partitions(connection, today, today + dt.timedelta(days=DEFAULT_PARTITION_DAYS_AHEAD))
    if created:
        logger.info(
            "Created raw partitions for %s to %s.",
            created[0],
            created[-1],
            extra={"event": "partitions_created", "days": [d.isoformat() for d in created]},
        )
    if day is not None:
        result = rollup_day(engine, day, force=True)
        done = [] if result is None else [result]
    else:
        with engine.connect() as connection:
            days = days_to_roll_up(connection, today, since)
        done = []
        for candidate, rows in days.items():
            result = rollup_day(engine, candidate, expected_rows=rows)
            if result is not None:
                done.append(result)
    merge_months(engine)
    return done


def rollup_day(
    engine: Engine, day: dt.date, *, force: bool = False, expected_rows: int | None = None
) -> DayRollup | None:
    """Roll up one day in its own transaction under the rollup lock; None if there was nothing to do.

    ``expected_rows`` is the day's raw row count seen when the day was chosen: if the daily rows already count
    that many under the lock, a concurrent run rolled the day up meanwhile. Otherwise the day is aggregated
    (the aggregation counts its rows, so no separate count is needed) and written unless it is up to date
    (and not ``force``), or has fewer raw rows than its daily rows count (retention removed raw rows: never
    overwrite the day with what is left).
    """
    started = time.perf_counter()
    with engine.begin() as connection:
        lock_for_rollup(connection)
        rolled_up = daily_totals(connection, day).get(day)
        if not force and rolled_up is not None and expected_rows is not None and rolled_up >= expected_rows:
            return None  # a concurrent run rolled the day up meanwhile
        start, end = day_bounds(day)
        aggregates = aggregate_raw(connection, start, end)
        rows = sum(aggregate.count for aggregate in aggregates)
        if rows == 0 or (rolled_up is not None and rolled_up > rows):
            logger.warning(
                "Day %s is not rolled up: %s.",
                day,
                "it has no raw rows" if rows == 0 else f"retention removed its raw rows ({rows} left of {rolled_up})",
                extra={"event": "rollup_day_skipped", "day": day.isoformat(), "raw_rows": rows},
            )
            return None
        if not force and rolled_up == rows:
            return None
        _upsert(connection, day, aggregates)
        merge_month(connection, month_of(day))
    result = DayRollup(
        day=day,
        rows=rows,
        label_sets=len({aggregate.label_set_id for aggregate in aggregates}),
        daily_rows=len(aggregates),
        duration_s=time.perf_counter() - started,
    )
    logger.info(
        "Rolled up day %s: rows=%d label_sets=%d daily_rows=%d duration_s=%.3f",
        day,
        result.rows,
        result.label_sets,
        result.daily_rows,
        result.duration_s,
        extra={
            "event": "rollup_day",
            "day": day.isoformat(),
            "rows": result.rows,
            "label_sets": result.label_sets,
            "daily_rows": result.daily_rows,
            "duration_s": result.duration_s,
        },
    )
    return result


def _upsert(connection: Connection, day: dt.date, aggregates: list[Aggregate]) -> None:
    if not aggregates:
        return
    label_sets = LabelSet.__table__
    wanted = sorted({aggregate.label_set_id for aggregate in aggregates})
    columns = (label_sets.c.id, label_sets.c.labels_key, label_sets.c.labels)
    query = select(*columns).where(in_values(label_sets.c.id, wanted))
    labels = {row.id: (row.labels_key, row.labels) for row in connection.execute(query)}
    rolled_up_at = dt.datetime.now(dt.UTC)
    rows = []
    for aggregate in aggregates:
        if aggregate.label_set_id not in labels:
            raise LookupError(f"raw rows of {day} reference label set {aggregate.label_set_id}, which does not exist")
        labels_key, label_values = labels[aggregate.label_set_id]
        p50, p95, p99 = aggregate.percentiles or (None, None, None)
        rows.append(
            {
                "metric_type": aggregate.metric_type,
                "date": day,
                "labels_key": labels_key,
                "labels": label_values,
                "sample_count": aggregate.count,
                "sum": aggregate.sum,
                "min": aggregate.min,
                "max": aggregate.max,
                "avg": aggregate.avg,
                "p50": p50,
                "p95": p95,
                "p99": p99,
                "histogram": aggregate.histogram.to_json(),
                "histogram_packed": pack(aggregate.histogram),
                "rolled_up_at": rolled_up_at,
            }
        )
    daily = OperationalMetricDaily.__table__
    assert isinstance(daily, Table)
    insert = (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(daily)
    excluded = insert.excluded
    statement = insert.on_conflict_do_update(
        index_elements=[daily.c.metric_type, daily.c.date, daily.c.labels_key],
        set_={name: excluded[name] for name in (*_VALUE_COLUMNS, "rolled_up_at")},
        where=or_(*(daily.c[name].is_distinct_from(excluded[name]) for name in _VALUE_COLUMNS)),
    )
    connection.execute(statement, rows)


def month_of(day: dt.date) -> dt.date:
    """The first day of ``day``'s month."""
    return day.replace(day=1)


def next_month(month: dt.date) -> dt.date:
    """The first day of the month after ``month``'s."""
    return (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def exact_sum_parts(values: Iterable[float]) -> list[float]:
    """Floats whose exact sum is the exact sum of ``values`` (Shewchuk's partials, as :func:`math.fsum` keeps
    them), so that ``math.fsum(parts + more)`` equals ``math.fsum(values + more)`` for any ``more``."""
    partials: list[float] = []
    for value in values:
        x = value
        kept = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            high = x + y
            low = y - (high - x)
            if low:
                partials[kept] = low
                kept += 1
            x = high
        partials[kept:] = [x]
    return partials


def third_of(day: dt.date) -> int:
    """The part of its month that ``day`` is in: 1 (days 1 to 10), 2 (11 to 20) or 3 (21 to the end)."""
    return min(3, (day.day - 1) // 10 + 1)


def part_bounds(month: dt.date, part: int) -> tuple[dt.date, dt.date]:
    """The first and last day of ``part`` of ``month`` (:data:`WHOLE_MONTH`, or a third: 1, 2 or 3)."""
    last_of_month = next_month(month) - dt.timedelta(days=1)
    if part == WHOLE_MONTH:
        return month, last_of_month
    first = month.replace(day=10 * (part - 1) + 1)
    return first, last_of_month if part == 3 else month.replace(day=10 * part)


def _merged(days: list[tuple[Any, bytes | None]]) -> dict[str, Any]:
    """The merged columns of a period's daily rows (each with its packed histogram, None if it has none)."""
    total = HistogramSum()
    complete = True
    for _, packed in days:
        if packed is None:
            complete = False
        else:
            total.add_packed(packed)
    rows = [row for row, _ in days]
    low, high = min(row.min for row in rows), max(row.max for row in rows)
    percentiles: tuple[float | None, ...]
    if len(rows) == 1:
        percentiles = (rows[0].p50, rows[0].p95, rows[0].p99)
    elif complete:
        percentiles = tuple(
            None if value is None else min(max(value, low), high) for value in total.quantiles(PERCENTILES)
        )
    else:
        percentiles = (None, None, None)
    return {
        "labels": rows[-1].labels,
        "sample_count": sum(row.sample_count for row in rows),
        "sum": math.fsum(row.sum for row in rows),
        "sum_parts": exact_sum_parts(row.sum for row in rows),
        "min": low,
        "max": high,
        "p50": percentiles[0],
        "p95": percentiles[1],
        "p99": percentiles[2],
        "histogram_packed": total.pack() if complete else None,
        "daily_rows": len(rows),
        "source_rolled_up_at": max(row.rolled_up_at for row in rows),
    }


def merge_month(connection: Connection, month: dt.date) -> MonthMerge:
    """Rebuild the monthly rows of ``month`` (its first day) from its daily rows, in the caller's
    transaction, which holds the rollup lock (:func:`lock_for_rollup`): per metric type and label set one
    row of the whole month and one per third of it that has daily rows. Daily rows without a packed
    histogram get it (from their JSON one) on the way."""
    started = time.perf_counter()
    daily = OperationalMetricDaily.__table__
    monthly = OperationalMetricMonthly.__table__
    assert isinstance(daily, Table) and isinstance(monthly, Table)
    query = (
        select(
            daily.c.metric_type,
            daily.c.labels_key,
            daily.c.labels,
            daily.c.date,
            daily.c.sample_count,
            daily.c.sum,
            daily.c.min,
            daily.c.max,
            daily.c.p50,
            daily.c.p95,
            daily.c.p99,
            daily.c.histogram_packed,
            case((daily.c.histogram_packed.is_(None), daily.c.histogram)).label("histogram"),
            daily.c.rolled_up_at,
        )
        .where(daily.c.date >= month, daily.c.date < next_month(month))
        .order_by(daily.c.metric_type, daily.c.labels_key, daily.c.date)
    )
    rows = connection.execute(query).all()
    merged_at = dt.datetime.now(dt.UTC)
    # Which days each period has daily rows for, over every metric type and label set.
    coverage: dict[int, tuple[dt.date, dt.date]] = {}
    for row in rows:
        for part in (WHOLE_MONTH, third_of(row.date)):
            first, last = coverage.get(part, (row.date, row.date))
            coverage[part] = (min(first, row.date), max(last, row.date))
    monthly_rows: list[dict[str, Any]] = []
    packed_now: list[dict[str, Any]] = []
    for (metric_type, labels_key), group in itertools.groupby(rows, key=lambda row: (row[0], row[1])):
        days = []
        for row in group:
            packed = row.histogram_packed
            if packed is None and row.histogram is not None:
                packed = pack(Histogram.from_json(row.histogram))
                packed_now.append({"t": row.metric_type, "d": row.date, "k": row.labels_key, "packed": packed})
            days.append((row, packed))
        periods = [(WHOLE_MONTH, days)]
        periods += [
            (part, list(in_part)) for part, in_part in itertools.groupby(days, key=lambda d: third_of(d[0].date))
        ]
        for part, period_days in periods:
            monthly_rows.append(
                {
                    "metric_type": metric_type,
                    "month": month,
                    "part": part,
                    "labels_key": labels_key,
                    "first_day": coverage[part][0],
                    "last_day": coverage[part][1],
                    "merged_at": merged_at,
                    **_merged(period_days),
                }
            )
    if packed_now:
        connection.execute(
            update(daily)
            .where(
                and_(
                    daily.c.metric_type == bindparam("t"),
                    daily.c.date == bindparam("d"),
                    daily.c.labels_key == bindparam("k"),
                )
            )
            .values(histogram_packed=bindparam("packed")),
            packed_now,
        )
    connection.execute(delete(monthly).where(monthly.c.month == month))
    if monthly_rows:
        connection.execute(insert(monthly), monthly_rows)
    result = MonthMerge(month, len(rows), len(monthly_rows), len(packed_now), time.perf_counter() - started)
    logger.info(
        "Merged month %s: daily_rows=%d monthly_rows=%d packed=%d duration_s=%.3f",
        month.isoformat()[:7],
        result.daily_rows,
        result.monthly_rows,
        result.packed,
        result.duration_s,
        extra={
            "event": "rollup_month",
            "month": month.isoformat(),
            "daily_rows": result.daily_rows,
            "monthly_rows": result.monthly_rows,
            "packed": result.packed,
            "duration_s": result.duration_s,
        },
    )
    return result


def months_to_merge(connection: Connection) -> list[dt.date]:
    """The months whose monthly rows are not the merge of their daily rows as they are now: a different
    number of daily rows, of samples or a later ``rolled_up_at`` per metric type, daily rows without a
    packed histogram, or monthly rows of a month without daily rows."""
    daily = OperationalMetricDaily.__table__
    monthly = OperationalMetricMonthly.__table__
    unpacked = case((and_(daily.c.histogram_packed.is_(None), daily.c.histogram.is_not(None)), 1), else_=0)
    per_day = select(
        daily.c.date,
        daily.c.metric_type,
        func.count(),
        func.sum(daily.c.sample_count),
        func.max(daily.c.rolled_up_at),
        func.sum(unpacked),
    ).group_by(daily.c.date, daily.c.metric_type)
    found: dict[dt.date, dict[str, list[Any]]] = {}
    stale: set[dt.date] = set()
    for day, metric_type, rows, samples, latest, without_packed in connection.execute(per_day):
        month = month_of(day)
        counts = found.setdefault(month, {}).setdefault(str(metric_type), [0, 0, None])
        counts[0] += int(rows)
        counts[1] += int(samples)
        counts[2] = latest if counts[2] is None else max(counts[2], latest)
        if without_packed:
            stale.add(month)
    merged: dict[dt.date, dict[str, list[Any]]] = {}
    per_month = (
        select(
            monthly.c.month,
            monthly.c.metric_type,
            func.sum(monthly.c.daily_rows),
            func.sum(monthly.c.sample_count),
            func.max(monthly.c.source_rolled_up_at),
        )
        .where(monthly.c.part == WHOLE_MONTH)
        .group_by(monthly.c.month, monthly.c.metric_type)
    )
    for month, metric_type, rows, samples, latest in connection.execute(per_month):
        merged.setdefault(month, {})[str(metric_type)] = [int(rows), int(samples), latest]
    stale.update(month for month in found.keys() | merged.keys() if found.get(month) != merged.get(month))
    return sorted(stale)


def merge_months(engine: Engine) -> list[MonthMerge]:
    """Re-merge every month whose monthly rows are out of date (:func:`months_to_merge`), each in a
    transaction of its own under the rollup lock; return what was merged, oldest month first."""
    with engine.connect() as connection:
        months = months_to_merge(connection)
    done = []
    for month in months:
        with engine.begin() as connection:
            lock_for_rollup(connection)
            done.append(merge_month(connection, month))
    return done

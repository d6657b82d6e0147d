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
month's daily rows merged, the same per third of the month (days 1-10, 11-20, 21-end) and per suffix of it
(days ``d`` to the end, for each ``d`` from 2; :func:`suffix_part`)
(:class:`~dramatiq_opmetrics.models.OperationalMetricMonthly`), so that a range read takes a year as 12 rows
per label set instead of 365, whichever day it starts on: the suffix from its first day, then whole months
(:mod:`~dramatiq_opmetrics.query`). Without suffixes a year starting mid-month read about 22 rows per label
set (up to nine days and two thirds before its whole months), and a range read's cost is mostly per row
fetched (the driver's and SQLAlchemy's work on each). Every daily row also carries its histogram packed
(:mod:`~dramatiq_opmetrics.packed_histograms`), which merges without parsing JSON. A month's rows are always
rebuilt whole from its daily rows (:func:`merge_month`), never updated by adding a day to them: a day rolled
up again (late samples) then can never be counted twice.

- The suffixes cost storage and a little of the nightly merge: about one monthly row per day of the month
  and label set (the monthly table holds about as many rows as the daily table, where it held a seventh),
  made as one merge from the month's last day back, so each day's histogram is added once and each
  distinct merge computed and encoded once: a label set first seen on day ``d`` (a one-off label set, a
  document id per message) has its whole month and its suffixes from days 2 to ``d`` alike, one merge
  written ``d`` times. A month's rows are written with a binary COPY per part on PostgreSQL, one part after the
  other, so that the rows of a period a read takes lie together; its bytes are put together from each label
  set's, part's and merge's fields, each encoded once (a day of 100,000 one-off label sets: 1.05 million
  monthly rows in 14 s of the merge's CPU time instead of 40 s).
- The rollup of a day re-merges its month in the same transaction, so a reader sees the day's daily rows
  and the month's rows change together (a range read takes a month from its monthly rows only when it
  covers every day those rows hold, in one statement).
- Each run then heals what changed otherwise (:func:`merge_months`): a month whose daily rows differ from
  what its monthly rows say they merged (number of rows, samples, latest ``rolled_up_at``), or that has
  daily rows without a packed histogram, is re-merged in a transaction of its own, which also packs those
  rows. The first run after migration 0007 so merges (and packs) the whole history, one month at a time;
  until then reads are right but slower. Daily rows written by other means than the rollup (an import, a
  test fixture) are merged by the next run in the same way.
- A month merged before suffixes existed (by an earlier version) is merged again by the next run too, so
  that old months get their suffixes once, after an upgrade, rather than never (a month is re-merged only
  when its daily rows change, which an old month's seldom do); until then its reads are right, from its
  thirds and daily rows. That first run takes about a month's merge per month of history. Going back to an
  earlier version needs the suffixes removed first (``DELETE FROM operational_metrics_monthly WHERE part >=
  100``): it would read them as if they were thirds.

Example::

    from dramatiq_opmetrics.rollup import rollup
    for day in rollup(engine):  # every complete day not rolled up yet
        print(day.day, day.rows)
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
import logging
import math
import operator
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.types.json import Jsonb
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from .aggregate import PERCENTILES, Aggregate, aggregate_raw, raw_counts_by_day
from .database import fetch_rows
from .locks import write_xact_lock
from .metric_types import MetricType
from .models import MONTHLY_TABLE, LabelSet, OperationalMetricDaily, OperationalMetricMonthly
from .packed_histograms import HistogramSum, pack
from .partitions import DEFAULT_PARTITION_DAYS_AHEAD, day_bounds, ensure_partitions
from .sketch import Histogram
from .value_lists import in_values

logger = logging.getLogger(__name__)

#: The advisory lock that serialises rollups and prunes of one installation.
ROLLUP_LOCK = "rollup"
#: The ``part`` of a monthly row that merges the whole month (1, 2 and 3 merge its thirds).
WHOLE_MONTH = 0
#: The ``part`` of a monthly row that merges days ``d`` to the end of its month is ``SUFFIX_PART_BASE + d``
#: (``d`` from 2 to the last day; days 1 and 21 to the end are the whole month and its third third).
SUFFIX_PART_BASE = 100

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
      monthly_rows(int): monthly rows written (per metric type and label set, the month, its thirds and its
        suffixes).
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
        add_exact(partials, value)
    return partials


def add_exact(partials: list[float], value: float) -> None:
    """Add ``value`` to ``partials`` (:func:`exact_sum_parts` of some values) in place: they are then those of
    the values and ``value``."""
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


def third_of(day: dt.date) -> int:
    """The part of its month that ``day`` is in: 1 (days 1 to 10), 2 (11 to 20) or 3 (21 to the end)."""
    return min(3, (day.day - 1) // 10 + 1)


def suffix_part(day: dt.date) -> int:
    """The part of its month that holds ``day`` to the end of the month: :data:`WHOLE_MONTH` for the first
    day, the third third for the 21st, else ``SUFFIX_PART_BASE + day.day``."""
    if day.day == 1:
        return WHOLE_MONTH
    if day.day == 21:
        return 3
    return SUFFIX_PART_BASE + day.day


def month_parts(month: dt.date) -> list[int]:
    """Every part a monthly row of ``month`` can have: the whole month, its thirds, then its suffixes."""
    last_of_month = next_month(month) - dt.timedelta(days=1)
    suffixes = (suffix_part(month.replace(day=day)) for day in range(2, last_of_month.day + 1))
    return [WHOLE_MONTH, 1, 2, 3, *(part for part in suffixes if part >= SUFFIX_PART_BASE)]


def part_bounds(month: dt.date, part: int) -> tuple[dt.date, dt.date]:
    """The first and last day of ``part`` of ``month`` (:data:`WHOLE_MONTH`, a third: 1, 2 or 3, or a suffix:
    :data:`SUFFIX_PART_BASE` plus its first day)."""
    last_of_month = next_month(month) - dt.timedelta(days=1)
    if part == WHOLE_MONTH:
        return month, last_of_month
    if part >= SUFFIX_PART_BASE:
        return month.replace(day=part - SUFFIX_PART_BASE), last_of_month
    first = month.replace(day=10 * (part - 1) + 1)
    return first, last_of_month if part == 3 else month.replace(day=10 * part)


class _PeriodMerge:
    """The daily rows of a period merged, added one at a time (in any order): :meth:`columns` reads the
    merged columns after any addition (a month's suffixes are one merge, read day by day)."""

    def __init__(self) -> None:
        self.histogram = HistogramSum()
        self.complete = True
        self.daily_rows = 0
        self.sample_count = 0
        self.sum_parts: list[float] = []
        self.low = math.inf
        self.high = -math.inf
        self.latest: Any = None
        self.rolled_up_at: dt.datetime | None = None

    def add(self, row: Any, packed: bytes | None) -> None:
        """Add a daily row and its packed histogram (None if it has none)."""
        if packed is None:
            self.complete = False
        else:
            self.histogram.add_packed(packed)
        self.daily_rows += 1
        self.sample_count += row.sample_count
        add_exact(self.sum_parts, row.sum)
        self.low, self.high = min(self.low, row.min), max(self.high, row.max)
        if self.latest is None or row.date > self.latest.date:
            self.latest = row
        if self.rolled_up_at is None or row.rolled_up_at > self.rolled_up_at:
            self.rolled_up_at = row.rolled_up_at

    def columns(self) -> dict[str, Any]:
        """The merged columns of the rows added so far (at least one)."""
        low, high = self.low, self.high
        percentiles: tuple[float | None, ...]
        if self.daily_rows == 1:
            percentiles = (self.latest.p50, self.latest.p95, self.latest.p99)
        elif self.complete:
            percentiles = self.histogram.quantiles_within(PERCENTILES, low, high)
        else:
            percentiles = (None, None, None)
        return {
            "sample_count": self.sample_count,
            "sum": math.fsum(self.sum_parts),
            "sum_parts": list(self.sum_parts),
            "min": low,
            "max": high,
            "p50": percentiles[0],
            "p95": percentiles[1],
            "p99": percentiles[2],
            "histogram_packed": self.histogram.pack() if self.complete else None,
            "daily_rows": self.daily_rows,
            "source_rolled_up_at": self.rolled_up_at,
        }


@functools.lru_cache(maxsize=16)
def _suffix_parts(month: dt.date) -> tuple[int, ...]:
    """The :func:`suffix_part` of each day of ``month``, by day number (index 0 unused)."""
    last_of_month = next_month(month) - dt.timedelta(days=1)
    return (WHOLE_MONTH, *(suffix_part(month.replace(day=day)) for day in range(1, last_of_month.day + 1)))


def _periods_of(month: dt.date, days: list[tuple[Any, bytes | None]]) -> list[tuple[list[int], dict[str, Any]]]:
    """The parts of ``month`` that a metric type and label set's daily rows (each with its packed histogram,
    oldest first) have rows for: each distinct merged columns once, with the parts they are those of.

    The suffixes, the whole month (the suffix from day 1) and the third third (from day 21) are one merge,
    from the last day back: one histogram added and one merged row read per day that has a daily row; the
    suffixes from days without one are the next day's columns (a label set first seen on day ``d`` has its
    suffixes from days 1 to ``d`` in one). A first or second third without daily rows after it is its
    suffix's columns too when its sum's exact parts (:func:`exact_sum_parts`) come out the same oldest first
    (they depend on the order the sums are added in): the columns are then computed and written once."""
    suffix_parts = _suffix_parts(month)
    merged: list[tuple[list[int], dict[str, Any]]] = []
    from_day: dict[int, tuple[list[int], dict[str, Any]]] = {}
    suffix = _PeriodMerge()
    position = len(days)
    for day_number in range(days[-1][0].date.day, 0, -1):
        if position and days[position - 1][0].date.day >= day_number:
            while position and days[position - 1][0].date.day >= day_number:
                position -= 1
                suffix.add(*days[position])
            merged.append(([], suffix.columns()))
        if merged:
            merged[-1][0].append(suffix_parts[day_number])
            from_day[day_number] = merged[-1]
    for third in (1, 2):
        in_third = [day for day in days if third_of(day[0].date) == third]
        if not in_third:
            continue
        same_as_suffix = from_day.get(10 * third - 9)
        if (
            in_third[-1] is days[-1]
            and same_as_suffix is not None
            and same_as_suffix[1]["sum_parts"] == exact_sum_parts(row.sum for row, _ in in_third)
        ):
            same_as_suffix[0].append(third)
            continue
        merge = _PeriodMerge()
        for row, packed in in_third:
            merge.add(row, packed)
        merged.append(([third], merge.columns()))
    return merged


def merge_month(connection: Connection, month: dt.date) -> MonthMerge:
    """Rebuild the monthly rows of ``month`` (its first day) from its daily rows, in the caller's
    transaction, which holds the rollup lock (:func:`lock_for_rollup`): per metric type and label set one
    row of the whole month, one per third of it and one per suffix of it (days ``d`` to the end,
    :func:`suffix_part`) that has daily rows. Daily rows without a packed histogram get it (from their JSON
    one) on the way."""
    started = time.perf_counter()
    daily = OperationalMetricDaily.__table__
    monthly = OperationalMetricMonthly.__table__
    assert isinstance(daily, Table) and isinstance(monthly, Table)
    query = (
        select(
            cast(daily.c.metric_type, Text).label("metric_type"),
            daily.c.labels_key,
            # As text: parsed (SQLite) or copied (PostgreSQL) once per label set, not once per daily row.
            cast(daily.c.labels, Text).label("labels"),
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
    rows: list[Any] = fetch_rows(connection, query, named=True)
    merged_at = dt.datetime.now(dt.UTC)
    # Which days each period has daily rows for, over every metric type and label set.
    dates = sorted({row.date for row in rows})
    coverage: dict[int, tuple[dt.date, dt.date]] = {}
    for part in month_parts(month):
        first, last = part_bounds(month, part)
        in_part = [day for day in dates if first <= day <= last]
        if in_part:
            coverage[part] = (in_part[0], in_part[-1])
    merged: list[_MergedLabelSet] = []
    packed_now: list[dict[str, Any]] = []
    for (metric_type, labels_key), group in itertools.groupby(rows, key=lambda row: (row[0], row[1])):
        days = []
        for row in group:
            packed = row.histogram_packed
            if packed is None and row.histogram is not None:
                packed = pack(Histogram.from_json(row.histogram))
                packed_now.append(
                    {"t": MetricType(row.metric_type), "d": row.date, "k": row.labels_key, "packed": packed}
                )
            days.append((row, packed))
        merged.append(
            _MergedLabelSet(MetricType(metric_type), labels_key, days[-1][0].labels, _periods_of(month, days))
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
    monthly_rows = _insert_monthly(connection, month, merged_at, coverage, merged)
    result = MonthMerge(month, len(rows), monthly_rows, len(packed_now), time.perf_counter() - started)
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


@dataclass(frozen=True)
class _MergedLabelSet:
    """A metric type and label set's monthly rows of a month (:func:`_periods_of`)."""

    metric_type: MetricType
    labels_key: str
    labels_json: str
    periods: list[tuple[list[int], dict[str, Any]]]


#: The monthly table's columns that :func:`_insert_monthly` copies, with their PostgreSQL types, in the order
#: it copies them: those of the label set's every row, those of the part's every row, those of each merge.
_LABEL_SET_COPY_COLUMNS = {"metric_type": "text", "month": "date", "labels_key": "text", "labels": "jsonb"}
_PART_COPY_COLUMNS = {"part": "int2", "first_day": "date", "last_day": "date", "merged_at": "timestamptz"}
_MERGE_COPY_COLUMNS = {
    "sample_count": "int8",
    "sum": "float8",
    "min": "float8",
    "max": "float8",
    "p50": "float8",
    "p95": "float8",
    "p99": "float8",
    "histogram_packed": "bytea",
    "daily_rows": "int4",
    "source_rolled_up_at": "timestamptz",
}
#: The last column copied, encoded by :func:`_float8_array_field` (psycopg's list dumper is Python code: a
#: sixth of the merge of a month of 100,000 one-off label sets, dumping each row's).
_SUM_PARTS_COPY_COLUMN = "sum_parts"
#: How many bytes of rows :func:`_insert_monthly` gathers before it hands them to the COPY.
_COPY_CHUNK_BYTES = 1 << 20
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # no flags, no header extension
_COPY_TRAILER = struct.pack("!h", -1)
_FIELD_LENGTH = struct.Struct("!i")
_NULL_FIELD = _FIELD_LENGTH.pack(-1)
_FLOAT8_OID = 701


def _insert_monthly(
    connection: Connection,
    month: dt.date,
    merged_at: dt.datetime,
    coverage: dict[int, tuple[dt.date, dt.date]],
    merged: list[_MergedLabelSet],
) -> int:
    """Insert the monthly rows of ``month`` one part after the other, so that the rows of a period a range
    read takes lie together; return how many.

    On PostgreSQL they are a binary COPY per part (a month is some 30 rows per metric type and label set, a
    batched INSERT of them took most of a month's merge; a COPY of a whole month of 100,000 one-off label sets,
    a million rows, could outlast a 30 s ``statement_timeout``), written as the COPY's bytes: a label set's labels, each
    part's columns and each distinct merge (a label set first seen on day 20 has its whole month and 19
    suffix rows alike) are encoded once, by psycopg's binary dumpers, and the rows put together from them.
    Elsewhere, one batched INSERT.
    """
    if not merged:
        return 0
    if connection.dialect.name != "postgresql":
        rows = [
            {
                "metric_type": label_set.metric_type,
                "month": month,
                "part": part,
                "labels_key": label_set.labels_key,
                "labels": json.loads(label_set.labels_json),
                "first_day": coverage[part][0],
                "last_day": coverage[part][1],
                "merged_at": merged_at,
                **columns,
            }
            for label_set in merged
            for parts, columns in label_set.periods
            for part in parts
        ]
        rows.sort(key=operator.itemgetter("part"))
        connection.execute(insert(OperationalMetricMonthly), rows)
        return len(rows)
    driver_connection = connection.connection.driver_connection
    assert driver_connection is not None
    with driver_connection.cursor() as cursor:
        encode_label_set = _copy_fields_encoder(cursor, _LABEL_SET_COPY_COLUMNS)
        encode_part = _copy_fields_encoder(cursor, _PART_COPY_COLUMNS)
        encode_merge = _copy_fields_encoder(cursor, _MERGE_COPY_COLUMNS)
        merge_values = operator.itemgetter(*_MERGE_COPY_COLUMNS)
        by_part: dict[int, list[tuple[bytes, bytes]]] = {part: [] for part in coverage}
        for label_set in merged:
            label_set_fields = encode_label_set(
                (label_set.metric_type.value, month, label_set.labels_key, Jsonb(label_set.labels_json, dumps=str))
            )
            for parts, columns in label_set.periods:
                merge_fields = encode_merge(merge_values(columns)) + _float8_array_field(columns["sum_parts"])
                for part in parts:
                    by_part[part].append((label_set_fields, merge_fields))
        names = [*_LABEL_SET_COPY_COLUMNS, *_PART_COPY_COLUMNS, *_MERGE_COPY_COLUMNS, _SUM_PARTS_COPY_COLUMN]
        field_count = struct.pack("!h", len(names))
        statement = f"COPY {MONTHLY_TABLE} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
        for part in sorted(by_part):
            part_fields = encode_part((part, *coverage[part], merged_at))
            with cursor.copy(statement) as copy:
                chunk = bytearray(_COPY_SIGNATURE)
                for label_set_fields, merge_fields in by_part[part]:
                    chunk += field_count
                    chunk += label_set_fields
                    chunk += part_fields
                    chunk += merge_fields
                    if len(chunk) >= _COPY_CHUNK_BYTES:
                        copy.write(chunk)
                        chunk = bytearray()
                chunk += _COPY_TRAILER
                copy.write(chunk)
    return sum(map(len, by_part.values()))


def _copy_fields_encoder(cursor: Any, types: dict[str, str]) -> Callable[[Sequence[Any]], bytes]:
    """A function of values of columns of ``types`` (name: PostgreSQL type) to their fields in a binary COPY
    row: each value's length (-1 for NULL), then its bytes, as psycopg's binary dumper of the type makes
    them."""
    registry = cursor.adapters.types
    transformer = Transformer(cursor)
    transformer.set_dumper_types([registry.get_oid(name) for name in types.values()], pq.Format.BINARY)
    formats = [PyFormat.BINARY] * len(types)
    length = _FIELD_LENGTH.pack

    def encode(values: Sequence[Any]) -> bytes:
        dumped = transformer.dump_sequence(values, formats)
        return b"".join(_NULL_FIELD if data is None else length(len(data)) + data for data in dumped)

    return encode


def _float8_array_field(values: list[float]) -> bytes:
    """``values`` as a ``float8[]`` field of a binary COPY row: its length, then the array in PostgreSQL's
    binary form (``array_send``: dimensions, no NULLs, the element type, each dimension's length and lower
    bound 1, then each element's length and value)."""
    if not values:
        return _FIELD_LENGTH.pack(12) + struct.pack("!iii", 0, 0, _FLOAT8_OID)
    body = struct.pack(
        f"!5i{'id' * len(values)}", 1, 0, _FLOAT8_OID, len(values), 1, *itertools.chain(*((8, x) for x in values))
    )
    return _FIELD_LENGTH.pack(len(body)) + body


def months_to_merge(connection: Connection) -> list[dt.date]:
    """The months whose monthly rows are not the merge of their daily rows as they are now: a different
    number of daily rows, of samples or a later ``rolled_up_at`` per metric type, daily rows without a
    packed histogram, monthly rows of a month without daily rows, or a month merged without its suffixes
    (before they existed: a metric type with daily rows after the month's first day but no suffix from
    day 2)."""
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
        counts = found.setdefault(month, {}).setdefault(str(metric_type), [0, 0, None, False])
        counts[0] += int(rows)
        counts[1] += int(samples)
        counts[2] = latest if counts[2] is None else max(counts[2], latest)
        counts[3] = counts[3] or day.day > 1
        if without_packed:
            stale.add(month)
    merged: dict[dt.date, dict[str, list[Any]]] = {}
    # The suffix from day 2 exists wherever a suffix does: one look-up by primary key per month and type.
    suffixes = monthly.alias("suffixes")
    has_suffixes = (
        select(suffixes.c.part)
        .where(
            suffixes.c.metric_type == monthly.c.metric_type,
            suffixes.c.month == monthly.c.month,
            suffixes.c.part == SUFFIX_PART_BASE + 2,
        )
        .exists()
    )
    per_month = (
        select(
            monthly.c.month,
            monthly.c.metric_type,
            func.sum(monthly.c.daily_rows),
            func.sum(monthly.c.sample_count),
            func.max(monthly.c.source_rolled_up_at),
            has_suffixes,
        )
        .where(monthly.c.part == WHOLE_MONTH)
        .group_by(monthly.c.month, monthly.c.metric_type)
    )
    for month, metric_type, rows, samples, latest, suffixed in connection.execute(per_month):
        merged.setdefault(month, {})[str(metric_type)] = [int(rows), int(samples), latest, bool(suffixed)]
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

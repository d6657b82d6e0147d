"""Statistics over ranges of whole UTC days, for the pages of days (overview, actor, queues, tokens, confidence).

A page's range ends today, today included. Its days are read in two parts, as the query API defines them
(:func:`~dramatiq_opmetrics.query.days_not_rolled_up`):

- Rolled-up days come from the daily table: each row's own statistics, as
  :func:`~dramatiq_opmetrics.query.query_daily_series` gives them per label set (see
  :func:`rolled_up_day_stats` for why they are read here). They change only when the rollup runs, so what is
  read from them is kept between requests and rechecked every few minutes by a fingerprint of their rows
  (:mod:`.kept`).
- Today, and any day the rollup has not reached yet, come from :func:`~dramatiq_opmetrics.series.query_totals`
  over the day: the recent tier's buckets plus the few raw rows it does not hold yet. No request aggregates a
  day of raw rows, and what one dashboard reads is what every reader of the tier reads.

Statistics of the whole range (its p95, which is not an average of daily p95s) are
:func:`~dramatiq_opmetrics.query.query_metrics`'s, read from merged histograms.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from ..metric_types import MetricType
from ..models import LabelSet, OperationalMetricDaily
from ..partitions import day_bounds
from ..query import MetricStats, days_not_rolled_up, matching_labels_keys, query_metrics
from ..series import SeriesPoint, query_totals
from .charts import DateRange, DayStats
from .data import DashboardData


@dataclass(frozen=True, slots=True)
class DaysOfRange:
    """A page's range of days, and which of its days are not rolled up yet (read once per request)."""

    date_range: DateRange
    not_rolled_up: tuple[dt.date, ...]

    @classmethod
    def read(cls, connection: Connection, date_range: DateRange) -> DaysOfRange:
        """The range, with its days that have no daily rows yet."""
        return cls(date_range, tuple(days_not_rolled_up(connection, date_range.first_day, date_range.today)))


def day_stats(
    data: DashboardData,
    connection: Connection,
    days: DaysOfRange,
    metric_types: Sequence[MetricType],
    *,
    labels: Mapping[str, str] | None = None,
) -> list[DayStats]:
    """Per day and label set (of those having all of ``labels``, if given), the statistics of
    ``metric_types`` over the range: rolled-up days kept between requests, the others from the recent tier."""
    first, today = days.date_range.first_day, days.date_range.today
    daily = data.kept.get(
        ("days", tuple(metric_types), first, today, _items(labels)),
        lambda: daily_fingerprint(connection, metric_types, first, today, labels),
        lambda: rolled_up_day_stats(connection, metric_types, first, today, labels),
    )
    return daily + [
        stats
        for day in days.not_rolled_up
        for metric_type in metric_types
        for stats in totals_of_day(connection, day, metric_type, labels=labels)
    ]


def rolled_up_day_stats(
    connection: Connection,
    metric_types: Sequence[MetricType],
    first_day: dt.date,
    last_day: dt.date,
    labels: Mapping[str, str] | None = None,
) -> list[DayStats]:
    """The daily rows of ``metric_types`` from ``first_day`` to ``last_day`` inclusive, as they are stored.

    The daily rows hold the day's exact percentiles, so a chart point of one row needs no histogram; this
    reads the rows without theirs, as :func:`~dramatiq_opmetrics.query.query_daily_series` (which reads and
    parses each row's histogram to merge groups) would give them ungrouped: at the dashboard benchmark's scale
    a year of the queues' rows takes 0.1 s this way, 2.5 s that way."""
    d = OperationalMetricDaily
    columns = [d.metric_type, d.labels, d.date, d.sample_count, d.sum, d.max, d.p50, d.p95, d.p99, d.min]
    query = select(*columns).where(d.metric_type.in_(list(metric_types)), d.date >= first_day, d.date <= last_day)
    if labels:
        query = query.where(d.labels_key.in_(matching_labels_keys(connection, labels)))
    rows: list[Any] = list(connection.execute(query))  # loosely typed: its columns are mixed
    return [
        DayStats(str(row[0]), dict(row[1]), row[2], int(row[3]), row[4], row[5], row[6], row[7], row[8], minimum=row[9])
        for row in rows
    ]


def totals_of_day(
    connection: Connection,
    day: dt.date,
    metric_type: MetricType,
    *,
    labels: Mapping[str, str] | None = None,
    group_by: Sequence[str] | None = None,
) -> list[DayStats]:
    """The statistics of one UTC day per group (as for :func:`~dramatiq_opmetrics.series.query_totals`, by
    default per label set), from the recent tier and the raw rows it does not hold yet."""
    start, end = day_bounds(day)
    points = query_totals(connection, start, end, metric_type=metric_type, labels=labels, group_by=group_by)
    return [_point_stats(point, day) for point in points]


def range_stats(
    connection: Connection,
    days: DaysOfRange,
    metric_type: MetricType,
    *,
    labels: Mapping[str, str] | None = None,
    group_by: Sequence[str] | None = None,
) -> list[MetricStats]:
    """The statistics of ``metric_type`` over the whole range per group: the query API's."""
    first, today = days.date_range.first_day, days.date_range.today
    return query_metrics(connection, first, today, metric_type=metric_type, labels=labels, group_by=group_by)


def label_values(connection: Connection, key: str, *, alongside: str | None = None) -> list[str]:
    """Every value label ``key`` has taken (a filter's choices), in label sets that also have the label
    ``alongside``, if given. Read from the label-set table, which is small."""
    label = LabelSet.labels[key].as_string()
    query = select(label).where(label.is_not(None)).distinct()
    if alongside:
        query = query.where(LabelSet.labels[alongside].as_string().is_not(None))
    return sorted(value for (value,) in connection.execute(query))


def daily_fingerprint(
    connection: Connection,
    metric_types: Sequence[MetricType],
    first_day: dt.date,
    last_day: dt.date,
    labels: Mapping[str, str] | None = None,
) -> tuple[object, ...]:
    """What changes when the daily rows of a span change (of the label sets having all of ``labels``, if
    given): how many, their samples, the latest ``rolled_up_at``."""
    d = OperationalMetricDaily
    query = select(func.count(), func.sum(d.sample_count), func.max(d.rolled_up_at)).where(
        d.metric_type.in_(list(metric_types)), d.date >= first_day, d.date <= last_day
    )
    if labels:
        query = query.where(d.labels_key.in_(matching_labels_keys(connection, labels)))
    return tuple(connection.execute(query).one())


def _items(labels: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((labels or {}).items()))


def _point_stats(point: SeriesPoint, day: dt.date) -> DayStats:
    return DayStats(
        point.metric_type.value,
        dict(point.labels),
        day,
        point.count,
        point.sum,
        point.max,
        point.p50,
        point.p95,
        point.p99,
        minimum=point.min,
    )

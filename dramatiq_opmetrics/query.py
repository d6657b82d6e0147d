"""The query API: statistics over any range of days, from daily rows, with percentiles that stay accurate.

:func:`query_metrics` returns, per metric type and group, ``count``, ``sum``, ``min``, ``max``, ``avg`` and
``p50``/``p95``/``p99`` for the UTC days ``since`` to ``until`` inclusive; :func:`query_daily_series` returns
the same per day (one point per day per group, for charts). Both read the daily rows, which are kept forever,
and merge the raw rows of the days in the range that are not rolled up yet (today, and yesterday before the
nightly rollup), so the most recent data is never missing.

Percentiles over several days (or several label sets) are read from the merged histograms of the daily rows
(:mod:`~dramatiq_opmetrics.sketch`): within 1% relative error of the exact percentile over the raw samples,
even years after the raw rows are gone. Daily percentiles are never averaged (that is about 6% off). A
result made of exactly one daily row gives that day's exact stored percentiles.

Example::

    from dramatiq_opmetrics import query_metrics, MetricType

    for stats in query_metrics(engine, date(2026, 11, 1), date(2026, 11, 30),
                               metric_type=MetricType.PROCESSING_TIME, labels={"queue": "billing"},
                               group_by=("actor",)):
        print(stats.labels["actor"], stats.count, stats.avg, stats.p95)
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from .aggregate import PERCENTILES, aggregate_raw, default_partition_counts
from .labels import make_label_set
from .metric_types import MetricType
from .models import LabelSet, OperationalMetricDaily
from .partitions import day_bounds, list_partitions
from .sketch import Histogram


@dataclass(frozen=True)
class MetricStats:
    """Statistics of one metric type and group over a range of days (or over one day of a series).

    Parameters:
      metric_type(MetricType): what the values measure (their unit is the metric type's).
      labels(Mapping[str, str]): the group: the ``group_by`` labels of its samples (a label its samples do
        not have is absent), or the full label set when not grouping.
      count(int): number of samples.
      sum(float): sum of the values.
      min, max, avg(float | None): extremes and mean of the values; None when ``count`` is 0.
      p50, p95, p99(float | None): percentiles, within 1% relative error of the exact ones; None when
        ``count`` is 0.
      date(date | None): the UTC day of a :func:`query_daily_series` point; None for a range result.
      raw_days(int): how many of the days were read from raw rows (not rolled up yet).
    """

    metric_type: MetricType
    labels: Mapping[str, str]
    count: int
    sum: float
    min: float | None
    max: float | None
    avg: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    date: dt.date | None = None
    raw_days: int = 0


def query_metrics(
    connectable: Engine | Connection,
    since: dt.date,
    until: dt.date,
    *,
    metric_type: MetricType | str | None = None,
    labels: Mapping[str, str] | None = None,
    group_by: Sequence[str] | None = None,
    include_raw: bool = True,
) -> list[MetricStats]:
    """Statistics per metric type and group over the UTC days ``since`` to ``until`` inclusive.

    Parameters:
      connectable(Engine | Connection): the metrics database.
      since, until(date): the first and last UTC day of the range.
      metric_type(MetricType | str | None): only this metric type; default: every type that has data.
      labels(Mapping[str, str] | None): only samples whose labels include all these pairs.
      group_by(Sequence[str] | None): group by these label keys (``("actor", "queue")``); ``()`` gives one
        group per metric type; None (default) groups by full label set.
      include_raw(bool): merge in the raw rows of days in the range that have no daily rows yet.

    Returns the groups ordered by metric type, then labels. Groups without samples are not returned.

    Raises:
      ValueError: ``since`` is after ``until``, an unknown metric type, or bad labels (the message says which).
    """
    return _query(connectable, since, until, metric_type, labels, group_by, include_raw, per_day=False)


def query_daily_series(
    connectable: Engine | Connection,
    since: dt.date,
    until: dt.date,
    *,
    metric_type: MetricType | str | None = None,
    labels: Mapping[str, str] | None = None,
    group_by: Sequence[str] | None = None,
    include_raw: bool = True,
) -> list[MetricStats]:
    """Like :func:`query_metrics`, but one point per day per group (``MetricStats.date`` set), for charts.

    Days without samples have no point. Ordered by metric type, labels, then date.
    """
    return _query(connectable, since, until, metric_type, labels, group_by, include_raw, per_day=True)


#: A histogram as stored in a daily row (parsed only when needed), or built from raw rows.
_HistogramSource = Mapping[str, Any] | Histogram | None


@dataclass
class _Group:
    count: int = 0
    sums: list[float] = field(default_factory=list)
    low: float = math.inf
    high: float = -math.inf
    histograms: list[_HistogramSource] = field(default_factory=list)
    exact: tuple[float | None, ...] | None = None
    raw_days: set[dt.date] = field(default_factory=set)

    def add(
        self,
        count: int,
        total: float,
        low: float,
        high: float,
        histogram: _HistogramSource,
        exact: tuple[float | None, ...] | None,
    ) -> None:
        self.count += count
        self.sums.append(total)
        self.low = min(self.low, low)
        self.high = max(self.high, high)
        self.histograms.append(histogram)
        self.exact = exact

    def percentiles(self) -> tuple[float | None, ...]:
        if len(self.histograms) == 1 and self.exact is not None and None not in self.exact:
            return self.exact
        if any(histogram is None for histogram in self.histograms):
            return (None,) * len(PERCENTILES)
        merged = Histogram()
        for histogram in self.histograms:
            merged += histogram if isinstance(histogram, Histogram) else Histogram.from_json(histogram or {})
        # A bucket's representative value may lie just outside the values seen: clamp it to them.
        return tuple(
            None if value is None else min(max(value, self.low), self.high) for value in merged.quantiles(PERCENTILES)
        )


_GroupKey = tuple[MetricType, tuple[tuple[str, str], ...], dt.date | None]
_GroupOf = Callable[[MetricType, Mapping[str, str], dt.date], _Group]


def _query(
    connectable: Engine | Connection,
    since: dt.date,
    until: dt.date,
    metric_type: MetricType | str | None,
    labels: Mapping[str, str] | None,
    group_by: Sequence[str] | None,
    include_raw: bool,
    per_day: bool,
) -> list[MetricStats]:
    if since > until:
        raise ValueError(f"since ({since}) is after until ({until})")
    if metric_type is not None:
        try:
            metric_type = MetricType(metric_type)
        except ValueError:
            known = ", ".join(member.value for member in MetricType)
            raise ValueError(f"unknown metric type {metric_type!r}; known: {known}") from None
    label_filter = dict(make_label_set(labels).labels) if labels else {}
    if isinstance(group_by, str):
        raise ValueError("group_by is a sequence of label keys, e.g. ('actor', 'queue'), not a string")
    groups: dict[_GroupKey, _Group] = {}

    def group_of(row_type: MetricType, row_labels: Mapping[str, str], day: dt.date) -> _Group:
        if group_by is None:
            chosen = tuple(sorted(row_labels.items()))
        else:
            chosen = tuple((key, row_labels[key]) for key in group_by if key in row_labels)
        key = (MetricType(row_type), chosen, day if per_day else None)
        return groups.setdefault(key, _Group())

    with _connection(connectable) as connection:
        daily = OperationalMetricDaily.__table__
        conditions = [daily.c.date >= since, daily.c.date <= until]
        if metric_type is not None:
            conditions.append(daily.c.metric_type == metric_type)
        conditions.extend(_label_conditions(connection, daily.c.labels, label_filter))
        query = select(
            daily.c.metric_type,
            daily.c.date,
            daily.c.labels,
            daily.c.sample_count,
            daily.c.sum,
            daily.c.min,
            daily.c.max,
            daily.c.p50,
            daily.c.p95,
            daily.c.p99,
            daily.c.histogram,
        ).where(and_(*conditions))
        for row in connection.execute(query):
            group_of(row.metric_type, row.labels, row.date).add(
                row.sample_count, row.sum, row.min, row.max, row.histogram, (row.p50, row.p95, row.p99)
            )
        if include_raw:
            for day in _days_not_rolled_up(connection, since, until):
                _add_raw_day(connection, day, metric_type, label_filter, group_of)

    results = []
    for (row_type, chosen, group_day), group in groups.items():
        if group.count == 0:
            continue
        p50, p95, p99 = group.percentiles()
        total = math.fsum(group.sums)
        results.append(
            MetricStats(
                metric_type=row_type,
                labels=dict(chosen),
                count=group.count,
                sum=total,
                min=group.low,
                max=group.high,
                avg=total / group.count,
                p50=p50,
                p95=p95,
                p99=p99,
                date=group_day,
                raw_days=len(group.raw_days),
            )
        )
    order = {member: index for index, member in enumerate(MetricType)}
    results.sort(key=lambda stats: (order[stats.metric_type], sorted(stats.labels.items()), stats.date or since))
    return results


@contextmanager
def _connection(connectable: Engine | Connection) -> Iterator[Connection]:
    if isinstance(connectable, Connection):
        yield connectable
    else:
        with connectable.connect() as connection:
            yield connection


def _label_conditions(
    connection: Connection, column: Any, label_filter: Mapping[str, str]
) -> list[ColumnElement[bool]]:
    if not label_filter:
        return []
    if connection.dialect.name == "postgresql":
        # The column's type is JSON with a JSONB variant: coerce it so that ``contains`` is JSONB's ``@>``.
        return [type_coerce(column, JSONB).contains(dict(label_filter))]
    # Label keys are identifiers (letters, digits, '_', '.', '-'), safe inside a quoted JSON path member.
    return [func.json_extract(column, f'$."{key}"') == value for key, value in label_filter.items()]


def _days_not_rolled_up(connection: Connection, since: dt.date, until: dt.date) -> list[dt.date]:
    """The days of the range that have no daily rows at all (of any metric type) and may have raw rows.

    On PostgreSQL only days with a partition or rows in the default partition can have raw rows, so a long
    range does not query every day of it.
    """
    daily = OperationalMetricDaily.__table__
    rolled_up = set(
        connection.execute(select(daily.c.date).where(daily.c.date >= since, daily.c.date <= until).distinct())
        .scalars()
        .all()
    )
    with_raw = None
    if connection.dialect.name == "postgresql":
        with_raw = set(list_partitions(connection)) | set(default_partition_counts(connection))
    days = []
    day = since
    while day <= until:
        if day not in rolled_up and (with_raw is None or day in with_raw):
            days.append(day)
        day += dt.timedelta(days=1)
    return days


def _add_raw_day(
    connection: Connection,
    day: dt.date,
    metric_type: MetricType | None,
    label_filter: Mapping[str, str],
    group_of: _GroupOf,
) -> None:
    label_sets = LabelSet.__table__
    label_set_ids = None
    if label_filter:
        label_set_ids = set(
            connection.execute(
                select(label_sets.c.id).where(*_label_conditions(connection, label_sets.c.labels, label_filter))
            ).scalars()
        )
        if not label_set_ids:
            return
    start, end = day_bounds(day)
    aggregates = aggregate_raw(
        connection, start, end, metric_type=metric_type, label_set_ids=label_set_ids, exact_percentiles=False
    )
    if not aggregates:
        return
    ids = sorted({aggregate.label_set_id for aggregate in aggregates})
    labels_of = {
        row.id: row.labels
        for row in connection.execute(select(label_sets.c.id, label_sets.c.labels).where(label_sets.c.id.in_(ids)))
    }
    for aggregate in aggregates:
        if aggregate.label_set_id not in labels_of:
            continue
        group = group_of(aggregate.metric_type, labels_of[aggregate.label_set_id], day)
        group.add(aggregate.count, aggregate.sum, aggregate.min, aggregate.max, aggregate.histogram, None)
        group.raw_days.add(day)

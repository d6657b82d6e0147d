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

Why a year reads in well under a second: the cost of a range must not grow with its days.

- Whole months, a month from the range's first day to its end (its "suffix"), and thirds of months (days
  1-10, 11-20, 21-end) are read from the monthly rows the rollup keeps (:mod:`~dramatiq_opmetrics.rollup`):
  a year is 12 rows per label set whichever day it starts on (the first month's suffix, then whole months),
  plus the thirds and days of daily rows of a last month it ends in mid-month. A period is read from its
  monthly rows only when every day it has daily rows for lies in the range (a first month whose suffix does
  not, because the range ends in that month before its last rolled-up day, is read as before the suffixes:
  from the thirds it covers and daily rows); the monthly and daily rows are read in one statement,
  so a rollup committing meanwhile is seen whole or not at all. Counts, minima and maxima add up exactly;
  sums too (a monthly row keeps its sum's exact parts, :func:`~dramatiq_opmetrics.rollup.exact_sum_parts`,
  so the range's sum is the correctly rounded sum of its daily sums, as from daily rows alone); histograms
  merge exactly, so the percentiles are those the daily rows give, bit for bit (tested).
- Histograms are read packed (:mod:`~dramatiq_opmetrics.packed_histograms`) and merged in Python as whole
  runs of counts, never bucket by bucket; a daily row rolled up before migration 0007 and not packed yet is
  read from its JSON.
- On PostgreSQL the statements of one query run with more ``work_mem`` and without JIT compilation
  (:func:`~dramatiq_opmetrics.database.local_settings`), for those statements only.
- A day not rolled up is read once per query, every metric type at once: from the recent tier's day rows
  plus the raw rows they do not hold, where the tier holds the day
  (:func:`~dramatiq_opmetrics.recent_tier.day_aggregates`), else from its raw rows, or, for a range whose
  only data is such a day within the recent tier's span, from the tier's buckets
  (:func:`~dramatiq_opmetrics.series.query_totals`).

Example::

    from dramatiq_opmetrics import query_metrics, MetricType

    for stats in query_metrics(engine, date(2026, 11, 1), date(2026, 11, 30),
                               metric_type=MetricType.PROCESSING_TIME, labels={"queue": "billing"},
                               group_by=("actor",)):
        print(stats.labels["actor"], stats.count, stats.avg, stats.p95)
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Connection,
    Date,
    Engine,
    Integer,
    Select,
    SmallInteger,
    Text,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    true,
    tuple_,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import CompoundSelect
from sqlalchemy.sql.sqltypes import NullType

from .aggregate import PERCENTILES, Aggregate
from .database import LONG_READ_SETTINGS, collection_paused, connection_for, fetch_rows, local_settings
from .labels import make_label_set
from .metric_types import MetricType
from .models import (
    FloatListType,
    JSONType,
    LabelSet,
    OperationalMetric,
    OperationalMetricDaily,
    OperationalMetricMonthly,
)
from .packed_histograms import HistogramSum
from .partitions import day_bounds, default_partition_days, list_partitions
from .recent_tier import DEFAULT_RECENT_RETENTION_DAYS, DayAggregate, day_aggregates, holds_day, read_state
from .rollup import SUFFIX_PART_BASE, WHOLE_MONTH, month_of, next_month, part_bounds, suffix_part
from .sketch import Histogram
from .value_lists import in_values


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


def query_metrics_and_recent_days(
    connectable: Engine | Connection,
    since: dt.date,
    until: dt.date,
    *,
    metric_types: Sequence[MetricType | str],
    day_metric_types: Sequence[MetricType | str] | None = None,
    labels: Mapping[str, str] | None = None,
    group_by: Sequence[str] | None = None,
) -> tuple[list[MetricStats], list[MetricStats]]:
    """:func:`query_metrics` of ``metric_types`` over the range, and :func:`query_daily_series` of
    ``day_metric_types`` (default: the same) over its days not rolled up yet, reading those days' raw rows
    once for both (a page that shows a range and today's point needs both, and a day of raw rows is the
    costly part of each). Given an engine of PostgreSQL, the raw rows are read beside the daily rows (see
    :func:`query_metrics_together`).

    Parameters are those of :func:`query_metrics`. Returns ``(range statistics, statistics per recent day)``.
    """

    def merges() -> tuple[list[RangeMerge], list[RangeMerge]]:
        whole = RangeMerge(metric_types=metric_types, labels=labels, group_by=group_by)
        days = RangeMerge(metric_types=day_metric_types or metric_types, labels=labels, group_by=group_by, per_day=True)
        return [whole], [days]

    whole, per_day = _range_results(connectable, since, until, merges)
    return whole, per_day


def query_metrics_together(
    connectable: Engine | Connection,
    since: dt.date,
    until: dt.date,
    queries: Sequence[tuple[MetricType | str, Sequence[str] | None]],
    *,
    labels: Mapping[str, str] | None = None,
) -> list[list[MetricStats]]:
    """:func:`query_metrics` of several metric types at once, each grouped its own way: one result per
    ``(metric_type, group_by)`` of ``queries``, in their order. The raw rows of the range's days not rolled
    up are read once for all of them (every metric type of a day at once), not once per query: what a report
    of every metric type reads (a day of raw rows is the costly part of each query).

    Given an engine of PostgreSQL, the raw rows are read on a second connection while the first reads and
    merges the daily rows (the two long parts side by side); if a rollup commits meanwhile (the days not
    rolled up differ after the reads), both are read again one after the other.

    Raises:
      ValueError: as :func:`query_metrics`.
    """

    def merges() -> tuple[list[RangeMerge], list[RangeMerge]]:
        made = [
            RangeMerge(metric_types=[metric_type], labels=labels, group_by=group_by)
            for metric_type, group_by in queries
        ]
        return made, []

    return _range_results(connectable, since, until, merges)


@collection_paused()
def _range_results(
    connectable: Engine | Connection,
    since: dt.date,
    until: dt.date,
    merges: Callable[[], tuple[list[RangeMerge], list[RangeMerge]]],
) -> list[list[MetricStats]]:
    """The results of the merges of :func:`_merge_range`, in order."""
    return [merge.results() for merge in _merge_range(connectable, since, until, merges)]


def _merge_range(
    connectable: Engine | Connection,
    since: dt.date,
    until: dt.date,
    make_merges: Callable[[], tuple[list[RangeMerge], list[RangeMerge]]],
) -> list[RangeMerge]:
    """Fill the merges of ``make_merges()`` (those that take the range's daily rows, then those that take
    only its raw days): the daily rows of the range, then the raw rows of its days not rolled up, read once
    for all of them (on a second connection, beside the daily rows, given an engine of PostgreSQL)."""
    if since > until:
        raise ValueError(f"since ({since}) is after until ({until})")

    def fill(connection: Connection, ranged: list[RangeMerge], raw_only: list[RangeMerge], raw_days: RawDays) -> None:
        for day, aggregates in raw_days.items():
            for merge in (*ranged, *raw_only):
                merge.add_raw_day(connection, day, aggregates)

    if isinstance(connectable, Engine) and connectable.dialect.name == "postgresql":
        ranged, raw_only = make_merges()
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="opmetrics-raw-read") as pool:
            raw_read = pool.submit(_read_raw_days_apart, connectable, since, until, [*ranged, *raw_only])
            with connectable.connect() as connection, local_settings(connection, LONG_READ_SETTINGS):
                _share_label_sets(connection, [*ranged, *raw_only])
                before = days_not_rolled_up(connection, since, until)
                _add_daily_rows_once(connection, ranged, since, until)
            # This connection's transaction is over before the wait: behind a pool of one server connection
            # (PgBouncer) the other read runs meanwhile.
            raw_days = raw_read.result()
        with connectable.connect() as connection, local_settings(connection, LONG_READ_SETTINGS):
            # A day that was not rolled up before the reads and still is after: read the same by both.
            if before == list(raw_days) == days_not_rolled_up(connection, since, until):
                fill(connection, ranged, raw_only, raw_days)
                return [*ranged, *raw_only]
    ranged, raw_only = make_merges()
    with connection_for(connectable) as connection, local_settings(connection, LONG_READ_SETTINGS):
        _share_label_sets(connection, [*ranged, *raw_only])
        _add_daily_rows_once(connection, ranged, since, until)
        fill(connection, ranged, raw_only, _read_raw_days(connection, since, until, [*ranged, *raw_only]))
    return [*ranged, *raw_only]


def _add_daily_rows_once(connection: Connection, merges: Sequence[RangeMerge], since: dt.date, until: dt.date) -> None:
    """Add the range's rolled-up rows to each merge, read in one statement for all of them (a report's 15
    merges would otherwise build, run and fetch 15 statements, reading some metric types twice). Merges of
    daily series, or of different label filters, read their own."""
    together = [merge for merge in merges if not merge.per_day and merge.label_filter == merges[0].label_filter]
    for merge in merges:
        if merge not in together:
            merge.add_daily_rows(connection, since, until)
    if together:
        types = None if any(merge.metric_types is None for merge in together) else _types_of(together)
        reader = RangeMerge(metric_types=types, labels=together[0].label_filter)
        rows = rows_by_type(fetch_rows(connection, reader.rolled_up_query(connection, since, until)))
        # The labels of every labels key read, looked up once for all the merges (each groups them its way).
        keys = sorted({row[1] for found in rows.values() for row in found})
        labels_by_key = labels_of_keys(connection, keys) if keys else {}
        for merge in together:
            merge._labels_by_key = labels_by_key  # shared, as copies share it: labels never change
            merge.add_rolled_up_rows(connection, rows)


def rows_by_type(rows: Iterable[Sequence[Any]]) -> dict[str, list[Sequence[Any]]]:
    """Rows whose first column is a metric type's value, by that value (in the order they came)."""
    found: dict[str, list[Sequence[Any]]] = {}
    for row in rows:
        found.setdefault(row[0], []).append(row)
    return found


def _types_of(merges: Sequence[RangeMerge]) -> list[MetricType]:
    """The metric types of ``merges`` (each has some), each once."""
    return sorted({member for merge in merges for member in merge.metric_types or ()}, key=list(MetricType).index)


def _share_label_sets(connection: Connection, merges: Sequence[RangeMerge]) -> None:
    """Look up the label sets of the merges' common label filter once for all of them (a report has 15)."""
    if merges and merges[0].label_filter:
        found = merges[0].matching_label_sets(connection)
        for merge in merges[1:]:
            merge._label_sets = found


#: The aggregates of the raw rows of each day not rolled up, every metric type at once.
RawDays = dict[dt.date, list[Aggregate | DayAggregate]]


def _read_raw_days(connection: Connection, since: dt.date, until: dt.date, merges: Sequence[RangeMerge]) -> RawDays:
    """The aggregates of the raw rows of each day of the range not rolled up that ``merges`` take: of the label
    sets matching their (common) label filter, and of their one metric type if they all take just that one."""
    label_filter = next((merge.label_filter for merge in merges), {})
    label_set_ids = matching_label_sets(connection, label_filter)[0] if label_filter else None
    types = {member for merge in merges for member in merge.metric_types or (None,)}
    metric_type = types.pop() if len(types) == 1 else None
    return {
        day: day_aggregates(connection, day, metric_type=metric_type, label_set_ids=label_set_ids)
        for day in days_not_rolled_up(connection, since, until)
    }


def _read_raw_days_apart(engine: Engine, since: dt.date, until: dt.date, merges: Sequence[RangeMerge]) -> RawDays:
    """:func:`_read_raw_days` on a connection of its own."""
    with engine.connect() as connection, local_settings(connection, LONG_READ_SETTINGS):
        return _read_raw_days(connection, since, until, merges)


@collection_paused()
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
    metric_types = None if metric_type is None else [metric_type]

    def make_merge() -> RangeMerge:
        return RangeMerge(metric_types=metric_types, labels=labels, group_by=group_by, per_day=per_day)

    postgresql_engine = isinstance(connectable, Engine) and connectable.dialect.name == "postgresql"
    if include_raw and not per_day and since < until and postgresql_engine:
        # The rolled-up rows and the raw days read side by side (as query_metrics_together reads them). A
        # range with no rolled-up rows is read again below: its lone raw day's totals come from the tier.
        [merged] = _merge_range(connectable, since, until, lambda: ([make_merge()], []))
        if merged.rolled_up_rows:
            return merged.results()
    merge = make_merge()
    from_tier: list[MetricStats] = []
    with connection_for(connectable) as connection, local_settings(connection, LONG_READ_SETTINGS):
        merge.add_daily_rows(connection, since, until)
        if include_raw:
            raw_days = days_not_rolled_up(connection, since, until)
            # A day's totals from the tier are final when nothing else joins their groups: in a daily
            # series, or in a range whose only data is that day. Otherwise the day's histograms are merged.
            alone = per_day or (not merge.has_rows() and len(raw_days) == 1)
            state = read_state(connection) if alone else None
            for day in raw_days:
                # The tier's day rows, where they hold the day, are read faster than its buckets.
                if alone and _in_recent_tier(day) and not holds_day(state, day):
                    from_tier += _totals_of_raw_day(connection, day, metric_type, labels, group_by, per_day)
                else:
                    merge.add_raw_day(connection, day)
    results = merge.results()
    if from_tier:
        results = sorted(results + from_tier, key=_result_order)
    return results


def _in_recent_tier(day: dt.date) -> bool:
    """Whether ``day`` lies within the span the recent tier keeps by default (today and the days before)."""
    today = dt.datetime.now(dt.UTC).date()
    return today - dt.timedelta(days=DEFAULT_RECENT_RETENTION_DAYS - 1) <= day <= today


def _totals_of_raw_day(
    connection: Connection,
    day: dt.date,
    metric_type: MetricType | str | None,
    labels: Mapping[str, str] | None,
    group_by: Sequence[str] | None,
    per_day: bool,
) -> list[MetricStats]:
    """The statistics of the raw rows of ``day``, a recent day not rolled up, per group:
    :func:`~dramatiq_opmetrics.series.query_totals` of the day, from the recent tier and the raw rows it does
    not hold yet."""
    # series reads label sets through this module: imported here, when both are loaded.
    from .series import query_totals

    start, end = day_bounds(day)
    return [
        MetricStats(
            metric_type=point.metric_type,
            labels=point.labels,
            count=point.count,
            sum=point.sum,
            min=point.min,
            max=point.max,
            avg=point.avg,
            p50=point.p50,
            p95=point.p95,
            p99=point.p99,
            date=day if per_day else None,
            raw_days=1,
        )
        for point in query_totals(connection, start, end, metric_type=metric_type, labels=labels, group_by=group_by)
    ]


#: A histogram as stored in a daily or monthly row (packed, or JSON), or built from raw rows; merged when read.
_HistogramSource = bytes | Mapping[str, Any] | Histogram | HistogramSum


@dataclass
class _Group:
    count: int = 0
    sums: list[float] = field(default_factory=list)
    low: float = math.inf
    high: float = -math.inf
    sources: int = 0
    pending: list[_HistogramSource] = field(default_factory=list)
    merged: HistogramSum | None = None
    missing_histogram: bool = False
    exact: tuple[float | None, ...] | None = None
    raw_days: set[dt.date] = field(default_factory=set)

    def add(
        self,
        count: int,
        sums: Sequence[float],
        low: float,
        high: float,
        histogram: _HistogramSource | None,
        exact: tuple[float | None, ...] | None,
        sources: int = 1,
    ) -> None:
        self.count += count
        self.sums.extend(sums)
        if low < self.low:
            self.low = low
        if high > self.high:
            self.high = high
        self.sources += sources
        if histogram is None:
            self.missing_histogram = True
        else:
            self.pending.append(histogram)
        self.exact = exact

    def histogram(self) -> HistogramSum | Histogram:
        """The merged histogram of every source added so far (only to be read: it may be a source itself)."""
        if self.merged is None and len(self.pending) == 1 and isinstance(self.pending[0], Histogram | HistogramSum):
            return self.pending[0]
        if self.merged is None:
            self.merged = HistogramSum()
        merged = self.merged
        for histogram in self.pending:
            if isinstance(histogram, bytes):
                merged.add_packed(histogram)
            elif isinstance(histogram, HistogramSum):
                merged.add(histogram)
            elif isinstance(histogram, Histogram):
                merged.add_histogram(histogram)
            else:
                merged.add_histogram(Histogram.from_json(histogram))
        self.pending.clear()
        return merged

    def copy(self) -> _Group:
        """A copy sharing this group's histograms, which neither changes (so a settled group is never changed)."""
        twin = _Group(self.count, list(self.sums), self.low, self.high, self.sources)
        twin.pending = list(self.pending)
        if self.merged is not None:
            twin.pending.insert(0, self.merged)
        twin.missing_histogram, twin.exact, twin.raw_days = self.missing_histogram, self.exact, set(self.raw_days)
        return twin

    def percentiles(self) -> tuple[float | None, ...]:
        if self.sources == 1 and self.exact is not None and None not in self.exact:
            return self.exact
        if self.missing_histogram:
            return (None,) * len(PERCENTILES)
        # A bucket's representative value may lie just outside the values seen: clamp it to them.
        return tuple(
            None if value is None else min(max(value, self.low), self.high)
            for value in self.histogram().quantiles(PERCENTILES)
        )


_GroupKey = tuple[MetricType, tuple[tuple[str, str], ...], dt.date | None]
_TYPES = {member.value: member for member in MetricType}


class RangeMerge:
    """Statistics of a range being merged: daily rows and raw days are added, then :meth:`results` read.

    :func:`query_metrics` and :func:`query_daily_series` are this: the rolled-up days of the range (whole
    months from their monthly rows, the other days from their daily rows), plus the raw rows of its days
    not rolled up. A caller that keeps results between calls (the dashboard) keeps a merge of daily rows
    (:meth:`settle`), adds the raw aggregates it keeps itself to a :meth:`copy` of it, and reads the same
    statistics as the query API's.

    Parameters:
      metric_types(Sequence[MetricType | str] | None): only these metric types; default: every type.
      labels(Mapping[str, str] | None): only samples whose labels include all these pairs.
      group_by(Sequence[str] | None): as for :func:`query_metrics`.
      per_day(bool): one group per day too (as :func:`query_daily_series`).

    Raises:
      ValueError: an unknown metric type, bad labels, or ``group_by`` given as a string.
    """

    def __init__(
        self,
        *,
        metric_types: Sequence[MetricType | str] | None = None,
        labels: Mapping[str, str] | None = None,
        group_by: Sequence[str] | None = None,
        per_day: bool = False,
    ) -> None:
        self.metric_types: list[MetricType] | None = None
        if metric_types is not None:
            self.metric_types = []
            for metric_type in metric_types:
                try:
                    self.metric_types.append(MetricType(metric_type))
                except ValueError:
                    known = ", ".join(member.value for member in MetricType)
                    raise ValueError(f"unknown metric type {metric_type!r}; known: {known}") from None
        if isinstance(group_by, str):
            raise ValueError("group_by is a sequence of label keys, e.g. ('actor', 'queue'), not a string")
        self.label_filter = dict(make_label_set(labels).labels) if labels else {}
        self.group_by = None if group_by is None else tuple(group_by)
        self.per_day = per_day
        self._groups: dict[_GroupKey, _Group] = {}
        self._label_sets: tuple[set[int], list[str]] | None = None
        # Label sets never change: the labels read for raw aggregates and daily rows are kept, and shared
        # with copies.
        self._labels_by_id: dict[int, dict[str, str]] = {}
        self._labels_by_key: dict[str, dict[str, str]] = {}
        self._chosen_by_key: dict[str, tuple[tuple[str, str], ...]] = {}
        #: How many rolled-up (daily or monthly) rows were added.
        self.rolled_up_rows = 0

    def copy(self) -> RangeMerge:
        """An independent copy, to add more to while this one stays as it is (see :meth:`settle`)."""
        twin = RangeMerge(metric_types=self.metric_types, group_by=self.group_by, per_day=self.per_day)
        twin.label_filter, twin._label_sets, twin._labels_by_id, twin._labels_by_key, twin._chosen_by_key = (
            self.label_filter,
            self._label_sets,
            self._labels_by_id,
            self._labels_by_key,
            self._chosen_by_key,
        )
        twin._groups = {key: group.copy() for key, group in self._groups.items()}
        twin.rolled_up_rows = self.rolled_up_rows
        return twin

    def settle(self) -> None:
        """Merge every group's histograms now, so that :meth:`copy` (which never changes this merge) is fast
        and a merge kept for many copies, in several threads, is never changed again."""
        for group in self._groups.values():
            group.histogram()

    def has_rows(self) -> bool:
        """Whether anything was added yet."""
        return bool(self._groups)

    def _chosen(self, row_labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        if self.group_by is None:
            return tuple(sorted(row_labels.items()))
        return tuple((key, row_labels[key]) for key in self.group_by if key in row_labels)

    def _group(self, row_type: MetricType | str, row_labels: Mapping[str, str], day: dt.date) -> _Group:
        key = (MetricType(row_type), self._chosen(row_labels), day if self.per_day else None)
        found = self._groups.get(key)
        if found is None:
            found = self._groups[key] = _Group()
        return found

    def matching_label_sets(self, connection: Connection) -> tuple[set[int], list[str]]:
        """:func:`matching_label_sets` of the filter, read once."""
        if self._label_sets is None:
            self._label_sets = matching_label_sets(connection, self.label_filter)
        return self._label_sets

    def add_daily_rows(self, connection: Connection, since: dt.date, until: dt.date) -> None:
        """Add the rolled-up days from ``since`` to ``until`` inclusive (UTC): each month the range covers
        from its first day (or from ``since``) to the last it has rolled up, from its monthly rows; the
        thirds it covers likewise; the other days from their
        daily rows (both read in one statement, so a rollup committing meanwhile is seen whole or not at
        all). A ``per_day`` merge reads daily rows only."""
        rows = fetch_rows(connection, self.rolled_up_query(connection, since, until))
        self.add_rolled_up_rows(connection, rows_by_type(rows))

    def add_rolled_up_rows(self, connection: Connection, by_type: Mapping[str, Sequence[Sequence[Any]]]) -> None:
        """Add the rows of :meth:`rolled_up_query` (of this merge, or of one of every metric type several
        merges with the same label filter take, read once for all of them) by metric type
        (:func:`rows_by_type`): those of this merge's metric types."""
        types = by_type.keys() if self.metric_types is None else [member.value for member in self.metric_types]
        rows = [row for value in types for row in by_type.get(value, ())]
        self.rolled_up_rows += len(rows)
        unknown = {row[1] for row in rows} - self._chosen_by_key.keys()
        if unknown:
            labels_by_key = self._labels_by_key
            labels_by_key.update(labels_of_keys(connection, sorted(unknown - labels_by_key.keys())))
            for labels_key in unknown:
                self._chosen_by_key[labels_key] = self._chosen(labels_by_key[labels_key])
        chosen_by_key, groups = self._chosen_by_key, self._groups
        per_day = self.per_day
        for row_type, labels_key, day, sources, count, total, parts, low, high, p50, p95, p99, packed, stored in rows:
            key = (_TYPES[row_type], chosen_by_key[labels_key], day if per_day else None)
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group()
            group.add(
                count,
                (total,) if parts is None else parts,
                low,
                high,
                packed if packed is not None else stored,
                (p50, p95, p99) if sources == 1 else None,
                sources,
            )

    def rolled_up_query(
        self, connection: Connection, since: dt.date, until: dt.date
    ) -> Select[Any] | CompoundSelect[Any]:
        """The statement :meth:`add_daily_rows` reads (one statement: a rollup committing meanwhile is seen
        whole or not at all): per row its metric type (text), labels key, day (or month), number of daily
        rows, count, sum, exact sum parts (months), min, max, the percentiles, the packed histogram, and the
        JSON one where no packed one is stored."""
        daily = OperationalMetricDaily.__table__
        monthly = OperationalMetricMonthly.__table__
        daily_conditions = [daily.c.date >= since, daily.c.date <= until]
        monthly_conditions: list[ColumnElement[bool]] = []
        if self.metric_types is not None:
            daily_conditions.append(daily.c.metric_type.in_(self.metric_types))
            monthly_conditions.append(monthly.c.metric_type.in_(self.metric_types))
        if self.label_filter:
            daily_conditions.append(daily.c.labels_key.in_(matching_labels_keys(connection, self.label_filter)))
            monthly_conditions.append(monthly.c.labels_key.in_(matching_labels_keys(connection, self.label_filter)))
        from_daily = select(
            cast(daily.c.metric_type, Text),
            daily.c.labels_key,
            daily.c.date,
            literal(1, Integer),
            daily.c.sample_count,
            daily.c.sum,
            cast(null(), FloatListType),
            daily.c.min,
            daily.c.max,
            daily.c.p50,
            daily.c.p95,
            daily.c.p99,
            daily.c.histogram_packed,
            case((daily.c.histogram_packed.is_(None), daily.c.histogram)),
        )
        if self.per_day:
            return from_daily.where(*daily_conditions)
        # psycopg reads the parts' array into a list already: no per-row conversion of SQLAlchemy's.
        parts_column: ColumnElement[Any] = monthly.c.sum_parts
        if connection.dialect.name == "postgresql":
            parts_column = type_coerce(parts_column, NullType())
        from_monthly = select(
            cast(monthly.c.metric_type, Text),
            monthly.c.labels_key,
            monthly.c.month,
            monthly.c.daily_rows,
            monthly.c.sample_count,
            monthly.c.sum,
            parts_column,
            monthly.c.min,
            monthly.c.max,
            monthly.c.p50,
            monthly.c.p95,
            monthly.c.p99,
            monthly.c.histogram_packed,
            cast(null(), JSONType),
        )
        # A month, or a third of one, whose days with daily rows all lie in the range is read from its monthly
        # rows (every daily row of a period is in them): the whole month where it can be, else (the first
        # month) its suffix from the range's first day, else its thirds. Which periods those are is known
        # only in the statement, so each month of the range has a part of its own reading its daily rows
        # unless the month is covered (a condition evaluated once per part: the daily rows of a covered month
        # are never read, not even filtered), and of those the rows of its thirds not covered. The periods are
        # found in the index of (month, part, first_day, last_day): on PostgreSQL one probe per whole month
        # and third of the range's months and for the one suffix that can serve; elsewhere from the entries
        # of those periods.
        first_month, suffix = month_of(since), suffix_part(since)
        months = [first_month]
        while next_month(months[-1]) <= until:
            months.append(next_month(months[-1]))
        in_range = (monthly.c.first_day >= since, monthly.c.last_day <= until)
        covered: Select[Any] | CompoundSelect[Any]
        if connection.dialect.name == "postgresql":
            # Every row of a period has the period's first and last day: one probe of the index a candidate
            # period, instead of a DISTINCT over the entries of every label set of the range's months.
            candidates = [(month, part) for month in months for part in (WHOLE_MONTH, 1, 2, 3)]
            if suffix >= SUFFIX_PART_BASE:
                candidates.append((first_month, suffix))
            candidate = (
                func.unnest(
                    literal([month for month, _ in candidates], ARRAY(Date)),
                    literal([part for _, part in candidates], ARRAY(SmallInteger)),
                )
                .table_valued("month", "part")
                .render_derived(name="candidate_periods")
            )
            rows_of_candidate = select(monthly.c.month).where(
                monthly.c.month == candidate.c.month, monthly.c.part == candidate.c.part, *in_range
            )
            covered = select(candidate.c.month, candidate.c.part).where(rows_of_candidate.exists())
        else:
            periods = select(monthly.c.month, monthly.c.part).where(*in_range)
            covered = periods.where(monthly.c.month.in_(months), monthly.c.part < SUFFIX_PART_BASE).distinct()
            if suffix >= SUFFIX_PART_BASE:
                covered = union_all(
                    covered, periods.where(monthly.c.month == first_month, monthly.c.part == suffix).distinct()
                )
        covered_periods = covered.cte("covered_periods")
        is_whole, is_suffix = covered_periods.c.part == WHOLE_MONTH, covered_periods.c.part >= SUFFIX_PART_BASE
        whole_months = select(covered_periods.c.month).where(is_whole)
        served_whole = select(covered_periods.c.month).where(or_(is_whole, is_suffix))
        chosen = select(covered_periods.c.month, covered_periods.c.part).where(
            or_(
                is_whole,
                and_(is_suffix, covered_periods.c.month.not_in(whole_months)),
                covered_periods.c.month.not_in(served_whole),
            )
        )
        parts: list[Select[Any]]
        if connection.dialect.name == "postgresql":
            # Each chosen period's rows by index: left to choose, PostgreSQL scans the whole monthly table
            # (a suffix of each day of each month is most of it) and joins it to the few periods chosen.
            # OFFSET 0 keeps it from flattening the lateral subquery back into that join.
            chosen_periods = chosen.subquery("chosen_periods")
            of_period = (
                from_monthly.where(
                    *monthly_conditions,
                    monthly.c.month == chosen_periods.c.month,
                    monthly.c.part == chosen_periods.c.part,
                )
                .offset(0)
                .lateral("period_rows")
            )
            parts = [select(*of_period.c).select_from(chosen_periods.join(of_period, true()))]
        else:
            parts = [from_monthly.where(*monthly_conditions, tuple_(monthly.c.month, monthly.c.part).in_(chosen))]
        # One part a month: skipped whole (a condition evaluated once) where the month or its suffix is covered,
        # else its daily rows of each third not covered (evaluated once each, tested per row).
        for month in months:

            def uncovered(*serving: int, month: dt.date = month) -> ColumnElement[bool]:
                in_period = covered_periods.c.month == month, covered_periods.c.part.in_(serving)
                return ~exists(select(covered_periods.c.month).where(*in_period))

            thirds = []
            for third in (1, 2, 3):
                first, last = part_bounds(month, third)
                first, last = max(first, since), min(last, until)
                if first <= last:
                    thirds.append(and_(daily.c.date >= first, daily.c.date <= last, uncovered(third)))
            parts.append(
                from_daily.where(
                    *daily_conditions,
                    daily.c.date >= max(month, since),
                    daily.c.date <= min(next_month(month) - dt.timedelta(days=1), until),
                    uncovered(WHOLE_MONTH, suffix) if month == first_month else uncovered(WHOLE_MONTH),
                    or_(*thirds),
                )
            )
        return union_all(*parts)

    def add_raw_day(
        self, connection: Connection, day: dt.date, aggregates: Sequence[Aggregate | DayAggregate] | None = None
    ) -> None:
        """Add the raw rows of UTC ``day`` (a day not rolled up): their ``aggregates`` of every metric type and
        label set if the caller has them (only those this merge wants are added), else read now
        (:func:`~dramatiq_opmetrics.recent_tier.day_aggregates`: from the recent tier's day rows where it
        holds the day)."""
        label_set_ids = self.matching_label_sets(connection)[0] if self.label_filter else None
        if label_set_ids is not None and not label_set_ids:
            return
        if aggregates is None:
            aggregates = day_aggregates(
                connection,
                day,
                metric_type=self.metric_types[0] if self.metric_types and len(self.metric_types) == 1 else None,
                label_set_ids=label_set_ids,
            )
        wanted = [
            aggregate
            for aggregate in aggregates
            if (self.metric_types is None or aggregate.metric_type in self.metric_types)
            and (label_set_ids is None or aggregate.label_set_id in label_set_ids)
        ]
        if not wanted:
            return
        labels_of = self._labels_by_id
        unknown = {aggregate.label_set_id for aggregate in wanted} - labels_of.keys()
        if unknown:
            labels_of.update(labels_of_ids(connection, unknown))
        for aggregate in wanted:
            if aggregate.label_set_id not in labels_of:
                continue
            group = self._group(aggregate.metric_type, labels_of[aggregate.label_set_id], day)
            group.add(aggregate.count, (aggregate.sum,), aggregate.min, aggregate.max, aggregate.histogram, None)
            group.raw_days.add(day)

    def results(self) -> list[MetricStats]:
        """The statistics of every group with samples, ordered by metric type, labels, then date."""
        results = []
        for (row_type, chosen, group_day), group in self._groups.items():
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
        results.sort(key=_result_order)
        return results


_TYPE_ORDER = {member: index for index, member in enumerate(MetricType)}


def _result_order(stats: MetricStats) -> tuple[int, list[tuple[str, str]], dt.date]:
    """Results ordered by metric type, labels, then date."""
    return _TYPE_ORDER[stats.metric_type], sorted(stats.labels.items()), stats.date or dt.date.min


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


def matching_label_sets(connection: Connection, labels: Mapping[str, str]) -> tuple[set[int], list[str]]:
    """The ids and labels keys of the label sets having every label of ``labels``.

    Label sets are never deleted and every daily row's labels key is one, so daily rows are filtered by these
    keys (their primary key) instead of by reading every row's labels."""
    label_sets = LabelSet.__table__
    rows = connection.execute(
        select(label_sets.c.id, label_sets.c.labels_key).where(
            *_label_conditions(connection, label_sets.c.labels, labels)
        )
    ).all()
    return {row.id for row in rows}, sorted(row.labels_key for row in rows)


def matching_labels_keys(connection: Connection, labels: Mapping[str, str]) -> Select[tuple[str]]:
    """The labels keys of the label sets having every label of ``labels``, as a subquery for ``IN``: daily rows
    are filtered by it in the database, however many label sets match."""
    label_sets = LabelSet.__table__
    return select(label_sets.c.labels_key).where(*_label_conditions(connection, label_sets.c.labels, labels))


def labels_of_ids(connection: Connection, ids: Iterable[int]) -> dict[int, dict[str, str]]:
    """The labels of the label sets ``ids``, by id."""
    label_sets = LabelSet.__table__
    query = select(label_sets.c.id, label_sets.c.labels).where(in_values(label_sets.c.id, sorted(ids)))
    return {row.id: dict(row.labels) for row in connection.execute(query)}


def labels_of_keys(connection: Connection, labels_keys: Sequence[str]) -> dict[str, dict[str, str]]:
    """The labels of each labels key: from the small label-set table, daily rows as the fallback."""
    label_sets = LabelSet.__table__
    query = select(label_sets.c.labels_key, label_sets.c.labels).where(in_values(label_sets.c.labels_key, labels_keys))
    labels = {row.labels_key: dict(row.labels) for row in connection.execute(query)}
    daily = OperationalMetricDaily.__table__
    for labels_key in (key for key in labels_keys if key not in labels):
        fallback = select(daily.c.labels).where(daily.c.labels_key == labels_key).limit(1)
        labels[labels_key] = dict(connection.execute(fallback).scalar_one())
    return labels


def days_not_rolled_up(connection: Connection, since: dt.date, until: dt.date) -> list[dt.date]:
    """The days of the range that have no daily rows at all (of any metric type) and may have raw rows.

    Only the days that can have raw rows (:func:`days_that_may_hold_raw_rows`) are looked up in the daily table
    (by its date index), so a long range does not read the dates of its daily rows.
    """
    candidates = days_that_may_hold_raw_rows(connection, since, until)
    if not candidates:
        return []
    daily = OperationalMetricDaily.__table__
    # SQLite stores dates as ISO text, which is what its list of values must hold.
    values = candidates if connection.dialect.name == "postgresql" else [day.isoformat() for day in candidates]
    query = select(daily.c.date).where(in_values(daily.c.date, values)).distinct()
    rolled_up = set(connection.execute(query).scalars())
    return [day for day in candidates if day not in rolled_up]


def days_that_may_hold_raw_rows(connection: Connection, since: dt.date, until: dt.date) -> list[dt.date]:
    """The days from ``since`` to ``until`` inclusive that may hold raw rows, in order, found without reading
    the rows: on PostgreSQL the days with a partition or with rows in the default partition (found by its
    index, :func:`~dramatiq_opmetrics.partitions.default_partition_days`); elsewhere the days between the
    range's first and last raw row (one indexed query)."""
    if connection.dialect.name == "postgresql":
        partitioned = (day for day in list_partitions(connection) if since <= day <= until)
        return sorted({*partitioned, *default_partition_days(connection, since, until)})
    raw = OperationalMetric.__table__
    first, last = connection.execute(
        select(func.min(raw.c.recorded_at), func.max(raw.c.recorded_at)).where(
            raw.c.recorded_at >= day_bounds(since)[0], raw.c.recorded_at < day_bounds(until)[1]
        )
    ).one()
    days: list[dt.date] = []
    if first is not None:
        day, last_day = _as_date(first), _as_date(last)
        while day <= last_day:
            days.append(day)
            day += dt.timedelta(days=1)
    return days


def _as_date(value: dt.datetime | str) -> dt.date:
    """The UTC day of a stored ``recorded_at`` (SQLite may hand back its text)."""
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.date()

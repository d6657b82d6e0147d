"""What each dashboard view shows, read from the daily table and the raw samples; no web code here.

Every view covers a range of whole UTC days ending today, today always included:

- Days that are rolled up come from the daily table (``operational_metrics_daily``), read through its primary
  key or date index. What is computed from them (overview points, merged histograms) is kept between
  requests and rechecked every few minutes (:mod:`~dramatiq_opmetrics.dashboard.kept`).
- Today, and any recent day the rollup has not reached yet, come from their raw samples, aggregated by the
  rollup's own :func:`~dramatiq_opmetrics.aggregate.aggregate_raw`; settled minutes are kept, so a request
  reads only the last few minutes (:mod:`~dramatiq_opmetrics.dashboard.recent`). The raw table is read only
  by time ranges within those days (on PostgreSQL, only their partitions): a view never scans the whole raw
  table.

Statistics over a range (and the raw days' own percentiles) are the query API's: the dashboard keeps a
:class:`~dramatiq_opmetrics.query.RangeMerge` of the rolled-up days and adds the raw days' aggregates to a copy
of it, so its numbers are :func:`~dramatiq_opmetrics.query_metrics`'s (tested). A day's own p50/p95/p99 are
shown as they are for that day. Daily p95s are never averaged.

Every query is built with SQLAlchemy expressions and bound parameters; label values only ever travel as
parameters or as data."""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Integer, cast, func, select

from ..aggregate import Aggregate
from ..metric_types import MetricType
from ..models import LabelSet, OperationalMetricDaily
from ..query import MetricStats, RangeMerge, labels_of_ids, matching_label_sets, matching_labels_keys
from ..retention import DEFAULT_RETENTION_DAYS
from .kept import KeptResults
from .recent import RecentMaxima, RecentSamples

#: The ranges a view can show, in days (today included).
RANGE_DAYS = (7, 30, 90, 365)
#: The range shown when none is chosen, in days.
DEFAULT_RANGE_DAYS = 30
#: The windows of raw queue-depth samples the queues view can show, in hours.
DEPTH_WINDOW_HOURS = (6, 24, 72, 168)
#: The raw queue-depth window shown when none is chosen, in hours.
DEFAULT_DEPTH_WINDOW_HOURS = 24
#: Most points a chart's x axis gets; longer ranges are grouped into buckets of several days.
MAX_CHART_POINTS = 92
#: Most points an overview trend chart gets (365 days are shown as weeks).
MAX_TREND_POINTS = 60
#: Most points of a raw queue-depth chart.
MAX_DEPTH_POINTS = 240
#: The overview's sortable columns; the default sort shows the worst rows first.
OVERVIEW_SORTS = ("error_rate", "p95_processing_ms", "p95_wait_ms", "messages_per_day", "actor", "queue")
#: The overview's default sort column (descending: worst first).
DEFAULT_OVERVIEW_SORT = "error_rate"
#: Label keys the confidence distribution can be split by.
CONFIDENCE_GROUPS = ("actor", "model", "queue")


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def day_epoch_s(day: dt.date) -> int:
    """Seconds since the epoch at the start (UTC) of ``day``: a chart's x value."""
    return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ValueError naming the allowed values."""
    if value not in choices:
        allowed = ", ".join(str(choice) for choice in choices)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class DateRange:
    """The whole UTC days a view covers, ``first_day`` to ``today`` inclusive, grouped for charts."""

    first_day: dt.date
    today: dt.date
    bucket_days: int

    @classmethod
    def ending_today(cls, days: int, today: dt.date, max_points: int = MAX_CHART_POINTS) -> DateRange:
        """The ``days`` days ending with ``today``, in buckets of as few days as fit ``max_points`` points."""
        return cls(today - dt.timedelta(days=days - 1), today, max(1, math.ceil(days / max_points)))

    @property
    def days(self) -> int:
        """How many days the range covers."""
        return (self.today - self.first_day).days + 1

    def bucket(self, day: dt.date) -> int:
        """The chart point ``day`` belongs to."""
        return (day - self.first_day).days // self.bucket_days

    @property
    def buckets(self) -> int:
        """How many chart points the range has."""
        return self.bucket(self.today) + 1

    def x_values(self) -> list[int]:
        """Each chart point's x value: the start of its first day, in epoch seconds."""
        return [day_epoch_s(self.first_day + dt.timedelta(days=i * self.bucket_days)) for i in range(self.buckets)]


@dataclass(slots=True)
class LabelStats:
    """Statistics of one metric type and label set over one day (or one stretch of raw samples)."""

    metric_type: str
    labels: dict[str, str]
    day: dt.date
    count: int
    total: float
    maximum: float
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    minimum: float | None = None


@dataclass(frozen=True, slots=True)
class _RawDays:
    """The days of a view's range not rolled up yet (``start`` to today), with their raw aggregates."""

    start: dt.date
    aggregates: dict[dt.date, list[Aggregate]]


@dataclass(slots=True)
class Chart:
    """A chart's data for the page: x values (epoch seconds, or bucket indexes) and named series."""

    x: list[float]
    series: list[dict[str, Any]] = field(default_factory=list)
    unit: str = ""
    kind: str = "line"
    x_labels: list[str] | None = None

    def add(self, label: str, values: Sequence[float | None]) -> None:
        """Add a series called ``label``."""
        self.series.append({"label": label, "values": list(values)})

    def to_json(self) -> dict[str, Any]:
        """The chart as the page's script reads it."""
        data: dict[str, Any] = {"x": self.x, "series": self.series, "unit": self.unit, "kind": self.kind}
        if self.x_labels is not None:
            data["x_labels"] = self.x_labels
        return data


class DashboardData:
    """The read-only queries behind the dashboard's views.

    Each method returns plain data (numbers, strings and :class:`Chart` objects) for one view; the web
    layer only renders it. It runs SELECT statements only.

    Parameters:
      engine(Engine): an engine on the metrics database (see :func:`~dramatiq_opmetrics.database.make_engine`).
      clock(Callable[[], datetime]): returns the current time, timezone-aware UTC; default the real clock.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], dt.datetime] = utc_now) -> None:
        self.engine = engine
        self.clock = clock
        self.kept = KeptResults()
        self.recent_samples = RecentSamples()
        self.recent_maxima = RecentMaxima()

    # -- building blocks ------------------------------------------------------------------------------------

    def _raw_days(self, connection: Connection, date_range: DateRange) -> _RawDays:
        """The days of the range after the last one rolled up, with the aggregates of their raw samples (read
        once per request). Raw samples older than the retention are gone, so the search stops there."""
        d = OperationalMetricDaily
        earliest = max(date_range.first_day, date_range.today - dt.timedelta(days=DEFAULT_RETENTION_DAYS))
        last = connection.execute(
            select(func.max(d.date)).where(d.date >= earliest, d.date < date_range.today)
        ).scalar()
        start = earliest if last is None else last + dt.timedelta(days=1)
        now = self.clock()
        days = [start + dt.timedelta(days=i) for i in range((date_range.today - start).days + 1)]
        return _RawDays(start, {day: self.recent_samples.aggregates(connection, day, now) for day in days})

    def _recent_stats(
        self,
        connection: Connection,
        metric_types: Sequence[MetricType],
        raw: _RawDays,
        label_filter: dict[str, str] | None = None,
    ) -> list[LabelStats]:
        """Per day and label set, the statistics of the raw days' aggregates (days not rolled up yet), as the
        query API's daily series reads them."""
        merge = RangeMerge(metric_types=metric_types, labels=label_filter, per_day=True)
        for day, aggregates in raw.aggregates.items():
            merge.add_raw_day(connection, day, aggregates)
        return [
            LabelStats(
                stats.metric_type.value,
                dict(stats.labels),
                stats.date or raw.start,
                stats.count,
                stats.sum,
                stats.max if stats.max is not None else 0.0,
                stats.p50,
                stats.p95,
                stats.p99,
                minimum=stats.min,
            )
            for stats in merge.results()
        ]

    def _daily_stats(
        self,
        connection: Connection,
        metric_types: Iterable[MetricType],
        first_day: dt.date,
        before: dt.date,
        label_filter: dict[str, str] | None = None,
    ) -> list[LabelStats]:
        """The daily rows of ``metric_types`` from ``first_day`` up to (excluding) ``before``."""
        d = OperationalMetricDaily
        columns = [d.metric_type, d.labels, d.date, d.sample_count, d.sum, d.max, d.p50, d.p95, d.p99, d.min]
        query = select(*columns).where(d.metric_type.in_(list(metric_types)), d.date >= first_day, d.date < before)
        if label_filter:
            query = query.where(d.labels_key.in_(matching_labels_keys(connection, label_filter)))
        return [
            LabelStats(
                str(row[0]),
                dict(row[1]),
                row[2],
                int(row[3]),
                row[4],
                row[5],
                row[6],
                row[7],
                row[8],
                minimum=row[9],
            )
            for row in _rows(connection, query)
        ]

    def _stats(
        self,
        connection: Connection,
        metric_types: Sequence[MetricType],
        date_range: DateRange,
        label_filter: dict[str, str] | None = None,
        *,
        raw: _RawDays | None = None,
    ) -> list[LabelStats]:
        """Per day and label set over ``date_range``: rolled-up days from the daily table (kept between
        requests), the days after them from their raw samples (``raw``, if read already)."""
        raw = raw or self._raw_days(connection, date_range)
        recent = raw.start
        first, last = date_range.first_day, recent - dt.timedelta(days=1)
        daily = self.kept.get(
            ("daily", tuple(metric_types), first, last, tuple(sorted((label_filter or {}).items()))),
            lambda: daily_fingerprint(connection, metric_types, first, last),
            lambda: self._daily_stats(connection, metric_types, first, recent, label_filter),
        )
        return daily + self._recent_stats(connection, metric_types, raw, label_filter)

    # -- views ----------------------------------------------------------------------------------------------

    def overview(
        self,
        days: int = DEFAULT_RANGE_DAYS,
        *,
        queue: str | None = None,
        sort: str = DEFAULT_OVERVIEW_SORT,
        descending: bool = True,
    ) -> dict[str, Any]:
        """One row per actor and queue: messages per day, error rate, p95 processing and wait time, trends."""
        check_choice("days", days, RANGE_DAYS)
        check_choice("sort", sort, OVERVIEW_SORTS)
        today = self.clock().date()
        date_range = DateRange.ending_today(days, today, MAX_TREND_POINTS)
        label_filter = {"queue": queue} if queue else None
        kinds = [MetricType.PROCESSING_TIME, MetricType.WAIT_TIME, MetricType.ERROR]
        with self.engine.connect() as connection:
            raw_days = self._raw_days(connection, date_range)
            recent, last = raw_days.start, raw_days.start - dt.timedelta(days=1)
            grouped = self.kept.get(
                ("overview", date_range, recent, queue),
                lambda: daily_fingerprint(connection, kinds, date_range.first_day, last),
                lambda: _accumulate(date_range, self._daily_by_actor(connection, kinds, date_range, recent, queue)),
            )
            raw = self._recent_stats(connection, kinds, raw_days, label_filter)
            range_p95 = {
                (kind.value, stats.labels["actor"], stats.labels.get("queue", "")): stats.p95
                for kind in (MetricType.PROCESSING_TIME, MetricType.WAIT_TIME)
                for stats in self._range_stats(connection, kind, date_range, raw_days, label_filter, ("actor", "queue"))
                if "actor" in stats.labels
            }
            queues = self._label_values(connection, "queue", alongside="actor")
        # The kept rows of the rolled-up days are copied, then today's samples are added to the copies.
        rows = {key: kept.copy() for key, kept in grouped.items()}

        def accumulator(actor: str, queue_name: str) -> _OverviewAccumulator:
            found = rows.get((actor, queue_name))
            if found is None:
                found = rows[(actor, queue_name)] = _OverviewAccumulator(date_range)
            return found

        for stat in raw:
            actor = stat.labels.get("actor")
            if actor is not None:
                bucket = date_range.bucket(stat.day)
                p95 = stat.p95 if stat.metric_type != MetricType.ERROR.value else None
                accumulator(actor, stat.labels.get("queue", "")).add(stat.metric_type, bucket, stat.count, p95)
        result = [
            accumulator.row(
                actor,
                queue_name,
                {
                    kind.value: range_p95.get((kind.value, actor, queue_name))
                    for kind in (MetricType.PROCESSING_TIME, MetricType.WAIT_TIME)
                },
            )
            for (actor, queue_name), accumulator in rows.items()
        ]
        result.sort(key=_sort_key(sort, descending))
        return {
            "days": days,
            "rows": result,
            "x": date_range.x_values(),
            "bucket_days": date_range.bucket_days,
            "queues": queues,
            "queue": queue,
            "sort": sort,
            "descending": descending,
        }

    def actor(self, actor: str, queue: str | None = None, days: int = DEFAULT_RANGE_DAYS) -> dict[str, Any]:
        """One actor (on one queue, if given): range percentiles, then daily count, errors and percentiles."""
        check_choice("days", days, RANGE_DAYS)
        date_range = DateRange.ending_today(days, self.clock().date())
        label_filter = {"actor": actor, **({"queue": queue} if queue else {})}
        kinds = [MetricType.PROCESSING_TIME, MetricType.WAIT_TIME, MetricType.ERROR]
        with self.engine.connect() as connection:
            raw = self._raw_days(connection, date_range)
            stats = self._stats(connection, kinds, date_range, label_filter, raw=raw)
            summary = {
                kind.value: _summary(self._range_stats(connection, kind, date_range, raw, label_filter, ()))
                for kind in (MetricType.PROCESSING_TIME, MetricType.WAIT_TIME)
            }
        x = date_range.x_values()
        by_kind: dict[str, list[LabelStats]] = defaultdict(list)
        for stat in stats:
            by_kind[stat.metric_type].append(stat)
        messages = _bucket_sums(date_range, by_kind[MetricType.PROCESSING_TIME.value])
        errors_by_type: dict[str, list[float | None]] = {}
        for stat in by_kind[MetricType.ERROR.value]:
            series = errors_by_type.setdefault(stat.labels.get("error_type", "?"), [0.0] * date_range.buckets)
            index = date_range.bucket(stat.day)
            series[index] = (series[index] or 0.0) + stat.count
        count_chart = Chart(list(map(float, x)), unit="messages", kind="bars")
        count_chart.add("messages", messages)
        error_chart = Chart(list(map(float, x)), unit="errors", kind="bars")
        for error_type in sorted(errors_by_type):
            error_chart.add(error_type, errors_by_type[error_type])
        total_messages = sum(value or 0 for value in messages)
        total_errors = sum(stat.count for stat in by_kind[MetricType.ERROR.value])
        return {
            "actor": actor,
            "queue": queue,
            "days": days,
            "bucket_days": date_range.bucket_days,
            "messages": total_messages,
            "errors": total_errors,
            "error_rate": total_errors / total_messages if total_messages else None,
            "summary": summary,
            "charts": {
                "messages": count_chart.to_json(),
                "errors": error_chart.to_json(),
                "processing_time": _percentile_chart(date_range, by_kind[MetricType.PROCESSING_TIME.value]).to_json(),
                "wait_time": _percentile_chart(date_range, by_kind[MetricType.WAIT_TIME.value]).to_json(),
            },
        }

    def queues(
        self, days: int = DEFAULT_RANGE_DAYS, hours: int = DEFAULT_DEPTH_WINDOW_HOURS, *, queue: str | None = None
    ) -> dict[str, Any]:
        """Queue depth by state: raw samples over the last ``hours``, daily max and p95 over ``days``."""
        check_choice("days", days, RANGE_DAYS)
        check_choice("hours", hours, DEPTH_WINDOW_HOURS)
        now = self.clock()
        date_range = DateRange.ending_today(days, now.date())
        label_filter = {"queue": queue} if queue else None
        with self.engine.connect() as connection:
            stats = self._stats(connection, [MetricType.QUEUE_DEPTH], date_range, label_filter)
            recent = self._raw_depth(connection, now - dt.timedelta(hours=hours), now, queue)
            queues = self._label_values(connection, "queue", alongside="state")
        daily: dict[str, list[LabelStats]] = defaultdict(list)
        for stat in stats:
            daily[_queue_state(stat.labels)].append(stat)
        max_chart = Chart(list(map(float, date_range.x_values())), unit="messages")
        p95_chart = Chart(list(map(float, date_range.x_values())), unit="messages")
        for name in sorted(daily):
            max_chart.add(name, _bucket_worst(date_range, daily[name], "maximum"))
            p95_chart.add(name, _bucket_worst(date_range, daily[name], "p95"))
        return {
            "days": days,
            "hours": hours,
            "queue": queue,
            "queues": queues,
            "bucket_days": date_range.bucket_days,
            "charts": {"recent": recent.to_json(), "daily_max": max_chart.to_json(), "daily_p95": p95_chart.to_json()},
        }

    def tokens(self, days: int = DEFAULT_RANGE_DAYS, *, model: str | None = None) -> dict[str, Any]:
        """Prompt and completion tokens per model per day, and each model's totals for the range."""
        check_choice("days", days, RANGE_DAYS)
        date_range = DateRange.ending_today(days, self.clock().date())
        kinds = [MetricType.PROMPT_TOKENS, MetricType.COMPLETION_TOKENS]
        label_filter = {"model": model} if model else None
        with self.engine.connect() as connection:
            stats = self._stats(connection, kinds, date_range, label_filter)
            models = self._label_values(connection, "model")
        per_series: dict[tuple[str, str], list[LabelStats]] = defaultdict(list)
        totals: dict[str, dict[str, float]] = defaultdict(
            lambda: {"prompt_tokens": 0.0, "completion_tokens": 0.0, "calls": 0}
        )
        for stat in stats:
            name = stat.labels.get("model", "?")
            per_series[(name, stat.metric_type)].append(stat)
            totals[name][stat.metric_type] += stat.total
            if stat.metric_type == MetricType.PROMPT_TOKENS.value:
                totals[name]["calls"] += stat.count
        chart = Chart(list(map(float, date_range.x_values())), unit="tokens", kind="bars")
        for name, metric_type in sorted(per_series):
            values = [
                0.0 if value is None else value
                for value in _bucket_sums(date_range, per_series[(name, metric_type)], "total")
            ]
            chart.add(f"{name} {metric_type.removesuffix('_tokens')}", values)
        rows: list[dict[str, Any]] = [{"model": name, **values} for name, values in totals.items()]
        rows.sort(key=lambda row: -float(row["prompt_tokens"] + row["completion_tokens"]))
        return {
            "days": days,
            "model": model,
            "models": models,
            "bucket_days": date_range.bucket_days,
            "rows": rows,
            "charts": {"tokens": chart.to_json()},
        }

    def confidence(
        self, days: int = DEFAULT_RANGE_DAYS, *, by: str = "actor", value: str | None = None
    ) -> dict[str, Any]:
        """How many confidence scores fell in each bucket over the range, split by the label ``by``."""
        check_choice("days", days, RANGE_DAYS)
        check_choice("by", by, CONFIDENCE_GROUPS)
        date_range = DateRange.ending_today(days, self.clock().date())
        label_filter = {by: value} if value else None
        with self.engine.connect() as connection:
            stats = self._stats(connection, [MetricType.CONFIDENCE], date_range, label_filter)
            values = self._label_values(connection, by, alongside="bucket")
        buckets = [f"{tenth / 10:.1f}-{(tenth + 1) / 10:.1f}" for tenth in range(10)]
        counts: dict[str, list[float | None]] = defaultdict(lambda: [0.0] * len(buckets))
        for stat in stats:
            bucket = stat.labels.get("bucket")
            if bucket in buckets:
                series = counts[stat.labels.get(by, "(none)")]
                series[buckets.index(bucket)] = (series[buckets.index(bucket)] or 0.0) + stat.count
        chart = Chart([float(i) for i in range(len(buckets))], unit="scores", kind="bars", x_labels=buckets)
        for name in sorted(counts):
            chart.add(name, counts[name])
        totals = [
            {"group": name, "scores": int(sum(v or 0 for v in counts[name])), "buckets": counts[name]}
            for name in sorted(counts)
        ]
        return {
            "days": days,
            "by": by,
            "value": value,
            "values": values,
            "groups": CONFIDENCE_GROUPS,
            "buckets": buckets,
            "rows": totals,
            "charts": {"confidence": chart.to_json()},
        }

    # -- helpers of the views -------------------------------------------------------------------------------

    def _daily_by_actor(
        self,
        connection: Connection,
        metric_types: Sequence[MetricType],
        date_range: DateRange,
        before: dt.date,
        queue: str | None,
    ) -> list[Any]:
        """Daily rows grouped in SQL by (metric type, actor, queue, chart point): count and worst day's p95."""
        d = OperationalMetricDaily
        actor = d.labels["actor"].as_string()
        queue_label = d.labels["queue"].as_string()
        bucket = _day_index(connection, d.date, date_range.first_day) / date_range.bucket_days
        if connection.dialect.name == "postgresql":
            bucket = cast(func.floor(bucket), Integer)
        query = (
            select(d.metric_type, actor, queue_label, bucket, func.sum(d.sample_count), func.max(d.p95))
            .where(d.metric_type.in_(list(metric_types)), d.date >= date_range.first_day, d.date < before)
            .where(actor.is_not(None))
            .group_by(d.metric_type, actor, queue_label, bucket)
        )
        if queue:
            query = query.where(queue_label == queue)
        if connection.dialect.name != "postgresql":
            return list(connection.execute(query))
        # One row per (metric type, actor, queue) with arrays: a year of points travels in a few hundred rows.
        points = query.subquery()
        columns = list(points.c)
        packed = select(
            columns[0],
            columns[1],
            columns[2],
            func.array_agg(columns[3]),
            func.array_agg(columns[4]),
            func.array_agg(columns[5]),
        ).group_by(columns[0], columns[1], columns[2])
        return [
            (metric_type, actor_name, queue_name, bucket, count, worst)
            for metric_type, actor_name, queue_name, buckets, counts, worsts in connection.execute(packed)
            for bucket, count, worst in zip(buckets, counts, worsts, strict=True)
        ]

    def _label_values(self, connection: Connection, key: str, *, alongside: str | None = None) -> list[str]:
        """Every value label ``key`` has taken (a filter's choices), in label sets that also have the label
        ``alongside``, if given. Read from the label-set table, which is small."""
        label = LabelSet.labels[key].as_string()
        query = select(label).where(label.is_not(None)).distinct()
        if alongside:
            query = query.where(LabelSet.labels[alongside].as_string().is_not(None))
        return sorted(value for (value,) in connection.execute(query))

    def _raw_depth(self, connection: Connection, start: dt.datetime, end: dt.datetime, queue: str | None) -> Chart:
        """Raw queue-depth samples from ``start`` to ``end``: each interval's largest, per queue and state."""
        width_s = max(1, math.ceil((end - start).total_seconds() / MAX_DEPTH_POINTS))
        maxima = self.recent_maxima.maxima(connection, MetricType.QUEUE_DEPTH, start, end, width_s)
        if queue:
            wanted = matching_label_sets(connection, {"queue": queue})[0]
            maxima = {key: value for key, value in maxima.items() if key[0] in wanted}
        rows = [(label_set_id, index, depth) for (label_set_id, index), depth in maxima.items()]
        ids_found = {row[0] for row in rows}
        labels = labels_of_ids(connection, ids_found) if ids_found else {}
        first = int(start.timestamp()) // width_s
        x = [float((first + i) * width_s) for i in range(MAX_DEPTH_POINTS + 1)]
        series: dict[str, list[float | None]] = defaultdict(lambda: [None] * len(x))
        for label_set_id, index, depth in rows:
            position = int(index) - first
            if 0 <= position < len(x):
                series[_queue_state(labels[label_set_id])][position] = depth
        chart = Chart(x, unit="messages")
        for name in sorted(series):
            chart.add(name, series[name])
        return chart

    def _range_stats(
        self,
        connection: Connection,
        metric_type: MetricType,
        date_range: DateRange,
        raw: _RawDays,
        label_filter: dict[str, str] | None,
        group_by: tuple[str, ...],
    ) -> list[MetricStats]:
        """The query API's statistics of ``metric_type`` over the range, today included: its merge of the
        rolled-up days (kept between requests) with the raw days' aggregates added (kept by
        :class:`~dramatiq_opmetrics.dashboard.recent.RecentSamples`)."""
        first, last = date_range.first_day, raw.start - dt.timedelta(days=1)

        def merge_daily() -> RangeMerge:
            merge = RangeMerge(metric_types=[metric_type], labels=label_filter, group_by=group_by)
            if first <= last:
                merge.add_daily_rows(connection, first, last)
            merge.settle()
            return merge

        def fingerprint() -> tuple[object, ...]:
            return daily_fingerprint(connection, [metric_type], first, last, label_filter)

        labels = tuple(sorted((label_filter or {}).items()))
        kept = self.kept.get(("range", metric_type, first, last, labels, group_by), fingerprint, merge_daily)
        merge = kept.copy()
        for day, aggregates in raw.aggregates.items():
            merge.add_raw_day(connection, day, aggregates)
        return merge.results()


def _summary(stats: list[MetricStats]) -> dict[str, float | None]:
    """Count, average and p50/p95/p99 of the one group of a range's statistics (none: no samples)."""
    if not stats:
        return {"count": 0, "avg": None, "p50": None, "p95": None, "p99": None}
    [found] = stats
    return {"count": found.count, "avg": found.avg, "p50": found.p50, "p95": found.p95, "p99": found.p99}


def daily_fingerprint(
    connection: Connection,
    metric_types: Sequence[MetricType],
    first_day: dt.date,
    last_day: dt.date,
    label_filter: dict[str, str] | None = None,
) -> tuple[object, ...]:
    """What changes when the daily rows of a span change (of the label sets having the labels of
    ``label_filter``, if given): how many, their samples, the latest ``rolled_up_at``."""
    d = OperationalMetricDaily
    query = select(func.count(), func.sum(d.sample_count), func.max(d.rolled_up_at)).where(
        d.metric_type.in_(list(metric_types)), d.date >= first_day, d.date <= last_day
    )
    if label_filter:
        query = query.where(d.labels_key.in_(matching_labels_keys(connection, label_filter)))
    return tuple(connection.execute(query).one())


def _accumulate(date_range: DateRange, grouped: Iterable[Any]) -> dict[tuple[str, str], _OverviewAccumulator]:
    """Overview rows of the grouped daily points (metric type, actor, queue, point, count, worst p95)."""
    rows: dict[tuple[str, str], _OverviewAccumulator] = {}
    for metric_type, actor, queue_name, bucket, count, worst_p95 in grouped:
        row = rows.get((actor, queue_name or ""))
        if row is None:
            row = rows[(actor, queue_name or "")] = _OverviewAccumulator(date_range)
        row.add(str(metric_type), int(bucket), int(count), worst_p95)
    return rows


class _OverviewAccumulator:
    """One overview row being summed up, chart point by chart point."""

    def __init__(self, date_range: DateRange) -> None:
        self.date_range = date_range
        size = date_range.buckets
        self.messages: list[float | None] = [None] * size
        self.errors: list[float] = [0.0] * size
        self.p95_processing: list[float | None] = [None] * size
        self.p95_wait: list[float | None] = [None] * size

    def copy(self) -> _OverviewAccumulator:
        """An independent copy."""
        twin = _OverviewAccumulator.__new__(_OverviewAccumulator)
        twin.date_range = self.date_range
        twin.messages, twin.errors = list(self.messages), list(self.errors)
        twin.p95_processing, twin.p95_wait = list(self.p95_processing), list(self.p95_wait)
        return twin

    def add(self, metric_type: str, bucket: int, count: int, p95: float | None) -> None:
        if not 0 <= bucket < len(self.messages):
            return
        if metric_type == MetricType.PROCESSING_TIME.value:
            self.messages[bucket] = (self.messages[bucket] or 0.0) + count
            self.p95_processing[bucket] = _worst(self.p95_processing[bucket], p95)
        elif metric_type == MetricType.WAIT_TIME.value:
            self.p95_wait[bucket] = _worst(self.p95_wait[bucket], p95)
        elif metric_type == MetricType.ERROR.value:
            self.errors[bucket] += count

    def row(self, actor: str, queue: str, range_p95: dict[str, float | None]) -> dict[str, Any]:
        messages = sum(value or 0.0 for value in self.messages)
        errors = sum(self.errors)
        error_rates = [
            (errors / total if total else None) for errors, total in zip(self.errors, self.messages, strict=True)
        ]
        return {
            "actor": actor,
            "queue": queue,
            "messages": int(messages),
            "messages_per_day": messages / self.date_range.days,
            "errors": int(errors),
            "error_rate": errors / messages if messages else None,
            "p95_processing_ms": range_p95.get(MetricType.PROCESSING_TIME.value),
            "p95_wait_ms": range_p95.get(MetricType.WAIT_TIME.value),
            "trend": {
                "messages": [None if v is None else v / self.date_range.bucket_days for v in self.messages],
                "error_rate": error_rates,
                "p95_processing_ms": self.p95_processing,
                "p95_wait_ms": self.p95_wait,
            },
        }


def _worst(current: float | None, candidate: float | None) -> float | None:
    if candidate is None:
        return current
    return candidate if current is None else max(current, candidate)


def _sort_key(sort: str, descending: bool) -> Callable[[dict[str, Any]], Any]:
    """A key that sorts rows by ``sort`` (missing values last either way), then by actor and queue."""

    def key(row: dict[str, Any]) -> Any:
        value = row[sort]
        if isinstance(value, str):
            primary: Any = value.casefold()
            return (0, primary, row["actor"], row["queue"])
        if value is None:
            return (1, 0.0, row["actor"], row["queue"])
        return (0, -value if descending else value, row["actor"], row["queue"])

    if sort in ("actor", "queue") and descending:
        return lambda row: tuple(_Reversed(part) if isinstance(part, str) else part for part in key(row))
    return key


class _Reversed:
    """Sorts strings in reverse order inside a tuple key."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __lt__(self, other: _Reversed) -> bool:
        return self.text > other.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)


def _bucket_sums(date_range: DateRange, stats: Iterable[LabelStats], attribute: str = "count") -> list[float | None]:
    """Per chart point, the sum of ``attribute`` (count or total) of the stats in it (None where none)."""
    values: list[float | None] = [None] * date_range.buckets
    for stat in stats:
        index = date_range.bucket(stat.day)
        if 0 <= index < len(values):
            values[index] = (values[index] or 0.0) + float(getattr(stat, attribute))
    return values


def _bucket_worst(date_range: DateRange, stats: Iterable[LabelStats], attribute: str) -> list[float | None]:
    """Per chart point, the largest ``attribute`` (a day's max or p95) of the days in it."""
    values: list[float | None] = [None] * date_range.buckets
    for stat in stats:
        index = date_range.bucket(stat.day)
        if 0 <= index < len(values):
            values[index] = _worst(values[index], getattr(stat, attribute))
    return values


def _percentile_chart(date_range: DateRange, stats: list[LabelStats]) -> Chart:
    """Each day's own p50, p95 and p99 (the worst day's, where a point covers several days)."""
    chart = Chart(list(map(float, date_range.x_values())), unit="ms")
    for name in ("p50", "p95", "p99"):
        chart.add(name, _bucket_worst(date_range, stats, name))
    return chart


def _rows(connection: Connection, query: Any) -> list[Any]:
    """The rows of ``query``, loosely typed (their columns are mixed)."""
    return list(connection.execute(query))


def _queue_state(labels: dict[str, str]) -> str:
    return f"{labels.get('queue', '?')} {labels.get('state', '?')}"


def _as_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def _day_index(connection: Connection, column: Any, first_day: dt.date) -> Any:
    """Days from ``first_day`` to a date column, as an integer SQL expression."""
    if connection.dialect.name == "postgresql":
        return column - first_day
    return cast(func.julianday(column) - func.julianday(first_day.isoformat()), Integer)

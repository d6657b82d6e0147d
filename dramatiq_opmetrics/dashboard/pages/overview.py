"""The overview (``/``): one row per actor and queue over a range of days, with trends, ranked two ways.

Each row has the range's messages per day, error rate (errors / messages), p95 processing and wait time
(over the whole range, from merged histograms: :func:`~dramatiq_opmetrics.query.query_metrics`), and the
total processing time, where the fleet's time goes, with its share of the fleet's. The table is sorted by
error rate by default (worst first), or by any column; beside it, the actors that take the most processing
time are ranked on their own.

Trends (one point per day, or per several days for long ranges) come from the daily rows grouped in SQL
(a year of 200 actors is 220,000 daily rows, which the query API's per-day series would read one by one
with their histograms, for seconds): per point the messages, errors, total processing time and the worst
day's p95. They are kept between requests (:mod:`~dramatiq_opmetrics.dashboard.kept`). Today, and days the
rollup has not reached, are added from the same read of their raw rows as the range's p95
(:func:`~dramatiq_opmetrics.query.query_metrics_and_recent_days`): a day of raw rows is read once per request,
not once per metric type and use.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import functools
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Connection, Integer, cast, func, select, type_coerce
from sqlalchemy.sql.sqltypes import NullType

from ...database import LONG_READ_SETTINGS, local_settings
from ...metric_types import MetricType
from ...models import OperationalMetricDaily
from ...query import MetricStats, labels_of_keys, matching_labels_keys, query_metrics_and_recent_days
from ..charts import DEFAULT_RANGE_DAYS, RANGE_DAYS, DateRange, check_choice, worst
from ..data import DashboardData
from ..days import daily_fingerprint, label_values

#: The overview's sortable columns; the default sort shows the worst rows first.
OVERVIEW_SORTS = (
    "error_rate",
    "processing_ms_total",
    "p95_processing_ms",
    "p95_wait_ms",
    "messages_per_day",
    "actor",
    "queue",
)
#: The overview's default sort column (descending: worst first).
DEFAULT_OVERVIEW_SORT = "error_rate"
#: Most points an overview trend chart gets (365 days are shown as weeks).
MAX_TREND_POINTS = 60
#: How many rows the ranking by total processing time shows.
TIME_RANKING_ROWS = 10

_KINDS = (MetricType.PROCESSING_TIME, MetricType.WAIT_TIME, MetricType.ERROR)
_TIMED = (MetricType.PROCESSING_TIME, MetricType.WAIT_TIME)
_GROUP = ("actor", "queue")


def view(
    data: DashboardData,
    days: int = DEFAULT_RANGE_DAYS,
    *,
    queue: str | None = None,
    sort: str = DEFAULT_OVERVIEW_SORT,
    descending: bool = True,
) -> dict[str, Any]:
    """One row per actor and queue over the ``days`` ending today (of ``queue`` only, if given), sorted by
    ``sort``; and the top :data:`TIME_RANKING_ROWS` by total processing time.

    Raises:
      ValueError: ``days`` is not one of :data:`~dramatiq_opmetrics.dashboard.charts.RANGE_DAYS`, or ``sort``
        not one of :data:`OVERVIEW_SORTS`.
    """
    check_choice("days", days, RANGE_DAYS)
    check_choice("sort", sort, OVERVIEW_SORTS)
    date_range = DateRange.ending_today(days, data.clock().date(), MAX_TREND_POINTS)
    labels = {"queue": queue} if queue else None
    # The range's p95 and today's points come from one read of today's raw rows; on PostgreSQL that read
    # runs on a connection of its own while this one reads the trends (the first request's two long reads,
    # side by side on two server processes).
    read_recent = functools.partial(
        query_metrics_and_recent_days,
        data.engine,
        date_range.first_day,
        date_range.today,
        metric_types=_TIMED,
        day_metric_types=_KINDS,
        labels=labels,
        group_by=_GROUP,
    )
    with contextlib.ExitStack() as stack:
        recent_read: concurrent.futures.Future[tuple[list[MetricStats], list[MetricStats]]] | None = None
        if data.engine.dialect.name == "postgresql":
            pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="overview"))
            recent_read = pool.submit(read_recent)
        with data.engine.connect() as connection:
            kept = data.kept.get(
                ("overview", date_range, queue),
                lambda: daily_fingerprint(connection, _KINDS, date_range.first_day, date_range.today),
                lambda: _accumulate(date_range, _daily_by_actor(connection, date_range, queue)),
            )
            queues = label_values(connection, "queue", alongside="actor")
        whole, recent = read_recent() if recent_read is None else recent_read.result()
    range_p95 = {
        (stats.metric_type.value, stats.labels["actor"], stats.labels.get("queue", "")): stats.p95
        for stats in whole
        if "actor" in stats.labels
    }
    # The kept rows of the rolled-up days are copied, then the recent days' points are added to the copies.
    rows = {key: accumulator.copy() for key, accumulator in kept.items()}
    for stats in recent:
        actor = stats.labels.get("actor")
        if actor is None or stats.date is None:
            continue
        key = (actor, stats.labels.get("queue", ""))
        accumulator = rows.get(key)
        if accumulator is None:
            accumulator = rows[key] = _OverviewAccumulator(date_range)
        bucket = date_range.bucket(stats.date)
        if stats.metric_type is MetricType.PROCESSING_TIME:
            accumulator.add_processing(bucket, stats.count, stats.sum, stats.p95)
        elif stats.metric_type is MetricType.WAIT_TIME:
            accumulator.add_wait(bucket, stats.p95)
        else:
            accumulator.add_errors(bucket, stats.count)
    result = [
        accumulator.row(
            actor, queue_name, {kind.value: range_p95.get((kind.value, actor, queue_name)) for kind in _TIMED}
        )
        for (actor, queue_name), accumulator in rows.items()
    ]
    fleet_ms = sum(row["processing_ms_total"] for row in result)
    for row in result:
        row["processing_share"] = row["processing_ms_total"] / fleet_ms if fleet_ms else None
    ranking = sorted(result, key=_sort_key("processing_ms_total", True))[:TIME_RANKING_ROWS]
    result.sort(key=_sort_key(sort, descending))
    return {
        "days": days,
        "rows": result,
        "time_ranking": [
            {key: row[key] for key in ("actor", "queue", "processing_ms_total", "processing_share", "messages")}
            for row in ranking
            if row["processing_ms_total"] > 0
        ],
        "x": date_range.x_values(),
        "bucket_days": date_range.bucket_days,
        "queues": queues,
        "queue": queue,
        "sort": sort,
        "descending": descending,
    }


def _daily_by_actor(connection: Connection, date_range: DateRange, queue: str | None) -> list[Any]:
    """Daily rows grouped in SQL by (metric type, label set, chart point): count, worst day's p95, sum; as rows
    of (metric type, actor, queue, points, counts, worst p95s, sums), one per metric type and label set with a
    list per column, label sets without an actor left out.

    Grouped by ``labels_key``, not by the labels' values: on PostgreSQL the statement then reads only the
    daily table's read index (migration 0009), not its rows with their histograms (a year of 200 actors is
    490 MB of rows, 40 MB of index); the few label sets are looked up once."""
    d = OperationalMetricDaily
    bucket = _day_index(connection, d.date, date_range.first_day) // date_range.bucket_days  # integer division
    query = (
        select(d.metric_type, d.labels_key, bucket, func.sum(d.sample_count), func.max(d.p95), func.sum(d.sum))
        .where(d.metric_type.in_(list(_KINDS)), d.date >= date_range.first_day, d.date <= date_range.today)
        .group_by(d.metric_type, d.labels_key, bucket)
    )
    if queue:
        query = query.where(d.labels_key.in_(matching_labels_keys(connection, {"queue": queue})))
    grouped: list[tuple[Any, ...]]
    if connection.dialect.name == "postgresql":
        # One row per (metric type, label set) with arrays: a year of points travels in a few hundred rows,
        # and the arrays come as the driver's lists (no per-element processing).
        points = query.subquery()
        columns = list(points.c)
        packed = select(
            columns[0], columns[1], *(type_coerce(func.array_agg(column), NullType()) for column in columns[2:])
        ).group_by(columns[0], columns[1])
        with local_settings(connection, LONG_READ_SETTINGS):  # its grouping in memory, not sorted on disk
            grouped = [tuple(row) for row in connection.execute(packed)]
    else:
        lists: dict[tuple[Any, str], tuple[list[Any], ...]] = {}
        for metric_type, labels_key, *point in connection.execute(query):
            found = lists.get((metric_type, labels_key))
            if found is None:
                found = lists[(metric_type, labels_key)] = ([], [], [], [])
            for values, value in zip(found, point, strict=True):
                values.append(value)
        grouped = [(metric_type, labels_key, *values) for (metric_type, labels_key), values in lists.items()]
    labels_of = labels_of_keys(connection, sorted({row[1] for row in grouped}))
    return [
        (metric_type, labels["actor"], labels.get("queue"), *rest)
        for metric_type, labels_key, *rest in grouped
        if "actor" in (labels := labels_of[labels_key])
    ]


def _day_index(connection: Connection, column: Any, first_day: dt.date) -> Any:
    """Days from ``first_day`` to a date column, as an integer SQL expression."""
    if connection.dialect.name == "postgresql":
        return column - first_day
    return cast(func.julianday(column) - func.julianday(first_day.isoformat()), Integer)


def _accumulate(date_range: DateRange, grouped: Iterable[Any]) -> dict[tuple[str, str], _OverviewAccumulator]:
    """Overview rows of the grouped daily points (metric type, actor, queue, points, counts, worst p95s,
    sums)."""
    rows: dict[tuple[str, str], _OverviewAccumulator] = {}
    for metric_type, actor, queue_name, buckets, counts, worst_p95s, totals in grouped:
        row = rows.get((actor, queue_name or ""))
        if row is None:
            row = rows[(actor, queue_name or "")] = _OverviewAccumulator(date_range)
        kind = str(metric_type)
        for bucket, count, worst_p95, total in zip(buckets, counts, worst_p95s, totals, strict=True):
            if kind == MetricType.PROCESSING_TIME.value:
                row.add_processing(int(bucket), int(count), float(total), worst_p95)
            elif kind == MetricType.WAIT_TIME.value:
                row.add_wait(int(bucket), worst_p95)
            else:
                row.add_errors(int(bucket), int(count))
    return rows


class _OverviewAccumulator:
    """One overview row being summed up, chart point by chart point."""

    def __init__(self, date_range: DateRange) -> None:
        self.date_range = date_range
        size = date_range.buckets
        self.messages: list[float | None] = [None] * size
        self.errors: list[float] = [0.0] * size
        self.processing_ms: list[float | None] = [None] * size
        self.p95_processing: list[float | None] = [None] * size
        self.p95_wait: list[float | None] = [None] * size

    def copy(self) -> _OverviewAccumulator:
        """An independent copy."""
        twin = _OverviewAccumulator.__new__(_OverviewAccumulator)
        twin.date_range = self.date_range
        twin.messages, twin.errors = list(self.messages), list(self.errors)
        twin.processing_ms = list(self.processing_ms)
        twin.p95_processing, twin.p95_wait = list(self.p95_processing), list(self.p95_wait)
        return twin

    def add_processing(self, bucket: int, count: int, total_ms: float, p95: float | None) -> None:
        if 0 <= bucket < len(self.messages):
            self.messages[bucket] = (self.messages[bucket] or 0.0) + count
            self.processing_ms[bucket] = (self.processing_ms[bucket] or 0.0) + total_ms
            self.p95_processing[bucket] = worst(self.p95_processing[bucket], p95)

    def add_wait(self, bucket: int, p95: float | None) -> None:
        if 0 <= bucket < len(self.p95_wait):
            self.p95_wait[bucket] = worst(self.p95_wait[bucket], p95)

    def add_errors(self, bucket: int, count: int) -> None:
        if 0 <= bucket < len(self.errors):
            self.errors[bucket] += count

    def row(self, actor: str, queue: str, range_p95: dict[str, float | None]) -> dict[str, Any]:
        messages = sum(value or 0.0 for value in self.messages)
        errors = sum(self.errors)
        error_rates = [
            (errors / total if total else None) for errors, total in zip(self.errors, self.messages, strict=True)
        ]
        per_day = self.date_range.bucket_days
        return {
            "actor": actor,
            "queue": queue,
            "messages": int(messages),
            "messages_per_day": messages / self.date_range.days,
            "errors": int(errors),
            "error_rate": errors / messages if messages else None,
            "processing_ms_total": sum(value or 0.0 for value in self.processing_ms),
            "p95_processing_ms": range_p95.get(MetricType.PROCESSING_TIME.value),
            "p95_wait_ms": range_p95.get(MetricType.WAIT_TIME.value),
            "trend": {
                "messages": [None if v is None else v / per_day for v in self.messages],
                "error_rate": error_rates,
                "processing_ms_total": [None if v is None else v / per_day for v in self.processing_ms],
                "p95_processing_ms": self.p95_processing,
                "p95_wait_ms": self.p95_wait,
            },
        }


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

"""Queues (``/queues``): queue depth by state over the last hours, and each day's maximum and p95.

The recent chart is the largest depth sampled in each bucket of the last ``hours``, from
:func:`~dramatiq_opmetrics.series.query_series` (the recent tier; a window longer than the tier's retention
reads its older part from the raw rows); the daily charts are the days' own maximum and p95.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from ...metric_types import MetricType
from ...series import SeriesPoint, query_series
from ..charts import (
    DEFAULT_RANGE_DAYS,
    RANGE_DAYS,
    Chart,
    DateRange,
    DayStats,
    TimeBuckets,
    bucket_worst,
    check_choice,
    time_chart,
)
from ..data import DashboardData
from ..days import DaysOfRange, day_stats, label_values

#: The windows of recent queue depth the page can show, in hours.
DEPTH_WINDOW_HOURS = (6, 24, 72, 168)
#: The recent window shown when none is chosen, in hours.
DEFAULT_DEPTH_WINDOW_HOURS = 24
#: The bucket of the recent chart for each window, in minutes (the recent tier keeps 1- and 10-minute
#: buckets: a step of either reads their stored statistics as they are).
DEPTH_STEP_MINUTES = {6: 1, 24: 10, 72: 10, 168: 60}


def view(
    data: DashboardData,
    days: int = DEFAULT_RANGE_DAYS,
    hours: int = DEFAULT_DEPTH_WINDOW_HOURS,
    *,
    queue: str | None = None,
) -> dict[str, Any]:
    """Queue depth by state (of ``queue`` only, if given): the largest per bucket over the last ``hours``,
    daily max and p95 over ``days``.

    Raises:
      ValueError: ``days`` is not one of :data:`~dramatiq_opmetrics.dashboard.charts.RANGE_DAYS`, or
        ``hours`` not one of :data:`DEPTH_WINDOW_HOURS`.
    """
    check_choice("days", days, RANGE_DAYS)
    check_choice("hours", hours, DEPTH_WINDOW_HOURS)
    now = data.clock()
    date_range = DateRange.ending_today(days, now.date())
    labels = {"queue": queue} if queue else None
    buckets = TimeBuckets.ending(now, dt.timedelta(hours=hours), dt.timedelta(minutes=DEPTH_STEP_MINUTES[hours]))
    with data.engine.connect() as connection:
        stats = day_stats(
            data, connection, DaysOfRange.read(connection, date_range), [MetricType.QUEUE_DEPTH], labels=labels
        )
        points = query_series(
            connection,
            buckets.start,
            buckets.end,
            step=buckets.step,
            metric_type=MetricType.QUEUE_DEPTH,
            labels=labels,
            group_by=("queue", "state"),
        )
        queues = label_values(connection, "queue", alongside="state")
    recent = time_chart(buckets, points, _point_state, lambda point: point.max, "messages")
    daily: dict[str, list[DayStats]] = defaultdict(list)
    for stat in stats:
        daily[queue_state(stat.labels)].append(stat)
    max_chart = Chart(list(map(float, date_range.x_values())), unit="messages")
    p95_chart = Chart(list(map(float, date_range.x_values())), unit="messages")
    for name in sorted(daily):
        max_chart.add(name, bucket_worst(date_range, daily[name], "maximum"))
        p95_chart.add(name, bucket_worst(date_range, daily[name], "p95"))
    return {
        "days": days,
        "hours": hours,
        "step_minutes": DEPTH_STEP_MINUTES[hours],
        "queue": queue,
        "queues": queues,
        "bucket_days": date_range.bucket_days,
        "charts": {"recent": recent.to_json(), "daily_max": max_chart.to_json(), "daily_p95": p95_chart.to_json()},
    }


def queue_state(labels: dict[str, str] | Any) -> str:
    """A series name of a queue depth label set: ``queue state``."""
    return f"{labels.get('queue', '?')} {labels.get('state', '?')}"


def _point_state(point: SeriesPoint) -> str:
    return queue_state(point.labels)

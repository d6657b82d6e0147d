"""One actor (``/actor``), on one queue if given, over a range of days.

The range's p50/p95/p99 processing and wait time come from :func:`~dramatiq_opmetrics.query.query_metrics`
(merged histograms, within 1%); the charts show messages and errors (by error type) per day and each day's
own percentiles (for a point of several days, the worst day's).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ...metric_types import MetricType
from ...query import MetricStats
from ..charts import (
    DEFAULT_RANGE_DAYS,
    RANGE_DAYS,
    Chart,
    DateRange,
    DayStats,
    bucket_sums,
    check_choice,
    percentile_chart,
)
from ..data import DashboardData
from ..days import DaysOfRange, day_stats, range_stats

_KINDS = (MetricType.PROCESSING_TIME, MetricType.WAIT_TIME, MetricType.ERROR)
_TIMED = (MetricType.PROCESSING_TIME, MetricType.WAIT_TIME)


def view(data: DashboardData, actor: str, queue: str | None = None, days: int = DEFAULT_RANGE_DAYS) -> dict[str, Any]:
    """One actor (on one queue, if given): range percentiles, then daily count, errors and percentiles.

    Raises:
      ValueError: ``days`` is not one of :data:`~dramatiq_opmetrics.dashboard.charts.RANGE_DAYS`.
    """
    check_choice("days", days, RANGE_DAYS)
    date_range = DateRange.ending_today(days, data.clock().date())
    labels = {"actor": actor, **({"queue": queue} if queue else {})}
    with data.engine.connect() as connection:
        days_read = DaysOfRange.read(connection, date_range)
        stats = day_stats(data, connection, days_read, _KINDS, labels=labels)
        summary = {
            kind.value: _summary(range_stats(connection, days_read, kind, labels=labels, group_by=()))
            for kind in _TIMED
        }
    x = list(map(float, date_range.x_values()))
    by_kind: dict[str, list[DayStats]] = defaultdict(list)
    for stat in stats:
        by_kind[stat.metric_type].append(stat)
    messages = bucket_sums(date_range, by_kind[MetricType.PROCESSING_TIME.value])
    errors_by_type: dict[str, list[float | None]] = {}
    for stat in by_kind[MetricType.ERROR.value]:
        series = errors_by_type.setdefault(stat.labels.get("error_type", "?"), [0.0] * date_range.buckets)
        index = date_range.bucket(stat.day)
        series[index] = (series[index] or 0.0) + stat.count
    count_chart = Chart(x, unit="messages", kind="bars")
    count_chart.add("messages", messages)
    error_chart = Chart(x, unit="errors", kind="bars")
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
            "processing_time": percentile_chart(date_range, by_kind[MetricType.PROCESSING_TIME.value]).to_json(),
            "wait_time": percentile_chart(date_range, by_kind[MetricType.WAIT_TIME.value]).to_json(),
        },
    }


def _summary(stats: list[MetricStats]) -> dict[str, float | None]:
    """Count, average and p50/p95/p99 of the one group of a range's statistics (none: no samples)."""
    if not stats:
        return {"count": 0, "avg": None, "p50": None, "p95": None, "p99": None}
    [found] = stats
    return {"count": found.count, "avg": found.avg, "p50": found.p50, "p95": found.p95, "p99": found.p99}

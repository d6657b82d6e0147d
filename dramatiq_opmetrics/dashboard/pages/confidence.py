"""Confidence (``/confidence``): how many confidence scores fell in each tenth, split by actor, model or queue."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ...metric_types import MetricType
from ...samples import confidence_bucket
from ..charts import DEFAULT_RANGE_DAYS, RANGE_DAYS, Chart, DateRange, check_choice
from ..data import DashboardData
from ..days import DaysOfRange, day_stats, label_values

#: Label keys the confidence distribution can be split by.
CONFIDENCE_GROUPS = ("actor", "model", "queue")
#: The buckets of confidence scores (the ``bucket`` label), lowest first.
CONFIDENCE_BUCKETS = tuple(confidence_bucket(tenth / 10) for tenth in range(10))


def view(
    data: DashboardData, days: int = DEFAULT_RANGE_DAYS, *, by: str = "actor", value: str | None = None
) -> dict[str, Any]:
    """How many confidence scores fell in each bucket over the range, split by the label ``by`` (only the
    label sets whose ``by`` is ``value``, if given).

    Raises:
      ValueError: ``days`` is not one of :data:`~dramatiq_opmetrics.dashboard.charts.RANGE_DAYS`, or ``by``
        not one of :data:`CONFIDENCE_GROUPS`.
    """
    check_choice("days", days, RANGE_DAYS)
    check_choice("by", by, CONFIDENCE_GROUPS)
    date_range = DateRange.ending_today(days, data.clock().date())
    labels = {by: value} if value else None
    with data.engine.connect() as connection:
        days_read = DaysOfRange.read(connection, date_range)
        stats = day_stats(data, connection, days_read, [MetricType.CONFIDENCE], labels=labels)
        values = label_values(connection, by, alongside="bucket")
    buckets = list(CONFIDENCE_BUCKETS)
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

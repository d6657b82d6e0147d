"""Token usage (``/tokens``): prompt and completion tokens per model per day, and each model's totals."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ...metric_types import MetricType
from ..charts import DEFAULT_RANGE_DAYS, RANGE_DAYS, Chart, DateRange, DayStats, bucket_sums, check_choice
from ..data import DashboardData
from ..days import DaysOfRange, day_stats, label_values

_KINDS = (MetricType.PROMPT_TOKENS, MetricType.COMPLETION_TOKENS)


def view(data: DashboardData, days: int = DEFAULT_RANGE_DAYS, *, model: str | None = None) -> dict[str, Any]:
    """Prompt and completion tokens per model per day (of ``model`` only, if given), and each model's totals
    for the range (tokens and calls), most tokens first.

    Raises:
      ValueError: ``days`` is not one of :data:`~dramatiq_opmetrics.dashboard.charts.RANGE_DAYS`.
    """
    check_choice("days", days, RANGE_DAYS)
    date_range = DateRange.ending_today(days, data.clock().date())
    labels = {"model": model} if model else None
    with data.engine.connect() as connection:
        stats = day_stats(data, connection, DaysOfRange.read(connection, date_range), _KINDS, labels=labels)
        models = label_values(connection, "model")
    per_series: dict[tuple[str, str], list[DayStats]] = defaultdict(list)
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
            for value in bucket_sums(date_range, per_series[(name, metric_type)], "total")
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

"""Test helper: what the recent tier counts, and what its watermark says it must count, per metric type."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import Engine, func, select

from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.models import OperationalMetric, RecentAggregate
from dramatiq_opmetrics.recent_tier import read_state


def tier_counts(engine: Engine) -> Counter[str]:
    """Raw rows counted in the recent tier's 1-minute buckets, per metric type."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(RecentAggregate.metric_type, func.sum(RecentAggregate.count))
            .where(RecentAggregate.width_minutes == 1)
            .group_by(RecentAggregate.metric_type)
        ).all()
    return Counter({MetricType(metric_type).value: int(count) for metric_type, count in rows})


def folded_raw_counts(engine: Engine) -> Counter[str]:
    """Raw rows the tier's watermark says are folded (id up to ``folded_id``, recorded from ``floor`` to
    ``cutoff``), per metric type: exactly what :func:`tier_counts` must be, however many folders ran."""
    raw = OperationalMetric.__table__
    with engine.connect() as connection:
        state = read_state(connection)
        if state is None:
            return Counter()
        rows = connection.execute(
            select(raw.c.metric_type, func.count())
            .where(raw.c.id <= state.folded_id, raw.c.recorded_at >= state.floor, raw.c.recorded_at < state.cutoff)
            .group_by(raw.c.metric_type)
        ).all()
    return Counter({MetricType(metric_type).value: count for metric_type, count in rows})

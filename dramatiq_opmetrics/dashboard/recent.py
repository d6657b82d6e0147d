"""The raw samples of the days not rolled up yet (today, and yesterday before the nightly rollup), aggregated
with the rollup's own :func:`~dramatiq_opmetrics.aggregate.aggregate_raw` and kept between requests.

A busy fleet writes a million raw samples a day; aggregating all of today's on every page view would take
seconds. Samples recorded more than :data:`SETTLED_AFTER_S` ago are aggregated once and kept (merged per
metric type and label set); each request reads only the samples recorded since the last one (at whole
minutes) and the last few minutes. A sample written more than that long after its ``recorded_at`` (the
writer flushes within seconds) is shown once its day is rolled up.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Integer, cast, func, select

from ..aggregate import Aggregate, aggregate_raw
from ..metric_types import MetricType
from ..models import OperationalMetric
from ..partitions import day_bounds
from ..sketch import Histogram

#: How long after their ``recorded_at`` samples are taken as all written, and their aggregate kept, in seconds.
SETTLED_AFTER_S = 120
#: How many days' kept hours are remembered (today and the days the rollup has not reached yet).
MAX_DAYS_KEPT = 4

_Key = tuple[str, int]


@dataclass
class _Day:
    closed_until: dt.datetime
    aggregates: dict[_Key, Aggregate] = field(default_factory=dict)


class RecentSamples:
    """Per day: the aggregates of its raw samples, per metric type and label set, up to now (settled
    samples kept, the last minutes read afresh).

    Thread-safe; one instance serves every request of a dashboard.
    """

    def __init__(self) -> None:
        self._days: dict[dt.date, _Day] = {}
        self._lock = threading.Lock()

    def aggregates(self, connection: Connection, day: dt.date, now: dt.datetime) -> list[Aggregate]:
        """The aggregates of ``day``'s raw samples recorded before ``now`` (every metric type and label set)."""
        start, end = day_bounds(day)
        closed = min(end, _minute_floor(now - dt.timedelta(seconds=SETTLED_AFTER_S)))
        with self._lock:
            kept = self._days.get(day)
            if kept is None or kept.closed_until > closed:
                kept = _Day(closed_until=start)
            if kept.closed_until < closed:
                kept = _Day(
                    closed, _merged(kept.aggregates.values(), _aggregate(connection, kept.closed_until, closed))
                )
            self._days[day] = kept
            for old in sorted(self._days)[:-MAX_DAYS_KEPT]:
                del self._days[old]
        if closed >= end or closed >= now:
            return list(kept.aggregates.values())
        current = _aggregate(connection, closed, min(end, now + dt.timedelta(microseconds=1)))
        return list(_merged(kept.aggregates.values(), current).values())


def _minute_floor(instant: dt.datetime) -> dt.datetime:
    return instant.replace(second=0, microsecond=0)


def _aggregate(connection: Connection, start: dt.datetime, end: dt.datetime) -> list[Aggregate]:
    if end <= start:
        return []
    return aggregate_raw(connection, start, end, exact_percentiles=False)


def _merged(first: Iterable[Aggregate], second: Iterable[Aggregate]) -> dict[_Key, Aggregate]:
    """Aggregates of both, added up per (metric type, label set); neither input is changed."""
    merged: dict[_Key, Aggregate] = {}
    for aggregate in (*first, *second):
        key = (aggregate.metric_type.value, aggregate.label_set_id)
        found = merged.get(key)
        if found is None:
            merged[key] = aggregate
            continue
        histogram = Histogram()
        histogram += found.histogram
        histogram += aggregate.histogram
        merged[key] = Aggregate(
            metric_type=found.metric_type,
            label_set_id=found.label_set_id,
            count=found.count + aggregate.count,
            sum=found.sum + aggregate.sum,
            min=min(found.min, aggregate.min),
            max=max(found.max, aggregate.max),
            histogram=histogram,
        )
    return merged


@dataclass
class _Maxima:
    covered_from: int
    settled_until: int
    values: dict[tuple[int, int], float] = field(default_factory=dict)


class RecentMaxima:
    """Per label set, the largest raw value of a metric type in each interval of ``width_s`` seconds (for
    charts of the last hours). Intervals that ended more than :data:`SETTLED_AFTER_S` ago are read once and
    kept; each request reads only the newer ones.

    Thread-safe; one instance serves every request of a dashboard.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple[str, int], _Maxima] = {}
        self._lock = threading.Lock()

    def maxima(
        self,
        connection: Connection,
        metric_type: MetricType,
        start: dt.datetime,
        now: dt.datetime,
        width_s: int,
    ) -> dict[tuple[int, int], float]:
        """``{(label set id, interval index): largest value}`` for the intervals from ``start`` to ``now``,
        where interval ``i`` starts ``i * width_s`` seconds after the epoch."""
        first = int(start.timestamp()) // width_s
        settled = int(now.timestamp() - SETTLED_AFTER_S) // width_s
        with self._lock:
            kept = self._kept.get((metric_type.value, width_s))
            if kept is None or kept.settled_until < first or first > settled:
                kept = _Maxima(covered_from=min(first, settled), settled_until=min(first, settled))
            if first < kept.covered_from:
                kept.values.update(_maxima(connection, metric_type, first, kept.covered_from, width_s))
                kept.covered_from = first
            if kept.settled_until < settled:
                kept.values.update(_maxima(connection, metric_type, kept.settled_until, settled, width_s))
                kept.settled_until = settled
            for key in [key for key in kept.values if key[1] < first]:
                del kept.values[key]
            kept.covered_from = max(kept.covered_from, first)
            self._kept[(metric_type.value, width_s)] = kept
            found = dict(kept.values)
        found.update(
            _maxima(connection, metric_type, max(settled, first), int(now.timestamp()) // width_s + 1, width_s)
        )
        return found


def _maxima(
    connection: Connection, metric_type: MetricType, first: int, stop: int, width_s: int
) -> dict[tuple[int, int], float]:
    """The largest value per label set and interval, for intervals ``first`` (inclusive) to ``stop``."""
    if stop <= first:
        return {}
    m = OperationalMetric
    start = dt.datetime.fromtimestamp(first * width_s, dt.UTC)
    end = dt.datetime.fromtimestamp(stop * width_s, dt.UTC)
    bucket = epoch_bucket(connection, m.recorded_at, width_s)
    query = (
        select(m.label_set_id, bucket, func.max(m.value))
        .where(m.metric_type == metric_type, m.recorded_at >= start, m.recorded_at < end)
        .group_by(m.label_set_id, bucket)
    )
    return {(label_set_id, int(index)): value for label_set_id, index, value in connection.execute(query)}


def epoch_bucket(connection: Connection, column: Any, width_s: int) -> Any:
    """Which ``width_s``-second interval since the epoch a timestamp column falls in, as SQL."""
    if connection.dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", column) / width_s), Integer)
    return cast(cast(func.strftime("%s", column), Integer) / width_s, Integer)

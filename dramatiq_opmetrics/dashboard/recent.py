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

from sqlalchemy import Connection

from ..aggregate import Aggregate, aggregate_raw
from ..partitions import day_bounds
from ..sketch import Histogram

#: How long after their ``recorded_at`` samples are taken as all written, and their aggregate kept, in seconds.
SETTLED_AFTER_S = 300
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

"""Time-bucketed series over any time range: one point per bucket and group, exact and current.

:func:`query_series` returns, per metric type, group and bucket of ``step`` (whole minutes, aligned to UTC
multiples of the step), the ``count``, ``sum``, ``min``, ``max``, ``avg`` and ``p50``/``p95``/``p99`` (within
1% relative error, from the buckets' histogram keys, :mod:`~dramatiq_opmetrics.sketch`) of the samples
recorded in ``[start, end)``, and for processing times the error rate of the bucket (``error`` samples /
``processing_time`` samples of the same group). :func:`query_stalled` tells which queues were stalled in
which buckets: they had ready messages (a ``queue_depth`` sample of state ``ready`` above 0) and no message
of theirs finished (no ``processing_time`` sample labelled with the queue).

Where the numbers come from: the recent tier (:mod:`~dramatiq_opmetrics.recent_tier`) for the whole minutes
it covers (its hourly or 10-minute buckets where the step allows), plus the raw rows it does not hold yet:
those not folded (ids above the fold's watermark), the minutes from its cutoff on (the minute in
progress), those older than its floor, and the partial minutes at the range's edges. Every raw row is
counted exactly once: the watermark is read before and after, and the reading is redone if a fold moved it
meanwhile. On PostgreSQL one statement computes the points (single buckets keep their stored percentiles,
others merge their keys) and only the points travel; SQLite merges in Python. Ranges older than the raw
retention (30 days by default) have no points: use :func:`~dramatiq_opmetrics.query.query_daily_series`
for those.

The report, the dashboard's pages, Grafana and alerting can read these points directly: they carry their
bucket's ``start`` and ``end`` and their group's labels, like :class:`~dramatiq_opmetrics.MetricStats`.

Example::

    from datetime import UTC, datetime, timedelta
    from dramatiq_opmetrics.series import query_series

    end = datetime.now(UTC)
    for point in query_series(engine, end - timedelta(hours=1), end, step=timedelta(minutes=1),
                              metric_type="processing_time", group_by=("actor", "queue")):
        print(point.start, point.labels, point.count, point.p95, point.error_rate)
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, Text, cast, select, text, tuple_

from .aggregate import PERCENTILES
from .database import LONG_READ_SETTINGS, collection_paused, connection_for, local_settings
from .labels import make_label_set
from .metric_types import METRIC_TYPE_ENUM_NAME, MetricType
from .models import LABEL_SETS_TABLE, RECENT_HOURS_TABLE, RECENT_TABLE, OperationalMetric, RecentAggregate
from .packed_histograms import HistogramSum
from .query import labels_of_ids, matching_label_sets
from .recent_tier import (
    BUCKET_EPOCH,
    BUCKET_EPOCH_SQL,
    KEY_PARAMETERS,
    MAX_READ_ATTEMPTS,
    SORTED_KEYS_SQL,
    WIDTHS_MINUTES,
    BucketAggregate,
    TierState,
    aggregate_rows,
    aggregate_sql,
    bin_sql,
    bucket_floor,
    days_floor,
    folded_during_reads,
    has_hour_rows,
    keyed_raw_sql,
    picks_sql,
    quantiles_of_keys,
    read_state,
)
from .sketch import histogram_of_key_counts

#: PostgreSQL settings of the series statement, for it only: those of the long reads, and also: it is short
#: enough that parallel workers cost more than they save, and its joins and groupings of intermediate results
#: are hashed whatever their estimated sizes (their estimates are far too small: a nested loop over 100,000
#: groups would take minutes, and sorting tens of thousands of rows to merge them costs twice a hash).
SERIES_SETTINGS = {
    **LONG_READ_SETTINGS,
    "max_parallel_workers_per_gather": "0",
    "enable_nestloop": "off",
    "enable_mergejoin": "off",
    "enable_sort": "off",
}
#: The most buckets one query may return per group (a week of minutes).
MAX_SERIES_BUCKETS = 10_080
_TYPES = {member.value: member for member in MetricType}
#: The label that does not take part in matching errors to the processing times of their group.
_ERROR_ONLY_LABELS = frozenset({"error_type"})


class SeriesPoint(NamedTuple):
    """Statistics of one metric type and group in one bucket (a named tuple: queries return tens of thousands
    of them, and a tuple is made three times faster than a frozen dataclass; ``point._asdict()`` gives a dict).

    Parameters:
      metric_type(MetricType): what the values measure (their unit is the metric type's).
      labels(Mapping[str, str]): the group (the ``group_by`` labels, or the full label set); on PostgreSQL
        the points of one group share one mapping (read it, do not change it).
      start, end(datetime): the bucket, ``[start, end)`` in UTC (clipped to the range asked for).
      count(int), sum(float), min(float), max(float), avg(float): of the values.
      p50, p95, p99(float | None): percentiles within 1% relative error.
      error_rate(float | None): for ``processing_time``: ``error`` samples of the group in the bucket per
        processing time sample (failed attempts / attempts); None for other types.
    """

    metric_type: MetricType
    labels: Mapping[str, str]
    start: dt.datetime
    end: dt.datetime
    count: int  # type: ignore[assignment]  # the field, not tuple.count
    sum: float
    min: float
    max: float
    avg: float
    p50: float | None
    p95: float | None
    p99: float | None
    error_rate: float | None = None


@dataclass(frozen=True)
class StalledBucket:
    """A bucket in which a queue had ready messages and no message of it finished.

    Parameters:
      queue(str): the queue.
      start, end(datetime): the bucket (UTC).
      ready(float): the largest ready count sampled in the bucket.
    """

    queue: str
    start: dt.datetime
    end: dt.datetime
    ready: float


@dataclass
class _Point:
    parts: list[BucketAggregate] = field(default_factory=list)

    def quantiles(self) -> tuple[float | None, ...]:
        if len(self.parts) == 1 and self.parts[0].quantiles is not None:
            return self.parts[0].quantiles
        keys = [key for part in self.parts for key in part.keys]
        return quantiles_of_keys(keys, min(part.min for part in self.parts), max(part.max for part in self.parts))


def check_range(
    start: dt.datetime, end: dt.datetime, step: dt.timedelta, *, max_buckets: int | None = MAX_SERIES_BUCKETS
) -> int:
    """Check the arguments of a series; return the step in whole minutes.

    Raises:
      ValueError: a naive datetime, ``start`` after ``end``, a step that is not a positive whole number of
        minutes, or more than ``max_buckets`` buckets (default :data:`MAX_SERIES_BUCKETS`; None: no limit).
    """
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, dt.datetime):
            raise ValueError(f"{name} must be a datetime, got {value!r}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware (e.g. datetime.now(UTC)), got naive {value.isoformat()}")
    if start > end:
        raise ValueError(f"start ({start.isoformat()}) is after end ({end.isoformat()})")
    if not isinstance(step, dt.timedelta):
        raise ValueError(f"step must be a timedelta of whole minutes, got {step!r}")
    if step <= dt.timedelta(0) or step % dt.timedelta(minutes=1):
        raise ValueError(f"step must be a positive whole number of minutes, got {step}")
    step_minutes = step // dt.timedelta(minutes=1)
    buckets = math.ceil((end - bucket_floor(start, step_minutes)) / step) if end > start else 0
    if max_buckets is not None and buckets > max_buckets:
        raise ValueError(
            f"{buckets:,} buckets of {step} from {start.isoformat()} to {end.isoformat()} is more than the"
            f" {max_buckets:,} allowed: use a larger step or a shorter range"
        )
    return int(step_minutes)


def query_series(
    connectable: Engine | Connection,
    start: dt.datetime,
    end: dt.datetime,
    *,
    step: dt.timedelta,
    metric_type: MetricType | str | None = None,
    labels: Mapping[str, str] | None = None,
    group_by: Sequence[str] | None = None,
    percentiles: bool = True,
) -> list[SeriesPoint]:
    """One point per bucket of ``step`` and group, for the samples recorded in ``[start, end)``.

    Parameters:
      connectable(Engine | Connection): the metrics database.
      start, end(datetime): timezone-aware bounds of ``recorded_at``.
      step(timedelta): the bucket width, a whole number of minutes (at least 1); buckets are aligned to UTC
        multiples of it (the first and last may be partly outside the range: only samples inside count).
      metric_type(MetricType | str | None): only this metric type; default: every type with samples.
      labels(Mapping[str, str] | None): only samples whose labels include all these pairs.
      group_by(Sequence[str] | None): group by these label keys; ``()`` one group per metric type; None
        (default) groups by full label set.
      percentiles(bool): False leaves the points' ``p50``/``p95``/``p99`` None and merges no histogram keys
        (several times faster); default True.

    Returns the points ordered by metric type, labels, then start. A bucket without samples has no point.

    Raises:
      ValueError: see :func:`check_range`; also an unknown metric type, bad labels or ``group_by`` given as a
        string.
    """
    step_minutes = check_range(start, end, step)
    return _query(connectable, start, end, step_minutes, metric_type, labels, group_by, percentiles=percentiles)


def _query(
    connectable: Engine | Connection,
    start: dt.datetime,
    end: dt.datetime,
    step_minutes: int | None,
    metric_type: MetricType | str | None,
    labels: Mapping[str, str] | None,
    group_by: Sequence[str] | None,
    *,
    percentiles: bool = True,
    metric_types: Iterable[MetricType | str] | None = None,
) -> list[SeriesPoint]:
    """The points of buckets of ``step_minutes``, or of the whole range if None (without their percentiles if
    ``percentiles`` is false: they are None, and nothing is sorted for them), of ``metric_type`` or, if
    None, of ``metric_types`` (None: every type)."""
    wanted = None if metric_type is None else _metric_type(metric_type)
    if metric_types is not None and wanted is not None:
        raise ValueError("pass either metric_type or metric_types, not both")
    if isinstance(group_by, str):
        raise ValueError("group_by is a sequence of label keys, e.g. ('actor', 'queue'), not a string")
    label_filter = dict(make_label_set(labels).labels) if labels else {}
    if end == start:
        return []
    types = (
        None if wanted is None else {wanted} | ({MetricType.ERROR} if wanted is MetricType.PROCESSING_TIME else set())
    )
    if metric_types is not None:
        types = {_metric_type(member) for member in metric_types}
        if not types:
            return []
    with connection_for(connectable) as connection:
        label_set_ids = matching_label_sets(connection, label_filter)[0] if label_filter else None
        if label_set_ids is not None and not label_set_ids:
            return []
        keys = None if group_by is None else tuple(group_by)
        step = end - start if step_minutes is None else dt.timedelta(minutes=step_minutes)
        if connection.dialect.name == "postgresql":
            return _query_in_postgres(
                connection, start, end, step_minutes, wanted, types, label_set_ids, keys, percentiles
            )
        groups = _Grouping(connection, keys, step_minutes, wanted, start)
        aggregates = _read(connection, start, end, step_minutes, types, label_set_ids, groups, percentiles)
    return _points(aggregates, groups, start, end, step, percentiles)


def query_totals(
    connectable: Engine | Connection,
    start: dt.datetime,
    end: dt.datetime,
    *,
    metric_type: MetricType | str | None = None,
    labels: Mapping[str, str] | None = None,
    group_by: Sequence[str] | None = None,
    percentiles: bool = True,
    metric_types: Iterable[MetricType | str] | None = None,
) -> list[SeriesPoint]:
    """One point per metric type and group for the samples recorded in ``[start, end)``: the statistics of
    the whole range (each point's ``start`` and ``end`` are the range's), read like :func:`query_series`
    (the recent tier plus the raw rows it does not hold). For ranges of whole UTC days older than the raw
    retention use :func:`~dramatiq_opmetrics.query.query_metrics`.

    Parameters and errors are those of :func:`query_series`, without ``step``; the range may be any length
    (on PostgreSQL the percentiles of its whole hours come from the tier's hour rows, its edges' from the
    keys of buckets and raw rows; SQLite merges the keys of every bucket: prefer the daily rows beyond a few
    days there). With
    ``percentiles=False`` the points' ``p50``/``p95``/``p99`` are None and no keys are merged (several times
    faster: what the alert evaluator reads for rules on counts, sums, averages, extremes and error rates).
    ``metric_types`` instead of ``metric_type``: the points of these types only (the exporter's gauges read
    only the sampled types of the last seconds, not every message's samples; a processing time point then
    has an error rate only if ``error`` is among them).
    """
    check_range(start, end, dt.timedelta(minutes=1), max_buckets=None)
    return _query(
        connectable, start, end, None, metric_type, labels, group_by, percentiles=percentiles, metric_types=metric_types
    )


def _metric_type(metric_type: MetricType | str) -> MetricType:
    try:
        return MetricType(metric_type)
    except ValueError:
        known = ", ".join(member.value for member in MetricType)
        raise ValueError(f"unknown metric type {metric_type!r}; known: {known}") from None


def _ceil(at: dt.datetime, width_minutes: int) -> dt.datetime:
    floor = bucket_floor(at, width_minutes)
    return floor if floor == at else floor + dt.timedelta(minutes=width_minutes)


def tier_layout(
    state: TierState | None, start: dt.datetime, end: dt.datetime, step_minutes: int | None
) -> tuple[list[tuple[int, dt.datetime, dt.datetime]], list[tuple[dt.datetime, dt.datetime, int | None]]]:
    """Where the samples of ``[start, end)`` are: the tier's buckets to read, as ``(width, low, high)`` (buckets
    of that width starting in ``[low, high)``), and the raw rows it does not hold, as ``(low, high,
    above_id)`` (rows recorded in ``[low, high)``, with an id above ``above_id`` if it is not None)."""
    if state is None:
        return [], [(start, end, None)]
    # The tier's part of the range: whole minutes from its floor to its cutoff.
    low = max(_ceil(start, 1), state.floor)
    high = max(min(bucket_floor(end, 1), state.cutoff), low)
    widths = [width for width in WIDTHS_MINUTES[:0:-1] if step_minutes is None or step_minutes % width == 0]
    # Rows recorded from the cutoff on have ids from first_id_from_cutoff() on: found by id, not by time.
    recent = state.first_id_from_cutoff() - 1
    pieces = [
        (piece_low, piece_high, recent if piece_low >= state.cutoff and above_id is None else above_id)
        for piece_low, piece_high, above_id in (
            (start, min(low, end), None),
            (high, end, None),
            (low, high, state.folded_id),
        )
    ]
    return _cover(state, low, high, widths), [piece for piece in pieces if piece[0] < piece[1]]


def _hours_layout(
    state: TierState, start: dt.datetime, end: dt.datetime, hours: tuple[dt.datetime, dt.datetime]
) -> tuple[list[tuple[int, dt.datetime, dt.datetime]], list[tuple[dt.datetime, dt.datetime, int | None]]]:
    """:func:`tier_layout` of the totals of ``[start, end)`` whose whole hours ``[hours)`` come from the hour
    rows (:func:`_hours_span`): the edges before and after them as :func:`tier_layout` lays them out, and
    among the raw pieces the rows of those hours that the hour rows do not hold (those not folded yet)."""
    before, after = tier_layout(state, start, hours[0], None), tier_layout(state, hours[1], end, None)
    return before[0] + after[0], [*before[1], *after[1], (hours[0], hours[1], state.folded_id)]


def _cover(
    state: TierState, low: dt.datetime, high: dt.datetime, widths: Sequence[int]
) -> list[tuple[int, dt.datetime, dt.datetime]]:
    """The fewest tier buckets covering ``[low, high)``: the widest of ``widths`` that is built there, then
    narrower ones at the edges, 1-minute buckets for the rest."""
    if low >= high:
        return []
    for index, width in enumerate(widths):
        inner_low, inner_high = _ceil(low, width), min(bucket_floor(high, width), state.until(width))
        if inner_low < inner_high:
            narrower = widths[index + 1 :]
            return [
                *_cover(state, low, inner_low, narrower),
                (width, inner_low, inner_high),
                *_cover(state, inner_high, high, narrower),
            ]
    return [(1, low, high)]


def _read(
    connection: Connection,
    start: dt.datetime,
    end: dt.datetime,
    step_minutes: int | None,
    types: set[MetricType] | None,
    label_set_ids: set[int] | None,
    groups: _Grouping,
    percentiles: bool,
) -> list[BucketAggregate]:
    """The tier's buckets and the raw rows it does not hold, as minute (or wider) aggregates; the keys of
    tier buckets are read only for the percentiles of points made of several buckets."""
    for _ in range(MAX_READ_ATTEMPTS):
        state = read_state(connection)
        spans, pieces = tier_layout(state, start, end, step_minutes)
        aggregates = _tier(connection, spans, step_minutes, types, label_set_ids, percentiles)
        aggregates += raw_aggregates(connection, pieces, types, label_set_ids)
        groups.learn({aggregate.label_set_id for aggregate in aggregates})
        if percentiles:
            _add_keys(connection, aggregates, groups)
        # A fold committed during the reading would count its rows twice (or not at all): read again.
        if read_state(connection) == state:
            return aggregates
    raise folded_during_reads()


def _tier(
    connection: Connection,
    spans: Sequence[tuple[int, dt.datetime, dt.datetime]],
    step_minutes: int | None,
    types: set[MetricType] | None,
    label_set_ids: set[int] | None,
    percentiles: bool = True,
) -> list[BucketAggregate]:
    tier = RecentAggregate
    found = []
    for width, span_low, span_high in spans:
        # A bucket as wide as the step is a point of its own: its stored percentiles will do.
        with_keys = percentiles and width != step_minutes
        columns = [tier.keys] if with_keys else [tier.p50, tier.p95, tier.p99]
        query = select(
            tier.width_minutes,
            tier.bucket_start,
            cast(tier.metric_type, Text),
            tier.label_set_id,
            tier.count,
            tier.sum,
            tier.min,
            tier.max,
            *columns,
        ).where(tier.width_minutes == width, tier.bucket_start >= span_low, tier.bucket_start < span_high)
        if types is not None:
            query = query.where(tier.metric_type.in_(sorted(types)))
        if label_set_ids is not None:
            query = query.where(tier.label_set_id.in_(sorted(label_set_ids)))
        for row in connection.execute(query):
            aggregate = BucketAggregate(row[0], row[1], _TYPES[row[2]], row[3], row[4], row[5], row[6], row[7])
            if with_keys:
                aggregate.keys = list(row[8])
            elif row[8] is not None:
                aggregate.quantiles = (row[8], row[9], row[10])
            found.append(aggregate)
    return found


#: Tier buckets whose keys are read per statement.
_KEYS_CHUNK = 1000


def _add_keys(connection: Connection, aggregates: list[BucketAggregate], groups: _Grouping) -> None:
    """Read the keys of the tier buckets that share their point with others or lack their percentiles."""
    parts = Counter(point for point in map(groups.point, aggregates) if point is not None)
    wanted: dict[tuple[int, dt.datetime, MetricType, int], BucketAggregate] = {}
    for aggregate in aggregates:
        point = groups.point(aggregate)
        if aggregate.keys or point is None:  # raw rows' aggregates come with their keys
            continue
        if aggregate.quantiles is None or parts[point] > 1:
            key = (aggregate.width_minutes, aggregate.bucket_start, aggregate.metric_type, aggregate.label_set_id)
            wanted[key] = aggregate
    tier = RecentAggregate
    pk = tuple_(tier.width_minutes, tier.bucket_start, tier.metric_type, tier.label_set_id)
    pending = list(wanted)
    for first in range(0, len(pending), _KEYS_CHUNK):
        query = select(tier.width_minutes, tier.bucket_start, tier.metric_type, tier.label_set_id, tier.keys).where(
            pk.in_(pending[first : first + _KEYS_CHUNK])
        )
        for width, bucket_start, metric_type, label_set_id, keys in connection.execute(query):
            found = wanted[(width, bucket_start, MetricType(metric_type), label_set_id)]
            found.keys, found.quantiles = list(keys), None


class _Grouping:
    """Which point (metric type, group, bucket) each aggregate belongs to; label sets read once."""

    def __init__(
        self,
        connection: Connection,
        keys: tuple[str, ...] | None,
        step_minutes: int | None,
        wanted: MetricType | None,
        start: dt.datetime,
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.step_minutes = step_minutes
        self.wanted = wanted
        self.start = start
        self.labels_of: dict[int, Mapping[str, str]] = {}
        self._groups: dict[int, tuple[tuple[str, str], ...]] = {}
        self._buckets: dict[dt.datetime, dt.datetime] = {}

    def learn(self, label_set_ids: set[int]) -> None:
        unknown = label_set_ids - self.labels_of.keys()
        if unknown:
            self.labels_of.update(labels_of_ids(self.connection, unknown))

    def group(self, label_set_id: int) -> tuple[tuple[str, str], ...] | None:
        found = self._groups.get(label_set_id)
        if found is None:
            labels = self.labels_of.get(label_set_id)
            if labels is None:
                return None
            found = self._groups[label_set_id] = _group(labels, self.keys)
        return found

    def bucket(self, start: dt.datetime) -> dt.datetime:
        found = self._buckets.get(start)
        if found is None:
            found = self._buckets[start] = (
                self.start if self.step_minutes is None else bucket_floor(start, self.step_minutes)
            )
        return found

    def point(self, aggregate: BucketAggregate) -> tuple[MetricType, tuple[tuple[str, str], ...], dt.datetime] | None:
        group = self.group(aggregate.label_set_id)
        if group is None:
            return None
        return (aggregate.metric_type, group, self.bucket(aggregate.bucket_start))


def raw_aggregates(
    connection: Connection,
    pieces: Sequence[tuple[dt.datetime, dt.datetime, int | None]],
    types: set[MetricType] | None,
    label_set_ids: set[int] | None,
) -> list[BucketAggregate]:
    """Minute aggregates of the raw rows recorded in each ``[low, high)`` (with an id above the third item,
    if given)."""
    found: list[BucketAggregate] = []
    raw = OperationalMetric.__table__
    for low, high, above_id in pieces:
        query = select(raw.c.recorded_at, raw.c.metric_type, raw.c.label_set_id, raw.c.value).where(
            raw.c.recorded_at >= low, raw.c.recorded_at < high
        )
        if above_id is not None:
            query = query.where(raw.c.id > above_id)
        if types is not None:
            query = query.where(raw.c.metric_type.in_(sorted(types)))
        if label_set_ids is not None:
            query = query.where(raw.c.label_set_id.in_(sorted(label_set_ids)))
        found.extend(aggregate_rows(connection.execute(query).all()))
    return found


@collection_paused()
def _query_in_postgres(
    connection: Connection,
    start: dt.datetime,
    end: dt.datetime,
    step_minutes: int | None,
    wanted: MetricType | None,
    types: set[MetricType] | None,
    label_set_ids: set[int] | None,
    keys: tuple[str, ...] | None,
    percentiles: bool,
) -> list[SeriesPoint]:
    """The points, computed in one statement: PostgreSQL groups the tier's buckets and the raw rows it does
    not hold by point, takes single buckets' stored percentiles and sorts the keys of the others; only the
    points travel.

    The collector is paused for the whole call, the rows let go within it (they go as the call returns):
    back between the rows and the points, it went through every row read (and at times through every object
    of the process, a full collection), then through the rows and points again (GC time of a day's 10-minute
    series 15-26 ms, 9-13 ms so; of the last hour per minute 9.5-10.5 ms, 2-3.3 ms; in turn on the same data).
    """
    for _ in range(MAX_READ_ATTEMPTS):
        state = read_state(connection)
        hours = _hours_span(connection, state, start, end) if step_minutes is None and percentiles else None
        if hours is None:
            spans, pieces = tier_layout(state, start, end, step_minutes)
        else:
            assert state is not None  # an hours span needs the tier
            spans, pieces = _hours_layout(state, start, end, hours)
        statement, params = _series_sql(
            connection, start, step_minutes, wanted, types, label_set_ids, keys, spans, pieces, percentiles, hours
        )
        compiled = text(statement).compile(dialect=connection.dialect)
        driver = connection.connection.driver_connection
        assert driver is not None  # a live connection
        # Tens of thousands of rows: read in binary by the driver itself (a third of the time of text).
        with local_settings(connection, SERIES_SETTINGS), driver.cursor(binary=True) as cursor:
            cursor.execute(compiled.string, compiled.construct_params(params))
            rows = cursor.fetchall()
        if read_state(connection) == state:
            break
    else:
        raise folded_during_reads()
    if hours is not None:
        rows = [_with_histogram_quantiles(row) for row in rows]
    return _points_of_rows(rows, start, end, step_minutes, keys)


def _hours_span(
    connection: Connection, state: TierState | None, start: dt.datetime, end: dt.datetime
) -> tuple[dt.datetime, dt.datetime] | None:
    """The whole UTC hours of ``[start, end)`` that the tier's hour rows hold
    (:class:`~dramatiq_opmetrics.models.RecentHour`), or None if there are none."""
    if state is None or state.days_until is None or not has_hour_rows(connection):
        return None
    low = max(_ceil(start, 60), days_floor(state.floor))
    high = min(bucket_floor(end, 60), bucket_floor(state.days_until, 60))
    return (low, high) if low < high else None


def _with_histogram_quantiles(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row of :func:`_series_sql` with hour rows, its percentiles read from the sum of its hour rows' packed
    histograms and the histogram of its other keys, clamped to its extremes; without those columns."""
    if row[0] is None:  # a group's name
        return row[:12]
    *point, keys, packed = row
    histogram = HistogramSum()
    for data in packed or ():
        histogram.add_packed(data)
    if keys:
        histogram.add_histogram(histogram_of_key_counts(Counter(keys)))
    low, high = point[5], point[6]
    point[7:10] = histogram.quantiles_within(PERCENTILES, low, high)
    return tuple(point)


def _points_of_rows(
    rows: list[tuple[Any, ...]],
    start: dt.datetime,
    end: dt.datetime,
    step_minutes: int | None,
    keys: tuple[str, ...] | None,
) -> list[SeriesPoint]:
    """The points of the rows of :func:`_series_sql`, ordered by metric type, labels, then start."""
    groups: dict[int, tuple[tuple[str, str], ...]] = {}
    labels_of: dict[int, dict[str, str]] = {}
    for row in rows:
        if row[0] is None:  # a group's name
            groups[row[1]] = _group(json.loads(row[11]), keys)
            labels_of[row[1]] = dict(groups[row[1]])
    step = end - start if step_minutes is None else dt.timedelta(minutes=step_minutes)
    buckets: dict[float, tuple[dt.datetime, dt.datetime]] = {}
    series: dict[tuple[str, int], list[SeriesPoint]] = {}
    # Points made as tuples of their fields (tuple.__new__, not the named tuple's own __new__, a Python call):
    # 15% less time to build tens of thousands of them.
    make = tuple.__new__
    for row_type, group, epoch_s, count, total, low, high, p50, p95, p99, errors, _ in rows:
        if row_type is None:
            continue
        bounds = buckets.get(epoch_s)
        if bounds is None:
            bucket = start if step_minutes is None else BUCKET_EPOCH + dt.timedelta(seconds=epoch_s)
            bounds = buckets[epoch_s] = (max(bucket, start), min(bucket + step, end))
        points = series.get((row_type, group))
        if points is None:
            points = series[(row_type, group)] = []
        points.append(
            make(SeriesPoint, (
                _TYPES[row_type], labels_of[group], bounds[0], bounds[1], count, total, low, high,
                total / count, p50, p95, p99, None if errors is None else errors / count,
            ))
        )  # fmt: skip
    order = {member.value: index for index, member in enumerate(MetricType)}
    keys_in_order = sorted(series, key=lambda key: (order[key[0]], sorted(groups[key[1]])))
    # Each series by its points' start (field 2: a bucket's clipped start orders as the bucket does).
    by_start = itemgetter(2)
    return [point for key in keys_in_order for point in sorted(series[key], key=by_start)]


def _series_sql(
    connection: Connection,
    start: dt.datetime,
    step_minutes: int | None,
    wanted: MetricType | None,
    types: set[MetricType] | None,
    label_set_ids: set[int] | None,
    keys: tuple[str, ...] | None,
    spans: Sequence[tuple[int, dt.datetime, dt.datetime]],
    pieces: Sequence[tuple[dt.datetime, dt.datetime, int | None]],
    percentiles: bool = True,
    hours: tuple[dt.datetime, dt.datetime] | None = None,
) -> tuple[str, dict[str, object]]:
    """The statement of :func:`_query_in_postgres` and its parameters. With ``hours`` (totals only), also the
    hour rows starting in ``[hours[0], hours[1])``; each point then comes with two more columns, no
    percentiles: its other parts' keys, and its hour rows' packed histograms."""
    params: dict[str, object] = {**KEY_PARAMETERS, "range_start": start}
    filters = ""
    if types is not None:
        # As the enum itself, not as text: the tier's read index then narrows by metric type too.
        filters += " AND metric_type = ANY(CAST(CAST(:types AS text[]) AS opmetrics_metric_type[]))"
        params["types"] = sorted(member.value for member in types)
    if label_set_ids is not None:
        filters += " AND label_set_id = ANY(CAST(:label_set_ids AS integer[]))"
        params["label_set_ids"] = sorted(label_set_ids)
    # The tier's read index has the metric type before the time (migration 0012): a read of every type names
    # them all (the database's own, so a database not migrated to a newer type is still read), else it would
    # be read by primary key, from the table's rows (a 10-minute one holds 1.4 KB of keys).
    every_type = f" AND metric_type = ANY(enum_range(CAST(NULL AS {METRIC_TYPE_ENUM_NAME})))"
    tier_filters = filters if types is not None else every_type + filters
    # With hour rows every part has their packed histogram too (NULL but in theirs).
    no_packed = ", CAST(NULL AS bytea) AS hp" if hours is not None else ""
    parts = []
    for index, (width, low, high) in enumerate(spans):
        # One scan per span, each ranges of the read index of its width's partition (one per metric type).
        parts.append(
            "SELECT width_minutes AS w, bucket_start AS b, metric_type AS t, label_set_id AS l, count AS c, sum AS s,"
            f" min AS lo, max AS hi, p50, p95, p99, CAST(NULL AS integer[]) AS keys{no_packed}"
            f" FROM {RECENT_TABLE} WHERE width_minutes = {width} AND bucket_start >= :tl{index}"
            f" AND bucket_start < :th{index}{tier_filters}"
        )
        params[f"tl{index}"], params[f"th{index}"] = low, high
    if pieces:
        chosen = []
        for index, (low, high, above_id) in enumerate(pieces):
            # One scan per piece, each planned on its own: by recorded_at, or by id for the rows not folded.
            above = "" if above_id is None else f" AND id > :ri{index}"
            where = f"recorded_at >= :rl{index} AND recorded_at < :rh{index}{above}{filters}"
            chosen.append(keyed_raw_sql(where, with_key=percentiles))
            params[f"rl{index}"], params[f"rh{index}"], params[f"ri{index}"] = low, high, above_id
        raw = " UNION ALL ".join(chosen)
        parts.append(
            "SELECT 0 AS w, bucket_start AS b, metric_type AS t, label_set_id AS l, count AS c, sum AS s, min AS lo,"
            " max AS hi, CAST(NULL AS float8) AS p50, CAST(NULL AS float8) AS p95, CAST(NULL AS float8) AS p99,"
            f" keys{no_packed}"
            # The keys are sorted where they are merged (or not collected at all without percentiles).
            f" FROM ({aggregate_sql(connection, f'({raw}) AS keyed', keys='unsorted' if percentiles else 'none')})"
            " AS minutes"
        )
    if hours is not None:
        parts.append(
            "SELECT -60 AS w, hour AS b, metric_type AS t, label_set_id AS l, count AS c, sum AS s, min AS lo,"
            " max AS hi, CAST(NULL AS float8) AS p50, CAST(NULL AS float8) AS p95, CAST(NULL AS float8) AS p99,"
            f" CAST(NULL AS integer[]) AS keys, histogram_packed AS hp FROM {RECENT_HOURS_TABLE}"
            f" WHERE hour >= :hl AND hour < :hh{filters}"
        )
        params["hl"], params["hh"] = hours
    if keys is None:
        group, rate_group = "labels", "labels - 'error_type'"
    else:
        pairs = ", ".join(f"CAST(:k{index} AS text), labels -> CAST(:k{index} AS text)" for index in range(len(keys)))
        group = rate_group = f"jsonb_strip_nulls(jsonb_build_object({pairs}))"
        params.update({f"k{index}": key for index, key in enumerate(keys)})
    point_start = (
        "CAST(:range_start AS timestamptz)" if step_minutes is None else bin_sql(connection, step_minutes, "b")
    )
    if wanted is None:
        point_types = "TRUE"
    else:
        point_types = "t = CAST(:wanted AS opmetrics_metric_type)"
        params["wanted"] = wanted.value
    # The errors of a processing time point's group are counted apart and joined to it (their rate group is
    # its group): the points' own grouping then has no filters to evaluate per row.
    if wanted in (None, MetricType.PROCESSING_TIME):
        errors = (
            " errors AS MATERIALIZED (SELECT rg AS g, pb, CAST(sum(c) AS bigint) AS e FROM placed"
            "  WHERE t = CAST('error' AS opmetrics_metric_type) GROUP BY rg, pb),"
        )
        error_count = "errors.e"
        error_join = (
            " LEFT JOIN errors ON points.t = CAST('processing_time' AS opmetrics_metric_type)"
            " AND errors.g = points.g AND errors.pb = points.pb"
        )
    else:
        errors, error_count, error_join = "", "NULL", ""
    picks = ", ".join(
        f"CASE WHEN merged.sorted IS NULL AND points.n = 1 THEN points.p{name} ELSE {pick} END AS p{name}"
        for name, pick in zip(
            ("50", "95", "99"),
            picks_sql("merged.sorted", "cardinality(merged.sorted)", "points.lo", "points.hi"),
            strict=True,
        )
    )
    # A tier bucket's keys: one look-up by primary key (a subquery: never a join over the whole tier).
    tier_keys = (
        f"COALESCE(placed.keys, (SELECT tier.keys FROM {RECENT_TABLE} AS tier WHERE tier.width_minutes = placed.w"
        " AND tier.bucket_start = placed.b AND tier.metric_type = placed.t AND tier.label_set_id = placed.l))"
    )
    merged = (
        # Grouped by hashing, each point's keys then sorted on their own (an ordered array_agg would sort every
        # key by point first).
        f" merged AS (SELECT t, g, pb, (SELECT {SORTED_KEYS_SQL.format('k')} FROM unnest(unsorted) AS k) AS sorted"
        "  FROM (SELECT placed.t, placed.g, placed.pb, array_agg(k) AS unsorted"
        "  FROM placed JOIN points ON (points.t, points.g, points.pb) = (placed.t, placed.g, placed.pb)"
        f"   AND (points.n > 1 OR points.p50 IS NULL) AND {'TRUE' if percentiles else 'FALSE'}"
        f"  CROSS JOIN LATERAL unnest({tier_keys}) AS k"
        "  GROUP BY placed.t, placed.g, placed.pb) AS grouped)"
    )
    extra_columns, merged_columns, hour_columns, hour_join, placed_packed = "", picks, "", "", ""
    if hours is not None:
        # Each point's other keys in no order: Python counts them (in C) into a histogram with the hour rows'
        # (a third less time than counting them here).
        merged = (
            " merged AS (SELECT placed.t, placed.g, placed.pb, array_agg(k) AS hk FROM placed"
            f"  CROSS JOIN LATERAL unnest({tier_keys}) AS k WHERE placed.hp IS NULL"
            "  GROUP BY placed.t, placed.g, placed.pb),"
            " packs AS (SELECT t, g, pb, array_agg(hp) AS hp FROM placed WHERE hp IS NOT NULL GROUP BY t, g, pb)"
        )
        extra_columns, merged_columns = ", NULL, NULL", "NULL, NULL, NULL"
        hour_columns, placed_packed = ", merged.hk, packs.hp", ", parts.hp"
        hour_join = " LEFT JOIN packs ON (packs.t, packs.g, packs.pb) = (points.t, points.g, points.pb)"
    statement = (
        f"WITH parts AS MATERIALIZED ({' UNION ALL '.join(parts)}),"
        f" named AS MATERIALIZED (SELECT id, CAST({group} AS text) AS g, CAST({rate_group} AS text) AS rg"
        f"  FROM {LABEL_SETS_TABLE} WHERE id IN (SELECT l FROM parts)),"
        # Groups are numbered: points are grouped and joined by integers, and each name travels once.
        " names AS MATERIALIZED (SELECT name, CAST(row_number() OVER () AS integer) AS number"
        "  FROM (SELECT g AS name FROM named UNION SELECT rg FROM named) AS distinct_names),"
        " sets AS (SELECT named.id, own.number AS g, rate.number AS rg FROM named"
        "  JOIN names AS own ON own.name = named.g JOIN names AS rate ON rate.name = named.rg),"
        " placed AS MATERIALIZED (SELECT parts.w, parts.b, parts.l, parts.t, parts.c, parts.s,"
        f"  parts.lo, parts.hi, parts.p50, parts.p95, parts.p99, parts.keys{placed_packed}, sets.g, sets.rg,"
        f"  {point_start} AS pb"
        "  FROM parts JOIN sets ON sets.id = parts.l),"
        " points AS MATERIALIZED (SELECT t, g, pb, CAST(sum(c) AS bigint) AS c, sum(s) AS s, min(lo) AS lo,"
        "  max(hi) AS hi, count(*) AS n, max(p50) AS p50, max(p95) AS p95, max(p99) AS p99"
        f"  FROM placed WHERE {point_types} GROUP BY t, g, pb),"
        f"{errors}{merged}"
        # The groups' names (rows without a metric type), then the points, in no order: sorting them costs more
        # here than in Python, which sorts each series.
        " SELECT NULL AS t, number AS g, NULL AS epoch, NULL AS c, NULL AS s, NULL AS lo, NULL AS hi, NULL AS p50,"
        f"  NULL AS p95, NULL AS p99, NULL AS e, name{extra_columns} FROM names WHERE number IN (SELECT g FROM points)"
        " UNION ALL SELECT CAST(points.t AS text), points.g,"
        f"  CAST(extract(epoch FROM points.pb - {BUCKET_EPOCH_SQL}) AS float8), points.c, points.s, points.lo,"
        f"  points.hi, {merged_columns}, CASE WHEN points.t = CAST('processing_time' AS opmetrics_metric_type)"
        f"  THEN COALESCE({error_count}, 0) END, NULL{hour_columns}"
        "  FROM points LEFT JOIN merged ON (merged.t, merged.g, merged.pb) = (points.t, points.g, points.pb)"
        f"{error_join}{hour_join}"
    )
    return statement, params


def _points(
    aggregates: list[BucketAggregate],
    groups: _Grouping,
    start: dt.datetime,
    end: dt.datetime,
    step: dt.timedelta,
    percentiles: bool,
) -> list[SeriesPoint]:
    points: dict[tuple[MetricType, tuple[tuple[str, str], ...], dt.datetime], _Point] = {}
    errors: dict[tuple[tuple[tuple[str, str], ...], dt.datetime], int] = {}
    for aggregate in aggregates:
        key = groups.point(aggregate)
        if key is None:
            continue
        if aggregate.metric_type is MetricType.ERROR:
            labels = groups.labels_of[aggregate.label_set_id]
            rate_group = key[1] if groups.keys is not None else _group(labels, None, drop=_ERROR_ONLY_LABELS)
            errors[(rate_group, key[2])] = errors.get((rate_group, key[2]), 0) + aggregate.count
            if groups.wanted is MetricType.PROCESSING_TIME:
                continue
        point = points.get(key)
        if point is None:
            point = points[key] = _Point()
        point.parts.append(aggregate)
    found = []
    chosen_groups: set[tuple[tuple[str, str], ...]] = set()
    for (row_type, chosen, bucket), point in points.items():
        parts = point.parts
        if len(parts) == 1:
            only = parts[0]
            count, total, low, high = only.count, only.sum, only.min, only.max
        else:
            count = sum(part.count for part in parts)
            total = math.fsum(part.sum for part in parts)
            low, high = min(part.min for part in parts), max(part.max for part in parts)
        p50, p95, p99 = point.quantiles() if percentiles else (None, None, None)
        chosen_groups.add(chosen)
        found.append(
            SeriesPoint(
                metric_type=row_type,
                labels=dict(chosen),
                start=max(bucket, start),
                end=min(bucket + step, end),
                count=count,
                sum=total,
                min=low,
                max=high,
                avg=total / count,
                p50=p50,
                p95=p95,
                p99=p99,
                error_rate=errors.get((chosen, bucket), 0) / count if row_type is MetricType.PROCESSING_TIME else None,
            )
        )
    order = {member: index for index, member in enumerate(MetricType)}
    label_order = {chosen: index for index, chosen in enumerate(sorted(chosen_groups, key=sorted))}
    found.sort(key=lambda point: (order[point.metric_type], label_order[tuple(point.labels.items())], point.start))
    return found


def _group(
    labels: Mapping[str, str], keys: tuple[str, ...] | None, drop: frozenset[str] = frozenset()
) -> tuple[tuple[str, str], ...]:
    if keys is None:
        return tuple(sorted((key, value) for key, value in labels.items() if key not in drop))
    return tuple((key, labels[key]) for key in keys if key in labels)


def query_stalled(
    connectable: Engine | Connection,
    start: dt.datetime,
    end: dt.datetime,
    *,
    step: dt.timedelta,
    queue: str | None = None,
) -> list[StalledBucket]:
    """The buckets of ``step`` in ``[start, end)`` in which a queue was stalled: it had ready messages (a
    ``queue_depth`` sample of state ``ready`` above 0) and no message of it finished (no ``processing_time``
    sample labelled with the queue). Ordered by queue, then start.

    Parameters:
      connectable(Engine | Connection): the metrics database.
      start, end(datetime), step(timedelta): as for :func:`query_series`.
      queue(str | None): only this queue.

    Raises:
      ValueError: as :func:`query_series`.
    """
    only = {"queue": queue} if queue is not None else {}
    with connection_for(connectable) as connection:
        depths = query_series(
            connection,
            start,
            end,
            step=step,
            metric_type=MetricType.QUEUE_DEPTH,
            labels={**only, "state": "ready"},
            group_by=("queue",),
        )
        finished = {
            (point.labels.get("queue"), point.start)
            for point in _query(
                connection, start, end, check_range(start, end, step), MetricType.PROCESSING_TIME, only or None,
                ("queue",), percentiles=False,
            )
        }  # fmt: skip
    stalled = [
        StalledBucket(queue=point.labels["queue"], start=point.start, end=point.end, ready=point.max)
        for point in depths
        if "queue" in point.labels and point.max > 0 and (point.labels["queue"], point.start) not in finished
    ]
    stalled.sort(key=lambda bucket: (bucket.queue, bucket.start))
    return stalled

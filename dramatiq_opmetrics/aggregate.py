"""Aggregates of raw rows: count, sum, min, max, exact percentiles and histogram per metric type and label set.

The rollup stores these per day; the query API computes them for the days not rolled up yet. Two paths give
the same results:

- In PostgreSQL (the default there), in two scans and without sorting a whole day: the first groups the rows
  by (metric type, label set, histogram bucket), computing each bucket's count, sum, min and max, with the
  bucket key computed in SQL exactly as ``ddsketch`` does (:mod:`~dramatiq_opmetrics.sketch`). The buckets
  locate the rank of each wanted percentile; a bucket's rows form one interval of values ``[min, max]``
  because the key grows with the value, so the second scan fetches only the order statistics wanted, from
  the few buckets that hold them. This is about twice as fast as ``percentile_cont`` (one sort per label set)
  plus a separate histogram query. Without exact percentiles (the query API's days not rolled up yet) one
  scan groups by metric type and label set only, collecting the bucket keys in an array counted in Python:
  half the time of grouping by bucket.
- In Python (SQLite): the rows are read in value order and aggregated as they stream.

Exact percentiles interpolate linearly between the two nearest ranks, like PostgreSQL's
``percentile_cont`` and numpy's default ``percentile``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, func, select, text

from .metric_types import METRIC_TYPE_ENUM_NAME, MetricType
from .models import RAW_TABLE, OperationalMetric
from .partitions import DEFAULT_PARTITION, day_bounds, default_partition_counts, list_partitions
from .sketch import (
    KEY_MULTIPLIER,
    LN_2,
    MIN_INDEXABLE_VALUE,
    NEGATIVE_KEY_BASE,
    Histogram,
    histogram_of_key_counts,
    histogram_of_keys,
)
from .value_lists import in_values

#: The percentiles stored exactly in each daily row (p50, p95, p99), as fractions.
PERCENTILES = (0.5, 0.95, 0.99)


@dataclass
class Aggregate:
    """The aggregate of the raw rows of one metric type and label set over a time range.

    Parameters:
      metric_type(MetricType): what the values measure.
      label_set_id(int): the label set (``opmetrics_label_sets.id``).
      count(int): number of values.
      sum(float): their sum; ``min``, ``max``: their extremes (same unit as the values).
      histogram(Histogram): their histogram.
      percentiles(tuple | None): exact values at :data:`PERCENTILES`, when asked for.
    """

    metric_type: MetricType
    label_set_id: int
    count: int
    sum: float
    min: float
    max: float
    histogram: Histogram = field(default_factory=Histogram)
    percentiles: tuple[float, ...] | None = None

    @property
    def avg(self) -> float:
        """The mean value."""
        return self.sum / self.count


def exact_quantile(sorted_values: Sequence[float], fraction: float) -> float:
    """The value at ``fraction`` of ``sorted_values``, interpolated as ``percentile_cont`` does."""
    position = fraction * (len(sorted_values) - 1)
    first, second = math.floor(position), math.ceil(position)
    if first == second:
        return sorted_values[first]
    low = sorted_values[first]
    return low + (position - first) * (sorted_values[second] - low)


def aggregate_raw(
    connection: Connection,
    start: dt.datetime,
    end: dt.datetime,
    *,
    metric_type: MetricType | None = None,
    label_set_ids: Collection[int] | None = None,
    exact_percentiles: bool = True,
    in_database: bool | None = None,
    above_id: int | None = None,
) -> list[Aggregate]:
    """Aggregate the raw rows recorded in ``[start, end)`` per (metric type, label set).

    Parameters:
      connection(Connection): the metrics database.
      start, end(datetime): timezone-aware bounds of ``recorded_at``.
      metric_type(MetricType | None): only this metric type.
      label_set_ids(Collection[int] | None): only these label sets.
      exact_percentiles(bool): compute :attr:`Aggregate.percentiles` (costs a second scan on PostgreSQL).
      in_database(bool | None): compute in SQL (PostgreSQL only) or in Python; default: SQL on PostgreSQL.
      above_id(int | None): only the rows with an id above this (found by the primary key: the rows the
        recent tier has not folded yet).
    """
    if in_database is None:
        in_database = connection.dialect.name == "postgresql"
    if in_database and connection.dialect.name != "postgresql":
        raise ValueError("aggregating in the database needs PostgreSQL; pass in_database=False")
    if label_set_ids is not None and not label_set_ids:
        return []
    if in_database:
        return _aggregate_in_postgres(connection, start, end, metric_type, label_set_ids, exact_percentiles, above_id)
    return _aggregate_in_python(connection, start, end, metric_type, label_set_ids, exact_percentiles, above_id)


def _aggregate_in_python(
    connection: Connection,
    start: dt.datetime,
    end: dt.datetime,
    metric_type: MetricType | None,
    label_set_ids: Collection[int] | None,
    exact_percentiles: bool,
    above_id: int | None = None,
) -> list[Aggregate]:
    raw = OperationalMetric.__table__
    query = (
        select(raw.c.metric_type, raw.c.label_set_id, raw.c.value)
        .where(raw.c.recorded_at >= start, raw.c.recorded_at < end)
        .order_by(raw.c.metric_type, raw.c.label_set_id, raw.c.value)
    )
    if above_id is not None:
        query = query.where(raw.c.id > above_id)
    if metric_type is not None:
        query = query.where(raw.c.metric_type == MetricType(metric_type))
    if label_set_ids is not None:
        query = query.where(in_values(raw.c.label_set_id, sorted(label_set_ids)))
    aggregates = []
    rows = connection.execute(query)
    for (group_type, label_set_id), group in itertools.groupby(rows, key=lambda row: (row[0], row[1])):
        values = [row[2] for row in group]
        aggregates.append(
            Aggregate(
                metric_type=MetricType(group_type),
                label_set_id=label_set_id,
                count=len(values),
                sum=math.fsum(values),
                min=values[0],
                max=values[-1],
                histogram=Histogram.of(values),
                percentiles=tuple(exact_quantile(values, q) for q in PERCENTILES) if exact_percentiles else None,
            )
        )
    return aggregates


#: The SQL of the bucket key of a positive value ``{}``: the operations of ``ddsketch``'s
#: ``LogarithmicMapping.key`` in the same order, with ``:ln_2`` and ``:multiplier`` bound to
#: :data:`~dramatiq_opmetrics.sketch.LN_2` and :data:`~dramatiq_opmetrics.sketch.KEY_MULTIPLIER`.
BUCKET_KEY_SQL = "ceil(ln({}) / CAST(:ln_2 AS float8) * CAST(:multiplier AS float8))::integer"

#: The SQL of the stored key of ``value`` (:func:`~dramatiq_opmetrics.sketch.signed_bucket_key`), with
#: ``:min_indexable``, ``:ln_2``, ``:multiplier`` and ``:base`` bound (:data:`STORED_KEY_PARAMETERS`).
STORED_KEY_SQL = (
    f"CASE WHEN value > :min_indexable THEN {BUCKET_KEY_SQL.format('value')}"
    f" WHEN value < -CAST(:min_indexable AS float8) THEN :base - {BUCKET_KEY_SQL.format('-value')} END"
)
#: The parameters of :data:`STORED_KEY_SQL`.
STORED_KEY_PARAMETERS: dict[str, object] = {
    "min_indexable": MIN_INDEXABLE_VALUE,
    "ln_2": LN_2,
    "multiplier": KEY_MULTIPLIER,
    "base": NEGATIVE_KEY_BASE,
}


@dataclass
class _Bucket:
    key: int | None  # None: the zero bucket; below NEGATIVE_KEY_BASE / 2: a negative bucket
    count: int
    sum: float
    min: float
    max: float


def _raw_rows(
    connection: Connection,
    start: dt.datetime,
    end: dt.datetime,
    metric_type: MetricType | None,
    label_set_ids: Collection[int] | None,
    above_id: int | None = None,
) -> tuple[str, dict[str, object]]:
    """SQL selecting ``metric_type, label_set_id, value`` of the raw rows wanted, and its parameters.

    A whole day with a partition reads the partition without a per-row time filter, plus the day's rows in
    the default partition.
    """
    conditions = []
    params: dict[str, object] = {"start": start, "end": end}
    if metric_type is not None:
        conditions.append(f"metric_type = CAST(:metric_type AS {METRIC_TYPE_ENUM_NAME})")
        params["metric_type"] = MetricType(metric_type).value
    if label_set_ids is not None:
        conditions.append("label_set_id = ANY(CAST(:label_set_ids AS integer[]))")
        params["label_set_ids"] = sorted(label_set_ids)
    if above_id is not None:
        conditions.append("id > :above_id")
        params["above_id"] = above_id
    in_range = ["recorded_at >= :start", "recorded_at < :end"]
    columns = "SELECT metric_type, label_set_id, value FROM"
    day = start.astimezone(dt.UTC).date()
    partition = list_partitions(connection).get(day) if (start, end) == day_bounds(day) else None
    if partition is None:
        return f"{columns} {RAW_TABLE} WHERE {' AND '.join(in_range + conditions)}", params
    whole = f"{columns} {partition}" + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
    stranded = f"{columns} {DEFAULT_PARTITION} WHERE {' AND '.join(in_range + conditions)}"
    has_stranded = connection.execute(text(f"SELECT EXISTS ({stranded})"), params).scalar_one()
    return (f"{whole} UNION ALL {stranded}" if has_stranded else whole), params


def _aggregate_in_postgres(
    connection: Connection,
    start: dt.datetime,
    end: dt.datetime,
    metric_type: MetricType | None,
    label_set_ids: Collection[int] | None,
    exact_percentiles: bool,
    above_id: int | None = None,
) -> list[Aggregate]:
    source, params = _raw_rows(connection, start, end, metric_type, label_set_ids, above_id)
    params.update(STORED_KEY_PARAMETERS)
    if not exact_percentiles:
        return _histograms_in_postgres(connection, source, params)
    bucket_rows = connection.execute(
        text(
            "SELECT metric_type::text, label_set_id, key, count(*), sum(value), min(value), max(value)"
            f" FROM (SELECT metric_type, label_set_id, value, {STORED_KEY_SQL} AS key FROM ({source}) AS raw)"
            " AS bucketed"
            " GROUP BY metric_type, label_set_id, key"
        ),
        params,
    )
    groups: dict[tuple[str, int], list[_Bucket]] = {}
    for group_type, label_set_id, bucket_key, count, total, low, high in bucket_rows:
        if math.isnan(low) or math.isnan(high):
            continue
        groups.setdefault((group_type, label_set_id), []).append(_Bucket(bucket_key, count, total, low, high))
    aggregates = []
    for (group_type, label_set_id), buckets in sorted(groups.items()):
        buckets.sort(key=lambda bucket: bucket.min)
        histogram = histogram_of_key_counts({bucket.key: bucket.count for bucket in buckets})
        aggregates.append(
            Aggregate(
                metric_type=MetricType(group_type),
                label_set_id=label_set_id,
                count=sum(bucket.count for bucket in buckets),
                sum=math.fsum(bucket.sum for bucket in buckets),
                min=buckets[0].min,
                max=buckets[-1].max,
                histogram=histogram,
            )
        )
    if exact_percentiles and aggregates:
        # A second statement: rows committed in between (a late sample) may shift an order statistic by one;
        # the day's rolled-up count then differs from its raw count and the next rollup redoes the day.
        _add_exact_percentiles(connection, aggregates, groups, source, params)
    return aggregates


def _histograms_in_postgres(connection: Connection, source: str, params: dict[str, object]) -> list[Aggregate]:
    """Aggregates without exact percentiles: one group per metric type and label set, the bucket key of each
    value collected in an array and counted in Python. Twice as fast as grouping by bucket in SQL (a hash
    table of one entry per bucket), which only the exact percentiles need (they locate ranks by bucket)."""
    rows = connection.execute(
        text(
            "SELECT metric_type::text, label_set_id, count(*), sum(value), min(value), max(value),"
            f" array_agg({STORED_KEY_SQL})"
            f" FROM ({source}) AS raw WHERE value <> CAST('NaN' AS float8) GROUP BY metric_type, label_set_id"
        ),
        params,
    )
    aggregates = []
    for group_type, label_set_id, count, total, low, high, keys in sorted(rows, key=lambda row: (row[0], row[1])):
        histogram = histogram_of_keys(keys)
        aggregates.append(Aggregate(MetricType(group_type), label_set_id, count, total, low, high, histogram))
    return aggregates


def _add_exact_percentiles(
    connection: Connection,
    aggregates: list[Aggregate],
    groups: dict[tuple[str, int], list[_Bucket]],
    source: str,
    params: dict[str, object],
) -> None:
    """Find the order statistics each percentile needs; fetch those not given by a bucket's min or max."""
    known: dict[tuple[str, int, int], float] = {}
    wanted: dict[tuple[str, int, int], tuple[_Bucket, int]] = {}
    for aggregate in aggregates:
        group = (aggregate.metric_type.value, aggregate.label_set_id)
        for rank in _ranks_needed(aggregate.count):
            bucket, rank_in_bucket = _locate(groups[group], rank)
            if rank_in_bucket == 0:
                known[(*group, rank)] = bucket.min
            elif rank_in_bucket == bucket.count - 1:
                known[(*group, rank)] = bucket.max
            else:
                wanted[(*group, rank)] = (bucket, rank_in_bucket)
    if wanted:
        targets = list(wanted.items())
        # The planner tends to sort the whole day for a merge join here; a hash join reads it once.
        merge_join = connection.execute(text("SELECT current_setting('enable_mergejoin')")).scalar_one()
        connection.execute(text("SET LOCAL enable_mergejoin = off"))
        rows = connection.execute(
            text(
                "SELECT t.i, (array_agg(m.value ORDER BY m.value))[t.r + 1]"
                f" FROM ({source}) AS m JOIN unnest(CAST(:ids AS integer[]), CAST(:types AS text[]),"
                " CAST(:sets AS integer[]), CAST(:lows AS float8[]), CAST(:highs AS float8[]),"
                " CAST(:ranks AS integer[])) AS t(i, metric_type, label_set_id, low, high, r)"
                f" ON m.metric_type = CAST(t.metric_type AS {METRIC_TYPE_ENUM_NAME})"
                " AND m.label_set_id = t.label_set_id AND m.value BETWEEN t.low AND t.high"
                " WHERE m.value BETWEEN :lowest AND :highest"
                " GROUP BY t.i, t.r"
            ),
            {
                **params,
                "ids": list(range(len(targets))),
                "types": [key[0] for key, _ in targets],
                "sets": [key[1] for key, _ in targets],
                "lows": [bucket.min for _, (bucket, _) in targets],
                "highs": [bucket.max for _, (bucket, _) in targets],
                "ranks": [rank_in_bucket for _, (_, rank_in_bucket) in targets],
                "lowest": min(bucket.min for _, (bucket, _) in targets),
                "highest": max(bucket.max for _, (bucket, _) in targets),
            },
        ).all()
        connection.execute(text("SELECT set_config('enable_mergejoin', :value, true)"), {"value": merge_join})
        for index, value in rows:
            known[targets[index][0]] = value
    for aggregate in aggregates:
        group = (aggregate.metric_type.value, aggregate.label_set_id)
        aggregate.percentiles = tuple(
            _interpolate(aggregate.count, q, lambda rank: known[(*group, rank)])  # noqa: B023
            for q in PERCENTILES
        )


def _ranks_needed(count: int) -> set[int]:
    ranks: set[int] = set()
    for fraction in PERCENTILES:
        position = fraction * (count - 1)
        ranks.update((math.floor(position), math.ceil(position)))
    return ranks


def _locate(buckets: Iterable[_Bucket], rank: int) -> tuple[_Bucket, int]:
    below = 0
    for bucket in buckets:
        if rank < below + bucket.count:
            return bucket, rank - below
        below += bucket.count
    raise AssertionError(f"rank {rank} beyond the buckets")  # pragma: no cover


def _interpolate(count: int, fraction: float, value_at: Callable[[int], float]) -> float:
    position = fraction * (count - 1)
    first, second = math.floor(position), math.ceil(position)
    low = value_at(first)
    if first == second:
        return low
    high = value_at(second)
    return low + (position - first) * (high - low)


def raw_count(connection: Connection, day: dt.date) -> int:
    """The number of raw rows recorded on UTC ``day``.

    On PostgreSQL a day partition is counted whole (faster than filtering its rows by time), plus the day's
    rows in the default partition.
    """
    start, end = day_bounds(day)
    partition = list_partitions(connection).get(day)
    if partition is None:
        raw = OperationalMetric.__table__
        query = select(func.count()).select_from(raw).where(raw.c.recorded_at >= start, raw.c.recorded_at < end)
        return int(connection.execute(query).scalar_one())
    in_default = text(f"SELECT count(*) FROM {DEFAULT_PARTITION} WHERE recorded_at >= :start AND recorded_at < :end")
    count = connection.execute(text(f"SELECT count(*) FROM {partition}")).scalar_one()
    return int(count) + int(connection.execute(in_default, {"start": start, "end": end}).scalar_one())


def raw_counts_by_day(connection: Connection) -> dict[dt.date, int]:
    """The number of raw rows per UTC day, for every day that has some.

    On PostgreSQL each day partition is counted whole (no per-row date arithmetic) and the default partition
    is grouped by day.
    """
    counts: dict[dt.date, int] = {}
    if connection.dialect.name == "postgresql":
        for day, partition in list_partitions(connection).items():
            count = connection.execute(text(f"SELECT count(*) FROM {partition}")).scalar_one()
            if count:
                counts[day] = int(count)
        for day, count in default_partition_counts(connection).items():
            counts[day] = counts.get(day, 0) + count
    else:
        raw = OperationalMetric.__table__
        day_text = func.substr(raw.c.recorded_at, 1, 10)
        for day_string, count in connection.execute(select(day_text, func.count()).group_by(day_text)):
            counts[dt.date.fromisoformat(day_string)] = int(count)
    return dict(sorted(counts.items()))

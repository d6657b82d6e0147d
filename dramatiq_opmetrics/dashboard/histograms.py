"""Merged histograms of rolled-up days per label set, merged in the database, and a fast way to read them.

The overview shows a p95 over up to 365 days for every actor and queue. Reading that many daily histograms
into Python (as :func:`~dramatiq_opmetrics.query_metrics` does) takes seconds; PostgreSQL merges them
faster, and the dashboard keeps the result (:mod:`~dramatiq_opmetrics.dashboard.kept`). The merged
histograms are the query API's own :class:`~dramatiq_opmetrics.sketch.Histogram`, read as its ``quantile``
reads them: the same percentiles as the query API's, from the same buckets.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, func, select, text

from ..metric_types import MetricType
from ..models import DAILY_TABLE, LabelSet, OperationalMetricDaily
from ..sketch import MAPPING, Histogram


@dataclass(frozen=True)
class MergedSpan:
    """The merged histograms of one metric type over a span of rolled-up days, and the labels, by labels key."""

    labels: dict[str, dict[str, str]]
    histograms: dict[str, Histogram]


def quantile(histogram: Histogram, fraction: float) -> float | None:
    """``histogram.quantile(fraction)``, read without building a ddsketch store (about 50 times faster).

    The same reading as ddsketch's ``get_quantile_value``: the bucket holding rank ``fraction * (count - 1)``,
    at the mapping's representative value of that bucket. Histograms with negative values (which samples
    never have) are read by :meth:`Histogram.quantile` itself.
    """
    if histogram.negative_bins and any(histogram.negative_bins.values()):
        return histogram.quantile(fraction)
    if not 0 <= fraction <= 1:
        raise ValueError(f"a quantile fraction must be within [0, 1], got {fraction!r}")
    total = histogram.zero_count + sum(histogram.bins.values())
    if total == 0:
        return None
    rank = fraction * (total - 1)
    if rank < histogram.zero_count:
        return 0.0
    running = float(histogram.zero_count)
    for key in sorted(histogram.bins):
        running += histogram.bins[key]
        if running > rank:
            return _bucket_value(key)
    return _bucket_value(max(histogram.bins))


@functools.lru_cache(maxsize=8192)
def _bucket_value(key: int) -> float:
    """The mapping's representative value of bucket ``key`` (few keys occur, and ddsketch computes it slowly)."""
    return float(MAPPING.value(key))


def _span(
    metric_type: MetricType, first_day: dt.date, last_day: dt.date, labels_keys: tuple[str, ...] | None
) -> list[ColumnElement[bool]]:
    d = OperationalMetricDaily
    conditions = [d.metric_type == metric_type, d.date >= first_day, d.date <= last_day]
    if labels_keys is not None:
        conditions.append(d.labels_key.in_(labels_keys))
    return conditions


def daily_fingerprint(
    connection: Connection,
    metric_types: Sequence[MetricType],
    first_day: dt.date,
    last_day: dt.date,
    labels_keys: Sequence[str] | None = None,
) -> tuple[object, ...]:
    """What changes when the daily rows of a span change: how many, their samples, the latest ``rolled_up_at``."""
    d = OperationalMetricDaily
    query = select(func.count(), func.sum(d.sample_count), func.max(d.rolled_up_at)).where(
        d.metric_type.in_(list(metric_types)), d.date >= first_day, d.date <= last_day
    )
    if labels_keys is not None:
        query = query.where(d.labels_key.in_(list(labels_keys)))
    return tuple(connection.execute(query).one())


def merge_histograms(
    connection: Connection,
    metric_type: MetricType,
    first_day: dt.date,
    last_day: dt.date,
    labels_keys: Sequence[str] | None = None,
) -> MergedSpan:
    """The daily histograms of ``metric_type`` from ``first_day`` to ``last_day`` merged per label set (of
    every label set, or of those of ``labels_keys``); in SQL on PostgreSQL (samples are never negative, so
    only positive buckets and zeros are read there), in Python elsewhere."""
    labels: dict[str, dict[str, str]] = {}
    histograms: dict[str, Histogram] = {}
    d = OperationalMetricDaily
    span = _span(metric_type, first_day, last_day, None if labels_keys is None else tuple(labels_keys))
    if labels_keys is not None and not labels_keys:
        return MergedSpan(labels, histograms)
    if connection.dialect.name != "postgresql":
        # SQLite (the embedded default, small): merge in Python.
        for labels_key, row_labels, stored in connection.execute(
            select(d.labels_key, d.labels, d.histogram).where(*span)
        ):
            labels.setdefault(labels_key, dict(row_labels))
            if stored is not None:
                histograms.setdefault(labels_key, Histogram()).__iadd__(Histogram.from_json(stored))
        return MergedSpan(labels, histograms)
    parameters: dict[str, object] = {"metric_type": metric_type.value, "first_day": first_day, "last_day": last_day}
    where = "metric_type = CAST(:metric_type AS opmetrics_metric_type) AND date BETWEEN :first_day AND :last_day"
    if labels_keys is not None:
        where += " AND labels_key = ANY(CAST(:labels_keys AS text[]))"
        parameters["labels_keys"] = list(labels_keys)
    bins: dict[str, Counter[int]] = {}
    for labels_key, bucket, count in connection.execute(
        text(
            f"SELECT labels_key, CAST(b.key AS integer), sum(CAST(b.value AS bigint)) FROM {DAILY_TABLE},"
            f" jsonb_each_text(histogram->'bins') AS b WHERE {where} GROUP BY 1, 2"
        ),
        parameters,
    ):
        bins.setdefault(labels_key, Counter())[bucket] = int(count)
    for labels_key, zero_count in connection.execute(
        text(
            f"SELECT labels_key, sum(CAST(histogram->>'zero_count' AS bigint)) FROM {DAILY_TABLE}"
            f" WHERE {where} AND histogram IS NOT NULL GROUP BY 1"
        ),
        parameters,
    ):
        histograms[labels_key] = Histogram(bins=bins.get(labels_key, Counter()), zero_count=int(zero_count or 0))
    # Label sets are never deleted, so the small label-set table names every key; daily rows are the fallback.
    keys = sorted(histograms)
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        query = select(LabelSet.labels_key, LabelSet.labels).where(LabelSet.labels_key.in_(chunk))
        labels.update({labels_key: dict(row_labels) for labels_key, row_labels in connection.execute(query)})
    for labels_key in (key for key in keys if key not in labels):
        fallback = select(d.labels).where(*span, d.labels_key == labels_key).limit(1)
        labels[labels_key] = dict(connection.execute(fallback).scalar_one())
    return MergedSpan(labels, histograms)

"""The values of alert rules: each rule's value per group over its window, read through the query API.

:func:`read_values` computes every rule's value per group (the rule's ``group_by`` labels) over
``[now - window, now)`` with :func:`~dramatiq_opmetrics.series.query_series`,
:func:`~dramatiq_opmetrics.series.query_totals` and :func:`~dramatiq_opmetrics.series.query_stalled` (the
recent tier plus the raw rows it does not hold yet, so values are current):

- ``error_rate``: failed attempts per attempt (``error`` samples per ``processing_time`` sample of the
  group); ``throughput``: messages finished per second; ``stalled``: 1 for a queue that had ready messages
  and finished none in the window's last whole minute, 0 for a queue sampled then and not stalled (a group
  of several queues takes the largest); a metric type: its ``statistic``.
- Rules reading the same metric type share one query: on a whole minute, one per-minute series of the type
  over the longest window of its rules, merged per label set and window once, then per rule's labels and
  groups in Python (exact for counts, sums, averages, extremes and error rates); percentiles come from one
  query per metric type and window (each label set's own histogram) when each of a rule's groups is one
  label set, else from a query of the rule's own. The queries run on :data:`READ_CONNECTIONS` connections
  at once, the rules sharing a query on the same one.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from .alert_rules import Rule
from .metric_types import MetricType
from .recent_tier import bucket_floor
from .series import SeriesPoint, query_series, query_stalled, query_totals

#: How many connections an evaluation reads on at once (rules sharing a query read it on one).
READ_CONNECTIONS = 2
#: A group: the rule's ``group_by`` labels that the samples carry, in order.
Group = tuple[tuple[str, str], ...]
#: The labels of a message's samples (``processing_time``, ``wait_time``, ``error``).
MESSAGE_LABELS = ("actor", "queue")
#: The statistics read from the percentiles of a group's merged histogram.
_PERCENTILES = frozenset({"p50", "p95", "p99"})


@dataclass
class _Merged:
    """The statistics of a group's label sets together (everything but percentiles merges exactly)."""

    count: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    errors: float = 0.0
    points: list[SeriesPoint] = field(default_factory=list)

    def add(self, point: SeriesPoint) -> None:
        self.count += point.count
        self.sum += point.sum
        self.min = min(self.min, point.min)
        self.max = max(self.max, point.max)
        self.errors += (point.error_rate or 0.0) * point.count
        self.points.append(point)


@dataclass
class _Reader:
    """Reads the values of rules: one query per metric type and window for every rule that reads it, the
    label sets' points merged per rule in Python (exact for counts, sums, averages, extremes and error
    rates; percentiles come from one label set's own histogram when each group has one, else from a
    query of the rule's own)."""

    connection: Connection
    now: dt.datetime
    #: The longest window of a rule per metric type read, for :meth:`_minutes`.
    longest: Mapping[str, dt.timedelta] = field(default_factory=dict)
    cache: dict[tuple[Any, ...], list[SeriesPoint]] = field(default_factory=dict)

    def _query_labels(self, metric_type: str) -> tuple[str, ...] | None:
        # A message's labels: so its errors (labelled error_type and outcome too) count with it.
        return MESSAGE_LABELS if metric_type == MetricType.PROCESSING_TIME.value else None

    def _minutes(self, metric_type: str, window: dt.timedelta) -> list[SeriesPoint]:
        """The points of every label set of ``metric_type`` in the window, without percentiles: when ``now``
        is a whole minute, from one per-minute series of the longest window of the metric type (each
        window is then whole minutes, and every rule reading the type shares one query); else of the
        window itself."""
        longest = self.longest.get(metric_type, window)
        if bucket_floor(self.now, 1) != self.now or window > longest:
            return self._label_sets(metric_type, window, False)
        key = ("minutes", metric_type, longest)
        if key not in self.cache:
            self.cache[key] = query_series(
                self.connection,
                self.now - longest,
                self.now,
                step=dt.timedelta(minutes=1),
                metric_type=metric_type,
                group_by=self._query_labels(metric_type),
                percentiles=False,
            )
        window_key = ("window", metric_type, window)
        if window_key not in self.cache:
            # The window's minutes merged per label set once, for every rule reading this window.
            start = self.now - window
            merged: dict[tuple[tuple[str, str], ...], _Merged] = {}
            for point in self.cache[key]:
                if point.start >= start:
                    labels = tuple(point.labels.items())
                    if labels not in merged:
                        merged[labels] = _Merged()
                    merged[labels].add(point)
            self.cache[window_key] = [
                parts.points[0]._replace(
                    start=start,
                    count=parts.count,
                    sum=parts.sum,
                    min=parts.min,
                    max=parts.max,
                    avg=parts.sum / parts.count,
                    error_rate=None if parts.points[0].error_rate is None else round(parts.errors) / parts.count,
                )
                for parts in merged.values()
            ]
        return self.cache[window_key]

    def _label_sets(self, metric_type: str, window: dt.timedelta, percentiles: bool) -> list[SeriesPoint]:
        """The points of every label set of ``metric_type`` in the window (with percentiles if asked)."""
        key = ("label sets", metric_type, window)
        cached = self.cache.get((*key, True)) or self.cache.get((*key, percentiles))
        if cached is None:
            cached = self.cache[(*key, percentiles)] = query_totals(
                self.connection,
                self.now - window,
                self.now,
                metric_type=metric_type,
                group_by=self._query_labels(metric_type),
                percentiles=percentiles,
            )
        return cached

    def _groups(self, rule: Rule, metric_type: str, percentiles: bool) -> dict[Group, _Merged]:
        groups: dict[Group, _Merged] = {}
        wanted = rule.labels.items()
        if percentiles:
            points = self._label_sets(metric_type, rule.window, True)
        else:
            points = self._minutes(metric_type, rule.window)
        for point in points:
            if wanted <= point.labels.items():
                group = _group(point, rule)
                merged = groups.get(group)
                if merged is None:
                    merged = groups[group] = _Merged()
                merged.add(point)
        return groups

    def values(self, rule: Rule) -> dict[Group, float]:
        """The rule's value per group in its window (a group without data has no value)."""
        if rule.metric == "stalled":
            return self._stalled(rule)
        if rule.metric in ("error_rate", "throughput"):
            groups = self._groups(rule, MetricType.PROCESSING_TIME.value, False)
            if rule.metric == "error_rate":
                return {group: round(merged.errors) / merged.count for group, merged in groups.items()}
            return {group: merged.count / rule.window.total_seconds() for group, merged in groups.items()}
        if rule.statistic not in _PERCENTILES:
            merged_groups = self._groups(rule, rule.metric, False)
            return {group: _statistic(merged, rule.statistic) for group, merged in merged_groups.items()}
        merged_groups = self._groups(rule, rule.metric, True)
        if all(len(merged.points) == 1 for merged in merged_groups.values()):
            found = {group: getattr(merged.points[0], rule.statistic) for group, merged in merged_groups.items()}
        else:
            found = {_group(point, rule): getattr(point, rule.statistic) for point in self._totals(rule)}
        return {group: float(value) for group, value in found.items() if value is not None}

    def _totals(self, rule: Rule) -> list[SeriesPoint]:
        key = ("totals", rule.window, rule.metric, tuple(sorted(rule.labels.items())), rule.group_by)
        if key not in self.cache:
            self.cache[key] = query_totals(
                self.connection,
                self.now - rule.window,
                self.now,
                metric_type=rule.metric,
                labels=rule.labels or None,
                group_by=rule.group_by,
            )
        return self.cache[key]

    def _stalled(self, rule: Rule) -> dict[Group, float]:
        """1 per queue stalled in the window's last whole minute, 0 per queue sampled then and not stalled;
        a group of several queues takes the largest."""
        end = bucket_floor(self.now, 1)
        start = end - dt.timedelta(minutes=1)
        queue = rule.labels.get("queue")
        key = ("stalled", start, queue)
        if key not in self.cache:
            sampled = query_totals(
                self.connection,
                start,
                end,
                metric_type=MetricType.QUEUE_DEPTH,
                labels={**({"queue": queue} if queue else {}), "state": "ready"},
                group_by=("queue",),
                percentiles=False,
            )
            stalled = {bucket.queue for bucket in query_stalled(self.connection, start, end, step=end - start)}
            self.cache[key] = [
                point._replace(max=1.0 if point.labels.get("queue") in stalled else 0.0) for point in sampled
            ]
        values: dict[Group, float] = {}
        for point in self.cache[key]:
            group = tuple((name, point.labels[name]) for name in rule.group_by if name in point.labels)
            values[group] = max(values.get(group, 0.0), point.max)
        return values


def _statistic(merged: _Merged, statistic: str) -> float:
    if statistic == "count":
        return float(merged.count)
    if statistic == "avg":
        return merged.sum / merged.count
    value: float = getattr(merged, statistic)
    return value


def _group(point: SeriesPoint, rule: Rule) -> Group:
    return tuple((name, point.labels[name]) for name in rule.group_by if name in point.labels)


def rule_values(connection: Connection, rule: Rule, now: dt.datetime) -> dict[Group, float]:
    """``rule``'s value per group over ``[now - window, now)`` (see :func:`evaluate`)."""
    return _Reader(connection, now).values(rule)


def _query_of(rule: Rule) -> tuple[Any, ...]:
    """The query a rule reads first: rules reading the same one are read on one connection, sharing it."""
    if rule.metric == "stalled":
        return ("stalled",)
    metric = MetricType.PROCESSING_TIME.value if rule.metric in ("error_rate", "throughput") else rule.metric
    if rule.statistic in _PERCENTILES and rule.metric not in ("error_rate", "throughput"):
        return ("percentiles", metric, rule.window)
    return ("minutes", metric)


def read_values(engine: Engine, rules: Sequence[Rule], now: dt.datetime) -> dict[str, dict[Group, float]]:
    """Every rule's value per group at ``now``, by rule name (a group without data has no value), read on up
    to :data:`READ_CONNECTIONS` connections at once (the rules sharing a query on the same one)."""
    longest: dict[str, dt.timedelta] = {}
    for rule in rules:
        metric = MetricType.PROCESSING_TIME.value if rule.metric in ("error_rate", "throughput") else rule.metric
        longest[metric] = max(longest.get(metric, rule.window), rule.window)
    by_query: dict[tuple[Any, ...], list[Rule]] = {}
    for rule in rules:
        by_query.setdefault(_query_of(rule), []).append(rule)
    shares: list[list[Rule]] = [[] for _ in range(min(READ_CONNECTIONS, len(by_query)) or 1)]
    for shared in sorted(by_query.values(), key=len, reverse=True):
        min(shares, key=len).extend(shared)

    def read(share: list[Rule]) -> dict[str, dict[Group, float]]:
        with engine.connect() as connection:
            reader = _Reader(connection, now, longest)
            return {rule.name: reader.values(rule) for rule in share}

    values: dict[str, dict[Group, float]] = {}
    if len(shares) == 1:
        values.update(read(shares[0]))
    else:
        with ThreadPoolExecutor(max_workers=len(shares), thread_name_prefix="opmetrics-alert-read") as pool:
            for found in pool.map(read, shares):
                values.update(found)
    return values

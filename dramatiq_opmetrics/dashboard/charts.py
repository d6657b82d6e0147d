"""What every page's charts are made of: the chart data the page's script draws, and the ranges they cover.

Two kinds of x axis: whole UTC days (:class:`DateRange`, the pages of days: overview, actor, queues, tokens,
confidence), grouped into buckets of several days when a range is long; and buckets of whole minutes
(:class:`TimeBuckets`, the last hours: the Now page and the queues page's recent depth), aligned to UTC
multiples of the step like :func:`~dramatiq_opmetrics.series.query_series`'s. No database access here.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..recent_tier import bucket_floor
from ..series import SeriesPoint

#: The ranges a page of days can show, in days (today included).
RANGE_DAYS = (7, 30, 90, 365)
#: The range shown when none is chosen, in days.
DEFAULT_RANGE_DAYS = 30
#: Most points a chart's x axis gets; longer ranges are grouped into buckets of several days.
MAX_CHART_POINTS = 92


def day_epoch_s(day: dt.date) -> int:
    """Seconds since the epoch at the start (UTC) of ``day``: a chart's x value."""
    return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ValueError naming the allowed values."""
    if value not in choices:
        allowed = ", ".join(str(choice) for choice in choices)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class DateRange:
    """The whole UTC days a page covers, ``first_day`` to ``today`` inclusive, grouped for charts."""

    first_day: dt.date
    today: dt.date
    bucket_days: int

    @classmethod
    def ending_today(cls, days: int, today: dt.date, max_points: int = MAX_CHART_POINTS) -> DateRange:
        """The ``days`` days ending with ``today``, in buckets of as few days as fit ``max_points`` points."""
        return cls(today - dt.timedelta(days=days - 1), today, max(1, math.ceil(days / max_points)))

    @property
    def days(self) -> int:
        """How many days the range covers."""
        return (self.today - self.first_day).days + 1

    def bucket(self, day: dt.date) -> int:
        """The chart point ``day`` belongs to."""
        return (day - self.first_day).days // self.bucket_days

    @property
    def buckets(self) -> int:
        """How many chart points the range has."""
        return self.bucket(self.today) + 1

    def x_values(self) -> list[int]:
        """Each chart point's x value: the start of its first day, in epoch seconds."""
        return [day_epoch_s(self.first_day + dt.timedelta(days=i * self.bucket_days)) for i in range(self.buckets)]


@dataclass(frozen=True, slots=True)
class TimeBuckets:
    """The buckets of ``step`` covering ``[start, end)``, aligned to UTC multiples of the step (the first and
    last may stick out of the range), as :func:`~dramatiq_opmetrics.series.query_series` returns them."""

    start: dt.datetime
    end: dt.datetime
    step: dt.timedelta

    @classmethod
    def ending(cls, end: dt.datetime, window: dt.timedelta, step: dt.timedelta) -> TimeBuckets:
        """The buckets of the ``window`` before ``end``."""
        return cls(end - window, end, step)

    @property
    def first(self) -> dt.datetime:
        """Where the first bucket starts."""
        return bucket_floor(self.start, self.step // dt.timedelta(minutes=1))

    @property
    def buckets(self) -> int:
        """How many buckets (chart points) there are."""
        return max(1, math.ceil((self.end - self.first) / self.step))

    def index(self, at: dt.datetime) -> int:
        """The bucket ``at`` falls in (a point's ``start``, which is clipped to the range, works too)."""
        return int((at - self.first) // self.step)

    def x_values(self) -> list[float]:
        """Each bucket's start, in epoch seconds."""
        first_s = self.first.timestamp()
        step_s = self.step.total_seconds()
        return [first_s + i * step_s for i in range(self.buckets)]


@dataclass(slots=True)
class Chart:
    """A chart's data for the page: x values (epoch seconds, or bucket indexes) and named series.

    ``bands`` are spans of the x axis to shade, ``{"start": x, "end": x, "label": text}`` (stalled queues).
    """

    x: list[float]
    series: list[dict[str, Any]] = field(default_factory=list)
    unit: str = ""
    kind: str = "line"
    x_labels: list[str] | None = None
    bands: list[dict[str, Any]] | None = None

    def add(self, label: str, values: Sequence[float | None]) -> None:
        """Add a series called ``label``."""
        self.series.append({"label": label, "values": list(values)})

    def to_json(self) -> dict[str, Any]:
        """The chart as the page's script reads it."""
        data: dict[str, Any] = {"x": self.x, "series": self.series, "unit": self.unit, "kind": self.kind}
        if self.x_labels is not None:
            data["x_labels"] = self.x_labels
        if self.bands is not None:
            data["bands"] = self.bands
        return data


@dataclass(slots=True)
class DayStats:
    """Statistics of one metric type and group over one UTC day (a point of a chart of days)."""

    metric_type: str
    labels: dict[str, str]
    day: dt.date
    count: int
    total: float
    maximum: float
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    minimum: float | None = None


def worst(current: float | None, candidate: float | None) -> float | None:
    """The larger of two values, either of which may be unknown."""
    if candidate is None:
        return current
    return candidate if current is None else max(current, candidate)


def bucket_sums(date_range: DateRange, stats: Iterable[DayStats], attribute: str = "count") -> list[float | None]:
    """Per chart point, the sum of ``attribute`` (count or total) of the day statistics in it (None where
    none)."""
    values: list[float | None] = [None] * date_range.buckets
    for stat in stats:
        index = date_range.bucket(stat.day)
        if 0 <= index < len(values):
            values[index] = (values[index] or 0.0) + float(getattr(stat, attribute))
    return values


def bucket_worst(date_range: DateRange, stats: Iterable[DayStats], attribute: str) -> list[float | None]:
    """Per chart point, the largest ``attribute`` (a day's max or p95) of the days in it."""
    values: list[float | None] = [None] * date_range.buckets
    for stat in stats:
        index = date_range.bucket(stat.day)
        if 0 <= index < len(values):
            values[index] = worst(values[index], getattr(stat, attribute))
    return values


def percentile_chart(date_range: DateRange, stats: Sequence[DayStats]) -> Chart:
    """Each day's own p50, p95 and p99 (the worst day's, where a point covers several days)."""
    chart = Chart(list(map(float, date_range.x_values())), unit="ms")
    for name in ("p50", "p95", "p99"):
        chart.add(name, bucket_worst(date_range, stats, name))
    return chart


def time_chart(
    buckets: TimeBuckets,
    points: Iterable[SeriesPoint],
    name: Callable[[SeriesPoint], str | None],
    value: Callable[[SeriesPoint], float | None],
    unit: str,
    names: Iterable[str] | None = None,
) -> Chart:
    """A chart of series points: one series per ``name(point)`` (sorted; only ``names`` if given, in their
    order; a point named None is left out), ``value(point)`` at its bucket."""
    series: dict[str, list[float | None]] = {}
    wanted = None if names is None else list(names)
    for chosen in wanted or ():
        series[chosen] = [None] * buckets.buckets
    for point in points:
        label = name(point)
        if label is None or (wanted is not None and label not in series):
            continue
        index = buckets.index(point.start)
        values = series.get(label)
        if values is None:
            values = series[label] = [None] * buckets.buckets
        if 0 <= index < len(values):
            values[index] = value(point)
    chart = Chart(buckets.x_values(), unit=unit)
    for label in wanted if wanted is not None else sorted(series):
        chart.add(label, series[label])
    return chart

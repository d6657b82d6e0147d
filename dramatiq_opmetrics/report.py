"""The report: range statistics per metric type, as tables for people and as JSON for scripts.

A report covers either whole UTC days (``since`` to ``until`` inclusive, as dates) or a window of time
(``[since, until)``, as timezone-aware datetimes, for example the last hour). Whole days come from the
rollup's query API (:mod:`dramatiq_opmetrics.query`): daily rows merged with the raw rows of days not rolled
up yet (so "today" is never missing), and range percentiles from the mergeable histograms, never from
averaged daily percentiles. A window that starts or ends inside a day comes from the series API
(:func:`~dramatiq_opmetrics.series.query_totals`: the recent tier plus the raw rows it does not hold yet),
so it is exact and current to the second; a window from UTC midnight to UTC midnight is read as whole days.
Raw rows are kept for the raw retention only (30 days by default, ``prune --retention-days``): where a
window reaches back past pruned days, ``missing_before`` says from when on its numbers are complete.

Each metric type is grouped by the labels that matter for it (:data:`GROUP_BY`): ``processing_time`` by
actor and queue with the share of attempts that raised, ``error`` by actor, queue, exception class and
outcome, ``queue_depth`` by queue and state, token counts by model, ``confidence`` by bucket,
``oldest_message_age`` by queue, ``worker_threads`` and ``busy_threads`` by host and consumed queues (one
"workers" table in the text report, with the utilisation busy / threads).

JSON shape (``dramatiq-opmetrics report --json``; stable: keys are only ever added)::

    {
      "since": "2026-11-21",            # first UTC day of the range, inclusive; for a window its start
                                        # as an ISO datetime in UTC ("2026-11-27T11:00:00+00:00")
      "until": "2026-11-27",            # last UTC day of the range, inclusive; for a window its end
                                        # (exclusive), an ISO datetime in UTC
      "window_s": 604800.0,             # the length of the range in seconds (whole days: days * 86400)
      "missing_before": null,           # a window only: an ISO datetime when raw rows before it were
                                        # pruned (samples before it are not counted), else null
      "filters": {"actor": null, "queue": null, "model": null},
      "metrics": {                      # only the metric types that have data, in MetricType order
        "processing_time": {
          "unit": "ms",
          "group_by": ["actor", "queue"],
          "rows": [                     # largest count first (queue_depth: by queue and state,
                                        # oldest_message_age, worker_threads, busy_threads: by labels,
                                        # confidence: highest bucket first)
            {"labels": {"actor": "send_email", "queue": "emails"},
             "count": 1204, "sum": 183020.5, "min": 3.1, "max": 950.2, "avg": 152.0,
             "p50": 140.2, "p95": 301.0, "p99": 420.9,
             "error_rate": 0.02}        # processing_time only: error samples / attempts
          ]
        },
        ...
      }
    }

``unit`` is the unit of ``sum``, ``min``, ``max``, ``avg`` and the percentiles. Groups without samples are
not listed. Over more than one day (and over any window), percentiles are within 1% relative error of the
exact ones over the raw samples; ``count``, ``sum``, ``min``, ``max`` and ``avg`` are exact.

Example::

    from datetime import UTC, datetime, timedelta
    from dramatiq_opmetrics.report import build_report, render_text

    end = datetime.now(UTC)
    with engine.connect() as connection:
        print(render_text(build_report(connection, end - timedelta(hours=1), end)))
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, FromClause, literal, select
from sqlalchemy.engine import URL

from .config import ConfigurationError, redact_url, resolve_database_url
from .database import connection_for, engine_for
from .metric_types import MetricType
from .models import OperationalMetric, OperationalMetricDaily
from .partitions import day_bounds
from .query import MetricStats, days_that_may_hold_raw_rows, query_metrics_together
from .queue_depth import DEAD, DELAYED, IN_FLIGHT, READY
from .series import SeriesPoint, query_totals

#: The labels each metric type is grouped by in the report, in column order.
GROUP_BY: Mapping[MetricType, tuple[str, ...]] = {
    MetricType.PROCESSING_TIME: ("actor", "queue"),
    MetricType.WAIT_TIME: ("actor", "queue"),
    MetricType.ERROR: ("actor", "queue", "error_type", "outcome"),
    MetricType.SKIPPED: ("actor", "queue"),
    MetricType.QUEUE_DEPTH: ("queue", "state"),
    MetricType.PROMPT_TOKENS: ("model",),
    MetricType.COMPLETION_TOKENS: ("model",),
    MetricType.CONFIDENCE: ("bucket",),
    MetricType.DROPPED_SAMPLES: (),
    MetricType.REJECTED_SAMPLES: ("metric_type", "reason"),
    MetricType.CLOCK_SKEW: ("actor", "queue"),
    MetricType.OLDEST_MESSAGE_AGE: ("queue",),
    MetricType.WORKER_THREADS: ("host", "queues"),
    MetricType.BUSY_THREADS: ("host", "queues"),
}

#: The unit of each metric type's values, as the report names it.
UNITS: Mapping[MetricType, str] = {
    MetricType.PROCESSING_TIME: "ms",
    MetricType.WAIT_TIME: "ms",
    MetricType.ERROR: "errors",
    MetricType.SKIPPED: "messages",
    MetricType.QUEUE_DEPTH: "messages",
    MetricType.PROMPT_TOKENS: "tokens",
    MetricType.COMPLETION_TOKENS: "tokens",
    MetricType.CONFIDENCE: "score",
    MetricType.DROPPED_SAMPLES: "samples",
    MetricType.REJECTED_SAMPLES: "samples",
    MetricType.CLOCK_SKEW: "messages",
    MetricType.OLDEST_MESSAGE_AGE: "s",
    MetricType.WORKER_THREADS: "threads",
    MetricType.BUSY_THREADS: "threads",
}

#: The labels the report can filter on (``--actor``, ``--queue``, ``--model``).
FILTER_LABELS = ("actor", "queue", "model")

#: How many days the report covers by default, today included.
DEFAULT_REPORT_DAYS = 7

#: What the text report says when the database holds no metrics at all.
NO_METRICS_YET = "No metrics recorded yet: add OpMetrics to your broker, or run `dramatiq-opmetrics demo` to see some."
#: What the text report says when the range holds no metrics.
NO_RANGE_METRICS = "No metrics recorded in this range."

#: The width the text tables fit in, in characters.
TEXT_WIDTH = 80

_TOKEN_TYPES = (MetricType.PROMPT_TOKENS, MetricType.COMPLETION_TOKENS)
#: Shown together in one "workers" table: threads online, busy threads and their ratio.
_WORKER_TYPES = (MetricType.WORKER_THREADS, MetricType.BUSY_THREADS)


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One row of the report: the statistics of one group over the range, from the query API.

    Attributes:
      stats(MetricStats): count, sum, min, max, avg and p50/p95/p99 of the group; ``stats.labels`` holds
        the group's :data:`GROUP_BY` labels.
      error_rate(float | None): for ``processing_time``, the error samples of the same actor and queue
        divided by ``stats.count`` (the share of attempts that raised); None for other metric types.
    """

    stats: MetricStats
    error_rate: float | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """A report over the UTC days ``since`` to ``until`` inclusive, or over the window ``[since, until)``.

    Attributes:
      since, until(date | datetime): the range: dates for whole days (inclusive), timezone-aware datetimes
        in UTC for a window (``until`` exclusive).
      filters(Mapping[str, str | None]): the label filters applied (:data:`FILTER_LABELS`).
      metrics(Mapping[MetricType, Sequence[ReportRow]]): rows per metric type that has data.
      database_has_metrics(bool): whether the database holds any sample or daily row at all (in any range).
      missing_before(datetime | None): for a window reaching back past pruned raw rows: samples before this
        instant are not counted (the daily rows hold them: report those days with dates); else None.
    """

    since: dt.date | dt.datetime
    until: dt.date | dt.datetime
    filters: Mapping[str, str | None]
    metrics: Mapping[MetricType, Sequence[ReportRow]] = field(default_factory=dict)
    database_has_metrics: bool = True
    missing_before: dt.datetime | None = None

    @property
    def is_empty(self) -> bool:
        """Whether no metric type has a sample in the range."""
        return not any(self.metrics.values())

    @property
    def is_window(self) -> bool:
        """Whether the report covers a window of time (datetimes) rather than whole days (dates)."""
        return isinstance(self.since, dt.datetime)

    @property
    def window_s(self) -> float:
        """The length of the range in seconds (whole days: 86,400 per day)."""
        if isinstance(self.since, dt.datetime) and isinstance(self.until, dt.datetime):
            return (self.until - self.since).total_seconds()
        return float(self.days * SECONDS_PER_DAY)

    @property
    def days(self) -> int:
        """How many UTC days the range touches (for whole days: how many it covers)."""
        last = self.until - dt.timedelta(microseconds=1) if isinstance(self.until, dt.datetime) else self.until
        return last.toordinal() - self.since.toordinal() + 1


#: Seconds in a UTC day.
SECONDS_PER_DAY = 86_400


def existing_database_url(database_url: str | URL | None) -> URL:
    """The metrics database URL (resolved as everywhere, see
    :func:`~dramatiq_opmetrics.config.resolve_database_url`), refusing a SQLite file that does not exist
    (reading one must not create it).

    Raises:
      ConfigurationError: no database is configured, or a SQLite file that does not exist.
    """
    url = resolve_database_url(database_url)
    path = url.database if url.get_backend_name() == "sqlite" and url.database != ":memory:" else None
    if path and not Path(path).is_file():
        raise ConfigurationError(
            f"there is no SQLite database at {path}; create it with `dramatiq-opmetrics migrate"
            f" --database-url {redact_url(url)}` (or check the path)"
        )
    return url


def load_report(
    database_url: str | URL | None,
    since: dt.date | dt.datetime,
    until: dt.date | dt.datetime,
    *,
    metric_types: Iterable[MetricType] | None = None,
    filters: Mapping[str, str | None] | None = None,
) -> Report:
    """:func:`build_report` on the database at ``database_url`` (see :func:`existing_database_url`).

    Raises:
      ConfigurationError: no database is configured, or a SQLite file that does not exist (it is not
        created).
    """
    with engine_for(existing_database_url(database_url)) as engine:
        return build_report(engine, since, until, metric_types=metric_types, filters=filters)


def build_report(
    connectable: Engine | Connection,
    since: dt.date | dt.datetime,
    until: dt.date | dt.datetime,
    *,
    metric_types: Iterable[MetricType] | None = None,
    filters: Mapping[str, str | None] | None = None,
) -> Report:
    """Gather the report's rows for the UTC days ``since`` to ``until`` inclusive (dates), or for the
    samples recorded in ``[since, until)`` (timezone-aware datetimes).

    A window from UTC midnight to UTC midnight is read from the daily rows like the same days given as
    dates; any other window from the recent tier and the raw rows (see the module docstring).

    Parameters:
      connectable(Engine | Connection): the metrics database; given an engine of PostgreSQL, the daily rows
        and the raw rows of the days not rolled up are read side by side on two connections.
      since, until(date | datetime): the range: two dates, or two timezone-aware datetimes.
      metric_types(Iterable[MetricType] | None): only these metric types; default: all.
      filters(Mapping[str, str | None] | None): only samples with these labels (None values are ignored);
        keys among :data:`FILTER_LABELS`.

    Raises:
      ValueError: ``since`` after ``until`` (or, for a window, not before it), a date mixed with a datetime,
        a naive datetime, an unknown filter key or a bad label value.
    """
    filters = dict(filters or {})
    unknown = set(filters) - set(FILTER_LABELS)
    if unknown:
        raise ValueError(f"cannot filter on {sorted(unknown)[0]!r}; filters: {', '.join(FILTER_LABELS)}")
    labels = {key: value for key, value in filters.items() if value is not None}
    wanted = list(MetricType) if metric_types is None else list(metric_types)
    shown_filters = {name: filters.get(name) for name in FILTER_LABELS}
    window = _window(since, until)
    if window is None:
        assert not isinstance(since, dt.datetime) and not isinstance(until, dt.datetime)
        metrics = _daily_metrics(connectable, since, until, wanted, labels)
        with connection_for(connectable) as connection:
            has_metrics = bool(metrics) or database_has_metrics(connection)
        return Report(since, until, shown_filters, metrics, has_metrics)
    start, end = window
    whole_days, missing_before = _is_midnight(start) and _is_midnight(end), None
    if whole_days:
        metrics = _daily_metrics(connectable, start.date(), (end - dt.timedelta(days=1)).date(), wanted, labels)
    with connection_for(connectable) as connection:
        if not whole_days:
            metrics = _window_metrics(connection, start, end, wanted, labels)
            missing_before = _missing_before(connection, start, end)
        has_metrics = bool(metrics) or database_has_metrics(connection)
    return Report(start, end, shown_filters, metrics, has_metrics, missing_before)


def _window(since: dt.date | dt.datetime, until: dt.date | dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
    """``(start, end)`` in UTC for two datetimes, None for two dates; a ValueError for anything else."""
    if not isinstance(since, dt.date) or not isinstance(until, dt.date):
        raise ValueError(f"since and until must be two dates or two datetimes, got {since!r} and {until!r}")
    if isinstance(since, dt.datetime) != isinstance(until, dt.datetime):
        raise ValueError(f"since and until must be two dates or two datetimes, got {since!r} and {until!r}")
    if not isinstance(since, dt.datetime) or not isinstance(until, dt.datetime):
        if since > until:
            raise ValueError(f"since ({since}) is after until ({until})")
        return None
    for name, value in (("since", since), ("until", until)):
        if value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware (e.g. datetime.now(UTC)), got naive {value.isoformat()}")
    start, end = since.astimezone(dt.UTC), until.astimezone(dt.UTC)
    if start >= end:
        raise ValueError(f"the window's start ({start.isoformat()}) is not before its end ({end.isoformat()})")
    return start, end


def _is_midnight(at: dt.datetime) -> bool:
    return at.time() == dt.time(0)


def _daily_metrics(
    connectable: Engine | Connection,
    since: dt.date,
    until: dt.date,
    wanted: Sequence[MetricType],
    labels: Mapping[str, str],
) -> dict[MetricType, list[ReportRow]]:
    """The report's rows of whole days, from the query API (daily rows and the raw rows not rolled up, read
    once for every metric type)."""
    types = [metric_type for metric_type in MetricType if metric_type in wanted]
    queries: list[tuple[MetricType | str, Sequence[str] | None]] = [
        (metric_type, GROUP_BY[metric_type]) for metric_type in types
    ]
    # The error rate's errors per actor and queue: added up from the error table's groups (finer: by error type
    # and outcome too) where the report has that table, else a query of their own.
    with_errors = MetricType.PROCESSING_TIME in types
    own_error_query = with_errors and MetricType.ERROR not in types
    if own_error_query:
        queries.append((MetricType.ERROR, _ERROR_RATE_KEYS))
    results = query_metrics_together(connectable, since, until, queries, labels=labels)
    error_counts: dict[tuple[str | None, ...], int] = {}
    if with_errors:
        errors = results.pop() if own_error_query else results[types.index(MetricType.ERROR)]
        for stats in errors:
            key = _key(stats.labels, _ERROR_RATE_KEYS)
            error_counts[key] = error_counts.get(key, 0) + stats.count
    metrics: dict[MetricType, list[ReportRow]] = {}
    for metric_type, found in zip(types, results, strict=True):
        rows = []
        for stats in found:
            error_rate = None
            if metric_type is MetricType.PROCESSING_TIME:
                error_rate = error_counts.get(_key(stats.labels, _ERROR_RATE_KEYS), 0) / stats.count
            rows.append(ReportRow(stats, error_rate))
        if rows:
            metrics[metric_type] = _in_report_order(metric_type, rows)
    return metrics


def _window_metrics(
    connection: Connection,
    start: dt.datetime,
    end: dt.datetime,
    wanted: Sequence[MetricType],
    labels: Mapping[str, str],
) -> dict[MetricType, list[ReportRow]]:
    """The report's rows of a window, from the series API (the recent tier and the raw rows it lacks): one
    read without percentiles finds the metric types with samples, then one read per grouping of those
    (each read costs about 50 ms even when it finds nothing: 11 types without samples took half of a
    24-hour report)."""
    found = query_totals(
        connection, start, end, labels=labels or None, group_by=(), percentiles=False, metric_types=wanted
    )
    present = {point.metric_type for point in found}
    groupings: dict[tuple[str, ...], list[MetricType]] = {}
    for metric_type in MetricType:
        if metric_type in present:
            groupings.setdefault(GROUP_BY[metric_type], []).append(metric_type)
    rows: dict[MetricType, list[ReportRow]] = {}
    for group_by, types in groupings.items():
        # Processing times' error rates need the errors of their groups read with them.
        asked = {*types, MetricType.ERROR} if MetricType.PROCESSING_TIME in types else set(types)
        for point in query_totals(connection, start, end, labels=labels or None, group_by=group_by, metric_types=asked):
            if point.metric_type in types:
                rows.setdefault(point.metric_type, []).append(ReportRow(_stats_of_point(point), point.error_rate))
    return {
        metric_type: _in_report_order(metric_type, rows[metric_type])
        for metric_type in MetricType
        if metric_type in rows
    }


def _stats_of_point(point: SeriesPoint) -> MetricStats:
    """The statistics of a series point, as the query API gives those of a range of days."""
    return MetricStats(
        point.metric_type,
        point.labels,
        point.count,
        point.sum,
        point.min,
        point.max,
        point.avg,
        point.p50,
        point.p95,
        point.p99,
    )


def _missing_before(connection: Connection, start: dt.datetime, end: dt.datetime) -> dt.datetime | None:
    """Where a window's numbers become complete when it reaches back past pruned raw rows (the start of the
    first day that still has raw rows, or the window's end if none has), provided daily rows hold a day of
    the window before it; else None."""
    raw, daily = OperationalMetric.__table__, OperationalMetricDaily.__table__
    # Never min(recorded_at) of the raw table: its time index is a BRIN one, so that reads every raw row (0.7 s
    # at 20 million, minutes at 30 days of them). Any raw row before the window means none of it is pruned
    # (the prune drops whole days); else the first day of the window holding raw rows, probed in order among
    # the days that may (on PostgreSQL those with a partition), each probe stopping at its first row.
    if _has_raw_rows(connection, raw.c.recorded_at < start):
        return None
    last_day = (end - dt.timedelta(microseconds=1)).date()  # the last day the window touches
    days_end = last_day + dt.timedelta(days=1)
    candidates = days_that_may_hold_raw_rows(connection, start.astimezone(dt.UTC).date(), last_day)
    first_day = next(
        (day for day in candidates if _has_raw_rows(connection, *_day_range(raw.c.recorded_at, day))), days_end
    )
    if first_day >= days_end:
        complete_from, pruned_days_end = end, days_end
    else:
        complete_from = min(dt.datetime.combine(first_day, dt.time(), tzinfo=dt.UTC), end)
        pruned_days_end = first_day
    if start >= complete_from:
        return None
    pruned_day = _has_rows(connection, daily, daily.c.date >= start.date(), daily.c.date < pruned_days_end)
    return complete_from if pruned_day else None


def _has_rows(connection: Connection, table: FromClause, *where: ColumnElement[bool]) -> bool:
    """Whether any row of ``table`` matches ``where`` (stops at the first one)."""
    return connection.execute(select(literal(1)).select_from(table).where(*where).limit(1)).first() is not None


def _has_raw_rows(connection: Connection, *where: ColumnElement[bool]) -> bool:
    return _has_rows(connection, OperationalMetric.__table__, *where)


def _day_range(column: ColumnElement[dt.datetime], day: dt.date) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    low, high = day_bounds(day)
    return column >= low, column < high


#: The labels that tie an error to the processing time of the same actor and queue.
_ERROR_RATE_KEYS = ("actor", "queue")


def _key(labels: Mapping[str, str], keys: Sequence[str]) -> tuple[str | None, ...]:
    return tuple(labels.get(key) for key in keys)


#: The order of queue depth states in the report: where messages go, from waiting to dead.
_STATES = (READY, DELAYED, IN_FLIGHT, DEAD)


def _state_order(labels: Mapping[str, str]) -> tuple[int, str]:
    state = labels.get("state", "")
    return (_STATES.index(state) if state in _STATES else len(_STATES), state)


def _in_report_order(metric_type: MetricType, rows: list[ReportRow]) -> list[ReportRow]:
    """Queues in name order, confidence buckets from the highest, everything else the largest count first."""
    if metric_type is MetricType.QUEUE_DEPTH:
        return sorted(rows, key=lambda row: (row.stats.labels.get("queue", ""), _state_order(row.stats.labels)))
    if metric_type in (MetricType.OLDEST_MESSAGE_AGE, *_WORKER_TYPES):
        return sorted(rows, key=lambda row: sorted(row.stats.labels.items()))
    if metric_type is MetricType.CONFIDENCE:
        return sorted(rows, key=lambda row: row.stats.labels.get("bucket", ""), reverse=True)
    return sorted(rows, key=lambda row: (-row.stats.count, sorted(row.stats.labels.items())))


def database_has_metrics(connection: Connection) -> bool:
    """Whether the database holds any raw sample or daily row at all."""
    tables = (OperationalMetric.__table__, OperationalMetricDaily.__table__)
    return any(_has_rows(connection, table) for table in tables)


def report_range(
    *,
    days: int | None = None,
    since: dt.date | dt.datetime | None = None,
    until: dt.date | dt.datetime | None = None,
    last: dt.timedelta | None = None,
    today: dt.date | None = None,
    now: dt.datetime | None = None,
) -> tuple[dt.date, dt.date] | tuple[dt.datetime, dt.datetime]:
    """The range of a report, as :func:`build_report` takes it.

    Whole UTC days (two dates, inclusive): the last ``days`` days (today included), or ``since`` to ``until``
    given as dates (``until`` defaults to today), or the last :data:`DEFAULT_REPORT_DAYS` days.

    A window (two UTC datetimes, ``[start, end)``): the ``last`` duration up to ``now``, or ``since`` to
    ``until`` when either is a datetime; the other may then be a date (``since``: its first instant,
    ``until``: the end of that day) or absent (``until``: now; ``since``: :data:`DEFAULT_REPORT_DAYS` days
    before ``until``). A naive datetime is taken as UTC.

    Parameters:
      days(int | None), since, until(date | datetime | None), last(timedelta | None): as ``report``'s
        ``--days``, ``--since``, ``--until`` and ``--last``.
      today(date | None), now(datetime | None): the current UTC day and time; default: now.

    Raises:
      ValueError: if ``days`` or ``last`` is combined with another range argument, ``days`` is below 1,
        ``last`` is not positive, or ``since`` is after ``until`` (for a window: not before it).
    """
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    today = today or now.date()
    if last is not None:
        if days is not None or since is not None or until is not None:
            raise ValueError("give either --last or --days/--since/--until, not both")
        if last <= dt.timedelta(0):
            raise ValueError(f"--last must be a positive duration, got {last}")
        return now - last, now
    if days is not None:
        if since is not None or until is not None:
            raise ValueError("give either --days or --since/--until, not both")
        if days < 1:
            raise ValueError(f"--days must be at least 1, got {days}")
        return today - dt.timedelta(days=days - 1), today
    if isinstance(since, dt.datetime) or isinstance(until, dt.datetime):
        end = now if until is None else _window_bound(until, end=True)
        start = end - dt.timedelta(days=DEFAULT_REPORT_DAYS) if since is None else _window_bound(since, end=False)
        if start >= end:
            raise ValueError(f"--since {start.isoformat()} is not before --until {end.isoformat()}")
        return start, end
    until = until or today
    since = since or until - dt.timedelta(days=DEFAULT_REPORT_DAYS - 1)
    if since > until:
        raise ValueError(f"--since {since} is after --until {until}")
    return since, until


def _window_bound(value: dt.date, *, end: bool) -> dt.datetime:
    """A window's bound in UTC: a datetime as given (naive: UTC), a date as its first instant, or for the
    ``end`` the first instant of the next day."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.utcoffset() is None else value.astimezone(dt.UTC)
    day = value + dt.timedelta(days=1) if end else value
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def report_to_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON-ready data, in the documented shape (see the module docstring)."""
    metrics: dict[str, Any] = {}
    for metric_type, rows in report.metrics.items():
        if not rows:
            continue
        metrics[metric_type.value] = {
            "unit": UNITS[metric_type],
            "group_by": list(GROUP_BY[metric_type]),
            "rows": [_row_to_dict(metric_type, row) for row in rows],
        }
    return {
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "window_s": report.window_s,
        "missing_before": report.missing_before.isoformat() if report.missing_before is not None else None,
        "filters": {name: report.filters.get(name) for name in FILTER_LABELS},
        "metrics": metrics,
    }


def _row_to_dict(metric_type: MetricType, row: ReportRow) -> dict[str, Any]:
    stats = row.stats
    data: dict[str, Any] = {
        "labels": dict(stats.labels),
        "count": stats.count,
        "sum": stats.sum,
        "min": stats.min,
        "max": stats.max,
        "avg": stats.avg,
        "p50": stats.p50,
        "p95": stats.p95,
        "p99": stats.p99,
    }
    if metric_type is MetricType.PROCESSING_TIME:
        data["error_rate"] = row.error_rate
    return data


def render_json(report: Report) -> str:
    """The report as indented JSON text (see the module docstring for its shape)."""
    return json.dumps(report_to_dict(report), indent=2)


def render_text(report: Report, *, width: int = TEXT_WIDTH) -> str:
    """The report as one table per metric type, each fitting in ``width`` columns."""
    active = ", ".join(f"{name}={value}" for name, value in report.filters.items() if value)
    lines = [_heading(report) + (f", {active}" if active else "")]
    if report.missing_before is not None:
        lines.append(
            f"Raw rows before {format_instant(report.missing_before)} UTC were pruned: samples before it are not"
            " counted (report those days with --since/--until as dates)."
        )
    if report.is_empty:
        lines.append(NO_RANGE_METRICS if report.database_has_metrics else NO_METRICS_YET)
        return "\n".join(lines)
    for metric_type, rows in report.metrics.items():
        if not rows or metric_type in _TOKEN_TYPES or metric_type in _WORKER_TYPES:
            continue
        lines += ["", *_section(metric_type, rows, width)]
    if any(report.metrics.get(metric_type) for metric_type in _TOKEN_TYPES):
        lines += ["", *_token_section(report, width)]
    if report.metrics.get(MetricType.WORKER_THREADS):
        lines += ["", *_workers_section(report, width)]
    return "\n".join(lines)


def _heading(report: Report) -> str:
    if isinstance(report.since, dt.datetime) and isinstance(report.until, dt.datetime):
        start, end = report.since, report.until
        end_text = format_instant(end)[11:] if end.date() == start.date() else format_instant(end)
        length = format_duration(end - start)
        return f"dramatiq-opmetrics report: {format_instant(start)} to {end_text} (UTC, {length})"
    days = report.days
    return f"dramatiq-opmetrics report: {report.since} to {report.until} (UTC, {days} day{'s' * (days != 1)})"


def format_instant(at: dt.datetime | float) -> str:
    """A moment (a datetime, or seconds since the epoch) in UTC as reports and pages show it:
    ``2026-06-15 12:00:00``."""
    if not isinstance(at, dt.datetime):
        at = dt.datetime.fromtimestamp(at, dt.UTC)
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


#: The units of :func:`format_duration` and of duration arguments (``--last 90m``), largest first.
DURATION_UNITS_S: Mapping[str, int] = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


def parse_duration(text: str) -> dt.timedelta:
    """A duration written as whole numbers of :data:`DURATION_UNITS_S` units: ``15m``, ``1h``, ``1h30m``, ``7d``.

    Raises:
      ValueError: anything else (a bare number, another unit, a fraction, a sign).
    """
    written = text.strip().lower()
    seconds, position = 0, 0
    for part in _DURATION_PART.finditer(written):
        if part.start() != position:
            break
        seconds += int(part[1]) * DURATION_UNITS_S[part[2]]
        position = part.end()
    if not written or position != len(written):
        raise ValueError(f"expected a duration such as 15m, 1h, 6h, 24h, 7d or 1h30m (units d, h, m, s), got {text!r}")
    if seconds > _LONGEST_TIMEDELTA_S:
        raise ValueError(f"the duration {text!r} is longer than any range")
    return dt.timedelta(seconds=seconds)


_DURATION_PART = re.compile(r"([0-9]+)([dhms])")
_LONGEST_TIMEDELTA_S = int(dt.timedelta.max.total_seconds())


def format_duration(duration: dt.timedelta) -> str:
    """``duration`` to the second in the units of :data:`DURATION_UNITS_S`: ``1h30m``, ``7d``, ``45s``."""
    left = round(duration.total_seconds())
    if left <= 0:
        return "0s"
    parts = []
    for unit, seconds in DURATION_UNITS_S.items():
        amount, left = divmod(left, seconds)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


_TITLES: Mapping[MetricType, str] = {
    MetricType.PROCESSING_TIME: "processing time (ms per attempt; err% = attempts that raised)",
    MetricType.WAIT_TIME: "wait time (ms from due to started)",
    MetricType.ERROR: "errors (by exception class and outcome)",
    MetricType.SKIPPED: "skipped messages",
    MetricType.QUEUE_DEPTH: "queue depth (messages per sample)",
    MetricType.CONFIDENCE: "confidence (score per recorded value)",
    MetricType.DROPPED_SAMPLES: "dropped samples (buffer full)",
    MetricType.REJECTED_SAMPLES: "rejected samples (refused by the database; the rest were written)",
    MetricType.CLOCK_SKEW: "clock skew (messages with an implausible due time: no wait time recorded)",
    MetricType.OLDEST_MESSAGE_AGE: "oldest-message age (s the oldest ready message had waited, per sample)",
}

#: Metric types whose every value is 1, so only their count tells anything.
_COUNT_ONLY = (MetricType.ERROR, MetricType.SKIPPED, MetricType.CLOCK_SKEW)


def _section(metric_type: MetricType, rows: Sequence[ReportRow], width: int) -> list[str]:
    labels = GROUP_BY[metric_type]
    all_stats = [row.stats for row in rows]
    if metric_type is MetricType.DROPPED_SAMPLES:
        dropped, reports = sum(stats.sum for stats in all_stats), sum(stats.count for stats in all_stats)
        return [_TITLES[metric_type], f"{format_count(dropped)} samples dropped, in {format_count(reports)} reports"]
    headers = [*labels, "count"]
    if metric_type is MetricType.REJECTED_SAMPLES:
        body = [[*_label_cells(labels, stats), format_count(stats.sum)] for stats in all_stats]
        return [_TITLES[metric_type], *format_table([*labels, "samples"], body, len(labels), width)]
    if metric_type in _COUNT_ONLY:
        body = [[*_label_cells(labels, stats), format_count(stats.count)] for stats in all_stats]
        return [_TITLES[metric_type], *format_table(headers, body, len(labels), width)]
    number = _score if metric_type is MetricType.CONFIDENCE else format_number
    if metric_type is MetricType.PROCESSING_TIME:
        headers.append("err%")
    if metric_type is MetricType.CONFIDENCE:
        headers.append("share")
    headers += ["avg", "p50", "p95", "p99"]
    with_max = metric_type is MetricType.OLDEST_MESSAGE_AGE  # how bad it got matters more than the average
    if with_max:
        headers.append("max")
    total_count = sum(stats.count for stats in all_stats)
    body = []
    for row in rows:
        stats = row.stats
        cells = [*_label_cells(labels, stats), format_count(stats.count)]
        if metric_type is MetricType.PROCESSING_TIME:
            cells.append(format_percent(row.error_rate))
        if metric_type is MetricType.CONFIDENCE:
            cells.append(format_percent(stats.count / total_count))
        cells += [number(value) for value in (stats.avg, stats.p50, stats.p95, stats.p99)]
        if with_max:
            cells.append(number(stats.max))
        body.append(cells)
    return [_TITLES[metric_type], *format_table(headers, body, len(labels), width)]


def _token_section(report: Report, width: int) -> list[str]:
    headers = ["model", "tokens", "calls", "total", "avg", "p50", "p95", "p99"]
    by_model: dict[str, list[tuple[str, MetricStats]]] = {}
    for metric_type, kind in ((MetricType.PROMPT_TOKENS, "prompt"), (MetricType.COMPLETION_TOKENS, "completion")):
        for row in report.metrics.get(metric_type, ()):
            by_model.setdefault(row.stats.labels.get("model", "-"), []).append((kind, row.stats))
    body = [
        [model, kind, format_count(stats.count), format_count(stats.sum)]
        + [format_number(value) for value in (stats.avg, stats.p50, stats.p95, stats.p99)]
        for model, entries in by_model.items()
        for kind, stats in entries
    ]
    grand_total = sum(stats.sum for entries in by_model.values() for _, stats in entries)
    title = f"token usage (tokens per call; {format_count(grand_total)} tokens in total)"
    return [title, *format_table(headers, body, 2, width)]


def _workers_section(report: Report, width: int) -> list[str]:
    """Per host and queues: processes online on average, their threads, busy threads and utilisation.

    Every worker process records one ``worker_threads`` and one ``busy_threads`` sample at the same moment
    each interval, so the sum of busy over the sum of threads is the share of thread time spent busy.
    """
    busy_by_group = {
        _key(row.stats.labels, GROUP_BY[MetricType.BUSY_THREADS]): row.stats
        for row in report.metrics.get(MetricType.BUSY_THREADS, ())
    }
    headers = ["host", "queues", "samples", "threads", "busy avg", "busy max", "util%"]
    body = []
    for row in report.metrics[MetricType.WORKER_THREADS]:
        threads = row.stats
        busy = busy_by_group.get(_key(threads.labels, GROUP_BY[MetricType.WORKER_THREADS]))
        utilisation = busy.sum / threads.sum if busy is not None and threads.sum else None
        body.append(
            [
                *_label_cells(("host", "queues"), threads),
                format_count(threads.count),
                format_number(threads.avg),
                format_number(busy.avg if busy is not None else None),
                format_number(busy.max if busy is not None else None),
                format_percent(utilisation),
            ]
        )
    title = "workers (threads per process and sample; util% = busy / threads)"
    return [title, *format_table(headers, body, 2, width)]


def _label_cells(labels: Iterable[str], stats: MetricStats) -> list[str]:
    return [stats.labels.get(name, "-") for name in labels]


def format_table(
    headers: Sequence[str],
    body: Sequence[Sequence[str]],
    label_columns: int,
    width: int,
    *,
    ellipsis: str = "~",
) -> list[str]:
    """The lines of a table: the first ``label_columns`` columns left-aligned, the others (numbers)
    right-aligned, two spaces apart. Label columns too wide to fit in ``width`` shrink (down to 6 characters
    or their header) and a label cut short ends with ``ellipsis`` (one character)."""
    widths = [max([len(header)] + [len(cells[i]) for cells in body]) for i, header in enumerate(headers)]
    overflow = sum(widths) + 2 * (len(widths) - 1) - width
    while overflow > 0 and label_columns:
        widest = max(range(label_columns), key=lambda i: widths[i])
        if widths[widest] <= max(len(headers[widest]), 6):
            break
        widths[widest] -= 1
        overflow -= 1

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            if i < label_columns:
                cell = cell if len(cell) <= widths[i] else cell[: widths[i] - 1] + ellipsis
                out.append(cell.ljust(widths[i]))
            else:
                out.append(cell.rjust(widths[i]))
        return "  ".join(out).rstrip()

    return [line(headers), *(line(cells) for cells in body)]


def format_count(value: float) -> str:
    """A count with thousands separators: ``12,000``."""
    return f"{value:,.0f}"


def format_number(value: float | None) -> str:
    """A statistic in at most about 6 characters: ``3.1``, ``1,204``, ``12.3M``; ``-`` for None."""
    if value is None:
        return "-"
    if value >= 10_000_000:
        return f"{value / 1_000_000:,.1f}M"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_percent(value: float | None) -> str:
    """A ratio as a percentage with one decimal: ``7.1%``; ``-`` for None."""
    return "-" if value is None else f"{100 * value:.1f}%"

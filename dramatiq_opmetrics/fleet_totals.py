"""Totals over the whole history of the fleet, for counters that never decrease (the Prometheus exporter).

A Prometheus counter is a total since some start; a value lower than the one scraped before is taken for a
reset, and ``rate()`` then counts the whole new value as an increase. So each total here is a function of
what the database holds, the same for every reader, and it can only grow as samples are added:

- Rolled-up days (those with daily rows, as :func:`~dramatiq_opmetrics.query.days_not_rolled_up` defines
  them) count their daily rows; the other days (today, yesterday before the nightly rollup) count their raw
  rows, read from the recent tier plus the raw rows it does not hold yet, as
  :func:`~dramatiq_opmetrics.series.query_totals` reads them. A day's daily rows hold exactly the counts and
  histogram bucket counts of its raw rows, so the rollup moves a day from one part to the other without
  changing a total; the prune removes raw rows of rolled-up days only, which are counted from their daily
  rows. Late rows of a day already rolled up are counted once the rollup rolls the day up again (the next
  night), as the query API counts them.
- Every read runs in one snapshot (``REPEATABLE READ`` on PostgreSQL, one read transaction on SQLite): a
  rollup committing meanwhile is seen whole or not at all, so a day is never counted twice or missed. A
  first read (nothing kept yet) reads the rolled-up months on a second connection beside the days not
  rolled up, each in a snapshot of its own, and keeps the result only if both saw the same monthly rows
  (else it reads again in one snapshot).
- A row of a day committed while the rollup aggregates that day (between its statement's snapshot and its
  commit) is counted from the raw rows before the rollup commits and missing from the daily rows after:
  its series' totals drop by that many until the next rollup rolls the day up again. No reader-side
  snapshot avoids it (the daily rows miss the row); only making writers of that day wait for the rollup
  would (see the README's exporter section).
- Histograms are counted per bucket key of the stored sketches (:mod:`~dramatiq_opmetrics.sketch`), which
  are integers, the same from daily rows, monthly rows, the tier's keys and raw rows.

What is kept between reads (a reader is meant to live as long as its process), each entry checked against
the database on every read, so that what is kept is only ever a copy of what is stored:

- The rolled-up months: per calendar month the totals of its rolled-up days, read from its monthly rows
  (:mod:`~dramatiq_opmetrics.rollup`), kept with a fingerprint of its daily and monthly rows (per day: the
  rows, their samples and latest ``rolled_up_at``). A month is read again only when its fingerprint changes:
  the nightly rollup adding a day, or rolling one up again for late rows. The rollup merges a day's month in
  the transaction that writes the day, so each read first checks one aggregate of the small monthly table
  (rows, daily rows and samples merged, latest times) and reads the daily rows' fingerprints only when it
  changed. Daily rows written otherwise than by the rollup (an import) are seen once the rollup's next run
  merges their month.
- The recent tier's buckets of the days not rolled up: each bucket group (a width and a start) is kept with
  its total count and row count, read in one statement a read; a group is read again (with its keys) only
  when those change. So a read reads the keys of the minutes folded since the last read, and the raw rows
  the tier does not hold yet (the minute in progress).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Text, case, cast, func, select, text, tuple_, union_all

from .database import LONG_READ_SETTINGS, fetch_rows, local_settings
from .metric_types import MetricType
from .models import LabelSet, OperationalMetricDaily, OperationalMetricMonthly, RecentAggregate
from .packed_histograms import HistogramSum
from .partitions import day_bounds
from .query import RangeMerge, days_not_rolled_up, labels_of_keys
from .recent_tier import (
    KEY_PARAMETERS,
    BucketAggregate,
    keyed_raw_sql,
    read_state,
)
from .rollup import WHOLE_MONTH, month_of, next_month
from .series import raw_aggregates, tier_layout
from .sketch import Histogram, histogram_of_key_counts, histogram_of_keys
from .value_lists import in_values

#: The metric types whose totals are read: those counted or summed (not the sampled gauges: queue depth,
#: oldest-message age and worker threads, whose totals mean nothing).
COUNTED_TYPES: tuple[MetricType, ...] = (
    MetricType.PROCESSING_TIME,
    MetricType.WAIT_TIME,
    MetricType.ERROR,
    MetricType.SKIPPED,
    MetricType.PROMPT_TOKENS,
    MetricType.COMPLETION_TOKENS,
    MetricType.CONFIDENCE,
    MetricType.DROPPED_SAMPLES,
    MetricType.REJECTED_SAMPLES,
    MetricType.CLOCK_SKEW,
)
#: The metric types whose totals carry a histogram of their values.
HISTOGRAM_TYPES = frozenset({MetricType.PROCESSING_TIME, MetricType.WAIT_TIME, MetricType.CONFIDENCE})
#: The first day a history may start.
_EARLIEST_DAY = dt.date(1970, 1, 1)
_TYPES = {member.value: member for member in MetricType}

#: A series: a metric type and a labels key (:mod:`~dramatiq_opmetrics.labels`).
SeriesKey = tuple[MetricType, str]


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


@dataclass
class Total:
    """The total of one series: how many samples, the sum of their values and, for the types of
    :data:`HISTOGRAM_TYPES`, their histogram.

    ``value_sum`` is a float sum: exact for integer values (token counts, dropped samples, errors), which are
    the ones summed into counters; for other values a sum read along another path (daily rows, the tier)
    may differ in its last bits, so counters of those are made from the histogram instead.
    """

    count: int = 0
    value_sum: float = 0.0
    histogram: HistogramSum | None = None

    def add(self, count: int, value_sum: float, histogram: HistogramSum | Histogram | bytes | None) -> None:
        """Add ``count`` samples summing to ``value_sum``, and their histogram (packed, or not) if given."""
        self.count += count
        self.value_sum += value_sum
        if histogram is None:
            return
        if self.histogram is None:
            self.histogram = HistogramSum()
        if isinstance(histogram, bytes):
            self.histogram.add_packed(histogram)
        elif isinstance(histogram, HistogramSum):
            self.histogram.add(histogram)
        else:
            self.histogram.add_histogram(histogram)

    def plus(self, other: Total) -> Total:
        """A new total of this one and ``other`` (neither changes)."""
        total = Total(self.count, self.value_sum, None if self.histogram is None else self.histogram.copy())
        total.add(other.count, other.value_sum, other.histogram)
        return total


@dataclass(frozen=True)
class FleetTotals:
    """The totals of every series over the whole history, read in one snapshot.

    Parameters:
      totals(Mapping[SeriesKey, Total]): per (metric type, labels key); read them, do not change them.
      labels(Mapping[str, Mapping[str, str]]): the labels of each labels key.
      not_rolled_up(tuple[date, ...]): the days read from raw rows and the recent tier.
    """

    totals: Mapping[SeriesKey, Total]
    labels: Mapping[str, Mapping[str, str]]
    not_rolled_up: tuple[dt.date, ...] = ()


@dataclass
class _Kept:
    fingerprint: object
    totals: dict[Any, Total] = field(default_factory=dict)


class FleetTotalsReader:
    """Reads :class:`FleetTotals`, keeping what it read of rolled-up months and of the recent tier between
    reads (see the module documentation). Thread-safe: reads run one at a time.

    Parameters:
      engine(Engine): the metrics database.
      clock(Callable[[], datetime]): the current time, timezone-aware UTC (which day is today).
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], dt.datetime] = utc_now) -> None:
        self.engine = engine
        self.clock = clock
        self._lock = threading.Lock()
        self._months: dict[dt.date, _Kept] = {}
        self._monthly: tuple[Any, ...] | None = None
        self._rolled_up: dict[SeriesKey, Total] = {}
        self._buckets: dict[tuple[int, dt.datetime], _Kept] = {}
        self._merged: dict[tuple[MetricType, int], Total] = {}
        self._merged_from: dict[tuple[int, dt.datetime], _Kept] = {}
        self._keys_of_ids: dict[int, str] = {}
        self._labels: dict[str, Mapping[str, str]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="opmetrics-totals")

    def read(self) -> FleetTotals:
        """The totals now, in one snapshot of the database."""
        with self._lock:
            first = self._monthly is None
            if first and self.engine.dialect.name == "postgresql":
                found = self._first_read()
                if found is not None:
                    return found
            with self._snapshot() as connection:
                if self._read_rolled_up(connection) or first:
                    self._read_labels(connection)
                recent, days = self._read_recent(connection)
            return self._totals(recent, days)

    def _first_read(self) -> FleetTotals | None:
        """A first read (nothing kept yet, PostgreSQL): the rolled-up months on a connection of their own while
        this one reads the days not rolled up, the two long parts side by side (10% of a first read). Each
        reads its own snapshot; their monthly rows' fingerprints must agree (no rollup wrote between them),
        else None: the caller reads again, in one snapshot. Later reads check one aggregate of the monthly
        rows: a thread and a connection would cost more than they save."""
        months = self._pool.submit(self._read_rolled_up_apart)
        try:
            with self._snapshot() as connection:
                monthly = _monthly_fingerprint(connection)
                recent, days = self._read_recent(connection)
        except BaseException:
            concurrent.futures.wait([months])  # it changes what is kept: never beside a later read
            raise
        # This connection's transaction is over before the wait: behind a pool of one server connection
        # (PgBouncer) the other read runs meanwhile.
        months.result()
        if monthly != self._monthly:
            return None
        with self._snapshot() as connection:
            self._read_labels(connection)
        return self._totals(recent, days)

    def _read_rolled_up_apart(self) -> None:
        """:meth:`_read_rolled_up` on a connection and in a snapshot of its own."""
        with self._snapshot() as connection:
            self._read_rolled_up(connection)

    def _read_labels(self, connection: Connection) -> None:
        """Read the labels of the rolled-up series' label keys new to the reader."""
        wanted = sorted({labels_key for _, labels_key in self._rolled_up} - self._labels.keys())
        if wanted:
            self._labels.update(labels_of_keys(connection, wanted))

    def _totals(self, recent: Mapping[SeriesKey, Total], days: tuple[dt.date, ...]) -> FleetTotals:
        totals: dict[SeriesKey, Total] = dict(self._rolled_up)
        for key, total in recent.items():
            kept = totals.get(key)
            totals[key] = total if kept is None else kept.plus(total)
        return FleetTotals(totals, dict(self._labels), days)

    def _read_recent(self, connection: Connection) -> tuple[dict[SeriesKey, Total], tuple[dt.date, ...]]:
        today = self.clock().astimezone(dt.UTC).date()
        days = tuple(days_not_rolled_up(connection, _EARLIEST_DAY, today))
        return self._read_not_rolled_up(connection, days), days

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection = connection.execution_options(isolation_level="REPEATABLE READ")
                with connection.begin(), local_settings(connection, LONG_READ_SETTINGS):
                    yield connection
            else:
                # The sqlite3 module opens no transaction for reads: one is begun, so that every statement
                # reads the same snapshot (WAL mode).
                connection.exec_driver_sql("BEGIN")
                try:
                    yield connection
                finally:
                    connection.rollback()

    # Rolled-up days: by month, read again when a month's daily or monthly rows change.

    def _read_rolled_up(self, connection: Connection) -> bool:
        """Read the rolled-up months that changed; whether any did."""
        # The rollup merges a day's month in the transaction that writes the day's daily rows: the monthly
        # rows change whenever the rollup writes. Only then are the daily rows' fingerprints read (a scan of
        # a year of daily rows' read index: about 0.1 s at the benchmark's scale).
        monthly = _monthly_fingerprint(connection)
        if self._months and monthly == self._monthly:
            return False
        fingerprints = _month_fingerprints(connection)
        # What is kept changes only once every changed month is read (a read that fails changes nothing).
        months = {month: kept for month, kept in self._months.items() if month in fingerprints}
        changed = len(months) < len(self._months)
        for month, fingerprint in fingerprints.items():
            kept = months.get(month)
            if kept is not None and kept.fingerprint == fingerprint:
                continue
            months[month] = _Kept(fingerprint, _month_totals(connection, month))
            changed = True
        if changed:
            merged: dict[SeriesKey, Total] = {}
            for month in sorted(months):
                for key, total in months[month].totals.items():
                    found = merged.get(key)
                    if found is None:
                        found = merged[key] = Total()
                    found.add(total.count, total.value_sum, total.histogram)
            self._months, self._rolled_up = months, merged
        self._monthly = monthly
        return changed

    # Days not rolled up: the recent tier's bucket groups (kept) and the raw rows it does not hold.

    def _read_not_rolled_up(self, connection: Connection, days: Sequence[dt.date]) -> dict[SeriesKey, Total]:
        state = read_state(connection)
        spans: list[tuple[int, dt.datetime, dt.datetime]] = []
        pieces: list[tuple[dt.datetime, dt.datetime, int | None]] = []
        for day in days:
            start, end = day_bounds(day)
            day_spans, day_pieces = tier_layout(state, start, end, None)
            spans += day_spans
            pieces += day_pieces
        self._bucket_groups(connection, spans)
        tier = self._merge_bucket_groups()
        raw = _raw_totals(connection, pieces) if pieces else {}
        by_id = dict(tier)
        for key, total in raw.items():
            found = by_id.get(key)
            by_id[key] = total if found is None else found.plus(total)
        unknown = {label_set_id for _, label_set_id in by_id} - self._keys_of_ids.keys()
        if unknown:
            rows = connection.execute(
                select(LabelSet.id, LabelSet.labels_key, LabelSet.labels).where(in_values(LabelSet.id, sorted(unknown)))
            )
            for label_set_id, labels_key, labels in rows:
                self._keys_of_ids[label_set_id] = labels_key
                self._labels.setdefault(labels_key, dict(labels))
        totals: dict[SeriesKey, Total] = {}
        for (metric_type, label_set_id), total in by_id.items():
            known = self._keys_of_ids.get(label_set_id)
            if known is not None:
                _add_to(totals, (metric_type, known), total.count, total.value_sum, total.histogram)
        return totals

    def _merge_bucket_groups(self) -> dict[tuple[MetricType, int], Total]:
        """The totals of every kept bucket group together: the groups added since the last read are added to
        what was merged then; when a group merged then changed or left the layout (every 10 minutes, when
        the tier's wider buckets replace its narrower ones), every group is merged again. Totals once handed
        out are never changed (a reader of the previous read may still use them)."""
        current = self._buckets
        if any(current.get(group) is not kept for group, kept in self._merged_from.items()):
            self._merged, self._merged_from = {}, {}
        merged = self._merged
        for group, kept in current.items():
            if group in self._merged_from:
                continue
            self._merged_from[group] = kept
            for key, total in kept.totals.items():
                found = merged.get(key)
                merged[key] = total if found is None else found.plus(total)
        return merged

    def _bucket_groups(self, connection: Connection, spans: Sequence[tuple[int, dt.datetime, dt.datetime]]) -> None:
        """Keep the totals of each bucket group (width, start) of ``spans``, per (metric type, label set id):
        those whose count and rows are unchanged as they are, the others read with their keys."""
        if not spans:
            self._buckets.clear()
            return
        tier = RecentAggregate.__table__
        types = list(COUNTED_TYPES)
        parts = [
            select(tier.c.width_minutes, tier.c.bucket_start, func.sum(tier.c.count), func.count())
            .where(
                tier.c.width_minutes == width,
                tier.c.bucket_start >= low,
                tier.c.bucket_start < high,
                tier.c.metric_type.in_(types),
            )
            .group_by(tier.c.width_minutes, tier.c.bucket_start)
            for width, low, high in spans
        ]
        statement = parts[0] if len(parts) == 1 else union_all(*parts)
        fingerprints = {
            (width, start): (int(count), int(rows)) for width, start, count, rows in connection.execute(statement)
        }
        for group in list(self._buckets):
            if group not in fingerprints:
                del self._buckets[group]
        changed = [
            group
            for group, fingerprint in fingerprints.items()
            if self._buckets.get(group, _NO_KEPT).fingerprint != fingerprint
        ]
        # Kept only once read whole (a read that fails keeps no group half read).
        read = {group: _Kept(fingerprints[group]) for group in changed}
        histogram_types = sorted(HISTOGRAM_TYPES)
        for first in range(0, len(changed), _GROUPS_PER_READ):
            chunk = changed[first : first + _GROUPS_PER_READ]
            query = select(
                tier.c.width_minutes,
                tier.c.bucket_start,
                cast(tier.c.metric_type, Text),
                tier.c.label_set_id,
                tier.c.count,
                tier.c.sum,
                case((tier.c.metric_type.in_(histogram_types), tier.c["keys"])),
            ).where(tuple_(tier.c.width_minutes, tier.c.bucket_start).in_(chunk), tier.c.metric_type.in_(types))
            # Read in binary: the tier's keys of a day are a million integers, whose text takes several times
            # longer to parse.
            for width, start, row_type, label_set_id, count, total, keys in fetch_rows(connection, query):
                histogram = None if keys is None else histogram_of_keys(keys)
                _add_to(read[(width, start)].totals, (_TYPES[row_type], label_set_id), count, total, histogram)
        self._buckets.update(read)


#: Bucket groups whose rows are read per statement.
_GROUPS_PER_READ = 200
_NO_KEPT = _Kept(None)


def _add_to(
    totals: dict[Any, Total],
    key: Any,
    count: int,
    value_sum: float,
    histogram: HistogramSum | Histogram | bytes | None,
) -> None:
    found = totals.get(key)
    if found is None:
        found = totals[key] = Total()
    found.add(count, value_sum, histogram)


def _raw_totals(
    connection: Connection, pieces: Sequence[tuple[dt.datetime, dt.datetime, int | None]]
) -> dict[tuple[MetricType, int], Total]:
    """The totals of the raw rows of ``pieces`` (as :func:`~dramatiq_opmetrics.series.tier_layout` makes them)
    per (metric type, label set id), one histogram per series made from the counts of its keys."""
    if connection.dialect.name != "postgresql":
        return _totals_of_aggregates(raw_aggregates(connection, pieces, set(COUNTED_TYPES), None))
    # PostgreSQL counts the rows per series and key: a few rows per series travel, not every raw row with
    # its time (the raw rows not folded yet are read at every scrape).
    params: dict[str, object] = {**KEY_PARAMETERS, "types": sorted(member.value for member in COUNTED_TYPES)}
    chosen = []
    for index, (low, high, above_id) in enumerate(pieces):
        above = "" if above_id is None else f" AND id > :ri{index}"
        chosen.append(
            keyed_raw_sql(
                f"recorded_at >= :rl{index} AND recorded_at < :rh{index}{above}"
                " AND metric_type = ANY(CAST(CAST(:types AS text[]) AS opmetrics_metric_type[]))"
            )
        )
        params[f"rl{index}"], params[f"rh{index}"], params[f"ri{index}"] = low, high, above_id
    statement = (
        "SELECT CAST(metric_type AS text), label_set_id, key, count(*), sum(value)"
        f" FROM ({' UNION ALL '.join(chosen)}) AS keyed GROUP BY metric_type, label_set_id, key"
    )
    totals: dict[tuple[MetricType, int], Total] = {}
    keys: dict[tuple[MetricType, int], dict[int | None, int]] = {}
    for row_type, label_set_id, key, count, value_sum in connection.execute(text(statement), params):
        series = (_TYPES[row_type], label_set_id)
        _add_to(totals, series, int(count), value_sum, None)
        if series[0] in HISTOGRAM_TYPES:
            keys.setdefault(series, {})[key] = int(count)
    for series, counts in keys.items():
        totals[series].add(0, 0.0, histogram_of_key_counts(counts))
    return totals


def _totals_of_aggregates(aggregates: Iterable[BucketAggregate]) -> dict[tuple[MetricType, int], Total]:
    """The totals of raw rows' minute aggregates per (metric type, label set id), one histogram per series
    made from all its keys at once (a histogram per minute costs a dense run of counts each)."""
    totals: dict[tuple[MetricType, int], Total] = {}
    keys: dict[tuple[MetricType, int], list[int | None]] = {}
    for aggregate in aggregates:
        key = (aggregate.metric_type, aggregate.label_set_id)
        _add_to(totals, key, aggregate.count, aggregate.sum, None)
        if aggregate.metric_type in HISTOGRAM_TYPES:
            keys.setdefault(key, []).extend(aggregate.keys)
    for key, found in keys.items():
        totals[key].add(0, 0.0, histogram_of_keys(found))
    return totals


def _monthly_fingerprint(connection: Connection) -> tuple[Any, ...]:
    """What changes whenever the monthly rows change: their number, the daily rows and samples they merged and
    their latest ``source_rolled_up_at`` and ``merged_at`` (one aggregate over the small monthly table)."""
    monthly = OperationalMetricMonthly.__table__
    query = select(
        func.count(),
        func.sum(monthly.c.daily_rows),
        func.sum(monthly.c.sample_count),
        func.max(monthly.c.source_rolled_up_at),
        func.max(monthly.c.merged_at),
    ).where(monthly.c.part == WHOLE_MONTH)
    return tuple(connection.execute(query).one())


def _month_fingerprints(connection: Connection) -> dict[dt.date, object]:
    """Per month with daily rows: per day its daily rows, their samples and latest ``rolled_up_at``, and the
    month's whole-month rows, their daily rows and latest ``merged_at`` (a merge rewrites every row of the
    month, so those change with any of them; the rows of its thirds and suffixes are not read)."""
    daily = OperationalMetricDaily.__table__
    days: dict[dt.date, list[tuple[Any, ...]]] = {}
    query = select(daily.c.date, func.count(), func.sum(daily.c.sample_count), func.max(daily.c.rolled_up_at))
    for day, rows, samples, rolled_up_at in connection.execute(query.group_by(daily.c.date)):
        day = day if isinstance(day, dt.date) else dt.date.fromisoformat(day)
        days.setdefault(month_of(day), []).append((day, int(rows), int(samples), rolled_up_at))
    monthly = OperationalMetricMonthly.__table__
    per_month = (
        select(monthly.c.month, func.count(), func.sum(monthly.c.daily_rows), func.max(monthly.c.merged_at))
        .where(monthly.c.part == WHOLE_MONTH)
        .group_by(monthly.c.month)
    )
    months = {
        (month if isinstance(month, dt.date) else dt.date.fromisoformat(month)): (int(rows), int(merged), merged_at)
        for month, rows, merged, merged_at in connection.execute(per_month)
    }
    return {month: (tuple(sorted(found)), months.get(month)) for month, found in days.items()}


def _month_totals(connection: Connection, month: dt.date) -> dict[SeriesKey, Total]:
    """The totals of the rolled-up days of ``month``, per series: its monthly rows where they cover its days,
    else its daily rows (as a range read of the month reads them)."""
    merge = RangeMerge(metric_types=COUNTED_TYPES)
    last_day = next_month(month) - dt.timedelta(days=1)
    totals: dict[SeriesKey, Total] = {}
    for row in connection.execute(merge.rolled_up_query(connection, month, last_day)):
        row_type, labels_key, _, _, count, value_sum, *_, packed, stored = row
        metric_type = _TYPES[row_type]
        histogram: Histogram | bytes | None = None
        if metric_type in HISTOGRAM_TYPES:
            if packed is not None:
                histogram = bytes(packed)
            elif stored is not None:
                histogram = Histogram.from_json(stored)
            else:
                # A row without a histogram (none is written so): its samples at their average.
                histogram = Histogram()
                histogram.add(value_sum / count if count else 0.0, int(count))
        _add_to(totals, (metric_type, labels_key), int(count), value_sum, histogram)
    return totals

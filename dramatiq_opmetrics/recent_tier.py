"""The recent tier: per-minute, per-10-minute and hourly aggregates of raw rows, kept current for the fleet.

Charts of the last hours would otherwise read every raw row of their range (a fleet writing 20 million
samples a day has 14,000 a minute). :func:`fold` keeps ``opmetrics_recent_aggregates`` up to date: one row
per (width, bucket, metric type, label set), for buckets of 1, 10 and 60 minutes, holding the ``count``,
``sum``, ``min`` and ``max`` of the raw rows in it, ``keys``, the multiset of their histogram bucket keys
(:mod:`~dramatiq_opmetrics.sketch`: the key of each value, None for 0, ``NEGATIVE_KEY_BASE - key`` for a
negative value), from which percentiles within 1% are read
(:func:`~dramatiq_opmetrics.sketch.histogram_of_keys`), and those percentiles, ``p50``/``p95``/``p99``.
:func:`~dramatiq_opmetrics.series.query_series` reads it.

Design: fold each raw row exactly once, when its minute is over; build wider buckets once, when complete.

- The raw rows stay the source of truth, insert-only (retention removes whole old days). Each raw row has
  an id from one sequence. The tier's 1-minute buckets hold exactly the raw rows with ``id <= folded_id``
  and ``floor <= recorded_at < cutoff`` (``opmetrics_recent_state``); its 10-minute and hourly buckets hold
  those of the buckets that end by ``built_10m_until`` and ``built_60m_until``. A pass moves the cutoff to
  the start of the current minute and ``folded_id`` to a horizon, adds the rows that enter to their
  1-minute buckets (count and sum added, min and max widened, keys appended, percentiles recomputed), then
  builds the 10-minute buckets that are now complete from their 1-minute ones and the hourly ones from
  those. Each step is one transaction under a lock: a crash folds nothing twice, two folders serialise,
  and a re-run finds nothing new.
- Why whole minutes: the fleet's folder runs :data:`FOLD_OFFSET_S` after each minute, once the writers
  (flushing every second) have written it, so each minute's buckets are written once, already complete,
  with their percentiles; folding the minute in progress instead would rewrite it at every fold. Why build
  wider buckets once: appending to a 10-minute bucket at every fold would rewrite its growing keys ten
  times. Each raw row is read once, when it is folded.
- A late sample (recorded long after its time, e.g. after an outage) gets a new id like any other row, so
  the next pass folds it into its own, older, 1-minute bucket, and into the wider ones already built.
- Rows are found by the raw table's primary key (id, recorded_at) alone, never by time (its time index is
  a BRIN index, whose newest pages are read whole until summarised): the new ids, and the older ids left
  because they were recorded from the old cutoff on, which start at ``skipped_id``.
- The raw partitions' time index is summarised by each fold (the new pages of the partitions being
  written: :func:`~dramatiq_opmetrics.partitions.summarize_new_pages`, in a savepoint, about 12 µs a page):
  a BRIN index holds nothing of the pages written since its last summary, so every read of a time range of
  the partition (a series' edges, the minutes not folded yet, today's raw rows of a report) would read them
  all, up to a fifth of a busy day's rows between two autovacuums of the partition (the last hour per minute
  took 1.1 s instead of 0.1 s at 20 million rows none summarised). A database user that does not own the
  tables may not summarise: its fold warns once and goes on without (so does one whose summary fails
  otherwise, e.g. cut by the statement timeout).
- The subtle part is the horizon: ids are handed out when a row is inserted, not when its transaction
  commits, so when the newest visible row has id ``M`` a writer may still be inside a transaction holding
  smaller ids. Folding up to ``M`` then would skip those rows forever. On PostgreSQL a pass reads ``M``,
  then the transactions holding a write lock on the raw table (``pg_locks``; every insert takes it before
  it takes an id), and ``M`` becomes the horizon once all of those have ended (a pass waits up to
  :data:`HORIZON_WAIT_S` for that; otherwise ``M`` is remembered as a candidate for the next pass, which
  folds up to the last confirmed horizon meanwhile). On SQLite a pass holds the database's write lock,
  so every id up to ``M`` is committed.
- Day rows (``opmetrics_recent_days``, migration 0011): per UTC day, metric type and label set, the count,
  sum, min, max and packed histogram (:mod:`~dramatiq_opmetrics.packed_histograms`) of the day's 10-minute
  buckets, so that a range read takes a day not rolled up yet (today, yesterday before the nightly rollup)
  from a few thousand rows instead of collecting the key of each of its millions of raw rows (4.75 times a
  plain ``GROUP BY`` of the day). The day rows of a day ``D`` hold the raw rows that the tier's 10-minute
  buckets of ``D`` starting before ``built_days_until`` hold: those with ``id <= folded_id`` recorded in
  ``[D, min(D + 1 day, built_days_until))``, for the days from the first midnight from the floor on
  (:func:`days_floor`: the day before is not all in the tier). Each 10-minute bucket is merged into its day
  row once, in Python, in the transaction that builds it (:data:`DAY_ROWS_WIDTH_MINUTES` says why 10 minutes
  and not an hour), and ``built_days_until`` moves to the 10-minute buckets' end; the first fold after the
  migration merges the buckets already built. A late row recorded before ``built_days_until`` is added to
  its day row in the transaction that folds it (looked for with the other late rows). Why packed histograms
  and not keys: a day row is read whole, merged with the range's other rows as daily rows are, never split.
  :func:`day_aggregates` reads a day: its day rows plus the raw rows they do not hold (recorded from
  ``built_days_until`` on: the last ten minutes at most, plus the minutes not folded; and ids above
  ``folded_id``), the watermark read before and after as :mod:`~dramatiq_opmetrics.series` does.
- Hour rows (``opmetrics_recent_hours``, migration 0013): the same per UTC hour, merged in the same
  transactions from the same 10-minute buckets and late rows, up to the same ``built_days_until``. The
  percentiles of totals over windows of hours (:func:`~dramatiq_opmetrics.series.query_totals`:
  ``report --last 24h``, alert rules over hours) take the window's whole hours from them, a few hundred
  bytes each summed without parsing, instead of the key of each value of the hourly buckets: 24 hours at
  20 million raw rows a day and 200 label sets in 0.4-0.5 s instead of 6-8 s. Merging them costs the fold
  one more read and upsert of an hour's rows every ten minutes (26-35 ms on a slow afternoon of the
  benchmark machine, as much as the day rows' merge: 3 ms a minute).
- Readers (:mod:`~dramatiq_opmetrics.series`) add the raw rows the tier does not hold (ids above
  ``folded_id``, the minutes from the cutoff on, rows older than the floor, partial minutes at the edges)
  to its buckets, so results are exact and current whatever the fold's lag.
- Retention: buckets older than ``retention_days`` (default :data:`DEFAULT_RECENT_RETENTION_DAYS`, enough
  for a 72-hour view) are deleted by the fold, which moves ``floor`` up, with the day rows of the days
  starting before it; the raw rows, the nightly rollup and
  the prune are untouched (they never read the tier).
- Why keys and not a histogram per row: building a histogram in SQL groups the rows by bucket key, and at
  a few dozen values per minute and label set nearly every value is a group of its own, which costs four
  times a plain ``GROUP BY``; appending keys to an array costs about as much as the ``GROUP BY`` itself. What
  costs is sorting, so each key is sorted once per width, with its bucket's keys only: the raw rows are
  grouped by hashing (:data:`FOLD_SETTINGS`) and each 1-minute bucket's keys sorted on their own, and a wider
  bucket unnests its finer buckets' keys, the finer buckets sorted by wider bucket first (never a sort of
  every key by bucket), the keys as plain integers (:data:`SORTED_KEYS_SQL`). On PostgreSQL each step is one
  ``INSERT ... SELECT ... ON CONFLICT``: no row travels to Python. The table is
  partitioned by width there, and an index holds every column but ``keys`` (migration 0009), so that reads
  without keys are index-only scans of one width: ``keys`` stays in the rows (PostgreSQL moves values out
  of line only in rows above about 2 KB), which makes a 10-minute row about 1.4 KB.
- Cost, measured by ``benchmarks/bench_recent.py`` (20 million raw rows a day, 200 label sets): see the
  README's "Recent tier" section.

Run it in one process of the fleet per interval: :class:`RecentTierFolder` (a background thread, claiming
each interval fleet-wide like the queue depth sampler; :class:`~dramatiq_opmetrics.OpMetrics` starts one in
every worker process), or call :func:`fold` from a scheduler, or run ``dramatiq-opmetrics fold``.

Example::

    from dramatiq_opmetrics.recent_tier import fold
    result = fold(engine)   # folds every raw row of the minutes that are over
    print(result.rows, result.folded_id, result.cutoff)
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import weakref
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    Text,
    bindparam,
    cast,
    delete,
    exc,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite

from .aggregate import PERCENTILES, STORED_KEY_PARAMETERS, STORED_KEY_SQL, Aggregate, aggregate_raw
from .database import LONG_READ_SETTINGS, fetch_rows, transaction_settings
from .interval_claims import DatabaseIntervalClaim, IntervalClaim, IntervalThread, interval_start
from .locks import advisory_xact_lock
from .metric_types import METRIC_TYPE_ENUM_NAME, MetricType
from .models import (
    RAW_ID_SEQUENCE,
    RAW_TABLE,
    RECENT_HOURS_TABLE,
    RECENT_STATE_TABLE,
    RECENT_TABLE,
    OperationalMetric,
    RecentAggregate,
    RecentDay,
    RecentHour,
    RecentState,
)
from .packed_histograms import HistogramSum
from .partitions import day_bounds, summarize_new_pages
from .rollup import lock_for_rollup
from .sketch import (
    MAPPING,
    NEGATIVE_KEY_BASE,
    bucket_value,
    histogram_of_key_counts,
    signed_bucket_key,
)
from .value_lists import in_values

logger = logging.getLogger(__name__)

#: Days of recent buckets kept (the raw rows are kept by their own retention).
DEFAULT_RECENT_RETENTION_DAYS = 3
#: Seconds between two folds of the fleet (aligned to wall-clock multiples).
DEFAULT_FOLD_INTERVAL_S = 60.0
#: Seconds after each interval start that the fleet's fold runs: by then the writers have written the samples
#: of the minute that just ended (they flush every second), so it is folded whole, once.
FOLD_OFFSET_S = 5.0
#: Raw ids folded per transaction (a catch-up after a long stop is folded in several).
FOLD_CHUNK_IDS = 1_000_000
#: Seconds a pass waits for the writers' open transactions to end before folding what is confirmed.
HORIZON_WAIT_S = 2.0
#: Seconds between two looks at the writers' open transactions while waiting.
HORIZON_POLL_S = 0.01
#: The advisory lock that serialises folds of one installation (PostgreSQL).
FOLD_LOCK = "recent_fold"
#: The name of the fleet-wide job claimed by :class:`RecentTierFolder` for each interval.
FOLD_JOB = "recent_fold"

_STATE_ID = 1
#: Where the zero bucket (key None) sorts among stored keys: above every negative, below every positive one.
_ZERO_SORT_KEY = NEGATIVE_KEY_BASE // 2
#: Where buckets of every width are aligned (multiples of their width since then), in Python and in SQL.
BUCKET_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
BUCKET_EPOCH_SQL = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"


def _sort_key(key: int | None) -> int:
    return _ZERO_SORT_KEY if key is None else key


def quantiles_of_keys(keys: Sequence[int | None], low: float, high: float) -> tuple[float | None, ...]:
    """The :data:`~dramatiq_opmetrics.aggregate.PERCENTILES` of the values whose stored keys are ``keys``
    (and whose extremes are ``low`` and ``high``): what :meth:`Histogram.quantiles` reads from their
    histogram, clamped to the extremes, computed by sorting the keys (the value at rank ``floor(q * (n -
    1))`` is the ``floor(q * (n - 1))``-th smallest key's bucket)."""
    if not keys:
        return (None,) * len(PERCENTILES)
    ordered = sorted(keys, key=_sort_key)
    last = len(ordered) - 1
    return tuple(min(max(_key_value(ordered[math.floor(fraction * last)]), low), high) for fraction in PERCENTILES)


def _key_value(key: int | None) -> float:
    if key is None:
        return 0.0
    if key < NEGATIVE_KEY_BASE // 2:
        return -bucket_value(NEGATIVE_KEY_BASE - key)
    return bucket_value(key)


def bucket_floor(at: dt.datetime, width_minutes: int) -> dt.datetime:
    """The start of the bucket of ``width_minutes`` holding ``at`` (UTC, aligned to multiples since 2000)."""
    seconds = width_minutes * 60
    offset = (at.astimezone(dt.UTC) - BUCKET_EPOCH) // dt.timedelta(seconds=1)
    return BUCKET_EPOCH + dt.timedelta(seconds=(offset // seconds) * seconds)


@dataclass
class BucketAggregate:
    """Raw rows of one metric type and label set in one bucket, as stored in the tier.

    Parameters:
      width_minutes(int): the bucket's width; bucket_start(datetime): where it starts (UTC).
      metric_type(MetricType), label_set_id(int): what and which label set.
      count(int), sum(float), min(float), max(float): of the values.
      keys(list): the stored key of each value (:func:`signed_bucket_key`).
    """

    width_minutes: int
    bucket_start: dt.datetime
    metric_type: MetricType
    label_set_id: int
    count: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    keys: list[int | None] = field(default_factory=list)
    quantiles: tuple[float | None, ...] | None = None

    def add(self, value: float) -> None:
        """Count one value."""
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.keys.append(signed_bucket_key(value))

    def merge(self, other: BucketAggregate) -> None:
        """Add another aggregate's values."""
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.keys.extend(other.keys)


def aggregate_rows(
    rows: Iterable[tuple[dt.datetime, MetricType | str, int, float]], widths: Sequence[int] = (1,)
) -> list[BucketAggregate]:
    """Aggregate raw rows ``(recorded_at, metric_type, label_set_id, value)`` per bucket of each width.

    The Python twin of :func:`aggregate_sql` (SQLite; and PostgreSQL when rows are already in Python)."""
    found: dict[tuple[int, dt.datetime, MetricType, int], BucketAggregate] = {}
    minute_starts: dict[dt.datetime, dict[int, dt.datetime]] = {}
    for recorded_at, metric_type, label_set_id, value in rows:
        minute = recorded_at.replace(second=0, microsecond=0)
        starts = minute_starts.get(minute)
        if starts is None:
            starts = minute_starts[minute] = {width: bucket_floor(minute, width) for width in widths}
        row_type = MetricType(metric_type)
        for width in widths:
            key = (width, starts[width], row_type, label_set_id)
            bucket = found.get(key)
            if bucket is None:
                bucket = found[key] = BucketAggregate(width, starts[width], row_type, label_set_id)
            bucket.add(value)
    return list(found.values())


def bin_sql(connection: Connection, width_minutes: int, column: str = "recorded_at") -> str:
    """SQL of the start of the bucket of ``width_minutes`` holding timestamp ``column`` (PostgreSQL)."""
    if (connection.dialect.server_version_info or (0,)) >= (14,):
        return f"date_bin('{width_minutes} minutes', {column}, {BUCKET_EPOCH_SQL})"
    seconds = width_minutes * 60
    return f"to_timestamp(floor(extract(epoch FROM {column}) / {seconds}) * {seconds})"


#: The parameters of :data:`~dramatiq_opmetrics.aggregate.STORED_KEY_SQL` and :func:`picks_sql`.
KEY_PARAMETERS: dict[str, object] = {
    **STORED_KEY_PARAMETERS,
    "factor": 2.0 / (1 + MAPPING.gamma),
    "zero_sort": _ZERO_SORT_KEY,
    **{f"q{index}": fraction for index, fraction in enumerate(PERCENTILES)},
}
#: SQL of the sorted array of keys ``{0}`` (an aggregate): the keys are sorted as plain integers, the zero
#: bucket's NULL as its sort key and put back after (no key has that value), in half the time of a sort of
#: rows pairing each key with its sort key.
SORTED_KEYS_SQL = (
    f"array_replace(array_agg(COALESCE({{0}}, {_ZERO_SORT_KEY}) ORDER BY COALESCE({{0}}, {_ZERO_SORT_KEY})),"
    f" {_ZERO_SORT_KEY}, NULL)"
)


def keyed_raw_sql(where: str, *, with_key: bool = True) -> str:
    """SQL of the raw rows matching ``where`` with their stored key: ``recorded_at, metric_type, label_set_id,
    value, key`` (the key NULL, not computed, unless ``with_key``). Bind :data:`KEY_PARAMETERS` and the
    parameters of ``where``."""
    key = STORED_KEY_SQL if with_key else "CAST(NULL AS integer)"
    return f"SELECT recorded_at, metric_type, label_set_id, value, {key} AS key FROM {RAW_TABLE} WHERE {where}"


def aggregate_sql(
    connection: Connection, source: str, width_minutes: int = 1, where: str = "TRUE", *, keys: str = "sorted"
) -> str:
    """SQL aggregating the rows of ``source`` (columns of :func:`keyed_raw_sql`) matching ``where`` per bucket
    of ``width_minutes``, with the columns of the tier, in order: ``width_minutes, bucket_start, metric_type,
    label_set_id, count, sum, min, max, keys``: the keys ``"sorted"``, in no order (``"unsorted"``, for a
    reader that sorts them again anyway), or NULL (``"none"``) (PostgreSQL)."""
    start = bin_sql(connection, width_minutes)
    collected = {"sorted": "array_agg(key)", "unsorted": "array_agg(key)", "none": "CAST(NULL AS integer[])"}[keys]
    grouped = (
        f"SELECT {width_minutes} AS width_minutes, {start} AS bucket_start, metric_type, label_set_id,"
        f" count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max, {collected} AS keys"
        f" FROM {source} WHERE {where} GROUP BY {start}, metric_type, label_set_id"
    )
    if keys != "sorted":
        return grouped
    # Grouped by hashing (FOLD_SETTINGS) and each bucket's keys sorted on their own: an ordered array_agg
    # would have the rows sorted by bucket first (a sort of every row, then one of each bucket's keys), a
    # third slower in all.
    return (
        "SELECT width_minutes, bucket_start, metric_type, label_set_id, count, sum, min, max,"
        f" (SELECT {SORTED_KEYS_SQL.format('k')} FROM unnest(grouped.keys) AS k) AS keys"
        f" FROM ({grouped}) AS grouped"
    )


def _value_sql(key: str) -> str:
    """SQL of the representative value of stored key ``key``: :func:`_key_value`, the operations of
    ``LogarithmicMapping.value`` in the same order."""
    power = "power(CAST(2.0 AS float8), CAST({} AS float8) / CAST(:multiplier AS float8)) * CAST(:factor AS float8)"
    return (
        f"CASE WHEN {key} IS NULL THEN CAST(0.0 AS float8) WHEN {key} < :zero_sort"
        f" THEN -({power.format(f':base - {key}')}) ELSE {power.format(key)} END"
    )


def picks_sql(keys: str, count: str, low: str, high: str) -> list[str]:
    """SQL of the :data:`~dramatiq_opmetrics.aggregate.PERCENTILES` of values whose stored keys are the sorted
    array ``keys`` (``count`` of them, extremes ``low`` and ``high``): :func:`quantiles_of_keys` in SQL."""
    return [
        f"least(greatest({_value_sql(f'{keys}[floor(CAST(:q{index} AS float8) * ({count} - 1))::integer + 1]')},"
        f" {low}), {high})"
        for index in range(len(PERCENTILES))
    ]


#: The widths of the buckets kept, in minutes: 1-minute buckets are folded from raw rows, each wider one is
#: built from the next finer one once complete.
WIDTHS_MINUTES = (1, 10, 60)
#: PostgreSQL settings of the fold's transactions, for them only: those of the long reads; no parallel
#: workers (the statements are short); raw rows grouped by hashing, never sorted first (the planner, which
#: has no statistics of the newest rows yet, would sort them: twice the time); and no cache of unnested keys
#: (the keys of two buckets are rarely the same: a cache holding copies of all of them costs more than it
#: saves).
FOLD_SETTINGS = {
    **LONG_READ_SETTINGS,
    "max_parallel_workers_per_gather": "0",
    "enable_sort": "off",
    "enable_memoize": "off",
}
#: The width of the buckets merged into the day rows once built: 10 minutes, so that a read of a day not rolled
#: up takes from the raw rows the last ten minutes at most (plus the minutes not folded), not the hour in
#: progress (up to a fifth of today's rows four hours after midnight, whose keys cost 3.5 times a plain
#: ``GROUP BY`` of them to collect); merging six times an hour instead of once costs each fold little (the
#: merge reads the day's rows, which are few: one per metric type and label set).
DAY_ROWS_WIDTH_MINUTES = 10
#: Hours of wider buckets built per statement (a catch-up after a long stop builds days of them).
BUILD_CHUNK_HOURS = 6
#: The column of :class:`~dramatiq_opmetrics.models.RecentState` up to which each wider width is built.
BUILT_COLUMNS = {10: "built_10m_until", 60: "built_60m_until"}
#: How many times a reading of the tier with raw rows is redone when a fold moves the watermark during it.
MAX_READ_ATTEMPTS = 5


def folded_during_reads() -> RuntimeError:
    """The error of a reading redone :data:`MAX_READ_ATTEMPTS` times, a fold moving the watermark each time."""
    return RuntimeError(f"the recent tier was folded during each of {MAX_READ_ATTEMPTS} readings; try again")


@dataclass(frozen=True)
class TierState:
    """What the tier holds: the raw rows with ``id <= folded_id`` and ``floor <= recorded_at < cutoff`` in
    its 1-minute buckets; its buckets of each wider width up to ``built[width]`` (the ones ending by then).

    Parameters:
      folded_id(int), floor(datetime), cutoff(datetime): the 1-minute buckets' watermark.
      built(Mapping[int, datetime]): for each width above 1 minute, where its buckets stop.
      skipped_id(int | None): the smallest id up to ``folded_id`` of a raw row recorded from the cutoff on
        (left for a later fold), or None if there is none: such rows are found by id, never by time.
      days_until(datetime | None): where the day rows stop (:class:`~dramatiq_opmetrics.models.RecentDay`):
        those of each day from :func:`days_floor` on hold the raw rows with ``id <= folded_id`` recorded in
        the day before this; None: no day rows.
    """

    folded_id: int
    floor: dt.datetime
    cutoff: dt.datetime
    built: Mapping[int, dt.datetime]
    skipped_id: int | None = None
    days_until: dt.datetime | None = None

    def first_id_from_cutoff(self) -> int:
        """The smallest id a raw row recorded from the cutoff on may have."""
        return self.folded_id + 1 if self.skipped_id is None else min(self.skipped_id, self.folded_id + 1)

    def until(self, width_minutes: int) -> dt.datetime:
        """Where the buckets of ``width_minutes`` stop (the cutoff for 1 minute)."""
        return self.cutoff if width_minutes == 1 else self.built[width_minutes]


@dataclass(frozen=True)
class FoldResult:
    """What one :func:`fold` did.

    Parameters:
      rows(int): raw rows folded into the tier.
      folded_id(int): every raw row up to this id recorded in ``[floor, cutoff)`` is in the tier now.
      floor(datetime): the tier holds buckets from here on.
      cutoff(datetime): the tier holds the raw rows recorded before this (whole minutes).
      pending_id(int | None): a newer id not folded yet because writers were still in their transactions.
      pruned_buckets(int): tier rows removed by its retention.
      duration_s(float): how long the fold took, in seconds.
    """

    rows: int
    folded_id: int
    floor: dt.datetime
    cutoff: dt.datetime
    pending_id: int | None
    pruned_buckets: int
    duration_s: float


def fold(
    engine: Engine,
    *,
    retention_days: int = DEFAULT_RECENT_RETENTION_DAYS,
    now: dt.datetime | None = None,
    chunk_ids: int = FOLD_CHUNK_IDS,
    horizon_wait_s: float = HORIZON_WAIT_S,
) -> FoldResult:
    """Fold every raw row of the minutes that are over and not folded yet into the recent tier, build the
    10-minute and hourly buckets that are complete, and remove buckets older than the retention.

    Safe to run from several processes at once (they serialise; each raw row is counted once). Needs the
    database migrated to revision 0011 or later.

    Parameters:
      engine(Engine): the metrics database.
      retention_days(int): days of buckets kept (default :data:`DEFAULT_RECENT_RETENTION_DAYS`).
      now(datetime | None): the current time (timezone-aware), for tests; default: now. Raw rows recorded
        from the start of its minute on are left for a later fold.
      chunk_ids(int): raw ids folded per transaction (default :data:`FOLD_CHUNK_IDS`).
      horizon_wait_s(float): seconds to wait for writers' open transactions (default :data:`HORIZON_WAIT_S`).

    Raises:
      ValueError: ``retention_days`` is not a whole number of days of at least 1, or ``now`` is naive.
    """
    if isinstance(retention_days, bool) or not isinstance(retention_days, int) or retention_days < 1:
        raise ValueError(f"retention_days must be a whole number of days, at least 1; got {retention_days!r}")
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    started = time.perf_counter()
    floor = bucket_floor(now - dt.timedelta(days=retention_days), max(WIDTHS_MINUTES))
    cutoff = max(bucket_floor(now, 1), floor)
    with engine.begin() as connection:
        _lock(connection)
        found = _state(connection, floor, horizon_wait_s)
        if found is None:
            logger.info("The recent tier is not started yet: writers are still in their transactions.")
            return FoldResult(0, 0, floor, floor, None, 0, time.perf_counter() - started)
        state = found
        pruned = 0
        if floor > state.floor:
            # One range of the primary key per width, not a scan of the tier.
            pruned = connection.execute(
                delete(RecentAggregate).where(
                    RecentAggregate.width_minutes.in_(WIDTHS_MINUTES), RecentAggregate.bucket_start < floor
                )
            ).rowcount
            # Day rows of a day starting before the new floor go too (the tier no longer holds that whole day).
            connection.execute(delete(RecentDay).where(RecentDay.day < days_floor(floor).date()))
            connection.execute(delete(RecentHour).where(RecentHour.hour < days_floor(floor)))
            state.floor = floor
            state.cutoff = max(state.cutoff, floor)
            state.built = {width: max(until, floor) for width, until in state.built.items()}
            state.days_until = max(state.days_until, days_floor(floor))
        horizon = _horizon(connection, state, horizon_wait_s)
        rows = 0
        if horizon - state.folded_id <= chunk_ids:
            # The usual pass (a minute of rows): everything in this one transaction.
            rows = _fold_step(connection, state, horizon, cutoff)
            _build(connection, state)
            _save(connection, state, now)
            _summarize_time_index(connection, now)
            horizon = state.folded_id
        else:
            _save(connection, state, now)
    if state.folded_id < horizon or state.cutoff < cutoff:
        # A catch-up (after a stop, or a fresh tier): in chunks of ids, each its own transaction.
        while state.folded_id < horizon or state.cutoff < cutoff:
            with engine.begin() as connection:
                _lock(connection)
                found = _state(connection, floor, 0.0)
                assert found is not None and not found.new  # saved by the first transaction
                state = found
                upper = max(min(horizon, state.folded_id + chunk_ids), state.folded_id)
                if upper == state.folded_id and max(state.cutoff, cutoff) == state.cutoff:
                    break  # another folder did it meanwhile
                rows += _fold_step(connection, state, upper, cutoff)
                _save(connection, state, now)
        # Wider buckets are built once every chunk is folded (not after each chunk: the next would be late).
        with engine.begin() as connection:
            _lock(connection)
            found = _state(connection, floor, 0.0)
            assert found is not None and not found.new
            state = found
            if _build(connection, state):
                _save(connection, state, now)
            _summarize_time_index(connection, now)
    result = FoldResult(
        rows=rows,
        folded_id=state.folded_id,
        floor=state.floor,
        cutoff=state.cutoff,
        pending_id=state.candidate_id,
        pruned_buckets=pruned,
        duration_s=time.perf_counter() - started,
    )
    logger.debug(
        "Folded %d raw rows into the recent tier up to id %d in %.3f s.",
        rows,
        state.folded_id,
        result.duration_s,
        extra={"event": "recent_fold", "rows": rows, "folded_id": state.folded_id, "duration_s": result.duration_s},
    )
    return result


@dataclass
class _State:
    folded_id: int
    floor: dt.datetime
    cutoff: dt.datetime
    built: dict[int, dt.datetime]
    skipped_id: int | None
    candidate_id: int | None
    candidate_holders: list[str] | None
    days_until: dt.datetime
    has_days: bool = True
    new: bool = False


def _lock(connection: Connection) -> None:
    """Serialise with other folds, first in each fold's transaction; on PostgreSQL, apply :data:`FOLD_SETTINGS`
    to the rest of it (the fold owns it: one round trip, nothing to put back)."""
    if connection.dialect.name == "postgresql":
        advisory_xact_lock(connection, FOLD_LOCK)
        transaction_settings(connection, FOLD_SETTINGS)
    else:
        lock_for_rollup(connection)  # BEGIN IMMEDIATE: the write lock, so every committed id is final


_STATE_COLUMNS = (
    RecentState.folded_id,
    RecentState.floor,
    RecentState.cutoff,
    *(getattr(RecentState, column) for column in BUILT_COLUMNS.values()),
    RecentState.skipped_id,
    RecentState.candidate_id,
    RecentState.candidate_holders,
)
#: Engines whose database has the day rows' watermark (migration 0011), and those with the hour rows (0013);
#: checked once an engine when found.
_DAYS_MIGRATED: weakref.WeakSet[Engine] = weakref.WeakSet()
_HOURS_MIGRATED: weakref.WeakSet[Engine] = weakref.WeakSet()


def _has_day_rows(connection: Connection) -> bool:
    """Whether the database has the tier's day rows (migration 0011): a database not migrated yet is read
    without them (its readers keep working; its folds fail until it is, each logged)."""
    return _migrated(connection, _DAYS_MIGRATED, RECENT_STATE_TABLE, "built_days_until")


def has_hour_rows(connection: Connection) -> bool:
    """Whether the database has the tier's hour rows (migration 0013); readers of one not migrated yet read
    the tier's buckets instead."""
    return _migrated(connection, _HOURS_MIGRATED, RECENT_HOURS_TABLE, "hour")


def _migrated(connection: Connection, found_in: weakref.WeakSet[Engine], table: str, column: str) -> bool:
    """Whether ``table`` has ``column``: remembered in ``found_in`` once found."""
    if connection.engine in found_in:
        return True
    # One look in the catalogue (SQLAlchemy's reflection of the table took 80 ms, on every new engine). Without
    # the state table (a database not migrated at all) the state's own read fails, saying so.
    if connection.dialect.name == "postgresql":
        look = (
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(:table) AND attname = :column AND NOT attisdropped"
        )
    else:
        look = "SELECT 1 FROM pragma_table_info(:table) WHERE name = :column"
    found = connection.execute(text(look), {"table": table, "column": column}).first()
    if found is not None:
        found_in.add(connection.engine)
    return found is not None


def _read_state_row(connection: Connection, *, with_days: bool = True) -> _State | None:
    """The state row; without ``with_days`` (a database before migration 0011) its day rows are None."""
    columns = (*_STATE_COLUMNS, RecentState.built_days_until) if with_days else _STATE_COLUMNS
    found = connection.execute(select(*columns).where(RecentState.id == _STATE_ID)).first()
    if found is None:
        return None
    folded_id, floor, cutoff, *built, skipped_id, candidate_id, candidate_holders = found[: len(_STATE_COLUMNS)]
    days_until = found[-1] if with_days else None
    return _State(
        int(folded_id),
        floor,
        cutoff,
        dict(zip(BUILT_COLUMNS, built, strict=True)),
        skipped_id,
        candidate_id,
        candidate_holders,
        # Not started (NULL, before the first fold after migration 0011), or before the first whole day: the
        # same, no day rows; the build starts at the first whole day.
        max(days_until or floor, days_floor(floor)),
        has_days=with_days,
    )


def read_state(connection: Connection) -> TierState | None:
    """What the tier holds now, or None if it was never folded."""
    found = _read_state_row(connection, with_days=_has_day_rows(connection))
    if found is None:
        return None
    days_until = found.days_until if found.has_days else None
    return TierState(found.folded_id, found.floor, found.cutoff, found.built, found.skipped_id, days_until)


def days_floor(floor: dt.datetime) -> dt.datetime:
    """Where the day rows of a tier whose buckets start at ``floor`` start: the first UTC midnight from
    ``floor`` on (the day before is not all in the tier)."""
    start = day_bounds(floor.astimezone(dt.UTC).date())[0]
    return start if start == floor else start + dt.timedelta(days=1)


def _state(connection: Connection, floor: dt.datetime, wait_s: float) -> _State | None:
    """The fold's state, or a new one (None when writers' open transactions keep it from starting yet)."""
    found = _read_state_row(connection)
    if found is not None:
        return found
    built = dict.fromkeys(BUILT_COLUMNS, floor)
    # First fold: start just below the oldest raw row inside the retention, not at id 0 (30 days of rows).
    raw = OperationalMetric.__table__
    if connection.dialect.name != "postgresql":
        first = connection.execute(select(func.min(raw.c.id)).where(raw.c.recorded_at >= floor)).scalar()
        latest = connection.execute(select(func.max(raw.c.id))).scalar()
        folded_id = (int(first) - 1) if first is not None else int(latest or 0)
        return _State(folded_id, floor, floor, built, None, None, None, days_floor(floor), new=True)
    # Rows of writers still in their transactions are not visible yet, so the oldest visible row is not a safe
    # start: every id handed out before now (the sequence's last value) must be committed or abandoned first.
    last_value, is_called = connection.execute(text(f"SELECT last_value, is_called FROM {RAW_ID_SEQUENCE}")).one()
    handed_out = int(last_value) if is_called else int(last_value) - 1
    if not _writers_ended(connection, _writers(connection), wait_s):
        return None
    first = connection.execute(select(func.min(raw.c.id)).where(raw.c.recorded_at >= floor)).scalar()
    folded_id = handed_out if first is None else min(int(first) - 1, handed_out)
    return _State(folded_id, floor, floor, built, None, None, None, days_floor(floor), new=True)


#: Engines whose folds stopped summarising the raw table's time index (its user is not the owner, or a summary
#: failed otherwise); warned once.
_NOT_SUMMARIZING: weakref.WeakSet[Engine] = weakref.WeakSet()


def _summarize_time_index(connection: Connection, now: dt.datetime) -> None:
    """Summarise the new pages of the time index of the raw partitions being written (those of the minute
    just folded and of ``now``), so that readers of recent time ranges do not read them whole
    (:func:`~dramatiq_opmetrics.partitions.summarize_new_pages`); in a savepoint of the fold's transaction."""
    if connection.engine in _NOT_SUMMARIZING:
        return
    days = {(bucket_floor(now, 1) - dt.timedelta(minutes=1)).date(), now.astimezone(dt.UTC).date()}
    try:
        summarize_new_pages(connection, days)
    except exc.DBAPIError as error:
        if error.connection_invalidated:
            raise
        # Its savepoint is rolled back: the fold goes on. Not tried again by this process: a role that does
        # not own the tables never may, and a summary cut by the statement timeout (a partition of many
        # millions of pages never vacuumed) would cost every fold that long.
        _NOT_SUMMARIZING.add(connection.engine)
        owner_only = isinstance(error.orig, psycopg.errors.InsufficientPrivilege)
        logger.warning(
            "The recent tier's fold cannot summarise the raw table's time index (%s)%s; this process stops"
            " trying. Reads of recent time ranges then read every page written since the last vacuum of the"
            " day's partition: fold as the owner of the tables, or vacuum them often.",
            str(error.orig).strip(),
            ": only its owner may" if owner_only else "",
            extra={"event": "time_index_not_summarised"},
        )


def _writers_ended(connection: Connection, open_writers: set[str], wait_s: float) -> bool:
    """Wait up to ``wait_s`` seconds for the transactions ``open_writers`` to end; whether they all did."""
    deadline = time.monotonic() + wait_s
    while open_writers and time.monotonic() < deadline:
        time.sleep(HORIZON_POLL_S)
        open_writers &= _writers(connection)
    return not open_writers


def _save(connection: Connection, state: _State, now: dt.datetime) -> None:
    values = {
        "folded_id": state.folded_id,
        "floor": state.floor,
        "cutoff": state.cutoff,
        **{column: state.built[width] for width, column in BUILT_COLUMNS.items()},
        "skipped_id": state.skipped_id,
        "candidate_id": state.candidate_id,
        "candidate_holders": state.candidate_holders,
        "built_days_until": state.days_until,
        "folded_at": now,
    }
    if state.new:
        connection.execute(insert(RecentState).values(id=_STATE_ID, **values))
        state.new = False
    else:
        connection.execute(update(RecentState).where(RecentState.id == _STATE_ID).values(**values))


def _newest_id(connection: Connection) -> int:
    return int(connection.execute(select(func.max(OperationalMetric.__table__.c.id))).scalar() or 0)


def _writers(connection: Connection) -> set[str]:
    """The transactions holding a write lock on the raw table now (PostgreSQL): they may hold unseen ids."""
    rows = connection.execute(
        text(
            "SELECT virtualtransaction FROM pg_locks WHERE locktype = 'relation' AND mode = 'RowExclusiveLock'"
            " AND granted AND relation = CAST(:table AS regclass)"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        {"table": RAW_TABLE},
    )
    return {row[0] for row in rows}


def _horizon(connection: Connection, state: _State, wait_s: float) -> int:
    """The largest id up to which every raw row is committed or never will be; updates the candidate."""
    if connection.dialect.name != "postgresql":
        newest = _newest_id(connection)
        # SQLite may reuse the ids of deleted rows at the top of the table: never stand above them.
        state.folded_id = min(state.folded_id, newest)
        return newest
    horizon = state.folded_id
    if state.candidate_id is not None and not set(state.candidate_holders or ()) & _writers(connection):
        horizon = max(horizon, state.candidate_id)
        state.candidate_id = state.candidate_holders = None
    newest = _newest_id(connection)  # this statement's snapshot, then who may still hold smaller ids
    if newest <= horizon:
        return horizon
    open_writers = _writers(connection)
    if _writers_ended(connection, open_writers, wait_s):
        state.candidate_id = state.candidate_holders = None
        return newest
    if state.candidate_id is None:
        state.candidate_id, state.candidate_holders = newest, sorted(open_writers)
    return horizon


def _fold_rows(connection: Connection, state: _State, upper: int, cutoff: dt.datetime) -> tuple[int, int | None]:
    """Add to the tier the raw rows recorded in ``[state.floor, cutoff)`` that it does not hold yet and whose
    id is at most ``upper``: those with ids in ``(state.folded_id, upper]``, and the older ones recorded from
    ``state.cutoff`` on. A row of a wider bucket already built is added to that bucket too. Their count, and
    the smallest id up to ``upper`` of a raw row recorded from ``cutoff`` on (:func:`_skipped_id`)."""
    # Found by the primary key (id, recorded_at) alone, never by time (the time index is a BRIN one, whose
    # newest pages are read whole until summarised): the new ids, and the older ids left from the old cutoff
    # on (from skipped_id: no other older id is recorded that late).
    wheres = ["id > :lower AND id <= :upper AND recorded_at >= :floor AND recorded_at < :cutoff"]
    params: dict[str, object] = {
        "floor": state.floor,
        "reopened": state.cutoff,
        "cutoff": cutoff,
        "lower": state.folded_id,
        "upper": upper,
        "skipped": state.skipped_id,
        "skipped_from": _skipped_from(state),
    }
    if state.skipped_id is not None and state.cutoff < cutoff:
        wheres.append("id >= :skipped AND id <= :lower AND recorded_at >= :reopened AND recorded_at < :cutoff")
    days = days_floor(state.floor), state.days_until
    if connection.dialect.name == "postgresql":
        return _fold_in_postgres(connection, wheres, params, state.built, days)
    raw = OperationalMetric.__table__
    columns = (raw.c.recorded_at, raw.c.metric_type, raw.c.label_set_id, raw.c.value)
    rows = [row for where in wheres for row in connection.execute(select(*columns).where(text(where)), params)]
    aggregates = aggregate_rows(rows)
    for width, until in state.built.items():
        late = [row for row in rows if bucket_floor(row[0], width) + dt.timedelta(minutes=width) <= until]
        aggregates += aggregate_rows(late, widths=(width,))
    _upsert_in_python(connection, aggregates)
    _add_rows_to_days(connection, [row for row in rows if days[0] <= row[0] < days[1]])
    raw = OperationalMetric.__table__
    skipped = connection.execute(select(func.min(raw.c.id)).where(text(_SKIPPED_WHERE)), params).scalar()
    return len(rows), None if skipped is None else int(skipped)


def _fold_step(connection: Connection, state: _State, upper: int, cutoff: dt.datetime) -> int:
    """Fold the rows with ids up to ``upper`` recorded before ``cutoff`` (or the state's, if later) that the
    tier does not hold, and move the state to them; how many rows."""
    new_cutoff = max(state.cutoff, cutoff)
    rows, state.skipped_id = _fold_rows(connection, state, upper, new_cutoff)
    state.folded_id, state.cutoff = upper, new_cutoff
    return rows


#: Where the smallest id up to ``:upper`` of a raw row recorded from ``:cutoff`` on is (the state's next
#: ``skipped_id``): no id below ``:skipped_from`` (:func:`_skipped_from`) is recorded that late.
_SKIPPED_WHERE = "id >= :skipped_from AND id <= :upper AND recorded_at >= :cutoff"


def _skipped_from(state: _State) -> int:
    """The smallest id a raw row recorded from the state's cutoff on may have."""
    return state.folded_id + 1 if state.skipped_id is None else state.skipped_id


def _upsert_in_python(connection: Connection, aggregates: Iterable[BucketAggregate]) -> None:
    """Add each aggregate to its tier row (SQLite): the rows they land in are read in one statement per width,
    then new rows are inserted and existing ones updated, each in one batch."""
    tier = RecentAggregate
    by_width: dict[int, list[BucketAggregate]] = {}
    for aggregate in aggregates:
        by_width.setdefault(aggregate.width_minutes, []).append(aggregate)
    for width, found in by_width.items():
        low, high = min(item.bucket_start for item in found), max(item.bucket_start for item in found)
        query = select(
            tier.bucket_start, tier.metric_type, tier.label_set_id, tier.count, tier.sum, tier.min, tier.max, tier.keys
        ).where(tier.width_minutes == width, tier.bucket_start >= low, tier.bucket_start <= high)
        existing = {(row[0], MetricType(row[1]), row[2]): row for row in connection.execute(query)}
        new, merged = [], []
        for aggregate in found:
            row = existing.get((aggregate.bucket_start, aggregate.metric_type, aggregate.label_set_id))
            if row is None:
                new.append(_values(aggregate))
                continue
            before = BucketAggregate(width, aggregate.bucket_start, aggregate.metric_type, aggregate.label_set_id)
            before.count, before.sum, before.min, before.max, before.keys = *row[3:7], list(row[7])
            before.merge(aggregate)
            merged.append({f"old_{name}": value for name, value in _values(before).items()})
        if new:
            connection.execute(insert(tier), new)
        if merged:
            pk = ("width_minutes", "bucket_start", "metric_type", "label_set_id")
            statement = (
                update(tier)
                .where(*(getattr(tier, name) == bindparam(f"old_{name}") for name in pk))
                .values({name: bindparam(f"old_{name}") for name in _VALUE_COLUMNS if name not in pk})
            )
            connection.execute(statement, merged)


#: The columns :func:`_values` gives.
_VALUE_COLUMNS = (
    "width_minutes",
    "bucket_start",
    "metric_type",
    "label_set_id",
    "count",
    "sum",
    "min",
    "max",
    "keys",
    "p50",
    "p95",
    "p99",
)


def _values(aggregate: BucketAggregate) -> dict[str, object]:
    p50, p95, p99 = quantiles_of_keys(aggregate.keys, aggregate.min, aggregate.max)
    return {
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "width_minutes": aggregate.width_minutes,
        "bucket_start": aggregate.bucket_start,
        "metric_type": aggregate.metric_type,
        "label_set_id": aggregate.label_set_id,
        "count": aggregate.count,
        "sum": aggregate.sum,
        "min": aggregate.min,
        "max": aggregate.max,
        "keys": aggregate.keys,
    }


def _upsert_sql(source: str) -> str:
    """SQL adding the aggregates of ``source`` (the tier's columns but the percentiles, keys sorted) to the
    tier, with their percentiles (PostgreSQL)."""
    merged = "least(tier.min, excluded.min)", "greatest(tier.max, excluded.max)"
    return (
        f"INSERT INTO {RECENT_TABLE} AS tier"
        " (width_minutes, bucket_start, metric_type, label_set_id, count, sum, min, max, keys, p50, p95, p99)"
        f" SELECT new.*, {', '.join(picks_sql('new.keys', 'new.count', 'new.min', 'new.max'))} FROM ({source}) AS new"
        " ON CONFLICT (width_minutes, bucket_start, metric_type, label_set_id) DO UPDATE SET"
        " count = tier.count + excluded.count, sum = tier.sum + excluded.sum,"
        f" min = {merged[0]}, max = {merged[1]}, keys = tier.keys || excluded.keys,"
        f" (p50, p95, p99) = (SELECT {', '.join(picks_sql('sorted', 'cardinality(sorted)', *merged))}"
        f"  FROM (SELECT {SORTED_KEYS_SQL.format('k')} AS sorted"
        "   FROM unnest(tier.keys || excluded.keys) AS k) AS merged)"
    )


def _fold_in_postgres(
    connection: Connection,
    wheres: Sequence[str],
    params: dict[str, object],
    built: dict[int, dt.datetime],
    days: tuple[dt.datetime, dt.datetime],
) -> tuple[int, int | None]:
    params = {**KEY_PARAMETERS, **params, **{f"built_{width}": until for width, until in built.items()}}
    source = " UNION ALL ".join(keyed_raw_sql(where) for where in wheres)
    # Late rows (new ids recorded before where the wider buckets stop) go to those buckets too. They are
    # rare: looked for first, by the primary key, before reading the rows twice for them.
    latest = max(built, key=built.__getitem__)  # a row late for any width is recorded before this one's end
    late_where = f"{wheres[0]} AND recorded_at < :built_{latest}"
    if connection.execute(text(f"SELECT EXISTS (SELECT 1 FROM {RAW_TABLE} WHERE {late_where})"), params).scalar():
        # Those of the buckets already merged into day rows go to them as well (the day rows end by the
        # 10-minute buckets' end, so they are among these).
        late_for_days = connection.execute(
            text(
                f"SELECT recorded_at, CAST(metric_type AS text), label_set_id, value FROM {RAW_TABLE}"
                f" WHERE {wheres[0]} AND recorded_at >= :days_floor AND recorded_at < :days_until"
            ),
            {**params, "days_floor": days[0], "days_until": days[1]},
        ).all()
        _add_rows_to_days(connection, late_for_days)
        wider = " UNION ALL ".join(
            aggregate_sql(connection, "raw", width, f"recorded_at < :built_{width}") for width in built
        )
        statement = (
            f"WITH raw AS MATERIALIZED ({source}),"
            f" new AS MATERIALIZED ({aggregate_sql(connection, 'raw')} UNION ALL {wider}),"
        )
    else:
        statement = f"WITH new AS MATERIALIZED ({aggregate_sql(connection, f'({source}) AS raw')}),"
    # The next skipped id in the same statement: a round trip less.
    statement += (
        f" folded AS ({_upsert_sql('SELECT * FROM new')})"
        " SELECT COALESCE(sum(count), 0),"
        f" (SELECT min(id) FROM {RAW_TABLE} WHERE {_SKIPPED_WHERE}) FROM new WHERE width_minutes = 1"
    )
    rows, skipped = connection.execute(text(statement), params).one()
    return int(rows), None if skipped is None else int(skipped)


def _build(connection: Connection, state: _State) -> bool:
    """Build the buckets of each wider width that are complete now (all their finer buckets are), then merge
    the new 10-minute buckets into their day rows; whether anything was built."""
    finer, built = 1, False
    for width in BUILT_COLUMNS:
        until = bucket_floor(state.cutoff if finer == 1 else state.built[finer], width)
        if until > state.built[width]:
            _build_width(connection, width, finer, state.built[width], until)
            state.built[width], built = until, True
        finer = width
    return _build_days(connection, state) or built


@dataclass
class _PeriodPart:
    """Values to add to one day (or hour) row: their count, sums, extremes and stored keys counted."""

    count: int = 0
    sums: list[float] = field(default_factory=list)
    min: float = math.inf
    max: float = -math.inf
    keys: Counter[int | None] = field(default_factory=Counter)

    def add(self, count: int, total: float, low: float, high: float, keys: Iterable[int | None]) -> None:
        self.count += count
        self.sums.append(total)
        self.min = min(self.min, low)
        self.max = max(self.max, high)
        self.keys.update(keys)  # counted in C


#: A day row's or an hour row's key: its day (a date) or hour (its start), metric type and label set.
_PeriodKey = tuple[dt.date | dt.datetime, MetricType, int]


class _PeriodParts:
    """The parts to add to the day rows and the hour rows, gathered per row."""

    def __init__(self) -> None:
        self.days: dict[_PeriodKey, _PeriodPart] = {}
        self.hours: dict[_PeriodKey, _PeriodPart] = {}

    def add(
        self,
        at: dt.datetime,
        metric_type: MetricType,
        label_set_id: int,
        stats: tuple[int, float, float, float],
        keys: Sequence[int | None],
    ) -> None:
        """Add values recorded from ``at`` on, within one hour (a 10-minute bucket's, or one value)."""
        at = at.astimezone(dt.UTC)
        for parts, period in (
            (self.days, at.date()),
            (self.hours, bucket_floor(at, 60)),
        ):
            key = (period, metric_type, label_set_id)
            part = parts.get(key)
            if part is None:
                part = parts[key] = _PeriodPart()
            part.add(*stats, keys)

    def merge(self, connection: Connection) -> None:
        """Add each part to its row: :func:`_merge_into_periods` of the days, then of the hours."""
        _merge_into_periods(connection, RecentDay, self.days)
        _merge_into_periods(connection, RecentHour, self.hours)


def _build_days(connection: Connection, state: _State) -> bool:
    """Merge the :data:`DAY_ROWS_WIDTH_MINUTES` buckets from ``state.days_until`` to where they are built into
    their day and hour rows, an hour of buckets per statement (a catch-up after migration 0013 reads days of
    them); whether any were."""
    high = max(state.built[DAY_ROWS_WIDTH_MINUTES], state.days_until)
    if high == state.days_until:
        return False
    tier = RecentAggregate
    parts = _PeriodParts()
    low = state.days_until
    while low < high:
        chunk_high = min(low + dt.timedelta(hours=1), high)
        # Read in binary by the driver (an hour's 800,000 keys of 200 label sets in half the time).
        rows = fetch_rows(
            connection,
            select(
                tier.bucket_start, cast(tier.metric_type, Text), tier.label_set_id, tier.count, tier.sum, tier.min,
                tier.max, tier.keys,
            ).where(
                tier.width_minutes == DAY_ROWS_WIDTH_MINUTES, tier.bucket_start >= low, tier.bucket_start < chunk_high
            ),
        )  # fmt: skip
        for bucket_start, metric_type, label_set_id, count, total, minimum, maximum, bucket_keys in rows:
            parts.add(
                bucket_start, MetricType(metric_type), label_set_id, (count, total, minimum, maximum), bucket_keys
            )
        low = chunk_high
    parts.merge(connection)
    state.days_until = high
    return True


def _add_rows_to_days(connection: Connection, rows: Iterable[tuple[dt.datetime, MetricType | str, int, float]]) -> None:
    """Add raw rows ``(recorded_at, metric_type, label_set_id, value)`` (late ones, of hours already merged)
    to their day and hour rows."""
    parts = _PeriodParts()
    for recorded_at, metric_type, label_set_id, value in rows:
        number = float(value)
        parts.add(
            recorded_at,
            MetricType(metric_type),
            label_set_id,
            (1, number, number, number),
            (signed_bucket_key(number),),
        )
    parts.merge(connection)


def _merge_into_periods(
    connection: Connection, table: type[RecentDay] | type[RecentHour], parts: Mapping[_PeriodKey, _PeriodPart]
) -> None:
    """Add each part to its row of ``table`` (created if new): one read of the rows of their periods, one
    upsert."""
    if not parts:
        return
    period = RecentDay.day if table is RecentDay else RecentHour.hour
    periods_wanted = sorted({key[0] for key in parts})
    existing = {
        (row[0], MetricType(row[1]), row[2]): row[3:]
        for row in fetch_rows(
            connection,
            select(
                period, cast(table.metric_type, Text), table.label_set_id, table.count, table.sum, table.min,
                table.max, table.histogram_packed,
            ).where(period.in_(periods_wanted)),
        )
    }  # fmt: skip
    values = []
    for (at, metric_type, label_set_id), part in parts.items():
        histogram = HistogramSum()
        sums = part.sums
        count, low, high = part.count, part.min, part.max
        before = existing.get((at, metric_type, label_set_id))
        if before is not None:
            count, sums = count + before[0], [before[1], *sums]
            low, high = min(low, before[2]), max(high, before[3])
            histogram.add_packed(before[4])
        histogram.add_histogram(histogram_of_key_counts(part.keys))
        values.append(
            {
                period.key: at,
                "metric_type": metric_type,
                "label_set_id": label_set_id,
                "count": count,
                "sum": math.fsum(sums),
                "min": low,
                "max": high,
                "histogram_packed": histogram.pack(),
            }
        )
    merged = ("count", "sum", "min", "max", "histogram_packed")
    keys = [period.key, "metric_type", "label_set_id"]
    if connection.dialect.name == "postgresql":
        # One statement of arrays: a third of the time of a batch of rows.
        columns = {
            period.key: "date" if table is RecentDay else "timestamptz",
            "metric_type": "text",
            "label_set_id": "integer",
            "count": "bigint",
            "sum": "float8",
            "min": "float8",
            "max": "float8",
            "histogram_packed": "bytea",
        }
        # Sent in binary (%(name)b): psycopg's text form of these arrays took 10 ms of Python for 420 rows, the
        # binary one 1.3 ms.
        arrays = ", ".join(f"CAST(%({name})b AS {kind}[])" for name, kind in columns.items())
        driver = connection.connection.driver_connection
        assert driver is not None  # a live connection
        driver.execute(
            f"INSERT INTO {table.__tablename__} ({', '.join(columns)})"
            f" SELECT {period.key}, CAST(metric_type AS {METRIC_TYPE_ENUM_NAME}), label_set_id, count, sum, min,"
            f" max, histogram_packed FROM unnest({arrays}) AS new({', '.join(columns)})"
            f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET"
            f" {', '.join(f'{name} = excluded.{name}' for name in merged)}",
            {
                # A metric type as its text (a StrEnum's str is its value), cast to the enum in the statement.
                name: [str(row[name]) if name == "metric_type" else row[name] for row in values]
                for name in columns
            },
        )
        return
    upsert = sqlite.insert(table)
    statement = upsert.on_conflict_do_update(index_elements=keys, set_={name: upsert.excluded[name] for name in merged})
    connection.execute(statement, values)


def _build_width(connection: Connection, width: int, finer: int, low: dt.datetime, high: dt.datetime) -> None:
    """Build the buckets of ``width`` starting in ``[low, high)`` from those of width ``finer``."""
    if connection.dialect.name == "postgresql":
        start = bin_sql(connection, width, "bucket_start")
        # One pass over the finer buckets' keys: each bucket's sum is taken with its first key only. The finer
        # buckets are sorted (a few thousand rows) and their keys unnested in that order, which is the wider
        # buckets' order already: only each wider bucket's keys are sorted, never all the keys by bucket (a
        # sort of rows carrying their bucket's sum, min and max, three times slower at 800,000 keys an hour).
        source = (
            f"SELECT {width} AS width_minutes, tier.bucket_start, metric_type, label_set_id, count(*) AS count,"
            " sum(tier.sum) FILTER (WHERE k.i = 1) AS sum, min(tier.min) AS min, max(tier.max) AS max,"
            f" {SORTED_KEYS_SQL.format('k.key')} AS keys"
            f" FROM (SELECT {start} AS bucket_start, metric_type, label_set_id, sum, min, max, keys"
            f"  FROM {RECENT_TABLE} AS finer"
            "  WHERE width_minutes = :finer AND bucket_start >= :low AND bucket_start < :high"
            "  ORDER BY 1, metric_type, label_set_id, finer.bucket_start) AS tier"
            " CROSS JOIN LATERAL unnest(tier.keys) WITH ORDINALITY AS k(key, i)"
            " GROUP BY tier.bucket_start, metric_type, label_set_id"
        )
        step = dt.timedelta(hours=BUILD_CHUNK_HOURS)
        while low < high:
            upper = min(low + step, high)
            connection.execute(text(_upsert_sql(source)), {**KEY_PARAMETERS, "finer": finer, "low": low, "high": upper})
            low = upper
        return
    tier = RecentAggregate
    found: dict[tuple[dt.datetime, MetricType, int], BucketAggregate] = {}
    query = select(
        tier.bucket_start, tier.metric_type, tier.label_set_id, tier.count, tier.sum, tier.min, tier.max, tier.keys
    )
    for bucket_start, metric_type, label_set_id, count, total, low_value, high_value, keys in connection.execute(
        query.where(tier.width_minutes == finer, tier.bucket_start >= low, tier.bucket_start < high)
    ):
        wide_start = bucket_floor(bucket_start, width)
        part = BucketAggregate(
            width, wide_start, MetricType(metric_type), label_set_id, count, total, low_value, high_value, list(keys)
        )
        key = (wide_start, part.metric_type, label_set_id)
        if key in found:
            found[key].merge(part)
        else:
            found[key] = part
    _upsert_in_python(connection, found.values())


@dataclass
class DayAggregate:
    """A day row of the tier (:class:`~dramatiq_opmetrics.models.RecentDay`), read like an
    :class:`~dramatiq_opmetrics.aggregate.Aggregate` whose histogram is packed.

    Parameters:
      metric_type(MetricType), label_set_id(int): what and which label set.
      count(int), sum(float), min(float), max(float): of the values.
      histogram(bytes): their histogram, packed (:mod:`~dramatiq_opmetrics.packed_histograms`).
    """

    metric_type: MetricType
    label_set_id: int
    count: int
    sum: float
    min: float
    max: float
    histogram: bytes


def day_aggregates(
    connection: Connection,
    day: dt.date,
    *,
    metric_type: MetricType | None = None,
    label_set_ids: Collection[int] | None = None,
) -> list[Aggregate | DayAggregate]:
    """The aggregates of the raw rows recorded on UTC ``day`` (of ``metric_type`` and ``label_set_ids`` only,
    if given), without exact percentiles, per metric type and label set (a pair may have several: add them).

    A day the tier's day rows hold part of is read from them plus the raw rows they do not hold: those
    recorded from ``days_until`` on (the 10-minute bucket in progress and the minutes before it), and those
    recorded before it that are not folded yet (ids above ``folded_id``, found by the primary key). The watermark is
    read before and after, and the reading redone if a fold moved it meanwhile, so every raw row counts
    once. Other days (older than the tier's first whole day, or before any fold) are aggregated from their
    raw rows (:func:`~dramatiq_opmetrics.aggregate.aggregate_raw`).

    Raises:
      RuntimeError: a fold moved the watermark during each of :data:`MAX_READ_ATTEMPTS` readings.
    """
    if label_set_ids is not None and not label_set_ids:
        return []
    start, end = day_bounds(day)

    def raw(low: dt.datetime, high: dt.datetime, above_id: int | None = None) -> list[Aggregate]:
        return aggregate_raw(
            connection,
            low,
            high,
            metric_type=metric_type,
            label_set_ids=label_set_ids,
            exact_percentiles=False,
            above_id=above_id,
        )

    for _ in range(MAX_READ_ATTEMPTS):
        state = read_state(connection)
        if not holds_day(state, day):
            return [*raw(start, end)]
        assert state is not None and state.days_until is not None
        held_until = min(end, state.days_until)
        found: list[Aggregate | DayAggregate] = [*_day_rows(connection, day, metric_type, label_set_ids)]
        if held_until < end:
            found += raw(held_until, end)
        found += raw(start, held_until, above_id=state.folded_id)
        # A fold committed during the reading would count its rows twice (or not at all): read again.
        if read_state(connection) == state:
            return found
    raise folded_during_reads()


def holds_day(state: TierState | None, day: dt.date) -> bool:
    """Whether the day rows of a tier in ``state`` hold part of UTC ``day`` (:func:`day_aggregates` reads it
    from them)."""
    start = day_bounds(day)[0]
    return state is not None and state.days_until is not None and days_floor(state.floor) <= start < state.days_until


def day_rows_query(
    day: dt.date, metric_type: MetricType | None = None, label_set_ids: Collection[int] | None = None
) -> Select[str, int, int, float, float, float, bytes]:
    """The statement :func:`day_aggregates` reads the day rows of UTC ``day`` with (of ``metric_type`` and
    ``label_set_ids`` only, if given): metric type (text), label set id, count, sum, min, max and the packed
    histogram."""
    days = RecentDay
    query = select(
        cast(days.metric_type, Text),
        days.label_set_id,
        days.count,
        days.sum,
        days.min,
        days.max,
        days.histogram_packed,
    ).where(days.day == day)
    if metric_type is not None:
        query = query.where(days.metric_type == MetricType(metric_type))
    if label_set_ids is not None:
        query = query.where(in_values(days.label_set_id, sorted(label_set_ids)))
    return query


def _day_rows(
    connection: Connection, day: dt.date, metric_type: MetricType | None, label_set_ids: Collection[int] | None
) -> list[DayAggregate]:
    return [
        DayAggregate(MetricType(row[0]), row[1], row[2], row[3], row[4], row[5], bytes(row[6]))
        for row in fetch_rows(connection, day_rows_query(day, metric_type, label_set_ids))
    ]


class RecentTierFolder:
    """Keeps the recent tier current for the whole fleet, from a background thread in any number of processes.

    :data:`FOLD_OFFSET_S` seconds (at most half the interval) after each wall-clock multiple of ``interval_s``
    every process running one
    tries to claim the interval (as :class:`~dramatiq_opmetrics.QueueDepthSampler` does), and the one that
    claims it runs :func:`fold`.
    An error is logged (one warning) and the interval skipped; the next fold catches up.

    Example::

        folder = RecentTierFolder(engine)     # a row per interval in opmetrics_interval_claims
        folder.start()
        ...
        folder.stop()

    Parameters:
      engine(Engine): the metrics database.
      interval_s(float): seconds between folds; default :data:`DEFAULT_FOLD_INTERVAL_S` (60).
      retention_days(int): days of buckets kept; default :data:`DEFAULT_RECENT_RETENTION_DAYS` (3).
      claim(IntervalClaim | None): how intervals are claimed; default a row in the metrics database (pass a
        :class:`~dramatiq_opmetrics.interval_claims.RedisIntervalClaim` on a Redis fleet).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        interval_s: float = DEFAULT_FOLD_INTERVAL_S,
        retention_days: int = DEFAULT_RECENT_RETENTION_DAYS,
        claim: IntervalClaim | None = None,
    ) -> None:
        if isinstance(interval_s, bool) or not isinstance(interval_s, int | float) or not interval_s > 0:
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        self.engine = engine
        self.interval_s = float(interval_s)
        self.retention_days = retention_days
        self.claimer = claim if claim is not None else DatabaseIntervalClaim(engine)
        self._thread = IntervalThread(
            "opmetrics-recent-fold",
            self.interval_s,
            self._fold_logging_errors,
            offset_s=min(FOLD_OFFSET_S, self.interval_s / 2),
        )

    def fold_once(self, at: dt.datetime | None = None) -> FoldResult | None:
        """Claim the interval holding ``at`` (default now) and fold if claimed; None if another process had."""
        now = at or dt.datetime.now(dt.UTC)
        if not self.claimer.claim(FOLD_JOB, interval_start(now, self.interval_s), self.interval_s):
            return None
        return fold(self.engine, retention_days=self.retention_days)

    def start(self) -> None:
        """Start folding in a daemon thread (once)."""
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (a fold in progress finishes first, up to ``timeout_s`` seconds)."""
        self._thread.stop(timeout_s)

    def _fold_logging_errors(self, at: dt.datetime) -> None:
        try:
            self.fold_once(at)
        except Exception as error:
            logger.warning("Recent tier fold skipped the interval starting %s: %s", at.isoformat(), error)
            logger.debug("Recent tier fold failed.", exc_info=True)

"""The recent tier: per-minute and per-10-minute aggregates of raw rows, kept current for the whole fleet.

Charts of the last hours would otherwise read every raw row of their range (a fleet writing 20 million
samples a day has 14,000 a minute). :func:`fold` keeps ``opmetrics_recent_aggregates`` up to date: one row
per (width, bucket, metric type, label set), for buckets of 1 and of 10 minutes, holding the ``count``,
``sum``, ``min`` and ``max`` of the raw rows folded into it and ``keys``, the multiset of their histogram
bucket keys (:mod:`~dramatiq_opmetrics.sketch`: the key of each value, None for 0, ``NEGATIVE_KEY_BASE - key``
for a negative value), from which percentiles within 1% are read (:func:`histogram_of_keys`).
:func:`~dramatiq_opmetrics.series.query_series` reads it.

Design: fold by raw id, exactly once, never recompute.

- The raw rows stay the source of truth, insert-only (retention removes whole old days). Each raw row has
  an id from one sequence. The tier counts exactly the raw rows with ``id <= folded_id`` and ``recorded_at
  >= floor`` (both in ``opmetrics_recent_state``). A pass folds the rows with ids in ``(folded_id,
  horizon]`` into the tier by adding them to their buckets (count and sum added, min and max widened, keys
  appended) and moves ``folded_id`` to ``horizon``, in one transaction under a lock: a crash folds nothing,
  two folders serialise, and a re-run finds nothing new. Each raw row is read once, when it is folded;
  recomputing whole minutes instead would read each one at least twice.
- A late sample (recorded long after its time, e.g. after an outage) gets a new id like any other row, so
  the next pass folds it into its own, older, bucket.
- The only subtle part is the horizon: ids are handed out when a row is inserted, not when its transaction
  commits, so when the newest visible row has id ``M`` a writer may still be inside a transaction holding
  smaller ids. Folding up to ``M`` then would skip those rows forever. On PostgreSQL a pass reads ``M``,
  then the transactions holding a write lock on the raw table (``pg_locks``; every insert takes it before
  it takes an id), and ``M`` becomes the horizon once all of those have ended (a pass waits up to
  :data:`HORIZON_WAIT_S` for that; otherwise ``M`` is remembered as a candidate for the next pass, which
  folds up to the last confirmed horizon meanwhile). On SQLite a pass holds the database's write lock,
  so every id up to ``M`` is committed.
- Readers (:mod:`~dramatiq_opmetrics.series`) add the raw rows not folded yet (``id > folded_id``, or older
  than ``floor``) to the tier's buckets, so results are exact and current whatever the fold's lag.
- Retention: buckets older than ``retention_days`` (default :data:`DEFAULT_RECENT_RETENTION_DAYS`, enough
  for a 72-hour view) are deleted by the fold, which moves ``floor`` up; the raw rows, the nightly rollup and
  the prune are untouched (they never read the tier).
- Why keys and not a histogram per row: building a histogram in SQL groups the rows by bucket key, and at
  a few dozen values per minute and label set nearly every value is a group of its own, which costs four
  times a plain ``GROUP BY``; appending keys to an array costs about as much as the ``GROUP BY`` itself. On
  PostgreSQL the whole pass is one ``INSERT ... SELECT ... ON CONFLICT`` (the 1- and 10-minute buckets in
  one scan, with ``GROUPING SETS``): no row travels to Python.

Run it in one process of the fleet per interval: :class:`RecentTierFolder` (a background thread, claiming
each interval fleet-wide like the queue depth sampler), or call :func:`fold` from a scheduler.

Example::

    from dramatiq_opmetrics.recent_tier import fold
    result = fold(engine)   # folds every raw row not folded yet
    print(result.rows, result.folded_id)
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update

from .aggregate import BUCKET_KEY_SQL, PERCENTILES
from .interval_claims import DatabaseIntervalClaim, IntervalClaim, IntervalThread, interval_start
from .locks import advisory_xact_lock
from .metric_types import MetricType
from .models import RAW_ID_SEQUENCE, RAW_TABLE, RECENT_TABLE, OperationalMetric, RecentAggregate, RecentState
from .rollup import lock_for_rollup
from .sketch import KEY_MULTIPLIER, LN_2, MAPPING, MIN_INDEXABLE_VALUE, Histogram, bucket_key, bucket_value

logger = logging.getLogger(__name__)

#: Days of recent buckets kept (the raw rows are kept by their own retention).
DEFAULT_RECENT_RETENTION_DAYS = 3
#: Seconds between two folds of the fleet (aligned to wall-clock multiples).
DEFAULT_FOLD_INTERVAL_S = 60.0
#: The widths of the buckets kept, in minutes.
WIDTHS_MINUTES = (1, 10)
#: Raw ids folded per transaction (a catch-up after a long stop is folded in several).
FOLD_CHUNK_IDS = 1_000_000
#: Seconds a pass waits for the writers' open transactions to end before folding what is confirmed.
HORIZON_WAIT_S = 2.0
#: Seconds between two looks at the writers' open transactions while waiting.
HORIZON_POLL_S = 0.01
#: Bucket keys of negative values are stored as ``NEGATIVE_KEY_BASE - key(-value)``, below every key of a
#: positive value (keys of finite doubles lie within about +-36,000), as the rollup's SQL does.
NEGATIVE_KEY_BASE = -100_000
#: The advisory lock that serialises folds of one installation (PostgreSQL).
FOLD_LOCK = "recent_fold"
#: The name of the fleet-wide job claimed by :class:`RecentTierFolder` for each interval.
FOLD_JOB = "recent_fold"

_STATE_ID = 1
#: Where the zero bucket (key None) sorts among stored keys: above every negative, below every positive one.
_ZERO_SORT_KEY = NEGATIVE_KEY_BASE // 2
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def signed_bucket_key(value: float) -> int | None:
    """The key stored in ``keys`` for ``value``: its bucket key, None for 0, ``NEGATIVE_KEY_BASE - key`` if < 0."""
    if value > MIN_INDEXABLE_VALUE:
        return bucket_key(value)
    if value < -MIN_INDEXABLE_VALUE:
        return NEGATIVE_KEY_BASE - bucket_key(value)
    return None


def histogram_of_keys(keys: Iterable[int | None], into: Histogram | None = None) -> Histogram:
    """The histogram of a multiset of stored keys (added to ``into`` if given)."""
    histogram = into if into is not None else Histogram()
    counts = Counter(keys)
    zero = counts.pop(None, 0)
    histogram.zero_count += zero
    for key, count in counts.items():
        assert key is not None
        if key < NEGATIVE_KEY_BASE // 2:
            histogram.negative_bins[NEGATIVE_KEY_BASE - key] += count
        else:
            histogram.bins[key] += count
    return histogram


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
    offset = (at.astimezone(dt.UTC) - _EPOCH) // dt.timedelta(seconds=1)
    return _EPOCH + dt.timedelta(seconds=(offset // seconds) * seconds)


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
    rows: Iterable[tuple[dt.datetime, MetricType | str, int, float]], widths: Sequence[int] = WIDTHS_MINUTES
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


def _bucket_sql(connection: Connection, width_minutes: int) -> str:
    """SQL of the start of the bucket of ``width_minutes`` holding ``recorded_at`` (PostgreSQL)."""
    if (connection.dialect.server_version_info or (0,)) >= (14,):
        return f"date_bin('{width_minutes} minutes', recorded_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
    return f"to_timestamp(floor(extract(epoch FROM recorded_at) / {width_minutes * 60}) * {width_minutes * 60})"


#: The SQL of the stored key of ``value`` (see :func:`signed_bucket_key`), with ``:min_indexable``, ``:ln_2``,
#: ``:multiplier`` and ``:base`` bound by :data:`KEY_PARAMETERS`.
STORED_KEY_SQL = (
    f"CASE WHEN value > :min_indexable THEN {BUCKET_KEY_SQL.format('value')}"
    f" WHEN value < -CAST(:min_indexable AS float8) THEN :base - {BUCKET_KEY_SQL.format('-value')} END"
)
#: The parameters of :data:`STORED_KEY_SQL`.
KEY_PARAMETERS: dict[str, object] = {
    "min_indexable": MIN_INDEXABLE_VALUE,
    "ln_2": LN_2,
    "multiplier": KEY_MULTIPLIER,
    "base": NEGATIVE_KEY_BASE,
}


def aggregate_sql(connection: Connection, where: str, widths: Sequence[int] = WIDTHS_MINUTES) -> str:
    """SQL aggregating the raw rows matching ``where`` per bucket of each width, in one scan (PostgreSQL).

    Its columns are those of the tier, in order: ``width_minutes, bucket_start, metric_type, label_set_id,
    count, sum, min, max, keys``. Bind :data:`KEY_PARAMETERS` and the parameters of ``where``.
    """
    starts = ", ".join(f"{_bucket_sql(connection, width)} AS b{width}" for width in widths)
    sets = ", ".join(f"(b{width}, metric_type, label_set_id)" for width in widths)
    width_case = " ".join(f"WHEN GROUPING(b{width}) = 0 THEN {width}" for width in widths)
    return (
        f"SELECT CASE {width_case} END AS width_minutes,"
        f" COALESCE({', '.join(f'b{width}' for width in widths)}) AS bucket_start,"
        " metric_type, label_set_id, count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max,"
        " array_agg(key) AS keys"
        f" FROM (SELECT {starts}, metric_type, label_set_id, value, {STORED_KEY_SQL} AS key"
        f"  FROM {RAW_TABLE} WHERE {where}) AS raw"
        f" GROUP BY GROUPING SETS ({sets})"
    )


@dataclass(frozen=True)
class FoldResult:
    """What one :func:`fold` did.

    Parameters:
      rows(int): raw rows folded into the tier.
      folded_id(int): every raw row up to this id (and recorded from ``floor`` on) is in the tier now.
      floor(datetime): the tier holds buckets from here on.
      pending_id(int | None): a newer id not folded yet because writers were still in their transactions.
      pruned_buckets(int): tier rows removed by its retention.
      duration_s(float): how long the fold took, in seconds.
    """

    rows: int
    folded_id: int
    floor: dt.datetime
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
    """Fold every raw row not folded yet into the recent tier, and remove buckets older than the retention.

    Safe to run from several processes at once (they serialise; each raw row is counted once). Needs the
    database migrated to revision 0005 or later.

    Parameters:
      engine(Engine): the metrics database.
      retention_days(int): days of buckets kept (default :data:`DEFAULT_RECENT_RETENTION_DAYS`).
      now(datetime | None): the current time (timezone-aware), for tests; default: now.
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
    # Buckets that ended before the current minute get their percentiles computed (a late sample reopens one).
    settled_before = bucket_floor(now, 1)
    with engine.begin() as connection:
        _lock(connection)
        found = _state(connection, floor, horizon_wait_s)
        if found is None:
            logger.info("The recent tier is not started yet: writers are still in their transactions.")
            return FoldResult(0, 0, floor, None, 0, time.perf_counter() - started)
        state = found
        pruned = 0
        if floor > state.floor:
            # One range of the primary key per width, not a scan of the tier.
            pruned = connection.execute(
                delete(RecentAggregate).where(
                    RecentAggregate.width_minutes.in_(WIDTHS_MINUTES), RecentAggregate.bucket_start < floor
                )
            ).rowcount
            state.floor = floor
        horizon = _horizon(connection, state, horizon_wait_s)
        _save(connection, state, now)
    rows = 0
    while state.folded_id < horizon:
        upper = min(horizon, state.folded_id + chunk_ids)
        with engine.begin() as connection:
            _lock(connection)
            found = _state(connection, floor, 0.0)
            assert found is not None and not found.new  # saved by the first transaction
            state = found
            if state.folded_id >= upper:
                continue  # another folder did it meanwhile
            rows += _fold_ids(connection, state.folded_id, upper, state.floor, settled_before)
            state.folded_id = upper
            _save(connection, state, now)
    result = FoldResult(
        rows=rows,
        folded_id=state.folded_id,
        floor=state.floor,
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
    candidate_id: int | None
    candidate_holders: list[str] | None
    new: bool = False


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        advisory_xact_lock(connection, FOLD_LOCK)
    else:
        lock_for_rollup(connection)  # BEGIN IMMEDIATE: the write lock, so every committed id is final


def read_state(connection: Connection) -> tuple[int, dt.datetime] | None:
    """``(folded_id, floor)`` of the tier, or None if it was never folded."""
    found = connection.execute(
        select(RecentState.folded_id, RecentState.floor).where(RecentState.id == _STATE_ID)
    ).first()
    return None if found is None else (int(found[0]), found[1])


def _state(connection: Connection, floor: dt.datetime, wait_s: float) -> _State | None:
    """The fold's state, or a new one (None when writers' open transactions keep it from starting yet)."""
    found = connection.execute(
        select(RecentState.folded_id, RecentState.floor, RecentState.candidate_id, RecentState.candidate_holders).where(
            RecentState.id == _STATE_ID
        )
    ).first()
    if found is not None:
        return _State(*found)
    # First fold: start just below the oldest raw row inside the retention, not at id 0 (30 days of rows).
    raw = OperationalMetric.__table__
    if connection.dialect.name != "postgresql":
        first = connection.execute(select(func.min(raw.c.id)).where(raw.c.recorded_at >= floor)).scalar()
        latest = connection.execute(select(func.max(raw.c.id))).scalar()
        return _State((int(first) - 1) if first is not None else int(latest or 0), floor, None, None, new=True)
    # Rows of writers still in their transactions are not visible yet, so the oldest visible row is not a safe
    # start: every id handed out before now (the sequence's last value) must be committed or abandoned first.
    last_value, is_called = connection.execute(text(f"SELECT last_value, is_called FROM {RAW_ID_SEQUENCE}")).one()
    handed_out = int(last_value) if is_called else int(last_value) - 1
    if not _writers_ended(connection, _writers(connection), wait_s):
        return None
    first = connection.execute(select(func.min(raw.c.id)).where(raw.c.recorded_at >= floor)).scalar()
    folded_id = handed_out if first is None else min(int(first) - 1, handed_out)
    return _State(folded_id, floor, None, None, new=True)


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
        "candidate_id": state.candidate_id,
        "candidate_holders": state.candidate_holders,
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


def _fold_ids(connection: Connection, lower: int, upper: int, floor: dt.datetime, settled_before: dt.datetime) -> int:
    """Add the raw rows with ids in ``(lower, upper]`` recorded from ``floor`` on to the tier; their count.

    Then compute the percentiles of the buckets that ended before ``settled_before`` and lack them (SQLite:
    of every bucket written)."""
    if connection.dialect.name == "postgresql":
        folded = _fold_in_postgres(connection, lower, upper, floor)
        _settle_in_postgres(connection, settled_before)
        return folded
    raw = OperationalMetric.__table__
    rows = connection.execute(
        select(raw.c.recorded_at, raw.c.metric_type, raw.c.label_set_id, raw.c.value).where(
            raw.c.id > lower, raw.c.id <= upper, raw.c.recorded_at >= floor
        )
    ).all()
    for aggregate in aggregate_rows(rows):
        pk = (
            RecentAggregate.width_minutes == aggregate.width_minutes,
            RecentAggregate.bucket_start == aggregate.bucket_start,
            RecentAggregate.metric_type == aggregate.metric_type,
            RecentAggregate.label_set_id == aggregate.label_set_id,
        )
        existing = connection.execute(
            select(
                RecentAggregate.count,
                RecentAggregate.sum,
                RecentAggregate.min,
                RecentAggregate.max,
                RecentAggregate.keys,
            ).where(*pk)
        ).first()
        if existing is None:
            connection.execute(insert(RecentAggregate).values(**_values(aggregate)))
            continue
        count, total, low, high, keys = existing
        before = BucketAggregate(
            aggregate.width_minutes, aggregate.bucket_start, aggregate.metric_type, aggregate.label_set_id
        )
        before.count, before.sum, before.min, before.max, before.keys = count, total, low, high, list(keys)
        before.merge(aggregate)
        connection.execute(update(RecentAggregate).where(*pk).values(**_values(before)))
    return len(rows)


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


def _fold_in_postgres(connection: Connection, lower: int, upper: int, floor: dt.datetime) -> int:
    source = aggregate_sql(connection, "id > :lower AND id <= :upper AND recorded_at >= :floor")
    statement = text(
        f"WITH new AS ({source}),"
        f" folded AS (INSERT INTO {RECENT_TABLE} AS tier"
        " (width_minutes, bucket_start, metric_type, label_set_id, count, sum, min, max, keys)"
        " SELECT * FROM new"
        " ON CONFLICT (width_minutes, bucket_start, metric_type, label_set_id) DO UPDATE SET"
        " count = tier.count + excluded.count, sum = tier.sum + excluded.sum,"
        " min = least(tier.min, excluded.min), max = greatest(tier.max, excluded.max),"
        " keys = tier.keys || excluded.keys, p50 = NULL, p95 = NULL, p99 = NULL)"
        # The buckets of one width count every folded raw row once.
        f" SELECT COALESCE(sum(count), 0) FROM new WHERE width_minutes = {WIDTHS_MINUTES[0]}"
    )
    params = {**KEY_PARAMETERS, "lower": lower, "upper": upper, "floor": floor}
    return int(connection.execute(statement, params).scalar_one())


def _value_sql(key: str) -> str:
    """SQL of the representative value of stored key ``key``: :func:`_key_value`, the operations of
    ``LogarithmicMapping.value`` in the same order."""
    power = "power(CAST(2.0 AS float8), CAST({} AS float8) / CAST(:multiplier AS float8)) * CAST(:factor AS float8)"
    return (
        f"CASE WHEN {key} IS NULL THEN CAST(0.0 AS float8) WHEN {key} < :zero_sort"
        f" THEN -({power.format(f':base - {key}')}) ELSE {power.format(key)} END"
    )


def _settle_in_postgres(connection: Connection, settled_before: dt.datetime) -> None:
    """Compute the percentiles of the buckets that ended before ``settled_before`` and lack them."""
    picks = ", ".join(
        f"least(greatest({_value_sql(f'sorted[floor(CAST(:q{index} AS float8) * (n - 1))::integer + 1]')}, low), high)"
        for index in range(len(PERCENTILES))
    )
    statement = text(
        f"UPDATE {RECENT_TABLE} AS tier SET (p50, p95, p99) = (SELECT {picks})"
        " FROM (SELECT u.width_minutes AS w, u.bucket_start AS b, u.metric_type AS t, u.label_set_id AS l,"
        "   u.min AS low, u.max AS high, cardinality(u.keys) AS n,"
        "   (SELECT array_agg(k ORDER BY COALESCE(k, :zero_sort)) FROM unnest(u.keys) AS k) AS sorted"
        f"  FROM {RECENT_TABLE} AS u WHERE u.p50 IS NULL AND u.bucket_start < :settled_before"
        "   AND u.bucket_start + u.width_minutes * INTERVAL '1 minute' <= :settled_before) AS settled"
        " WHERE (tier.width_minutes, tier.bucket_start, tier.metric_type, tier.label_set_id)"
        " = (settled.w, settled.b, settled.t, settled.l)"
    )
    params = {
        **KEY_PARAMETERS,
        "factor": 2.0 / (1 + MAPPING.gamma),
        "zero_sort": _ZERO_SORT_KEY,
        "settled_before": settled_before,
        **{f"q{index}": fraction for index, fraction in enumerate(PERCENTILES)},
    }
    connection.execute(statement, params)


class RecentTierFolder:
    """Keeps the recent tier current for the whole fleet, from a background thread in any number of processes.

    At each wall-clock multiple of ``interval_s`` every process running one tries to claim the interval
    (as :class:`~dramatiq_opmetrics.QueueDepthSampler` does), and the one that claims it runs :func:`fold`.
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
        self._thread = IntervalThread("opmetrics-recent-fold", self.interval_s, self._fold_logging_errors)

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

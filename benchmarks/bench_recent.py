"""The recent tier at fleet scale: series query times, and what keeping the tier current costs the fleet.

Writes, into a scratch schema of PostgreSQL, the last 24 hours of a fleet writing ``--rows`` raw rows a day
(default 20 million: wait and processing times of 200 actor/queue label sets, and errors of 2% of the
messages, in time order), folds them into the recent tier (timed: the catch-up of a fresh installation),
then, side by side in one run:

1. :func:`~dramatiq_opmetrics.series.query_series` for every actor and queue (``group_by=("actor",
   "queue")``, processing times with their error rate): 24 hours in 10-minute buckets (target <= 300 ms)
   and the last hour per minute (target <= 100 ms), median of ``--repeat`` runs, read right after a fold
   and again with a minute of rows not folded yet; then the totals of every type over the last 6 and 24
   hours (what ``report --last`` reads; no target).
2. the cost of keeping the tier current: for ``--minutes`` minutes, ``BackgroundWriter`` writes a minute of
   the fleet's messages, three ways: one process flushing every second as a worker does, one process in one
   full batch (the writer's best case), and a fleet of 8 processes each flushing its share every second;
   each into a minute of its own, and :func:`~dramatiq_opmetrics.recent_tier.fold` folds each
   minute as the fleet's folder does, 5 s after it ends (building the 10-minute and hourly buckets as they
   complete); the folds' time is printed as a ratio of the writer's (target <= 0.10), and beside it the
   least any fold reading the raw rows can cost: one plain ``GROUP BY`` of each minute's rows (found by
   id, as the fold finds them) into per-minute count, sum, min and max, nothing written; the same
   collecting each row's histogram key (what any fold keeping mergeable histograms reads at least); and
   that written into a table without index (no sorting, percentiles, wider buckets or horizon).

    .venv/bin/python benchmarks/bench_recent.py [--rows 20000000] [--label-sets 200] [--minutes 30] [--only series|cost]

Environment: OPMETRICS_TEST_DATABASE_URL (default: the tests' PostgreSQL). The scratch schema is dropped at
the end. Loading 20 million rows takes a few minutes on a small machine; ``--rows`` sets the daily volume.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time

import psycopg
from _scratch import database_url, libpq, scratch_schema
from sqlalchemy import Connection, TextClause, text
from sqlalchemy.engine import URL

from dramatiq_opmetrics.buffer import DEFAULT_BATCH_SIZE, MessageEntry, SampleBuffer
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.recent_tier import (
    FOLD_OFFSET_S,
    KEY_PARAMETERS,
    _newest_id,
    aggregate_sql,
    bucket_floor,
    fold,
    keyed_raw_sql,
    read_state,
)
from dramatiq_opmetrics.samples import message_labels
from dramatiq_opmetrics.series import query_series, query_totals
from dramatiq_opmetrics.writer import BackgroundWriter

DAY_TARGET_MS = 300.0
HOUR_TARGET_MS = 100.0
COST_TARGET = 0.10
ERROR_SHARE = 0.02
#: The worker processes of the fleet whose writers are measured (20 million samples a day is a few hundred
#: messages a second: a handful of processes).
FLEET_PROCESSES = 8
#: Rows loaded per transaction while preparing the day.
LOAD_CHUNK_ROWS = 2_000_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000, help="raw rows per day (default 20,000,000)")
    parser.add_argument("--label-sets", type=int, default=200, help="actor/queue label sets (default 200)")
    parser.add_argument(
        "--minutes", type=int, default=30, help="minutes written and folded per way of writing (default 30)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each query")
    parser.add_argument("--only", choices=("series", "cost"), help="measure only the series or only the cost")
    args = parser.parse_args()
    with scratch_schema(database_url()) as url:
        engine = make_engine(url)
        now = dt.datetime.now(dt.UTC)
        started = time.perf_counter()
        loaded = load_day(url, now, args.rows, args.label_sets)
        print(f"loaded {loaded:,} raw rows of the last 24 hours over {args.label_sets} label sets in"
              f" {time.perf_counter() - started:.0f} s")  # fmt: skip
        catch_up = fold(engine, now=now)
        print(f"catch-up fold of a fresh tier: {catch_up.rows:,} rows in {catch_up.duration_s:.1f} s"
              f" ({catch_up.duration_s / max(catch_up.rows, 1) * 1e6:.2f} us per row)")  # fmt: skip
        with psycopg.connect(libpq(url), autocommit=True) as connection:
            connection.execute("VACUUM ANALYZE")

        if args.only in (None, "series"):
            print("\n1. series for every actor and queue (processing time with error rate)")
            fold(engine)
            queries = [
                ("24 h in 10-minute buckets", dt.timedelta(hours=24), dt.timedelta(minutes=10), DAY_TARGET_MS),
                ("last hour per minute", dt.timedelta(hours=1), dt.timedelta(minutes=1), HOUR_TARGET_MS),
            ]
            for when in ("right after a fold", "with a minute not folded"):
                if when != "right after a fold":
                    write_minute(url, args.rows, args.label_sets, flushes=60)
                for name, span, step, target in queries:
                    times, points = [], 0
                    for _ in range(args.repeat):
                        end = dt.datetime.now(dt.UTC)
                        begun = time.perf_counter()
                        found = query_series(
                            engine, end - span, end, step=step, metric_type=MetricType.PROCESSING_TIME,
                            group_by=("actor", "queue"),
                        )  # fmt: skip
                        times.append((time.perf_counter() - begun) * 1000)
                        points = len(found)
                    median = statistics.median(times)
                    print(f"   {name:<26} {when:<25} {median:7.0f} ms  ratio {median / target:5.2f}"
                          f"  ({points:,} points; runs: {', '.join(f'{t:.0f}' for t in times)})")  # fmt: skip
            # Totals over windows of hours (what report --last reads): no target, their time printed.
            for hours in (6, 24):
                times = []
                for _ in range(args.repeat):
                    end = dt.datetime.now(dt.UTC)
                    begun = time.perf_counter()
                    found = query_totals(engine, end - dt.timedelta(hours=hours), end, group_by=("actor", "queue"))
                    times.append((time.perf_counter() - begun) * 1000)
                print(f"   totals of the last {hours} h, every type    {statistics.median(times):7.0f} ms"
                      f"  ({len(found):,} points; runs: {', '.join(f'{t:.0f}' for t in times)})")  # fmt: skip
        if args.only in (None, "cost"):
            print(f"\n2. keeping the tier current, {args.minutes} minutes of {args.rows // 1440:,} rows each")
            per_second, full_batch, fleet, folds, floors = measure_cost(url, args.rows, args.label_sets, args.minutes)
            for name, times in (
                ("writer, one process, a flush a second", per_second),
                ("writer, one process, full batches", full_batch),
                (f"writers, {FLEET_PROCESSES} processes, a flush a second", fleet),
                ("fold after each minute", folds),
                *((f"{name}, each minute's rows", times) for name, times in floors.items()),
            ):
                median_ms, max_ms = statistics.median(times) * 1000, max(times) * 1000
                print(f"   {name + ':':<56} {sum(times) * 1000:8.0f} ms in {len(times)} minutes"
                      f"  (median {median_ms:.0f} ms, max {max_ms:.0f} ms)")  # fmt: skip
            # Each minute written is folded once: the folds of the minutes against the writing of those minutes.
            fold_s = sum(folds) / 3
            print(f"   fold / writer: one process, a flush a second = {fold_s / sum(per_second):.3f};"
                  f" one process, full batches = {fold_s / sum(full_batch):.3f};"
                  f" {FLEET_PROCESSES} processes = {fold_s / sum(fleet):.3f}"
                  f"   (target <= {COST_TARGET:.2f})")  # fmt: skip
            # The least a fold reading the raw rows costs: reading and grouping them, without and with the keys
            # of their histograms (and nothing written).
            for name, times in floors.items():
                floor_s = sum(times) / 3
                print(f"   {name} / writer: one process, a flush a second = {floor_s / sum(per_second):.3f};"
                      f" one process, full batches = {floor_s / sum(full_batch):.3f};"
                      f" {FLEET_PROCESSES} processes = {floor_s / sum(fleet):.3f}")  # fmt: skip

        engine.dispose()
    return 0


def ms(values: list[float]) -> str:
    return ", ".join(f"{value * 1000:.0f}" for value in values)


def load_day(url: URL, now: dt.datetime, rows: int, label_sets: int) -> int:
    """The last 24 hours of the fleet, generated in PostgreSQL (lognormal times), in time order."""
    messages = int(rows / (2 + ERROR_SHARE))
    start = now - dt.timedelta(days=1)
    with psycopg.connect(libpq(url), autocommit=True) as connection:
        for index in range(label_sets):
            labels = message_labels(f"actor_{index:03d}", queue=f"queue_{index % 20}")
            connection.execute(
                "INSERT INTO opmetrics_label_sets (labels_key, labels) VALUES (%s, %s)",
                (labels.labels_key, psycopg.types.json.Jsonb(dict(labels.labels))),
            )
            errors = message_labels(f"actor_{index:03d}", queue=f"queue_{index % 20}", error_type="TimeoutError")
            connection.execute(
                "INSERT INTO opmetrics_label_sets (labels_key, labels) VALUES (%s, %s)",
                (errors.labels_key, psycopg.types.json.Jsonb(dict(errors.labels))),
            )
        # Label set ids 1, 3, 5, ... are the actors' (2n + 1), 2, 4, 6, ... their errors'.
        for first in range(0, messages, LOAD_CHUNK_ROWS // 2):
            last = min(first + LOAD_CHUNK_ROWS // 2, messages)
            connection.execute(
                "INSERT INTO operational_metrics (recorded_at, value, label_set_id, metric_type)"
                " SELECT %(start)s + (i * %(span_us)s / %(messages)s) * interval '1 microsecond',"
                "  CASE WHEN kind = 0 THEN exp(3 + (i %% 7) * 0.4 + 0.8 * sqrt(-2 * ln(1 - random()))"
                "   * cos(2 * pi() * random())) WHEN kind = 1 THEN exp(2 + sqrt(-2 * ln(1 - random()))"
                "   * cos(2 * pi() * random())) ELSE 1 END,"
                "  2 * (i %% %(label_sets)s) + 1 + CASE WHEN kind = 2 THEN 1 ELSE 0 END,"
                "  (ARRAY['processing_time', 'wait_time', 'error'])[kind + 1]::opmetrics_metric_type"
                # Each message's rows one after the other, as its worker's writer writes them: a set-returning
                # function in the select list keeps the order of i (a join with the kinds may put all of one
                # kind's rows first, and a BRIN range of the time index then spans hours instead of a minute).
                " FROM (SELECT i, unnest(CASE WHEN (i * 7919) %% 1000 < %(error_permille)s THEN ARRAY[0, 1, 2]"
                "   ELSE ARRAY[0, 1] END) AS kind"
                "  FROM generate_series(CAST(%(first)s AS bigint), %(last)s - 1) AS i) AS rows",
                {
                    "start": start,
                    "span_us": 86_400_000_000,
                    "messages": messages,
                    "label_sets": label_sets,
                    "first": first,
                    "last": last,
                    "error_permille": int(ERROR_SHARE * 1000),
                },
            )
        (count,) = connection.execute("SELECT count(*) FROM operational_metrics").fetchone() or (0,)
    return int(count)


def write_minute(
    url: URL,
    rows: int,
    label_sets: int,
    *,
    flushes: int,
    minute: dt.datetime | None = None,
    processes: int = 1,
) -> float:
    """Write one minute of the fleet's messages with a ``BackgroundWriter`` in ``flushes`` flushes; seconds.

    The messages finish within ``minute`` (a UTC minute start; default: the last minute, up to now). With
    ``processes`` above 1, as a fleet of that many worker processes does: each writes its share of the
    messages in ``flushes`` flushes of its own (one after the other here); the time is their sum."""
    messages = rows // 2 // 1440
    if processes > 1:
        return sum(
            _write_share(url, messages, label_sets, flushes, minute, share, processes) for share in range(processes)
        )
    return _write_share(url, messages, label_sets, flushes, minute, 0, 1)


def _write_share(
    url: URL, messages: int, label_sets: int, flushes: int, minute: dt.datetime | None, share: int, shares: int
) -> float:
    """Write the messages ``share``, ``share + shares``, ... of the minute; seconds."""
    keys = []
    buffer = SampleBuffer(capacity=messages + 1, batch_size=DEFAULT_BATCH_SIZE)
    for index in range(label_sets):
        labels = message_labels(f"actor_{index:03d}", queue=f"queue_{index % 20}")
        buffer.register_label_set(labels)
        keys.append(labels.labels_key)
    writer = BackgroundWriter(url, buffer)
    # Finish times spread over the minute's first 58 seconds (perf_counter readings: the writer turns them into
    # wall-clock times when it writes).
    first_s = (minute.timestamp() + 1.0) if minute is not None else time.time() - 59.0
    base_s = time.perf_counter() + first_s - time.time()
    entries: list[MessageEntry] = []
    for i in range(share, messages, shares):
        finished_s = base_s + 58.0 * i / messages
        started_s = finished_s - (i % 97) * 1e-4
        due_ms = (first_s + 58.0 * i / messages) * 1000.0 - 5.0 - i % 50
        entries.append((None, keys[i % label_sets], due_ms, started_s, finished_s))
    buffer.append_message(entries[0])
    writer.flush(timeout_s=60)  # connected, label sets known: as a running worker is
    per_flush = max(len(entries) // flushes, 1)
    started = time.perf_counter()
    for first in range(1, len(entries), per_flush):
        for entry in entries[first : first + per_flush]:
            buffer.append_message(entry)
        if not writer.flush(timeout_s=600) or len(buffer):
            raise RuntimeError("the writer did not write everything")
    elapsed = time.perf_counter() - started
    writer.stop()
    return elapsed


#: The raw rows of one minute written by :func:`write_minute`: those of ids in ``(:first, :last]``.
_MINUTE_ROWS = "id > :first AND id <= :last"
#: The table the third floor writes into: the tier's columns, no index.
FLOOR_TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS bench_floor_buckets (width_minutes integer, bucket_start timestamptz,"
    " metric_type opmetrics_metric_type, label_set_id integer, count bigint, sum float8, min float8, max float8,"
    " keys integer[])"
)


def floor_statements(connection: Connection) -> dict[str, TextClause]:
    """The floors :func:`measure_cost` compares the folds with, made of the fold's own pieces
    (:func:`~dramatiq_opmetrics.recent_tier.keyed_raw_sql`, :func:`~dramatiq_opmetrics.recent_tier.aggregate_sql`):
    a plain ``GROUP BY`` of a minute's raw rows into per-minute count, sum, min and max; the same collecting each
    row's histogram key (unsorted); and that written into :data:`FLOOR_TABLE_SQL`'s table."""
    plain = aggregate_sql(connection, f"({keyed_raw_sql(_MINUTE_ROWS, with_key=False)}) AS raw", keys="none")
    keyed = aggregate_sql(connection, f"({keyed_raw_sql(_MINUTE_ROWS)}) AS raw", keys="unsorted")
    return {
        "GROUP BY": text(f"SELECT count(*) FROM ({plain}) AS minutes"),
        "GROUP BY with keys": text(f"SELECT count(*) FROM ({keyed}) AS minutes"),
        "GROUP BY with keys, inserted": text(f"INSERT INTO bench_floor_buckets {keyed}"),
    }


def measure_cost(
    url: URL, rows: int, label_sets: int, minutes: int
) -> tuple[list[float], list[float], list[float], list[float], dict[str, list[float]]]:
    """Write ``minutes`` minutes of messages three ways (one process flushing every second, one process in full
    batches, a fleet of :data:`FLEET_PROCESSES` processes flushing every second), each into a minute of its
    own after the loaded day, and fold each minute as the fleet's folder does, 5 s after it ends; after each
    fold, time each of :func:`floor_statements` on the minute's rows (with its commit)."""
    engine = make_engine(url)
    per_second: list[float] = []
    full_batch: list[float] = []
    fleet: list[float] = []
    folds: list[float] = []
    reader = engine.connect()
    reader.execute(text(FLOOR_TABLE_SQL))
    reader.commit()
    statements = floor_statements(reader)
    floors: dict[str, list[float]] = {name: [] for name in statements}
    minute = bucket_floor(dt.datetime.now(dt.UTC), 1) + dt.timedelta(minutes=1)
    with engine.connect() as connection:
        state = read_state(connection)
    if state is not None:
        minute = max(minute, state.cutoff)  # after every minute folded so far: no sample is late
    try:
        for _ in range(minutes):
            for flushes, processes, times in ((60, 1, per_second), (1, 1, full_batch), (60, FLEET_PROCESSES, fleet)):
                first_id = newest_id(reader)
                times.append(write_minute(url, rows, label_sets, flushes=flushes, minute=minute, processes=processes))
                last_id = newest_id(reader)
                minute += dt.timedelta(minutes=1)
                folds.append(fold(engine, now=minute + dt.timedelta(seconds=FOLD_OFFSET_S)).duration_s)
                # After the fold, which reads the rows first (and sets their hint bits, as it does in a fleet):
                # the GROUP BYs read them warm, so they are the least a fold could cost.
                for name, statement in statements.items():
                    begun = time.perf_counter()
                    reader.execute(statement, {**KEY_PARAMETERS, "first": first_id, "last": last_id})
                    reader.commit()
                    floors[name].append(time.perf_counter() - begun)
    finally:
        reader.close()
        engine.dispose()
    return per_second, full_batch, fleet, folds, floors


def newest_id(connection: Connection) -> int:
    """The largest raw id (the writers of :func:`write_minute` have committed when it returns), read as the
    fold reads it, in a transaction of its own."""
    found = _newest_id(connection)
    connection.commit()
    return found


if __name__ == "__main__":
    sys.exit(main())

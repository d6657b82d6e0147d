"""Time the rollup and the prune of one day of raw rows on PostgreSQL, next to a plain GROUP BY.

Usage: python benchmarks/bench_rollup.py [--rows 10000000] [--label-sets 60] [--repeat 3]

Creates a scratch schema in $OPMETRICS_TEST_DATABASE_URL (default: the local ``test`` database), migrates
it, loads ``--rows`` samples of one UTC day (two days ago) over ``--label-sets`` label sets with binary COPY
(lognormal durations; the first two thirds of the label sets are ``processing_time``, the rest
``wait_time``), VACUUMs, then measures in the same run, alternating, ``--repeat`` times each:

- the baseline: ``SELECT metric_type, labels_key, count(*), sum(value), min(value), max(value) ... GROUP BY
  metric_type, labels_key`` over the day's rows (joined to the label sets for ``labels_key``);
- the rollup of that day (``rollup(engine, day=...)``: lock, count check, aggregation with exact
  p50/p95/p99 and histograms, upsert of the daily rows);

and once, for reference, ``percentile_cont`` with an array of fractions (one sort per label set). Finally it
prunes the day (as if 40 days had passed) and times that. It prints medians side by side with ratios and
targets (rollup <= 6x the baseline; prune <= 1 s), and drops the schema.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import psycopg
from _scratch import database_url, libpq, scratch_schema
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from dramatiq_opmetrics.aggregate import raw_count
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.partitions import day_bounds, ensure_partitions, list_partitions, partition_name
from dramatiq_opmetrics.retention import DEFAULT_RETENTION_DAYS, prune
from dramatiq_opmetrics.rollup import rollup

ROLLUP_TARGET_RATIO = 6.0
PRUNE_TARGET_S = 1.0
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def copy_rows(conninfo: str, day: dt.date, rows: int, label_sets: int, chunk: int = 1_000_000) -> None:
    """Load ``rows`` samples of ``day`` with binary COPY, built with numpy (one chunk at a time)."""
    rng = np.random.default_rng(1)
    day_start_us = int((day_bounds(day)[0] - _PG_EPOCH).total_seconds()) * 1_000_000
    processing_sets = max(1, label_sets * 2 // 3)
    types = {"processing_time": (1, processing_sets), "wait_time": (processing_sets + 1, label_sets)}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.cursor() as cur:
            for i in range(label_sets):
                labels = {"actor": f"actor_{i}", "queue": f"queue_{i % 7}"}
                key = "|".join(f"{k}:{v}" for k, v in sorted(labels.items()))
                cur.execute(
                    "INSERT INTO opmetrics_label_sets (id, labels_key, labels) VALUES (%s, %s, %s)",
                    (i + 1, key, psycopg.types.json.Jsonb(labels)),
                )
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY operational_metrics (recorded_at, value, label_set_id, metric_type) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.write(b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big"))
            done = 0
            while done < rows:
                size = min(chunk, rows - done)
                at_us = np.sort(rng.integers(0, 86_400_000_000, size)) + day_start_us
                values = rng.lognormal(4.0, 1.0, size)
                label_set = rng.integers(1, label_sets + 1, size)
                for name, (first, last) in types.items():
                    mask = (label_set >= first) & (label_set <= last)
                    count = int(mask.sum())
                    record = np.dtype(
                        [
                            ("fields", ">i2"),
                            ("l1", ">i4"),
                            ("at", ">i8"),
                            ("l2", ">i4"),
                            ("value", ">f8"),
                            ("l3", ">i4"),
                            ("label_set", ">i4"),
                            ("l4", ">i4"),
                            ("type", f"S{len(name)}"),
                        ]
                    )
                    block = np.empty(count, dtype=record)
                    block["fields"], block["l1"], block["l2"], block["l3"], block["l4"] = 4, 8, 8, 4, len(name)
                    block["at"], block["value"], block["label_set"] = at_us[mask], values[mask], label_set[mask]
                    block["type"] = name.encode()
                    copy.write(block.tobytes())
                done += size
            copy.write((-1).to_bytes(2, "big", signed=True))
        conn.execute(f"VACUUM ANALYZE {partition_name(day)}")


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--label-sets", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with scratch_schema(database_url()) as url:
        engine = make_engine(url)
        try:
            return measure(args, url, engine)
        finally:
            engine.dispose()


def measure(args: argparse.Namespace, url: URL, engine: Engine) -> int:
    """Load the day into the migrated schema at ``url``, time and print the figures; 0 if the targets are met."""
    now = dt.datetime.now(dt.UTC)
    day = now.date() - dt.timedelta(days=2)
    with engine.begin() as connection:
        ensure_partitions(connection, day, day)
    started = time.perf_counter()
    copy_rows(libpq(url), day, args.rows, args.label_sets)
    load_s = time.perf_counter() - started
    print(f"loaded {args.rows:,} rows over {args.label_sets} label sets for {day} in {load_s:.1f} s")

    start, end = day_bounds(day)
    bounds = {"start": start, "end": end}

    def baseline() -> None:
        with engine.connect() as connection:
            connection.execute(
                text(
                    "SELECT m.metric_type, l.labels_key, count(*), sum(m.value), min(m.value), max(m.value)"
                    " FROM operational_metrics m JOIN opmetrics_label_sets l ON l.id = m.label_set_id"
                    " WHERE m.recorded_at >= :start AND m.recorded_at < :end"
                    " GROUP BY m.metric_type, l.labels_key"
                ),
                bounds,
            ).all()

    def percentile_cont_reference() -> None:
        with engine.connect() as connection:
            connection.execute(
                text(
                    "SELECT m.metric_type, l.labels_key, count(*), sum(m.value), min(m.value), max(m.value),"
                    " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY m.value)"
                    " FROM operational_metrics m JOIN opmetrics_label_sets l ON l.id = m.label_set_id"
                    " WHERE m.recorded_at >= :start AND m.recorded_at < :end"
                    " GROUP BY m.metric_type, l.labels_key"
                ),
                bounds,
            ).all()

    def roll_up() -> None:
        [result] = rollup(engine, day=day, now=now)
        assert result.rows == args.rows, result

    def daily_rows() -> list[tuple[object, ...]]:
        with engine.connect() as connection:
            query = text("SELECT * FROM operational_metrics_daily ORDER BY 1, 2, 3")
            return [tuple(row) for row in connection.execute(query)]

    baseline()  # warm the cache
    baseline_s, rollup_s = [], []
    first_rows: list[tuple[object, ...]] = []
    for _ in range(args.repeat):
        baseline_s.append(timed(baseline))
        rollup_s.append(timed(roll_up))
        first_rows = first_rows or daily_rows()
    identical = daily_rows() == first_rows
    reference_s = timed(percentile_cont_reference)
    with engine.connect() as connection:
        total = connection.execute(text("SELECT sum(sample_count) FROM operational_metrics_daily")).scalar_one()
    assert total == args.rows, total

    def count_day() -> None:
        with engine.connect() as connection:
            raw_count(connection, day)

    count_s = timed(count_day)  # the safety check prune makes before dropping, timed on its own
    pruned: list[object] = []
    # The first moment the day is past the default retention: only that day is old enough.
    prune_now = dt.datetime.combine(day + dt.timedelta(days=DEFAULT_RETENTION_DAYS + 1), dt.time(1, 30), dt.UTC)
    prune_s = timed(lambda: pruned.append(prune(engine, now=prune_now)))
    result = pruned[0]
    assert [(d.day, d.rows, d.method) for d in result.pruned] == [(day, args.rows, "partition")], result  # type: ignore[attr-defined]
    with engine.connect() as connection:
        assert day not in list_partitions(connection)

    base_median, rollup_median = statistics.median(baseline_s), statistics.median(rollup_s)
    ratio = rollup_median / base_median
    print()
    print(f"{'measurement (median of ' + str(args.repeat) + ')':<58} {'seconds':>8} {'ratio':>7}  target")
    print(f"{'plain count/sum/min/max GROUP BY metric_type, labels_key':<58} {base_median:>8.3f} {1:>6.2f}x")
    print(
        f"{'rollup of the day (exact p50/p95/p99 + histograms)':<58} {rollup_median:>8.3f} {ratio:>6.2f}x"
        f"  <= {ROLLUP_TARGET_RATIO:g}x"
    )
    print(
        f"{'reference: percentile_cont(ARRAY[...]) (run once)':<58} {reference_s:>8.3f}"
        f" {reference_s / base_median:>6.2f}x  (no histogram)"
    )
    print(
        f"{'prune of the day (partition drop)':<58} {prune_s:>8.3f} {prune_s / base_median:>6.2f}x"
        f"  <= {PRUNE_TARGET_S:g} s"
    )
    print(f"{'  of which the exact row count of the day (timed apart)':<58} {count_s:>8.3f}")
    print()
    print(f"daily rows identical after {args.repeat - 1} forced re-rolls (rolled_up_at included): {identical}")
    print(f"all runs, seconds: baseline {[round(s, 3) for s in baseline_s]}, rollup {[round(s, 3) for s in rollup_s]}")
    ok = ratio <= ROLLUP_TARGET_RATIO and prune_s <= PRUNE_TARGET_S
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

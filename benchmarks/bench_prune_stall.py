"""How long writers wait while a prune runs behind a long reader of the raw table, side by side.

Usage: python benchmarks/bench_prune_stall.py [--reader-s 3] [--rows 100000]

Creates a scratch schema in $OPMETRICS_TEST_DATABASE_URL (default: the local ``test`` database), migrates
it, then three times, each on a fresh old day of ``--rows`` raw rows (40 days ago, in its own partition,
rolled up), while a writer writes one sample every 10 ms through ``write_samples`` (label sets, binary
COPY, commit; each write timed) and a reader holds the raw table's parent for ``--reader-s`` seconds:

- nothing else (the baseline);
- a prune that waits for its lock on the parent as long as it takes (``lock_timeout_ms`` of an hour: how
  every prune behaved before the lock timeout, when it dropped the partition there and then);
- a prune with the default lock timeout (50 ms) and retries.

It prints, for each, the slowest write and the 99th percentile, each as a ratio to the baseline's median
write, and how long the prune took. The writer commits with ``synchronous_commit=off``, so that the figures
are waits for locks, not for this machine's shared disk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

from _scratch import database_url, scratch_schema
from sqlalchemy import text
from sqlalchemy.engine import URL

from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.label_sets import resolve_label_set_ids
from dramatiq_opmetrics.labels import make_label_set
from dramatiq_opmetrics.partitions import ensure_partitions
from dramatiq_opmetrics.retention import DEFAULT_RETENTION_DAYS, prune
from dramatiq_opmetrics.rollup import rollup

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from lock_waits import TimedWrites, long_read

#: A lock timeout long enough that the prune waits out the reader, as before the timeout existed (1 hour).
UNBOUNDED_LOCK_TIMEOUT_MS = 3_600_000


def load_old_day(url: URL, day: dt.date, rows: int) -> None:
    """``rows`` processing_time raw rows of ``day`` in its own partition, rolled up."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            ensure_partitions(connection, day, day)
            [label_set_id] = resolve_label_set_ids(connection, [make_label_set({"actor": "old"})]).values()
            connection.execute(
                text(
                    "INSERT INTO operational_metrics (metric_type, value, label_set_id, recorded_at)"
                    " SELECT 'processing_time', g % 1000, :id, :start + g * interval '1 ms'"
                    " FROM generate_series(1, :rows) g"
                ),
                {"id": label_set_id, "start": dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC), "rows": rows},
            )
        rollup(engine, day=day)
    finally:
        engine.dispose()


def measure(url: URL, reader_s: float, lock_timeout_ms: int | None) -> tuple[list[float], float]:
    """Write latencies (s) while the reader runs (and, unless ``lock_timeout_ms`` is None, a prune), and how
    long the prune took (s)."""
    engine = make_engine(url)
    took = 0.0
    try:
        with TimedWrites(url) as writes, long_read(url, reader_s):
            if lock_timeout_ms is not None:
                started = time.perf_counter()
                result = prune(engine, lock_timeout_ms=lock_timeout_ms)
                took = time.perf_counter() - started
                assert result.pruned and not result.kept, result
            else:
                time.sleep(reader_s)
    finally:
        engine.dispose()
    return writes.latencies_s, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reader-s", type=float, default=3.0, help="seconds the reader holds the raw table")
    parser.add_argument("--rows", type=int, default=100_000, help="raw rows of each pruned day")
    args = parser.parse_args()
    today = dt.datetime.now(dt.UTC).date()
    with scratch_schema(database_url()) as url:
        figures = {}
        runs = [
            ("reader alone (baseline)", None),
            ("prune waiting out the reader (as before)", UNBOUNDED_LOCK_TIMEOUT_MS),
            ("prune, 50 ms lock timeout and retries (now)", 50),
        ]
        for index, (name, lock_timeout_ms) in enumerate(runs):
            load_old_day(url, today - dt.timedelta(days=DEFAULT_RETENTION_DAYS + 10 + index), args.rows)
            figures[name] = measure(url, args.reader_s, lock_timeout_ms)
    median_s = statistics.median(figures[runs[0][0]][0])
    print(f"reader {args.reader_s:g} s; one write every 10 ms; baseline median write {median_s * 1000:.1f} ms")
    print(f"{'':46} {'writes':>6} {'slowest':>10} {'ratio':>8} {'p99':>8} {'ratio':>7} {'prune':>7}")
    for name, (latencies, took) in figures.items():
        slowest, p99 = max(latencies), statistics.quantiles(latencies, n=100, method="inclusive")[98]
        print(
            f"{name:46} {len(latencies):6d} {slowest * 1000:8.1f}ms {slowest / median_s:7.1f}x"
            f" {p99 * 1000:6.1f}ms {p99 / median_s:6.1f}x {took:6.2f}s"
        )


if __name__ == "__main__":
    main()

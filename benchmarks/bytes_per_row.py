"""Measure the PostgreSQL footprint of a raw sample: heap plus every index, bytes per row.

Usage: python benchmarks/bytes_per_row.py [--rows 1000000] [--label-sets 60]

Creates a scratch schema in $OPMETRICS_TEST_DATABASE_URL (default: the local ``test`` database), migrates
it, loads ``--rows`` samples of one day with COPY (as the writer does), VACUUMs, and prints the size of the
day's partition and its indexes divided by the row count, next to a naive JSONB-per-row table of the same
rows for comparison. The schema is dropped afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random

import psycopg
from _scratch import database_url, libpq, scratch_schema

from dramatiq_opmetrics.partitions import partition_name

METRIC_TYPES = ["processing_time", "wait_time", "error", "queue_depth"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--label-sets", type=int, default=60)
    args = parser.parse_args()

    with scratch_schema(database_url()) as url:
        day = dt.datetime.now(dt.UTC).date()
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        rng = random.Random(1)
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            labels = [{"actor": f"actor_{i}", "queue": f"queue_{i % 7}"} for i in range(args.label_sets)]
            with conn.cursor() as cur:
                for i, label in enumerate(labels):
                    key = "|".join(f"{k}:{v}" for k, v in sorted(label.items()))
                    cur.execute(
                        "INSERT INTO opmetrics_label_sets (id, labels_key, labels) VALUES (%s, %s, %s)",
                        (i + 1, key, psycopg.types.json.Jsonb(label)),
                    )
                conn.execute(
                    "CREATE TABLE naive (id bigserial PRIMARY KEY, metric_type text, value float8,"
                    " labels jsonb, labels_key text, recorded_at timestamptz)"
                )
                rows = [
                    (
                        start + dt.timedelta(microseconds=rng.randrange(86_400_000_000)),
                        rng.lognormvariate(4, 1),
                        rng.randrange(args.label_sets),
                        rng.choice(METRIC_TYPES),
                    )
                    for _ in range(args.rows)
                ]
                rows.sort()
                with cur.copy(
                    "COPY operational_metrics (recorded_at, value, label_set_id, metric_type) FROM STDIN"
                ) as copy:
                    for at, value, label_set, metric_type in rows:
                        copy.write_row((at, value, label_set + 1, metric_type))
                with cur.copy("COPY naive (recorded_at, value, labels, labels_key, metric_type) FROM STDIN") as copy:
                    for at, value, label_set, metric_type in rows:
                        label = labels[label_set]
                        key = "|".join(f"{k}:{v}" for k, v in sorted(label.items()))
                        copy.write_row((at, value, psycopg.types.json.Jsonb(label), key, metric_type))
                conn.execute("VACUUM ANALYZE")
                partition = partition_name(day)
                ours = _sizes(cur, partition)
                naive = _sizes(cur, "naive")
        print(f"rows: {args.rows:,} in one day partition, {args.label_sets} label sets")
        print(f"{'table':<28}{'heap B/row':>12}{'index B/row':>13}{'total B/row':>13}")
        for name, (heap, index) in (("operational_metrics (ours)", ours), ("naive JSONB per row", naive)):
            print(f"{name:<28}{heap / args.rows:>12.1f}{index / args.rows:>13.1f}{(heap + index) / args.rows:>13.1f}")
        print(f"ratio ours/naive: {sum(ours) / sum(naive):.2f}")


def _sizes(cur: psycopg.Cursor[tuple[int, int]], table: str) -> tuple[int, int]:
    cur.execute("SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)", (table, table))
    heap, index = cur.fetchone()  # type: ignore[misc]
    return heap, index


if __name__ == "__main__":
    main()

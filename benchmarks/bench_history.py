"""Range reads over a year of history, next to a bare read of the rows they need, in one run.

Writes, into a scratch schema of PostgreSQL, 365 days of daily rows (with histograms) for ``--label-sets``
actor/queue label sets (plus their error, queue-depth, token and confidence rows) and today's raw samples
(``--messages`` per actor), then brings the history to what a running installation has: the nightly rollup
merges the months (and packs the daily histograms; this one-time cost is printed too) and the recent tier is
folded. Then it times, alternating, ``--repeat`` times each, in a new engine per run:

- ``query_metrics`` over the 365 days, all metric types, per label set, without today (``include_raw=False``),
  and the bare read of the rows it reads (the same statement, its rows fetched as query_metrics fetches them,
  nothing merged): target <= 3x;
- the same with today's raw rows (``include_raw=True``, the query API's default): target <= 1 s, and <= 3x
  the bare read with today: the bare read above plus today's rows as the reads take them (the recent tier's
  day rows fetched, and a ``GROUP BY`` of the raw rows they do not hold, as ``report --days 1`` is measured
  against one ``GROUP BY``);
- for reference, the bare read of the JSON histograms of the range's daily rows (what a read of daily rows
  alone has to fetch: 365 rows per label set);
- ``query_metrics`` of today alone (read through the recent tier, ``query_totals``), next to one ``GROUP BY``
  of today's partition;
- the report (``dramatiq-opmetrics report --days 365``, every table, today included): target <= 2 s and
  <= 3x the bare read with today (against the bare read without today too, for reference);
  and ``report --days 1`` (today alone) next to the ``GROUP BY``: target <= 1.5x;
- the merge of one month (what the nightly rollup adds per day rolled up).

It prints the medians side by side with their ratios and targets, and drops the schema.

    .venv/bin/python benchmarks/bench_history.py [--label-sets 200] [--days 365] [--messages 2000] [--repeat 5]

Issue 14's scale: ``--label-sets 1000 --messages 2500`` (1.56 million daily rows, 5 million raw rows today).

Environment: OPMETRICS_TEST_DATABASE_URL (default: the tests' PostgreSQL,
postgresql+psycopg://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from _scratch import database_url, scratch_schema
from _year import prepare_year

from dramatiq_opmetrics.aggregate import _raw_rows
from dramatiq_opmetrics.database import LONG_READ_SETTINGS, fetch_rows, local_settings, make_engine
from dramatiq_opmetrics.partitions import day_bounds, list_partitions
from dramatiq_opmetrics.query import RangeMerge, query_metrics
from dramatiq_opmetrics.recent_tier import day_rows_query, read_state
from dramatiq_opmetrics.report import build_report, render_text
from dramatiq_opmetrics.rollup import lock_for_rollup, merge_month, month_of

RANGE_TARGET_S = 1.0
REPORT_TARGET_S = 2.0
BARE_TARGET_RATIO = 3.0
TODAY_TARGET_RATIO = 1.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label-sets", type=int, default=200, help="actor/queue label sets (default 200)")
    parser.add_argument("--days", type=int, default=365, help="days of daily rows before today (default 365)")
    parser.add_argument("--messages", type=int, default=2000, help="raw messages per actor today (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each measurement")
    args = parser.parse_args()

    with scratch_schema(database_url()) as url:
        year = prepare_year(url, label_sets=args.label_sets, days=args.days, messages=args.messages)
        today = year.now.date()
        since = today - dt.timedelta(days=args.days - 1)
        measured = measure(url, since, today, args.repeat)

    def row(name: str, seconds: float, reference: float | None = None, target: str = "") -> None:
        ratio = f"{seconds / reference:>7.2f}x" if reference else " " * 8
        print(f"{name:<58} {seconds * 1000:>9.0f} {ratio}  {target}")

    print(f"\n{'median of ' + str(args.repeat) + ' runs (new engine each)':<58} {'ms':>9} {'ratio':>8}  target")
    bare = measured["bare read of the rows it reads"]
    row("query_metrics, 365 days, all types, without today", measured["range"], bare, f"<= {BARE_TARGET_RATIO}x")
    row("  bare read of the rows it reads (months + other days)", bare)
    row("  bare read of the daily rows' JSON histograms", measured["bare json"], bare)
    with_today = measured["bare with today"]
    row("query_metrics, 365 days, all types, with today", measured["range with today"], RANGE_TARGET_S, "<= 1 s")
    row(
        "  against the bare read with today",
        measured["range with today"],
        with_today,
        f"<= {BARE_TARGET_RATIO}x",
    )
    row("  bare read with today (+ day rows, GROUP BY of the rest)", with_today, bare)
    row("report --days 365", measured["report"], REPORT_TARGET_S, f"<= {REPORT_TARGET_S:g} s")
    row("  against the bare read with today", measured["report"], with_today, f"<= {BARE_TARGET_RATIO}x")
    row("  against the bare read without today", measured["report"], bare)
    row("query_metrics, today alone (recent tier)", measured["today"], measured["group by"])
    row("report --days 1", measured["report today"], measured["group by"], f"<= {TODAY_TARGET_RATIO}x")
    row("  one GROUP BY of today's partition", measured["group by"])
    row("merge of one month's daily rows (per night)", measured["merge month"])
    worst = max(
        measured["range"] / bare / BARE_TARGET_RATIO,
        measured["range with today"] / RANGE_TARGET_S,
        measured["range with today"] / with_today / BARE_TARGET_RATIO,
        measured["report"] / REPORT_TARGET_S,
        measured["report"] / with_today / BARE_TARGET_RATIO,
        measured["report today"] / measured["group by"] / TODAY_TARGET_RATIO,
    )
    print(f"\nworst against its target: {worst:.2f}")
    return 0


def measure(url: URL, since: dt.date, today: dt.date, repeat: int) -> dict[str, float]:
    """Each measurement's median over ``repeat`` rounds, alternating, each run on an engine of its own."""

    def bare_rows(engine: Engine) -> None:
        with engine.connect() as connection, local_settings(connection, LONG_READ_SETTINGS):
            # Fetched as query_metrics fetches them (in binary by the driver), nothing merged.
            fetch_rows(connection, RangeMerge().rolled_up_query(connection, since, today))

    def bare_today(engine: Engine) -> None:
        with engine.connect() as connection, local_settings(connection, LONG_READ_SETTINGS):
            state = read_state(connection)
            assert state is not None and state.days_until is not None, "the recent tier holds today"
            # Today's day rows as the reads fetch them, and a GROUP BY of the raw rows they do not hold (the
            # hour in progress, and rows not folded yet), as report --days 1 is measured against one GROUP BY.
            fetch_rows(connection, day_rows_query(today))
            midnight, tomorrow = day_bounds(today)
            held_until = min(state.days_until, tomorrow)
            for source, params in (
                _raw_rows(connection, held_until, tomorrow, None, None),
                _raw_rows(connection, midnight, held_until, None, None, above_id=state.folded_id),
            ):
                connection.execute(
                    text(
                        "SELECT metric_type, label_set_id, count(*), sum(value), min(value), max(value)"
                        f" FROM ({source}) AS raw GROUP BY metric_type, label_set_id"
                    ),
                    params,
                ).all()

    def bare_with_today(engine: Engine) -> None:
        bare_rows(engine)
        bare_today(engine)

    def bare_json(engine: Engine) -> None:
        with engine.connect() as connection:
            connection.execute(
                text(
                    "SELECT metric_type, labels_key, sample_count, sum, min, max, CAST(histogram AS text)"
                    " FROM operational_metrics_daily WHERE date >= :since AND date <= :until"
                ),
                {"since": since, "until": today},
            ).all()

    def group_by(engine: Engine) -> None:
        with engine.connect() as connection:
            partition = list_partitions(connection)[today]
            connection.execute(
                text(
                    "SELECT metric_type, label_set_id, count(*), sum(value), min(value), max(value)"
                    f" FROM {partition} GROUP BY metric_type, label_set_id"
                )
            ).all()

    def report(first: dt.date) -> Callable[[Engine], object]:
        def run(engine: Engine) -> None:  # as `dramatiq-opmetrics report` runs it, on an engine
            render_text(build_report(engine, first, today))

        return run

    def merge(engine: Engine) -> None:
        with engine.begin() as connection:
            lock_for_rollup(connection)
            merge_month(connection, month_of(today - dt.timedelta(days=1)))

    runs: dict[str, Callable[[Engine], object]] = {
        "range": lambda engine: query_metrics(engine, since, today, include_raw=False),
        "bare read of the rows it reads": bare_rows,
        "bare json": bare_json,
        "bare with today": bare_with_today,
        "range with today": lambda engine: query_metrics(engine, since, today),
        "today": lambda engine: query_metrics(engine, today, today),
        "report": report(since),
        "report today": report(today),
        "group by": group_by,
        "merge month": merge,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            engine = make_engine(url)
            try:
                started = time.perf_counter()
                run(engine)
                times[name].append(time.perf_counter() - started)
            finally:
                engine.dispose()
    return {name: statistics.median(values) for name, values in times.items()}


if __name__ == "__main__":
    sys.exit(main())

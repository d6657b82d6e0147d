"""Alert evaluation at fleet scale: 100 rules over 200 label sets, at the recent tier benchmark's volume.

Writes, into a scratch schema of PostgreSQL, the last 24 hours of a fleet writing ``--rows`` raw rows a day
(default 20 million over 200 actor/queue label sets: ``bench_recent.load_day``), folds them into the recent
tier as the fleet would, then times :func:`~dramatiq_opmetrics.alert_evaluator.evaluate` of 100 rules
(error rates, p95 and max processing and wait times, throughput; filtered by queue or not, grouped by actor,
by queue or not at all; windows of 5 to 24 minutes), ``--repeat`` times at successive minutes (the interval
starts of the default interval). Each evaluation reads every rule's window and writes every alert's state
(one row per rule and group) in one transaction. Printed: the median time per evaluation and its ratio to
the evaluation interval (1 minute), against the target of 1 s per evaluation.

    .venv/bin/python benchmarks/bench_alerts.py [--rows 20000000] [--label-sets 200] [--repeat 5] [--quick]

``--quick`` loads 2 million rows (a minute or two less to wait; the figures are then not the target's).
Environment: OPMETRICS_TEST_DATABASE_URL (default: the tests' PostgreSQL). The scratch schema is dropped at
the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

import psycopg
from _scratch import database_url, libpq, scratch_schema
from bench_recent import load_day

from dramatiq_opmetrics.alert_evaluator import evaluate
from dramatiq_opmetrics.alert_rules import DEFAULT_EVALUATION_INTERVAL, Notifier, Rule, RuleSet
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.recent_tier import bucket_floor, fold

#: The longest an evaluation may take.
TARGET_S = 1.0
#: Raw rows per day with ``--quick``.
QUICK_ROWS = 2_000_000
MINUTE = dt.timedelta(minutes=1)


def rules(label_sets: int) -> RuleSet:
    """100 rules of the kinds people write, over the benchmark's actors (``actor_NNN``) and queues
    (``queue_0`` to ``queue_19``)."""
    queues = [f"queue_{index}" for index in range(20)]
    found: list[Rule] = []

    def add(metric: str, **options: object) -> None:
        found.append(
            Rule(
                name=f"rule-{len(found):03d}",
                metric=metric,
                above=options.pop("above", 1e12),  # type: ignore[arg-type]
                below=None,
                window=options.pop("window", 10 * MINUTE),  # type: ignore[arg-type]
                for_=5 * MINUTE,
                notify=("ops",),
                **options,  # type: ignore[arg-type]
            )
        )

    for index, queue in enumerate(queues):  # 20 error rates per queue, per actor
        add("error_rate", labels={"queue": queue}, group_by=("actor",), above=0.5, window=(5 + index % 3 * 5) * MINUTE)
    for queue in queues:  # 20 p95 processing times per queue, per actor
        add("processing_time", statistic="p95", labels={"queue": queue}, group_by=("actor",), window=15 * MINUTE)
    for index, queue in enumerate(queues):  # 20 average wait times per queue
        add("wait_time", statistic="avg", labels={"queue": queue}, window=(5 + index % 2 * 5) * MINUTE)
    for index in range(20):  # 20 fleet-wide rules per actor or queue, each its own window
        group_by = ("actor",) if index % 2 else ("queue",)
        metric, statistic = [("processing_time", "p99"), ("wait_time", "max"), ("processing_time", "max")][index % 3]
        add(metric, statistic=statistic, group_by=group_by, window=(5 + index) * MINUTE)
    for index in range(10):  # 10 throughput rules
        add("throughput", group_by=("queue",) if index % 2 else (), window=(5 + index) * MINUTE)
    for index in range(10):  # 10 error rates of single actors
        add("error_rate", labels={"actor": f"actor_{index * (label_sets // 10):03d}"}, window=10 * MINUTE)
    return RuleSet(rules=tuple(found), notifiers={"ops": Notifier("ops", ("json://127.0.0.1:9/hook",))})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000, help="raw rows per day (default 20,000,000)")
    parser.add_argument("--label-sets", type=int, default=200, help="actor/queue label sets (default 200)")
    parser.add_argument("--repeat", type=int, default=5, help="timed evaluations (default 5)")
    parser.add_argument("--quick", action="store_true", help=f"load {QUICK_ROWS:,} rows a day instead")
    args = parser.parse_args()
    rows = QUICK_ROWS if args.quick else args.rows
    ruleset = rules(args.label_sets)
    with scratch_schema(database_url()) as url:
        engine = make_engine(url)
        # Evaluations run at interval starts (whole minutes); the day loaded covers each one's windows.
        now = bucket_floor(dt.datetime.now(dt.UTC), 1)
        started = time.perf_counter()
        loaded = load_day(url, now + (args.repeat + 1) * MINUTE, rows, args.label_sets)
        print(f"loaded {loaded:,} raw rows of the last 24 hours over {args.label_sets} label sets in"
              f" {time.perf_counter() - started:.0f} s")  # fmt: skip
        fold(engine, now=now + (args.repeat + 2) * MINUTE)
        with psycopg.connect(libpq(url), autocommit=True) as connection:
            connection.execute("VACUUM ANALYZE")
        times, alerts = [], 0
        for second in range(args.repeat + 1):
            began = time.perf_counter()
            result = evaluate(engine, ruleset, now + second * MINUTE)
            elapsed = time.perf_counter() - began
            alerts = result.alerts
            if second:  # the first run warms the connection pool and the caches
                times.append(elapsed)
        engine.dispose()
    median = statistics.median(times)
    interval_s = DEFAULT_EVALUATION_INTERVAL.total_seconds()
    print(f"{len(ruleset.rules)} rules, {alerts:,} alerts (rule and group) per evaluation")
    print(
        f"evaluation: median {median * 1000:.0f} ms of {len(times)} ({', '.join(f'{t * 1000:.0f}' for t in times)} ms)"
    )
    verdict = "met" if median <= TARGET_S else "MISSED"
    print(f"  = {median / interval_s:.4f} of the {interval_s:g} s evaluation interval;"
          f" {median / TARGET_S:.2f} of the {TARGET_S:g} s target ({verdict})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

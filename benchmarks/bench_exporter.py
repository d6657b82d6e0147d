"""Time of one Prometheus scrape of the exporter on a year of history, at the dashboard benchmark's scale: the
first scrape after a start (target <= 1 s) and the later ones (target <= 100 ms), side by side in one run.

Writes the year of ``benchmarks/bench_dashboard.py`` (:func:`_year.prepare_year`: 365 days of daily rows
for 200 actor/queue label sets, 1.2 million raw samples today, months merged, recent tier folded), then
scrapes the exporter's WSGI application (:func:`~dramatiq_opmetrics.exporter.create_exporter_app`, from
request to the whole exposition text, as the server sees it):

- the first scrape after a fresh start: a new application on a new engine, nothing kept;
- the median of the ``--repeat`` scrapes that follow, one every ``--every`` seconds, with what a fleet writes
  meanwhile (``--rows-per-scrape`` new raw samples of today, and a fold of the recent tier every 60 s, as
  the fleet's folder does), so that each scrape has something new to read.

Prints both times and their ratios to the targets.

    .venv/bin/python benchmarks/bench_exporter.py [--actors 200] [--days 365] [--messages 2000] [--repeat 15]

Environment: OPMETRICS_TEST_DATABASE_URL (default: the tests' PostgreSQL,
postgresql+psycopg://postgres@127.0.0.1:5432/test). The scratch schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import time
from pathlib import Path

from werkzeug.test import Client

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from _scratch import database_url, scratch_schema
from _year import prepare_year
from raw_samples import insert_samples

from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.exporter import create_exporter_app
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.recent_tier import fold

#: Milliseconds the first scrape after a start may take.
FIRST_TARGET_MS = 1000.0
#: Milliseconds a later scrape may take.
TARGET_MS = 100.0
#: Seconds between two folds of the recent tier, as the fleet's folder runs them.
FOLD_EVERY_S = 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=200, help="actor/queue label sets (default 200)")
    parser.add_argument("--days", type=int, default=365, help="days of daily rows before today (default 365)")
    parser.add_argument(
        "--messages", type=int, default=2000, help="raw messages per actor today (default 2000: 1.2 million samples)"
    )
    parser.add_argument("--repeat", type=int, default=15, help="timed scrapes after the first (default 15)")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between two later scrapes (default 1)")
    parser.add_argument("--rows-per-scrape", type=int, default=200, help="raw samples written between scrapes")
    args = parser.parse_args()

    with scratch_schema(database_url()) as url:
        year = prepare_year(url, label_sets=args.actors, days=args.days, messages=args.messages)
        writer = make_engine(url)
        engine = make_engine(url)
        rng = random.Random(1)
        try:
            client = Client(create_exporter_app(engine=engine))
            first, size = timed(client)
            later = []
            last_fold = time.monotonic()
            for _ in range(args.repeat):
                time.sleep(args.every)
                now = dt.datetime.now(dt.UTC)
                rows = []
                for _ in range(args.rows_per_scrape // 2):
                    actor = rng.choice(year.actors)
                    labels = {"actor": actor.name, "queue": actor.queue}
                    rows.append((MetricType.PROCESSING_TIME, labels, rng.lognormvariate(3, 1), now))
                    rows.append((MetricType.WAIT_TIME, labels, rng.lognormvariate(2, 1), now))
                insert_samples(writer, rows)
                if time.monotonic() - last_fold >= FOLD_EVERY_S:
                    fold(writer)
                    last_fold = time.monotonic()
                later.append(timed(client)[0])
        finally:
            engine.dispose()
            writer.dispose()
        median = statistics.median(later)
        load = os.getloadavg()
        print(
            f"\none scrape ({size:,} bytes of exposition text)   first {first:.0f} ms,"
            f" ratio {first / FIRST_TARGET_MS:.2f} (target {FIRST_TARGET_MS:.0f} ms)"
            f"   later, median of {len(later)}: {median:.0f} ms, ratio"
            f" {median / TARGET_MS:.2f} (target {TARGET_MS:.0f} ms; slowest {max(later):.0f} ms)"
        )
        print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    return 0


def timed(client: Client) -> tuple[float, int]:
    """Milliseconds one scrape of ``/metrics`` takes (the whole body made), and the body's size."""
    started = time.perf_counter()
    response = client.get("/metrics")
    body = response.get_data()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200 or not body:
        raise SystemExit(f"/metrics answered {response.status_code}: {body[:200]!r}")
    return elapsed, len(body)


if __name__ == "__main__":
    sys.exit(main())

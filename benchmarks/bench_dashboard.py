"""Server-side time of each dashboard view on a year of history: target <= 300 ms per view.

Writes, into a scratch schema of PostgreSQL, 365 days of daily rows (with histograms) for 200 actor/queue
label sets (plus their error, queue-depth, token and confidence rows) and a full day of raw samples, then
times each view of the dashboard's WSGI application, from request to rendered page, as the server sees it:
the first request (nothing cached: the merge of a range's rolled-up histograms happens in it) and the median
of the following ones. Prints each view's time and its ratio to the target.

    .venv/bin/python benchmarks/bench_dashboard.py [--actors 200] [--days 365] [--repeat 5]

Environment: OPMETRICS_TEST_DATABASE_URL (default: the tests' PostgreSQL,
postgresql+psycopg://postgres@127.0.0.1:5432/test). The scratch schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import psycopg
from werkzeug.test import Client

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from _scratch import database_url, libpq, scratch_schema
from fleet_history import make_actors, populate

from dramatiq_opmetrics.dashboard.app import DashboardApp
from dramatiq_opmetrics.dashboard.data import DashboardData
from dramatiq_opmetrics.database import make_engine

TARGET_MS = 300.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=200, help="actor/queue label sets (default 200)")
    parser.add_argument("--days", type=int, default=365, help="days of daily rows before today (default 365)")
    parser.add_argument("--messages", type=int, default=2000, help="raw messages per actor today (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed requests per view after the first")
    args = parser.parse_args()

    with scratch_schema(database_url()) as url:
        engine = make_engine(url)
        # "Now" is the last minute of today, so that today holds a full day of raw samples.
        today = dt.datetime.now(dt.UTC).date()
        now = dt.datetime.combine(today, dt.time(23, 59), tzinfo=dt.UTC)
        started = time.perf_counter()
        actors = make_actors(args.actors, hostile=False, queues=20)
        history = populate(
            engine,
            days=args.days + 1,
            actors=actors,
            now=now,
            raw_samples_per_actor=args.messages,
            depth_interval_s=15.0,
        )
        # As autovacuum would have done by now: statistics, and the BRIN summaries of today's partition.
        with psycopg.connect(libpq(url), autocommit=True) as c:
            c.execute("VACUUM ANALYZE")
        print(
            f"populated in {time.perf_counter() - started:.0f} s: {history.daily_rows:,} daily rows over"
            f" {args.days} days for {args.actors} actor/queue label sets, {history.raw_rows:,} raw samples today"
        )
        app = DashboardApp(DashboardData(engine, clock=lambda: now))
        client = Client(app)
        actor = actors[0]
        views = [
            ("overview, 30 days", "/?days=30"),
            ("overview, 365 days", "/?days=365"),
            ("actor detail, 30 days", f"/actor?actor={actor.name}&queue={actor.queue}&days=30"),
            ("actor detail, 365 days", f"/actor?actor={actor.name}&queue={actor.queue}&days=365"),
            ("queues, 24 h raw + 30 days", "/queues?days=30&hours=24"),
            ("queues, 168 h raw + 365 days", "/queues?days=365&hours=168"),
            ("token usage, 365 days", "/tokens?days=365"),
            ("confidence, 365 days", "/confidence?days=365"),
        ]
        header = f"{'view':<32} {'first (ms)':>11} {'ratio':>6} {'median (ms)':>12} {'ratio':>6}"
        print(f"\n{header}  (target {TARGET_MS:.0f} ms)")
        worst = 0.0
        for name, path in views:
            first = timed(client, path)
            rest = statistics.median(timed(client, path) for _ in range(args.repeat))
            worst = max(worst, rest)
            print(f"{name:<32} {first:>11.0f} {first / TARGET_MS:>6.2f} {rest:>12.0f} {rest / TARGET_MS:>6.2f}")
        print(f"\nslowest median: {worst:.0f} ms = {worst / TARGET_MS:.2f} x the target")
        engine.dispose()
    return 0


def timed(client: Client, path: str) -> float:
    """Milliseconds the application takes to answer ``path`` (the full response body rendered)."""
    started = time.perf_counter()
    response = client.get(path)
    body = response.get_data()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200 or not body:
        raise SystemExit(f"{path} answered {response.status_code}")
    return elapsed


if __name__ == "__main__":
    sys.exit(main())

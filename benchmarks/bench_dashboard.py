"""Server-side time of each dashboard view on a year of history: the first request after a start (target
<= 1 s) and the later ones (target <= 300 ms), side by side in one run.

Writes, into a scratch schema of PostgreSQL, 365 days of daily rows (with histograms) for 200 actor/queue
label sets (plus their error, queue-depth, token and confidence rows) and today's raw samples (1.2 million
at the defaults), then brings it to what a running installation has: the nightly rollup has merged the
months (the one-time merge after migration 0007 is timed and printed) and the recent tier is folded. Then,
for each view of the dashboard's WSGI application, from request to rendered page, as the server sees it:

- the first request after a fresh start: a new application made by the public factory
  (:func:`~dramatiq_opmetrics.dashboard.app.create_app`) on a new engine, nothing kept in memory;
- the median of the ``--repeat`` requests that follow on that application.

Prints each view's times and their ratios to the targets. A view the application does not serve (404) is
listed as such.

    .venv/bin/python benchmarks/bench_dashboard.py [--actors 200] [--days 365] [--messages 2000] [--repeat 5]

Environment: OPMETRICS_TEST_DATABASE_URL (default: the tests' PostgreSQL,
postgresql+psycopg://postgres@127.0.0.1:5432/test). The scratch schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from werkzeug.test import Client

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from _scratch import database_url, scratch_schema
from _year import prepare_year

from dramatiq_opmetrics.dashboard.app import create_app
from dramatiq_opmetrics.database import make_engine

#: Milliseconds the first request of a view after a start may take.
FIRST_TARGET_MS = 1000.0
#: Milliseconds a later request of a view may take.
TARGET_MS = 300.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=200, help="actor/queue label sets (default 200)")
    parser.add_argument("--days", type=int, default=365, help="days of daily rows before today (default 365)")
    parser.add_argument("--messages", type=int, default=2000, help="raw messages per actor today (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed requests per view after the first")
    args = parser.parse_args()

    with scratch_schema(database_url()) as url:
        year = prepare_year(url, label_sets=args.actors, days=args.days, messages=args.messages)
        actor = year.actors[0]
        views = [
            ("overview, 30 days", "/?days=30"),
            ("overview, 365 days", "/?days=365"),
            ("actor detail, 30 days", f"/actor?actor={actor.name}&queue={actor.queue}&days=30"),
            ("actor detail, 365 days", f"/actor?actor={actor.name}&queue={actor.queue}&days=365"),
            ("queues, 24 h raw + 30 days", "/queues?days=30&hours=24"),
            ("queues, 168 h raw + 365 days", "/queues?days=365&hours=168"),
            ("token usage, 365 days", "/tokens?days=365"),
            ("confidence, 365 days", "/confidence?days=365"),
            ("now, last hour", "/now?window=1h"),
            ("now, 72 hours", "/now?window=72h"),
        ]
        print(
            f"\n{'view':<30} {'first (ms)':>10} {'ratio':>6} {'later, median (ms)':>19} {'ratio':>6}"
            f"   (targets: first {FIRST_TARGET_MS:.0f} ms, later {TARGET_MS:.0f} ms)"
        )
        worst = 0.0
        for name, path in views:
            engine = make_engine(url)
            try:
                client = Client(create_app(engine=engine))
                first = timed(client, path)
                if first is None:
                    print(f"{name:<30} {'not served (404)':>10}")
                    continue
                later = statistics.median(timed(client, path) or 0.0 for _ in range(args.repeat))
            finally:
                engine.dispose()
            worst = max(worst, first / FIRST_TARGET_MS, later / TARGET_MS)
            print(f"{name:<30} {first:>10.0f} {first / FIRST_TARGET_MS:>6.2f} {later:>19.0f} {later / TARGET_MS:>6.2f}")
        print(f"\nworst against its target: {worst:.2f}")
    return 0


def timed(client: Client, path: str) -> float | None:
    """Milliseconds the application takes to answer ``path`` (the full response body rendered); None if the
    application has no such page."""
    started = time.perf_counter()
    response = client.get(path)
    body = response.get_data()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code == 404:
        return None
    if response.status_code != 200 or not body:
        raise SystemExit(f"{path} answered {response.status_code}")
    return elapsed


if __name__ == "__main__":
    sys.exit(main())

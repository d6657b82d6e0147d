"""Benchmark helper: a year of a fleet's history in a scratch schema, as a running installation has it.

:func:`prepare_year` writes the daily rows of ``days`` days and today's raw samples (``tests/fleet_history``),
then does what the nightly job and the fleet would have done by now: merges the months (and packs the daily
histograms: the one-time work after migration 0007, timed), folds the recent tier, runs the rollup (nothing
left to do) and ``VACUUM ANALYZE`` (statistics, and the BRIN summaries of today's partition, as autovacuum
would). It prints one line saying what it wrote and how long each step took.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from _scratch import libpq
from sqlalchemy.engine import URL

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from fleet_history import Actor, make_actors, populate

from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.recent_tier import fold
from dramatiq_opmetrics.rollup import merge_months, rollup


@dataclass(frozen=True)
class Year:
    """What :func:`prepare_year` wrote: the actors, and ``now``, the end of today's raw samples."""

    actors: list[Actor]
    now: dt.datetime


def prepare_year(url: URL, *, label_sets: int, days: int, messages: int) -> Year:
    """Write ``days`` days of daily rows before today for ``label_sets`` actor/queue label sets and
    ``messages`` raw messages per actor today (up to a minute ago), then bring the schema to a running
    installation's state (see the module docstring)."""
    setup = make_engine(url, maintenance=True)
    # Today's raw samples run from midnight to a minute ago: readers read them on the real clock.
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    try:
        started = time.perf_counter()
        actors = make_actors(label_sets, hostile=False, queues=20)
        history = populate(
            setup, days=days + 1, actors=actors, now=now, raw_samples_per_actor=messages, depth_interval_s=15.0
        )
        populated_s = time.perf_counter() - started
        started = time.perf_counter()
        months = merge_months(setup)
        merged_s = time.perf_counter() - started
        started = time.perf_counter()
        fold(setup, now=now)
        folded_s = time.perf_counter() - started
        rollup(setup, now=now)  # nothing left to do: partitions ahead, months up to date
        with psycopg.connect(libpq(url), autocommit=True) as connection:
            connection.execute("VACUUM ANALYZE")
    finally:
        setup.dispose()
    print(
        f"{history.daily_rows:,} daily rows over {days} days for {label_sets} actor/queue label sets,"
        f" {history.raw_rows:,} raw samples today; written in {populated_s:.0f} s, {len(months)} months merged"
        f" (and their daily histograms packed) in {merged_s:.0f} s, recent tier folded in {folded_s:.0f} s"
    )
    return Year(actors, now)

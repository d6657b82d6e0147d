"""The daily rollup: exact daily statistics, idempotence, catch-up, late samples, concurrency, pruned days."""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import threading
from typing import Any

import numpy as np
import pytest
from fleet_history import make_actors, populate
from raw_samples import at, insert_samples
from sqlalchemy import Engine, delete, select, text

from dramatiq_opmetrics.aggregate import PERCENTILES
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.models import OperationalMetricDaily, OperationalMetricMonthly
from dramatiq_opmetrics.packed_histograms import unpack
from dramatiq_opmetrics.partitions import DEFAULT_PARTITION_DAYS_AHEAD, ensure_partitions, list_partitions
from dramatiq_opmetrics.rollup import (
    SUFFIX_PART_BASE,
    WHOLE_MONTH,
    DayRollup,
    exact_sum_parts,
    merge_months,
    month_of,
    months_to_merge,
    part_bounds,
    rollup,
    third_of,
)
from dramatiq_opmetrics.sketch import Histogram

TODAY = dt.date(2026, 11, 20)
NOW = dt.datetime(2026, 11, 20, 1, 30, tzinfo=dt.UTC)
DAILY_COLUMNS = "metric_type, date, labels_key, labels, sample_count, sum, min, max, avg, p50, p95, p99, histogram"


def days_ago(n: int) -> dt.date:
    return TODAY - dt.timedelta(days=n)


def record_day(
    engine: Engine, day: dt.date, count: int = 500, seed: int = 0, partition: bool = True
) -> dict[str, list[float]]:
    """Record ``count`` processing times over two actors on ``day``; return the values by labels key.

    On PostgreSQL the day gets its partition first, as in normal operation, unless ``partition`` is False
    (then its rows land in the default partition).
    """
    if partition:
        with engine.begin() as connection:
            ensure_partitions(connection, day, day)
    rng = random.Random(seed or day.toordinal())
    values: dict[str, list[float]] = {}
    rows = []
    for i in range(count):
        actor = f"actor_{i % 2}"
        value = rng.lognormvariate(5, 1)
        values.setdefault(f"actor:{actor}|queue:default", []).append(value)
        labels = {"actor": actor, "queue": "default"}
        rows.append((MetricType.PROCESSING_TIME, labels, value, at(day, i * 86_000 / count)))
    insert_samples(engine, rows)
    return values


def daily_rows(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        daily = OperationalMetricDaily.__table__
        return [tuple(row) for row in connection.execute(select(daily).order_by(daily.c.date, daily.c.labels_key))]


def test_daily_rows_hold_the_exact_statistics_of_each_day(engine: Engine) -> None:
    values = record_day(engine, days_ago(1), count=2001)
    assert [r.day for r in rollup(engine, now=NOW)] == [days_ago(1)]
    with engine.connect() as connection:
        rows = connection.execute(select(OperationalMetricDaily.__table__)).all()
    assert len(rows) == 2
    for row in rows:
        expected = values[row.labels_key]
        assert row.metric_type is MetricType.PROCESSING_TIME
        assert row.date == days_ago(1)
        assert row.labels == {"actor": row.labels_key.split("|")[0][6:], "queue": "default"}
        assert row.sample_count == len(expected)
        assert row.sum == pytest.approx(math.fsum(expected), rel=1e-12)
        assert (row.min, row.max) == (min(expected), max(expected))
        assert row.avg == pytest.approx(np.mean(expected), rel=1e-12)
        assert [row.p50, row.p95, row.p99] == pytest.approx(np.percentile(expected, [50, 95, 99]), rel=1e-12)
        assert Histogram.from_json(row.histogram) == Histogram.of(expected)


def test_rolling_up_a_day_twice_leaves_identical_rows(engine: Engine) -> None:
    record_day(engine, days_ago(1))
    rollup(engine, now=NOW)
    first = daily_rows(engine)
    again = rollup(engine, day=days_ago(1), now=NOW)
    assert [r.day for r in again] == [days_ago(1)]
    assert daily_rows(engine) == first
    assert rollup(engine, now=NOW) == []


def test_catch_up_rolls_up_every_missed_day_but_not_today(engine: Engine) -> None:
    for n in (0, 1, 2, 3):
        record_day(engine, days_ago(n), count=100)
    rolled = rollup(engine, now=NOW)
    assert [r.day for r in rolled] == [days_ago(3), days_ago(2), days_ago(1)]
    assert all(r.rows == 100 and r.label_sets == 2 and r.daily_rows == 2 for r in rolled)
    assert {row[1] for row in daily_rows(engine)} == {days_ago(3), days_ago(2), days_ago(1)}


def test_since_limits_the_catch_up(engine: Engine) -> None:
    for n in (1, 2, 3):
        record_day(engine, days_ago(n), count=50)
    assert [r.day for r in rollup(engine, since=days_ago(2), now=NOW)] == [days_ago(2), days_ago(1)]


def test_late_samples_of_a_rolled_up_day_are_included_by_the_next_run(engine: Engine) -> None:
    values = record_day(engine, days_ago(1), count=300)
    rollup(engine, now=NOW)
    late = [(MetricType.PROCESSING_TIME, {"actor": "actor_0", "queue": "default"}, 1e5, at(days_ago(1), 86_399))]
    insert_samples(engine, late)
    values["actor:actor_0|queue:default"].append(1e5)
    rolled = rollup(engine, now=NOW + dt.timedelta(days=1))
    assert [(r.day, r.rows) for r in rolled] == [(days_ago(1), 301)]
    with engine.connect() as connection:
        daily = OperationalMetricDaily.__table__
        row = connection.execute(select(daily).where(daily.c.labels_key == "actor:actor_0|queue:default")).one()
    assert (row.sample_count, row.max) == (151, 1e5)
    assert row.p99 == pytest.approx(np.percentile(values["actor:actor_0|queue:default"], 99), rel=1e-12)


def test_two_rollups_at_once_give_no_duplicates_and_no_errors(engine: Engine) -> None:
    for n in (1, 2, 3):
        record_day(engine, days_ago(n), count=2000)
    barrier = threading.Barrier(2)
    results: list[list[DayRollup]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(rollup(engine, now=NOW))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rolled_days = sorted(r.day for result in results for r in result)
    assert rolled_days == [days_ago(3), days_ago(2), days_ago(1)]
    rows = daily_rows(engine)
    assert len(rows) == 6
    assert sum(row[4] for row in rows) == 6000  # type: ignore[misc]


def test_a_day_whose_raw_rows_are_gone_is_never_rolled_up_again(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    record_day(engine, days_ago(40), count=200)
    rollup(engine, now=NOW)
    before = daily_rows(engine)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM operational_metrics"))
    # One sample arrives for the day after its raw rows were removed.
    insert_samples(engine, [(MetricType.PROCESSING_TIME, {"actor": "x"}, 1.0, at(days_ago(40), 60))])
    with caplog.at_level(logging.WARNING, logger="dramatiq_opmetrics.rollup"):
        assert rollup(engine, now=NOW) == []
        assert rollup(engine, day=days_ago(40), now=NOW) == []
    assert daily_rows(engine) == before
    assert "retention removed its raw rows" in caplog.text


def test_a_day_that_is_not_complete_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="not complete yet"):
        rollup(engine, day=TODAY, now=NOW)
    with pytest.raises(ValueError, match="either day or since"):
        rollup(engine, day=days_ago(1), since=days_ago(2), now=NOW)


def test_each_rolled_up_day_is_logged_with_rows_label_sets_and_duration(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    record_day(engine, days_ago(1), count=10)
    with caplog.at_level(logging.INFO, logger="dramatiq_opmetrics.rollup"):
        rollup(engine, now=NOW)
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "rollup_day"]
    assert record.getMessage().startswith(f"Rolled up day {days_ago(1)}: rows=10 label_sets=2 daily_rows=2 duration_s=")
    assert (record.day, record.rows, record.label_sets) == (days_ago(1).isoformat(), 10, 2)  # type: ignore[attr-defined]


@pytest.mark.postgres
def test_each_run_creates_partitions_ahead_and_rolls_up_rows_of_the_default_partition(postgres_engine: Engine) -> None:
    old_day = days_ago(3)
    values = record_day(postgres_engine, old_day, count=100, partition=False)
    with postgres_engine.connect() as connection:
        in_default = connection.execute(text("SELECT count(*) FROM operational_metrics_default")).scalar_one()
    assert in_default == 100
    rolled = rollup(postgres_engine, now=NOW)
    assert [(r.day, r.rows) for r in rolled] == [(old_day, 100)]
    with postgres_engine.connect() as connection:
        partitions = list_partitions(connection)
        total = connection.execute(select(OperationalMetricDaily.sample_count)).scalars().all()
    assert all(TODAY + dt.timedelta(days=n) in partitions for n in range(DEFAULT_PARTITION_DAYS_AHEAD + 1))
    assert sum(total) == sum(len(v) for v in values.values())


def monthly_rows(engine: Engine, part: int | None = WHOLE_MONTH) -> list[Any]:
    """The monthly rows of ``part`` (None: of every part)."""
    with engine.connect() as connection:
        monthly = OperationalMetricMonthly.__table__
        query = select(monthly).order_by(monthly.c.month, monthly.c.part, monthly.c.labels_key)
        if part is not None:
            query = query.where(monthly.c.part == part)
        return list(connection.execute(query))


def parts_holding(day: dt.date) -> set[int]:
    """The parts of its month whose monthly rows hold ``day``: the month, its third, and every suffix (days
    ``d`` to the month's end) from a ``d`` of 2 to ``day``, but the one from day 21 (the third third)."""
    suffixes = {SUFFIX_PART_BASE + d for d in range(2, day.day + 1) if d != 21}
    return {WHOLE_MONTH, third_of(day)} | suffixes


def assert_monthly_rows_merge_the_daily_rows(engine: Engine) -> None:
    """Every month's rows, its thirds' and its suffixes', are their daily rows merged: counts, extremes,
    exact sums, histograms, which days the period has."""
    with engine.connect() as connection:
        daily = connection.execute(select(OperationalMetricDaily.__table__)).all()
    periods: dict[tuple[object, dt.date, int, str], list[Any]] = {}
    days_of_period: dict[tuple[dt.date, int], set[dt.date]] = {}
    for row in daily:
        for part in parts_holding(row.date):
            periods.setdefault((row.metric_type, month_of(row.date), part, row.labels_key), []).append(row)
            days_of_period.setdefault((month_of(row.date), part), set()).add(row.date)
            first, last = part_bounds(month_of(row.date), part)
            assert first <= row.date <= last
    found = {(row.metric_type, row.month, row.part, row.labels_key): row for row in monthly_rows(engine, None)}
    assert found.keys() == periods.keys()
    for key, days in periods.items():
        row = found[key]
        merged = Histogram()
        for day in days:
            merged += Histogram.from_json(day.histogram)
            assert unpack(day.histogram_packed) == Histogram.from_json(day.histogram)
        assert row.sample_count == sum(day.sample_count for day in days)
        assert (row.min, row.max) == (min(day.min for day in days), max(day.max for day in days))
        assert row.sum == math.fsum(day.sum for day in days) == math.fsum(row.sum_parts)
        assert unpack(row.histogram_packed) == merged
        covered = days_of_period[(row.month, row.part)]
        assert (row.daily_rows, row.first_day, row.last_day) == (len(days), min(covered), max(covered))
        assert row.source_rolled_up_at == max(day.rolled_up_at for day in days)
        if len(days) == 1:
            assert (row.p50, row.p95, row.p99) == (days[0].p50, days[0].p95, days[0].p99)
        else:
            expected = [min(max(value, row.min), row.max) for value in merged.quantiles(PERCENTILES)]
            assert [row.p50, row.p95, row.p99] == expected


def test_the_rollup_of_a_day_merges_its_month_into_monthly_rows(engine: Engine) -> None:
    # TODAY is 2026-11-20: these days are in October and November.
    for n in (25, 24, 3, 2, 1):
        record_day(engine, days_ago(n), count=200)
    rollup(engine, now=NOW)
    october, november = dt.date(2026, 10, 1), dt.date(2026, 11, 1)
    suffixes = {SUFFIX_PART_BASE + d for d in range(2, 31) if d != 21}
    assert {(row.month, row.part, row.daily_rows) for row in monthly_rows(engine, None)} == {
        (october, 0, 2),
        (october, 3, 2),
        *((october, part, 2) for part in suffixes if part <= SUFFIX_PART_BASE + 26),
        (october, SUFFIX_PART_BASE + 27, 1),
        (november, 0, 3),
        (november, 2, 3),
        *((november, part, 3) for part in suffixes if part <= SUFFIX_PART_BASE + 17),
        (november, SUFFIX_PART_BASE + 18, 2),
        (november, SUFFIX_PART_BASE + 19, 1),
    }
    assert_monthly_rows_merge_the_daily_rows(engine)


def test_a_month_with_missing_days_has_suffixes_up_to_its_last_day_covering_the_days_it_has(engine: Engine) -> None:
    october = dt.date(2026, 10, 1)
    for day in (3, 4, 9, 15, 28):
        record_day(engine, october.replace(day=day), count=50)
    rollup(engine, now=NOW)
    suffixes = {row.part: row for row in monthly_rows(engine, None) if row.part >= SUFFIX_PART_BASE}
    assert sorted(suffixes) == [SUFFIX_PART_BASE + d for d in range(2, 29) if d != 21]
    # Every row of a suffix says which days it holds: from the first day it has rows for to the last.
    assert [
        (suffixes[SUFFIX_PART_BASE + d].first_day.day, suffixes[SUFFIX_PART_BASE + d].last_day.day)
        for d in (2, 5, 10, 16, 28)
    ] == [
        (3, 28),
        (9, 28),
        (15, 28),
        (28, 28),
        (28, 28),
    ]
    # A suffix from a day without daily rows is the one from the next day that has some.
    assert suffixes[SUFFIX_PART_BASE + 5].histogram_packed == suffixes[SUFFIX_PART_BASE + 9].histogram_packed
    assert_monthly_rows_merge_the_daily_rows(engine)


def test_a_late_re_rollup_of_a_day_rebuilds_the_suffixes_that_hold_it_and_only_those_change(engine: Engine) -> None:
    for n in range(1, 19):  # November 2 to 19
        record_day(engine, days_ago(n), count=40)
    rollup(engine, now=NOW)
    before = {(row.part, row.labels_key): row for row in monthly_rows(engine, None)}
    late_day = dt.date(2026, 11, 10)
    late = [(MetricType.PROCESSING_TIME, {"actor": "actor_0", "queue": "default"}, 1e5, at(late_day, 86_399))]
    insert_samples(engine, late)
    assert [day.day for day in rollup(engine, now=NOW)] == [late_day]
    after = {(row.part, row.labels_key): row for row in monthly_rows(engine, None)}
    assert after.keys() == before.keys()
    for (part, labels_key), row in after.items():
        grew = part in parts_holding(late_day) and labels_key.startswith("actor:actor_0|")
        assert row.sample_count == before[part, labels_key].sample_count + grew, part
        assert (row.max == 1e5) == grew, part
    assert_monthly_rows_merge_the_daily_rows(engine)


def test_months_merged_before_suffixes_existed_are_merged_again_by_the_next_run(engine: Engine) -> None:
    populate(engine, days=40, actors=make_actors(2, queues=1), now=NOW, raw_samples_per_actor=0)
    rollup(engine, now=NOW)
    monthly = OperationalMetricMonthly.__table__
    with engine.begin() as connection:
        connection.execute(
            delete(monthly).where(monthly.c.part >= SUFFIX_PART_BASE, monthly.c.month != month_of(NOW.date()))
        )
        assert months_to_merge(connection) == [dt.date(2026, 10, 1)]
    assert [merge.month for merge in merge_months(engine)] == [dt.date(2026, 10, 1)]
    assert_monthly_rows_merge_the_daily_rows(engine)
    with engine.connect() as connection:
        assert months_to_merge(connection) == []


def test_a_day_rolled_up_again_re_merges_its_month_without_counting_the_day_twice(engine: Engine) -> None:
    record_day(engine, days_ago(2), count=100)
    record_day(engine, days_ago(1), count=100)
    rollup(engine, now=NOW)
    late = [(MetricType.PROCESSING_TIME, {"actor": "actor_0", "queue": "default"}, 1e5, at(days_ago(1), 86_399))]
    insert_samples(engine, late)
    rollup(engine, now=NOW)
    rollup(engine, day=days_ago(1), now=NOW)
    assert sum(row.sample_count for row in monthly_rows(engine)) == 201
    assert max(row.max for row in monthly_rows(engine)) == 1e5
    assert_monthly_rows_merge_the_daily_rows(engine)


def test_daily_rows_written_otherwise_are_packed_and_merged_into_months_by_the_next_run(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # Daily rows as migration 0007 finds them (or as an import writes them): JSON histograms only.
    populate(engine, days=70, actors=make_actors(3, queues=2), now=NOW, raw_samples_per_actor=0)
    assert monthly_rows(engine) == []
    with caplog.at_level(logging.INFO, logger="dramatiq_opmetrics.rollup"):
        assert rollup(engine, now=NOW) == []
    merged = [record for record in caplog.records if getattr(record, "event", None) == "rollup_month"]
    assert [record.month for record in merged] == ["2026-09-01", "2026-10-01", "2026-11-01"]  # type: ignore[attr-defined]
    assert_monthly_rows_merge_the_daily_rows(engine)
    with engine.connect() as connection:
        assert months_to_merge(connection) == []
    assert merge_months(engine) == []
    # A month whose daily rows change outside the rollup is merged again by the next run.
    with engine.begin() as connection:
        daily = OperationalMetricDaily.__table__
        connection.execute(delete(daily).where(daily.c.date == dt.date(2026, 10, 15)))
    assert [merge.month for merge in merge_months(engine)] == [dt.date(2026, 10, 1)]
    assert_monthly_rows_merge_the_daily_rows(engine)


def test_exact_sum_parts_sum_exactly_what_the_values_sum() -> None:
    rng = random.Random(4)
    for _ in range(200):
        values = [rng.choice((1e16, 1.0, 1e-8, 3.3)) * rng.uniform(0, 1e3) for _ in range(rng.randint(1, 40))]
        parts = exact_sum_parts(values)
        more = [rng.uniform(0, 1e17) for _ in range(rng.randint(0, 5))]
        assert math.fsum(parts + more) == math.fsum(values + more)
        assert len(parts) <= len(values)

"""The query API: range statistics from daily rows, accurate percentiles, grouping, filters, today from raw."""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from fleet_history import make_actors, populate
from raw_samples import at, insert_samples
from sqlalchemy import Engine, select, text

from dramatiq_opmetrics import MetricStats, MetricType, query_daily_series, query_metrics
from dramatiq_opmetrics.aggregate import PERCENTILES
from dramatiq_opmetrics.database import LONG_READ_SETTINGS, local_settings
from dramatiq_opmetrics.models import OperationalMetricDaily, RecentDay
from dramatiq_opmetrics.query import RangeMerge, query_metrics_and_recent_days, query_metrics_together
from dramatiq_opmetrics.recent_tier import bucket_floor, fold, read_state
from dramatiq_opmetrics.retention import prune
from dramatiq_opmetrics.rollup import rollup
from dramatiq_opmetrics.sketch import Histogram

# The query reads raw rows of the days not rolled up, today among them: these tests use the real date.
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(autouse=True)
def now_as_the_test_starts() -> None:
    """``NOW`` read again as each test starts, not only at import: a suite running past midnight UTC would
    otherwise write "today's" rows on a day that is yesterday for the query."""
    global NOW  # read by the helpers too
    NOW = dt.datetime.now(dt.UTC)


def days_ago(n: int) -> dt.date:
    return NOW.date() - dt.timedelta(days=n)


def lognormal_month(engine: Engine, per_day: int = 1500) -> list[float]:
    """30 complete days of lognormal durations whose distribution drifts from day to day."""
    rng = random.Random(30)
    values, rows = [], []
    for n in range(1, 31):
        mu, sigma = 4 + 0.8 * math.sin(n / 3), 0.6 + 0.5 * (n % 4) / 3
        for i in range(per_day):
            value = rng.lognormvariate(mu, sigma)
            values.append(value)
            rows.append((MetricType.PROCESSING_TIME, {"actor": "work", "queue": "q"}, value, at(days_ago(n), i * 50)))
    insert_samples(engine, rows)
    return values


def test_percentiles_over_30_days_of_lognormal_durations_are_within_one_percent(engine: Engine) -> None:
    values = lognormal_month(engine)
    rollup(engine, now=NOW)
    since, until = days_ago(30), days_ago(1)
    [stats] = query_metrics(engine, since, until, metric_type=MetricType.PROCESSING_TIME)
    exact = np.percentile(values, [50, 95, 99])
    assert stats.count == len(values)
    assert stats.sum == pytest.approx(math.fsum(values), rel=1e-12)
    assert (stats.min, stats.max) == (min(values), max(values))
    assert stats.avg == pytest.approx(np.mean(values), rel=1e-12)
    for estimate, expected in zip((stats.p50, stats.p95, stats.p99), exact, strict=True):
        assert estimate is not None
        assert abs(estimate - expected) <= 0.01 * expected
    # The data is one where averaging daily p95s would be wrong by far more than 1%.
    daily = query_daily_series(engine, since, until)
    averaged_p95 = np.mean([point.p95 for point in daily])
    assert abs(averaged_p95 - exact[1]) > 0.03 * exact[1]
    # Raw rows gone, the answer from daily rows alone is the same.
    pruned = prune(engine, retention_days=1, now=NOW + dt.timedelta(days=1))
    assert len(pruned.pruned) == 30
    assert query_metrics(engine, since, until) == [stats]


def test_a_range_of_one_rolled_up_row_gives_the_exact_daily_percentiles(engine: Engine) -> None:
    rng = random.Random(2)
    values = [rng.expovariate(0.01) for _ in range(101)]
    insert_samples(
        engine, [(MetricType.WAIT_TIME, {"queue": "q"}, v, at(days_ago(1), i)) for i, v in enumerate(values)]
    )
    rollup(engine, now=NOW)
    [stats] = query_metrics(engine, days_ago(1), days_ago(1))
    assert [stats.p50, stats.p95, stats.p99] == pytest.approx(np.percentile(values, [50, 95, 99]), rel=1e-12)


def make_fleet(engine: Engine) -> None:
    rows = []
    for n in (2, 1):
        for actor, queue, value in [("a", "q1", 10.0), ("a", "q2", 20.0), ("b", "q1", 30.0)]:
            rows += [
                (MetricType.PROCESSING_TIME, {"actor": actor, "queue": queue}, value, at(days_ago(n), i))
                for i in range(n)
            ]
    rows.append((MetricType.ERROR, {"actor": "a", "queue": "q1", "error_type": "E"}, 1.0, at(days_ago(1), 5)))
    insert_samples(engine, rows)
    rollup(engine, now=NOW)


def summary(results: list[MetricStats]) -> list[tuple[str, dict[str, str], int, float]]:
    return [(s.metric_type.value, dict(s.labels), s.count, s.sum) for s in results]


def test_results_group_by_chosen_labels_or_by_full_label_set(engine: Engine) -> None:
    make_fleet(engine)
    since, until = days_ago(7), days_ago(1)
    kind = MetricType.PROCESSING_TIME
    assert summary(query_metrics(engine, since, until, metric_type=kind, group_by=("actor",))) == [
        ("processing_time", {"actor": "a"}, 6, 90.0),
        ("processing_time", {"actor": "b"}, 3, 90.0),
    ]
    assert summary(query_metrics(engine, since, until, metric_type=kind, group_by=())) == [
        ("processing_time", {}, 9, 180.0)
    ]
    assert summary(query_metrics(engine, since, until, group_by=("queue", "error_type"))) == [
        ("processing_time", {"queue": "q1"}, 6, 120.0),
        ("processing_time", {"queue": "q2"}, 3, 60.0),
        ("error", {"queue": "q1", "error_type": "E"}, 1, 1.0),
    ]
    by_label_set = query_metrics(engine, since, until, metric_type=kind)
    assert [dict(s.labels) for s in by_label_set] == [
        {"actor": "a", "queue": "q1"},
        {"actor": "a", "queue": "q2"},
        {"actor": "b", "queue": "q1"},
    ]


def test_a_label_filter_keeps_samples_having_all_its_labels(engine: Engine) -> None:
    make_fleet(engine)
    results = query_metrics(engine, days_ago(7), days_ago(1), labels={"queue": "q1"}, group_by=("actor",))
    assert summary(results) == [
        ("processing_time", {"actor": "a"}, 3, 30.0),
        ("processing_time", {"actor": "b"}, 3, 90.0),
        ("error", {"actor": "a"}, 1, 1.0),
    ]
    assert query_metrics(engine, days_ago(7), days_ago(1), labels={"queue": "nowhere"}) == []


def test_days_not_rolled_up_are_read_from_raw_rows_so_today_is_never_missing(engine: Engine) -> None:
    make_fleet(engine)
    labels = {"actor": "a", "queue": "q1"}
    insert_samples(engine, [(MetricType.PROCESSING_TIME, labels, 1000.0, at(NOW.date()))])
    kind = MetricType.PROCESSING_TIME
    [with_today] = query_metrics(engine, days_ago(1), NOW.date(), metric_type=kind, labels=labels)
    assert (with_today.count, with_today.max, with_today.raw_days) == (2, 1000.0, 1)
    [without] = query_metrics(engine, days_ago(1), NOW.date(), metric_type=kind, labels=labels, include_raw=False)
    assert (without.count, without.max, without.raw_days) == (1, 10.0, 0)
    series = query_daily_series(engine, days_ago(1), NOW.date(), metric_type=kind, labels=labels)
    assert [(p.date, p.count, p.raw_days) for p in series] == [(days_ago(1), 1, 0), (NOW.date(), 1, 1)]


def add_today(engine: Engine, *, seed: int, messages: int, error_seconds: Sequence[int]) -> None:
    """Today's raw rows beside :func:`make_fleet`: lognormal processing times of ``a`` and wait times of ``b``
    (``messages`` each, a second apart), and an error of ``a`` at each of ``error_seconds``."""
    rng = random.Random(seed)
    today = [
        (kind, {"actor": actor, "queue": "q1"}, rng.lognormvariate(3, 1), at(NOW.date(), i))
        for i in range(messages)
        for kind, actor in [(MetricType.PROCESSING_TIME, "a"), (MetricType.WAIT_TIME, "b")]
    ]
    today += [
        (MetricType.ERROR, {"actor": "a", "queue": "q1", "error_type": "E"}, 1.0, at(NOW.date(), i))
        for i in error_seconds
    ]
    insert_samples(engine, today)


def test_a_range_and_its_recent_days_read_together_equal_the_query_api_read_apart(engine: Engine) -> None:
    make_fleet(engine)
    add_today(engine, seed=7, messages=300, error_seconds=[3])
    since, group = days_ago(7), ("actor", "queue")
    timed = [MetricType.PROCESSING_TIME, MetricType.WAIT_TIME]
    whole, recent = query_metrics_and_recent_days(
        engine, since, NOW.date(), metric_types=timed, day_metric_types=[*timed, MetricType.ERROR], group_by=group
    )
    apart = [
        stats for kind in timed for stats in query_metrics(engine, since, NOW.date(), metric_type=kind, group_by=group)
    ]
    # Exact but for the last bit of a sum: a range of one raw day alone is read from the recent tier, whose
    # buckets add the day's values in another order.
    assert [(s.metric_type, s.labels, s.count, s.min, s.max) for s in whole] == [
        (s.metric_type, s.labels, s.count, s.min, s.max) for s in apart
    ]
    for got, expected in zip(whole, apart, strict=True):
        assert got.sum == pytest.approx(expected.sum, rel=1e-12)
        assert got.p95 == pytest.approx(expected.p95, rel=0.02)
    daily = [
        stats
        for kind in [*timed, MetricType.ERROR]
        for stats in query_daily_series(engine, NOW.date(), NOW.date(), metric_type=kind, group_by=group)
    ]
    assert sorted((s.metric_type.value, sorted(s.labels.items()), s.date, s.count) for s in recent) == sorted(
        (s.metric_type.value, sorted(s.labels.items()), s.date, s.count) for s in daily
    )
    for got, expected in zip(
        sorted(recent, key=lambda s: (s.metric_type.value, sorted(s.labels.items()))),
        sorted(daily, key=lambda s: (s.metric_type.value, sorted(s.labels.items()))),
        strict=True,
    ):
        assert got.sum == pytest.approx(expected.sum, rel=1e-12)
        assert (got.min, got.max) == (expected.min, expected.max)
        assert got.p95 == pytest.approx(expected.p95, rel=0.02)


def test_several_metric_types_read_together_equal_the_query_api_read_apart(engine: Engine) -> None:
    make_fleet(engine)
    add_today(engine, seed=11, messages=200, error_seconds=[3, 9])
    queries: list[tuple[MetricType | str, tuple[str, ...] | None]] = [
        (MetricType.PROCESSING_TIME, ("actor", "queue")),
        (MetricType.WAIT_TIME, ("queue",)),
        (MetricType.ERROR, ("actor", "queue", "error_type")),
        (MetricType.ERROR, ("actor",)),
        (MetricType.QUEUE_DEPTH, None),
    ]
    for since in (days_ago(7), NOW.date()):
        for labels in (None, {"queue": "q1"}, {"queue": "nowhere"}):
            together = query_metrics_together(engine, since, NOW.date(), queries, labels=labels)
            apart = [
                query_metrics(engine, since, NOW.date(), metric_type=kind, labels=labels, group_by=group)
                for kind, group in queries
            ]
            assert len(together) == len(queries)
            for got, expected in zip(together, apart, strict=True):
                assert [(s.metric_type, s.labels, s.count, s.min, s.max, s.raw_days) for s in got] == [
                    (s.metric_type, s.labels, s.count, s.min, s.max, s.raw_days) for s in expected
                ]
                for one, other in zip(got, expected, strict=True):
                    assert one.sum == pytest.approx(other.sum, rel=1e-12)
                    # Today alone is read apart from the recent tier, whose percentiles are its keys' (the same
                    # 1% sketch buckets, representative values clamped alike).
                    assert one.p95 == pytest.approx(other.p95, rel=0.02)
    assert any(today_rows for today_rows in query_metrics_together(engine, NOW.date(), NOW.date(), queries))
    with pytest.raises(ValueError, match="is after"):
        query_metrics_together(engine, NOW.date(), days_ago(1), queries)


def test_the_daily_series_has_one_point_per_day_per_group(engine: Engine) -> None:
    make_fleet(engine)
    series = query_daily_series(engine, days_ago(7), days_ago(1), metric_type="processing_time", group_by=("actor",))
    assert [(p.labels["actor"], p.date, p.count) for p in series] == [
        ("a", days_ago(2), 4),
        ("a", days_ago(1), 2),
        ("b", days_ago(2), 2),
        ("b", days_ago(1), 1),
    ]


def test_a_connection_serves_as_well_as_an_engine(engine: Engine) -> None:
    make_fleet(engine)
    with engine.connect() as connection:
        assert query_metrics(connection, days_ago(7), days_ago(1)) == query_metrics(engine, days_ago(7), days_ago(1))


def test_bad_input_is_refused_with_a_clear_error(engine: Engine) -> None:
    with pytest.raises(ValueError, match="is after until"):
        query_metrics(engine, days_ago(1), days_ago(2))
    with pytest.raises(ValueError, match="unknown metric type 'latency'"):
        query_metrics(engine, days_ago(2), days_ago(1), metric_type="latency")
    with pytest.raises(ValueError, match="label"):
        query_metrics(engine, days_ago(2), days_ago(1), labels={"bad key!": "x"})
    with pytest.raises(ValueError, match="not a string"):
        query_metrics(engine, days_ago(2), days_ago(1), group_by="actor")


@pytest.mark.parametrize("group_by", [None, ("queue",), ()])
def test_range_statistics_equal_the_daily_rows_merged_one_by_one(
    engine: Engine, group_by: tuple[str, ...] | None
) -> None:
    now = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
    populate(engine, days=20, actors=make_actors(4, queues=2), now=now, raw_samples_per_actor=1)
    first, last, kind = dt.date(2026, 6, 1), dt.date(2026, 6, 14), MetricType.PROCESSING_TIME
    d = OperationalMetricDaily
    with engine.connect() as connection:
        rows = connection.execute(
            select(d.labels, d.sample_count, d.sum, d.min, d.max, d.histogram).where(
                d.metric_type == kind, d.date >= first, d.date <= last
            )
        ).all()
    groups: dict[tuple[tuple[str, str], ...], list[Any]] = {}
    for row in rows:
        labels = row.labels if group_by is None else {k: row.labels[k] for k in group_by if k in row.labels}
        groups.setdefault(tuple(sorted(labels.items())), []).append(row)
    results = query_metrics(engine, first, last, metric_type=kind, group_by=group_by, include_raw=False)
    assert sorted(tuple(sorted(stats.labels.items())) for stats in results) == sorted(groups)
    for stats in results:
        merged_rows = groups[tuple(sorted(stats.labels.items()))]
        histogram = Histogram()
        for row in merged_rows:
            histogram += Histogram.from_json(row.histogram)
        low = min(row.min for row in merged_rows)
        high = max(row.max for row in merged_rows)
        assert len(merged_rows) > 1
        assert stats.count == sum(row.sample_count for row in merged_rows)
        assert stats.sum == math.fsum(row.sum for row in merged_rows)
        assert (stats.min, stats.max) == (low, high)
        expected = tuple(min(max(value, low), high) for value in histogram.quantiles(PERCENTILES))
        assert (stats.p50, stats.p95, stats.p99) == expected


def test_negative_and_zero_values_are_merged_over_days_like_positive_ones(engine: Engine) -> None:
    rng = random.Random(5)
    values = {n: [rng.uniform(-50, 200) for _ in range(200)] + [0.0] * 5 for n in (1, 2)}
    insert_samples(
        engine,
        [
            (MetricType.CONFIDENCE, {"model": "m"}, value, at(days_ago(n), i))
            for n, day_values in values.items()
            for i, value in enumerate(day_values)
        ],
    )
    rollup(engine, now=NOW)
    [stats] = query_metrics(engine, days_ago(2), days_ago(1), include_raw=False)
    everything = values[1] + values[2]
    expected = [min(max(v, min(everything)), max(everything)) for v in Histogram.of(everything).quantiles(PERCENTILES)]
    assert (stats.count, stats.min, stats.max) == (len(everything), min(everything), max(everything))
    assert [stats.p50, stats.p95, stats.p99] == expected
    assert stats.p50 is not None and stats.p50 < 100


def test_a_copy_of_a_kept_merge_takes_raw_days_and_leaves_the_merge_as_it_was(engine: Engine) -> None:
    make_fleet(engine)
    insert_samples(
        engine,
        [(MetricType.PROCESSING_TIME, {"actor": "a", "queue": "q1"}, 500.0, at(NOW.date(), i)) for i in range(3)],
    )
    kept = RangeMerge(metric_types=[MetricType.PROCESSING_TIME], group_by=("actor",))
    with engine.connect() as connection:
        kept.add_daily_rows(connection, days_ago(7), days_ago(1))
        kept.settle()
        before = kept.results()
        with_today = kept.copy()
        with_today.add_raw_day(connection, NOW.date())
    assert kept.results() == before
    assert with_today.results() == query_metrics(
        engine, days_ago(7), NOW.date(), metric_type=MetricType.PROCESSING_TIME, group_by=("actor",)
    )
    assert [(s.labels["actor"], s.count, s.raw_days) for s in with_today.results()] == [("a", 9, 1), ("b", 3, 0)]


def merged_daily_rows(
    engine: Engine, first: dt.date, last: dt.date, kind: MetricType, group_by: tuple[str, ...] | None
) -> dict[tuple[tuple[str, str], ...], tuple[int, float, float, float, tuple[float | None, ...]]]:
    """Per group: count, sum, min, max and percentiles of the daily rows of ``first`` to ``last``, merged one
    by one from their JSON histograms (what a range read must give, whatever it reads)."""
    d = OperationalMetricDaily
    with engine.connect() as connection:
        rows = connection.execute(
            select(d.labels, d.sample_count, d.sum, d.min, d.max, d.p50, d.p95, d.p99, d.histogram).where(
                d.metric_type == kind, d.date >= first, d.date <= last
            )
        ).all()
    groups: dict[tuple[tuple[str, str], ...], list[Any]] = {}
    for row in rows:
        labels = row.labels if group_by is None else {k: row.labels[k] for k in group_by if k in row.labels}
        groups.setdefault(tuple(sorted(labels.items())), []).append(row)
    expected = {}
    for key, merged_rows in groups.items():
        histogram = Histogram()
        for row in merged_rows:
            histogram += Histogram.from_json(row.histogram)
        low, high = min(row.min for row in merged_rows), max(row.max for row in merged_rows)
        if len(merged_rows) == 1:
            percentiles = (merged_rows[0].p50, merged_rows[0].p95, merged_rows[0].p99)
        else:
            percentiles = tuple(min(max(value, low), high) for value in histogram.quantiles(PERCENTILES))
        count = sum(row.sample_count for row in merged_rows)
        expected[key] = (count, math.fsum(row.sum for row in merged_rows), low, high, percentiles)
    return expected


@pytest.mark.parametrize("group_by", [None, ("queue",)])
def test_ranges_read_whole_months_from_monthly_rows_with_the_daily_rows_results(
    engine: Engine, group_by: tuple[str, ...] | None
) -> None:
    now = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
    populate(engine, days=140, actors=make_actors(3, queues=2), now=now, raw_samples_per_actor=1)
    rollup(engine, now=now)  # merges the months of the daily rows written directly
    kind = MetricType.WAIT_TIME
    ranges = [
        (dt.date(2026, 2, 1), dt.date(2026, 5, 31)),  # whole months
        (dt.date(2026, 2, 11), dt.date(2026, 6, 14)),  # a partial first month, June up to its last day
        (dt.date(2026, 1, 28), dt.date(2026, 4, 3)),  # April's monthly row holds days after the range
        (dt.date(2026, 3, 1), dt.date(2026, 3, 1)),  # a month's first day alone
        (dt.date(2026, 3, 5), dt.date(2026, 3, 20)),  # within one month
        (dt.date(2026, 2, 1), dt.date(2026, 3, 25)),  # March up to a day of its third third
    ]
    with engine.connect() as connection:
        for first, last in ranges:
            results = query_metrics(connection, first, last, metric_type=kind, group_by=group_by, include_raw=False)
            expected = merged_daily_rows(engine, first, last, kind, group_by)
            found = {
                tuple(sorted(s.labels.items())): (s.count, s.sum, s.min, s.max, (s.p50, s.p95, s.p99)) for s in results
            }
            assert found == expected, (first, last)
        # Whole months were read as one row per label set (3 of them), a first month from its first day of
        # the range on likewise (its suffix), a last month up to a day as its thirds before the day and
        # daily rows after.
        merge = RangeMerge(metric_types=[kind])
        rows_read = [
            len(connection.execute(merge.rolled_up_query(connection, first, last)).all())
            for first, last in (
                (dt.date(2026, 2, 1), dt.date(2026, 5, 31)),
                (dt.date(2026, 2, 12), dt.date(2026, 5, 31)),
                (dt.date(2026, 2, 1), dt.date(2026, 3, 25)),
            )
        ]
    assert rows_read == [4 * 3, (1 + 3) * 3, (1 + 2 + 5) * 3]


def test_a_range_starting_on_any_day_of_a_month_reads_it_as_one_row_with_the_daily_rows_results(
    engine: Engine,
) -> None:
    now = dt.datetime(2026, 4, 15, 12, 0, tzinfo=dt.UTC)
    populate(engine, days=90, actors=make_actors(3, queues=2), now=now, raw_samples_per_actor=1)
    daily = OperationalMetricDaily.__table__
    # February without its days 5 to 9 and 26 to 28: ranges start on days without daily rows too.
    with engine.begin() as connection:
        missing = [dt.date(2026, 2, day) for day in (5, 6, 7, 8, 9, 26, 27, 28)]
        connection.execute(daily.delete().where(daily.c.date.in_(missing)))
    rollup(engine, now=now)
    kind = MetricType.PROCESSING_TIME
    merge = RangeMerge(metric_types=[kind])
    starts = [dt.date(2026, 2, day) for day in range(1, 29)] + [dt.date(2026, 3, day) for day in range(1, 32)]
    with engine.connect() as connection:
        for first in starts:
            last_of_month = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
            for last in (dt.date(2026, 4, 14), last_of_month, dt.date(2026, 2, 25), dt.date(2026, 3, 15)):
                if last < first:
                    continue
                results = query_metrics(connection, first, last, metric_type=kind, include_raw=False)
                found = {
                    tuple(sorted(s.labels.items())): (s.count, s.sum, s.min, s.max, (s.p50, s.p95, s.p99))
                    for s in results
                }
                assert found == merged_daily_rows(engine, first, last, kind, None), (first, last)
            # The month from the range's first day on is one row per label set (3), then one per month (none
            # for February's last days, which have no daily rows).
            rows = connection.execute(merge.rolled_up_query(connection, first, dt.date(2026, 3, 31))).all()
            assert len(rows) == 3 * (2 if first <= dt.date(2026, 2, 25) else 1), first


def test_the_daily_series_and_the_range_agree_however_the_range_is_read(engine: Engine) -> None:
    now = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
    populate(engine, days=80, actors=make_actors(2, queues=1), now=now, raw_samples_per_actor=1)
    rollup(engine, now=now)
    first, last = dt.date(2026, 4, 9), dt.date(2026, 6, 14)
    series = query_daily_series(engine, first, last, metric_type=MetricType.ERROR, group_by=(), include_raw=False)
    [total] = query_metrics(engine, first, last, metric_type=MetricType.ERROR, group_by=(), include_raw=False)
    assert total.count == sum(point.count for point in series)
    assert total.sum == math.fsum(point.sum for point in series)
    assert [point.date for point in series] == sorted({point.date for point in series})


@pytest.mark.postgres
def test_the_settings_of_a_long_read_hold_for_its_own_statements_only(postgres_engine: Engine) -> None:
    make_fleet(postgres_engine)
    with postgres_engine.begin() as connection:
        connection.execute(text("SET LOCAL work_mem = '5MB'"))
        assert query_metrics(connection, days_ago(7), NOW.date()) != []
        settings = connection.execute(text("SELECT current_setting('work_mem'), current_setting('jit')")).one()
        with local_settings(connection, LONG_READ_SETTINGS):
            inside = connection.execute(text("SELECT current_setting('work_mem'), current_setting('jit')")).one()
    assert tuple(settings) == ("5MB", "on")
    assert tuple(inside) == (LONG_READ_SETTINGS["work_mem"], "off") == ("64MB", "off")
    with postgres_engine.connect() as connection:
        assert connection.execute(text("SELECT current_setting('work_mem')")).scalar_one() == "4MB"


def test_a_range_of_today_alone_gives_the_raw_rows_statistics(engine: Engine) -> None:
    rng = random.Random(8)
    values = [rng.lognormvariate(3, 1) for _ in range(3000)]
    labels = {"actor": "a", "queue": "q"}
    midnight = dt.datetime.combine(NOW.date(), dt.time(), tzinfo=dt.UTC)
    rows = [
        (MetricType.PROCESSING_TIME, labels, v, midnight + (NOW - midnight) * i / 3000) for i, v in enumerate(values)
    ]
    insert_samples(engine, rows)
    [stats] = query_metrics(engine, NOW.date(), NOW.date(), metric_type=MetricType.PROCESSING_TIME)
    [point] = query_daily_series(engine, NOW.date(), NOW.date(), metric_type=MetricType.PROCESSING_TIME)
    assert (stats.count, stats.min, stats.max, stats.raw_days) == (len(values), min(values), max(values), 1)
    assert stats.sum == pytest.approx(math.fsum(values), rel=1e-12)
    for estimate, expected in zip((stats.p50, stats.p95, stats.p99), np.percentile(values, [50, 95, 99]), strict=True):
        assert estimate is not None
        assert abs(estimate - expected) <= 0.01 * expected
    assert (point.date, point.count, point.p95) == (NOW.date(), stats.count, stats.p95)


def test_today_read_through_the_recent_tiers_day_rows_equals_today_read_from_raw_rows(engine: Engine) -> None:
    rng = random.Random(11)
    midnight = dt.datetime.combine(NOW.date(), dt.time(), tzinfo=dt.UTC)
    span = NOW - midnight
    kinds = (MetricType.PROCESSING_TIME, MetricType.WAIT_TIME)
    # Values of whole 1/64ths: every sum of them is exact, in whatever order it is added.
    rows = [
        (kind, {"actor": f"a{i % 4}", "queue": f"q{i % 2}"}, round(rng.lognormvariate(3, 1) * 64) / 64, at)
        for i in range(4000)
        for kind, at in ((kinds[i % 2], midnight + span * i / 4000),)
    ]
    insert_samples(engine, rows)
    queries = [(kind, group) for kind in kinds for group in (None, ("actor",))]

    def read() -> list[Any]:
        return [
            query_metrics_together(engine, days_ago(1), NOW.date(), queries),
            query_metrics_and_recent_days(engine, days_ago(1), NOW.date(), metric_types=kinds, group_by=("queue",)),
            [query_metrics(engine, days_ago(1), NOW.date(), metric_type=kind, group_by=("actor",)) for kind in kinds],
        ]

    from_raw = read()
    fold(engine, now=NOW)
    with engine.connect() as connection:
        state = read_state(connection)
        days = connection.execute(select(RecentDay.count)).scalars().all()
    assert state is not None and state.days_until == max(midnight, bucket_floor(NOW, 10))
    assert sum(days) == len([row for row in rows if row[3] < state.days_until])
    assert read() == from_raw
    # Late rows of hours already merged, and rows not folded yet: read once each.
    late = [(MetricType.PROCESSING_TIME, {"actor": "a1", "queue": "q1"}, 0.5, midnight + span / 3)] * 3
    insert_samples(engine, late)
    with_late = read()
    assert with_late != from_raw
    fold(engine, now=NOW)
    assert read() == with_late

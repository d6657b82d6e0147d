"""Merged histograms of rolled-up days: the database's merge equals Python's, and is kept until a day changes."""

from __future__ import annotations

import datetime as dt

import pytest
from fleet_history import FleetHistory, make_actors, populate
from sqlalchemy import Engine, select, update

from dramatiq_opmetrics.dashboard.histograms import MergedHistograms
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.models import OperationalMetricDaily
from dramatiq_opmetrics.sketch import Histogram

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
FIRST, LAST = dt.date(2026, 6, 1), dt.date(2026, 6, 14)


@pytest.fixture
def fleet(engine: Engine) -> FleetHistory:
    return populate(engine, days=20, actors=make_actors(3), now=NOW, raw_samples_per_actor=5)


def python_merge(engine: Engine, metric_type: MetricType) -> dict[str, Histogram]:
    d = OperationalMetricDaily
    merged: dict[str, Histogram] = {}
    with engine.connect() as connection:
        rows = connection.execute(
            select(d.labels_key, d.histogram).where(d.metric_type == metric_type, d.date >= FIRST, d.date <= LAST)
        )
        for labels_key, stored in rows:
            merged.setdefault(labels_key, Histogram()).__iadd__(Histogram.from_json(stored))
    return merged


def test_the_merge_equals_adding_the_daily_histograms_one_by_one(engine: Engine, fleet: FleetHistory) -> None:
    with engine.connect() as connection:
        span = MergedHistograms().get(connection, MetricType.PROCESSING_TIME, FIRST, LAST)
    expected = python_merge(engine, MetricType.PROCESSING_TIME)
    assert set(span.histograms) == set(expected)
    for labels_key, histogram in expected.items():
        assert +span.histograms[labels_key].bins == +histogram.bins
        assert span.histograms[labels_key].zero_count == histogram.zero_count
        assert span.labels[labels_key]["actor"] in {actor.name for actor in fleet.actors}


def test_a_merge_is_reused_until_a_day_in_it_is_rolled_up_again(engine: Engine, fleet: FleetHistory) -> None:
    cache = MergedHistograms()
    with engine.connect() as connection:
        first = cache.get(connection, MetricType.WAIT_TIME, FIRST, LAST)
        assert cache.get(connection, MetricType.WAIT_TIME, FIRST, LAST) is first
    d = OperationalMetricDaily
    key = next(iter(first.histograms))
    with engine.begin() as connection:
        connection.execute(
            update(d)
            .where(d.metric_type == MetricType.WAIT_TIME, d.date == LAST, d.labels_key == key)
            .values(
                histogram={"mapping": "logarithmic", "relative_accuracy": 0.01, "bins": {"500": 3}, "zero_count": 0},
                sample_count=3,
                rolled_up_at=NOW + dt.timedelta(hours=1),
            )
        )
    with engine.connect() as connection:
        second = cache.get(connection, MetricType.WAIT_TIME, FIRST, LAST)
    assert second is not first
    assert second.histograms[key].bins[500] >= 3


def test_only_the_most_recent_spans_are_kept(engine: Engine, fleet: FleetHistory) -> None:
    cache = MergedHistograms(max_spans=2)
    with engine.connect() as connection:
        oldest = cache.get(connection, MetricType.PROCESSING_TIME, FIRST, LAST)
        cache.get(connection, MetricType.PROCESSING_TIME, FIRST + dt.timedelta(days=1), LAST)
        cache.get(connection, MetricType.PROCESSING_TIME, FIRST + dt.timedelta(days=2), LAST)
        assert cache.get(connection, MetricType.PROCESSING_TIME, FIRST, LAST) is not oldest


def test_the_fast_quantile_reads_what_the_histogram_reads() -> None:
    import random

    from dramatiq_opmetrics.dashboard.histograms import quantile

    rng = random.Random(3)
    for _ in range(200):
        values = [rng.lognormvariate(rng.uniform(0, 8), rng.uniform(0.1, 2)) for _ in range(rng.randint(1, 300))]
        values += [0.0] * rng.choice((0, 0, 3))
        histogram = Histogram.of(values)
        for fraction in (0.0, 0.01, 0.5, 0.95, 0.99, 1.0):
            assert quantile(histogram, fraction) == histogram.quantile(fraction)
    assert quantile(Histogram(), 0.5) is None

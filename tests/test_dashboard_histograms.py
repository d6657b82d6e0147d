"""Merged histograms of rolled-up days: the database's merge equals Python's; the fast quantile reads the same."""

from __future__ import annotations

import datetime as dt

import pytest
from fleet_history import FleetHistory, make_actors, populate
from sqlalchemy import Engine, select, update

from dramatiq_opmetrics.dashboard.histograms import daily_fingerprint, merge_histograms
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
        span = merge_histograms(connection, MetricType.PROCESSING_TIME, FIRST, LAST)
    expected = python_merge(engine, MetricType.PROCESSING_TIME)
    assert set(span.histograms) == set(expected)
    for labels_key, histogram in expected.items():
        assert +span.histograms[labels_key].bins == +histogram.bins
        assert span.histograms[labels_key].zero_count == histogram.zero_count
        assert span.labels[labels_key]["actor"] in {actor.name for actor in fleet.actors}


def test_the_merge_of_some_label_sets_has_only_them(engine: Engine, fleet: FleetHistory) -> None:
    actor = fleet.actors[1]
    key = f"actor:{actor.name}|queue:{actor.queue}"
    with engine.connect() as connection:
        span = merge_histograms(connection, MetricType.PROCESSING_TIME, FIRST, LAST, [key])
    assert list(span.histograms) == [key]
    assert +span.histograms[key].bins == +python_merge(engine, MetricType.PROCESSING_TIME)[key].bins


def test_the_fingerprint_changes_when_a_day_is_rolled_up_again(engine: Engine, fleet: FleetHistory) -> None:
    with engine.connect() as connection:
        before = daily_fingerprint(connection, [MetricType.WAIT_TIME], FIRST, LAST)
    d = OperationalMetricDaily
    with engine.begin() as connection:
        connection.execute(
            update(d)
            .where(d.metric_type == MetricType.WAIT_TIME, d.date == LAST)
            .values(rolled_up_at=NOW + dt.timedelta(hours=1))
        )
    with engine.connect() as connection:
        assert daily_fingerprint(connection, [MetricType.WAIT_TIME], FIRST, LAST) != before
        assert daily_fingerprint(connection, [MetricType.PROCESSING_TIME], FIRST, LAST) == daily_fingerprint(
            connection, [MetricType.PROCESSING_TIME], FIRST, LAST
        )


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

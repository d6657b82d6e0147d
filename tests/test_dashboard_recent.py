"""Today's raw samples: settled minutes aggregated once and kept, the last minutes read on every request."""

from __future__ import annotations

import datetime as dt

from raw_samples import at, insert_samples
from sqlalchemy import Engine

from dramatiq_opmetrics.aggregate import aggregate_raw
from dramatiq_opmetrics.dashboard.recent import SETTLED_AFTER_S, RecentSamples
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.partitions import day_bounds

DAY = dt.date(2026, 6, 15)
LABELS = {"actor": "send_email", "queue": "default"}


def totals(aggregates: list) -> dict[str, tuple[int, float, dict[int, int]]]:  # type: ignore[type-arg]
    return {
        f"{a.metric_type.value}/{a.label_set_id}": (a.count, round(a.sum, 6), dict(+a.histogram.bins))
        for a in aggregates
    }


def test_the_aggregates_equal_the_rollups_over_the_same_samples(engine: Engine) -> None:
    insert_samples(engine, [(MetricType.PROCESSING_TIME, LABELS, 10.0 + i, at(DAY, 60 * i)) for i in range(600)])
    now = at(DAY, 60 * 600)
    with engine.connect() as connection:
        got = RecentSamples().aggregates(connection, DAY, now)
        start, _end = day_bounds(DAY)
        expected = aggregate_raw(connection, start, now + dt.timedelta(seconds=1), exact_percentiles=False)
    assert totals(got) == totals(expected)


def test_new_samples_show_on_the_next_request(engine: Engine) -> None:
    recent = RecentSamples()
    insert_samples(engine, [(MetricType.PROCESSING_TIME, LABELS, 5.0, at(DAY, 60 * i)) for i in range(100)])
    with engine.connect() as connection:
        [first] = recent.aggregates(connection, DAY, at(DAY, 60 * 100))
    insert_samples(engine, [(MetricType.PROCESSING_TIME, LABELS, 7.0, at(DAY, 60 * 100 + i)) for i in range(30)])
    with engine.connect() as connection:
        [second] = recent.aggregates(connection, DAY, at(DAY, 60 * 101))
    assert (first.count, second.count) == (100, 130)
    assert second.max == 7.0


def test_settled_samples_are_read_once(engine: Engine) -> None:
    recent = RecentSamples()
    insert_samples(engine, [(MetricType.WAIT_TIME, LABELS, 3.0, at(DAY, 60 * i)) for i in range(100)])
    now = at(DAY, 60 * 100)
    with engine.connect() as connection:
        recent.aggregates(connection, DAY, now)
    # Written after its minute was kept (later than the writer ever is): not read again until the rollup.
    settled = now - dt.timedelta(seconds=SETTLED_AFTER_S + 120)
    insert_samples(engine, [(MetricType.WAIT_TIME, LABELS, 3.0, settled)])
    with engine.connect() as connection:
        [again] = recent.aggregates(connection, DAY, now + dt.timedelta(seconds=1))
    assert again.count == 100


def test_recent_maxima_are_each_intervals_largest_value_and_follow_new_samples(engine: Engine) -> None:
    from dramatiq_opmetrics.dashboard.recent import RecentMaxima

    depth = {"queue": "default", "state": "ready"}
    insert_samples(engine, [(MetricType.QUEUE_DEPTH, depth, float(i % 50), at(DAY, 15 * i)) for i in range(2000)])
    maxima = RecentMaxima()
    start, now = at(DAY), at(DAY, 15 * 2000)
    with engine.connect() as connection:
        first = maxima.maxima(connection, MetricType.QUEUE_DEPTH, start, now, 600)
    expected: dict[int, float] = {}
    for i in range(2000):
        index = int(at(DAY, 15 * i).timestamp()) // 600
        expected[index] = max(expected.get(index, 0.0), float(i % 50))
    assert {index: value for (_label_set, index), value in first.items()} == expected
    insert_samples(engine, [(MetricType.QUEUE_DEPTH, depth, 500.0, now + dt.timedelta(seconds=5))])
    with engine.connect() as connection:
        second = maxima.maxima(connection, MetricType.QUEUE_DEPTH, start, now + dt.timedelta(seconds=10), 600)
    assert max(second.values()) == 500.0
    assert {key: value for key, value in second.items() if value != 500.0} == {
        key: value for key, value in first.items() if key in second and second[key] != 500.0
    }

"""Aggregating raw rows: exact percentiles against numpy, and the SQL and Python paths agree."""

from __future__ import annotations

import datetime as dt
import math
import random

import numpy as np
import pytest
from raw_samples import at, insert_samples
from sqlalchemy import Engine

from dramatiq_opmetrics.aggregate import PERCENTILES, aggregate_raw, exact_quantile, raw_counts_by_day
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.partitions import day_bounds, ensure_partitions
from dramatiq_opmetrics.sketch import Histogram

DAY = dt.date(2026, 11, 10)


def sample_day(engine: Engine, seed: int = 1) -> dict[tuple[MetricType, str], list[float]]:
    rng = random.Random(seed)
    values: dict[tuple[MetricType, str], list[float]] = {}
    rows = []
    for i in range(6000):
        actor = f"actor_{i % 4}"
        metric_type = MetricType.PROCESSING_TIME if i % 3 else MetricType.WAIT_TIME
        value = rng.lognormvariate(4, 1.2) if i % 50 else float(rng.choice([0, 1, 1, 1]))
        values.setdefault((metric_type, actor), []).append(value)
        rows.append((metric_type, {"actor": actor}, value, at(DAY, rng.uniform(0, 86_399.9))))
    # A label set with one sample and one with two equal samples.
    rows.append((MetricType.ERROR, {"actor": "lonely"}, 1.0, at(DAY, 5)))
    values[(MetricType.ERROR, "lonely")] = [1.0]
    rows += [(MetricType.QUEUE_DEPTH, {"queue": "q"}, 7.0, at(DAY, s)) for s in (1, 2)]
    values[(MetricType.QUEUE_DEPTH, "queue:q")] = [7.0, 7.0]
    # Values the collector refuses but a direct INSERT could store: negative, and too tiny to index.
    odd = [-5.0, -5.01, -0.5, -1e-320, 1e-320, -0.0, 0.0]
    rows += [(MetricType.CONFIDENCE, {"bucket": "odd"}, v, at(DAY, 100 + i)) for i, v in enumerate(odd)]
    values[(MetricType.CONFIDENCE, "bucket:odd")] = odd
    # Rows of the neighbouring days are not part of the day.
    rows.append((MetricType.PROCESSING_TIME, {"actor": "actor_0"}, 1e6, at(DAY, -0.000001)))
    rows.append((MetricType.PROCESSING_TIME, {"actor": "actor_0"}, 1e6, at(DAY, 86_400)))
    insert_samples(engine, rows)
    return values


def test_exact_quantile_interpolates_like_numpy() -> None:
    rng = random.Random(3)
    for size in (1, 2, 3, 10, 101, 1000):
        values = sorted(rng.uniform(0, 100) for _ in range(size))
        for fraction in (0.0, 0.5, 0.95, 0.99, 1.0):
            assert exact_quantile(values, fraction) == pytest.approx(np.percentile(values, fraction * 100), rel=1e-12)


def test_aggregates_of_a_day_match_an_independent_computation(engine: Engine) -> None:
    values = sample_day(engine)
    start, end = day_bounds(DAY)
    with engine.connect() as connection:
        aggregates = aggregate_raw(connection, start, end)
        label_keys = dict(connection.exec_driver_sql("SELECT id, labels_key FROM opmetrics_label_sets").all())
    assert len(aggregates) == len(values)
    for aggregate in aggregates:
        key = label_keys[aggregate.label_set_id]
        expected = sorted(values[(aggregate.metric_type, key.split(":", 1)[1] if key.startswith("actor:") else key)])
        assert aggregate.count == len(expected)
        assert aggregate.sum == pytest.approx(math.fsum(expected), rel=1e-12)
        assert (aggregate.min, aggregate.max) == (min(expected), max(expected))
        assert aggregate.percentiles == pytest.approx(
            [np.percentile(expected, q * 100) for q in PERCENTILES], rel=1e-12
        )
        assert aggregate.histogram == Histogram.of(expected)


@pytest.mark.postgres
@pytest.mark.parametrize("partitioned", [True, False], ids=["day-partition", "default-partition"])
def test_the_sql_and_python_paths_give_the_same_aggregates(postgres_engine: Engine, partitioned: bool) -> None:
    if partitioned:
        with postgres_engine.begin() as connection:
            ensure_partitions(connection, DAY, DAY)
    sample_day(postgres_engine, seed=2)
    start, end = day_bounds(DAY)
    with postgres_engine.connect() as connection:
        in_sql = aggregate_raw(connection, start, end, in_database=True)
        in_python = aggregate_raw(connection, start, end, in_database=False)
    key = lambda aggregate: (aggregate.metric_type, aggregate.label_set_id)  # noqa: E731
    in_sql.sort(key=key)
    in_python.sort(key=key)
    assert [key(a) for a in in_sql] == [key(a) for a in in_python]
    for sql, python in zip(in_sql, in_python, strict=True):
        assert (sql.count, sql.min, sql.max, sql.histogram) == (python.count, python.min, python.max, python.histogram)
        assert sql.histogram.count == sql.count
        assert sql.percentiles == python.percentiles
        assert sql.sum == pytest.approx(python.sum, rel=1e-12)


def test_filters_select_metric_type_and_label_sets(engine: Engine) -> None:
    sample_day(engine, seed=4)
    start, end = day_bounds(DAY)
    with engine.connect() as connection:
        only_wait = aggregate_raw(connection, start, end, metric_type=MetricType.WAIT_TIME, exact_percentiles=False)
        some = aggregate_raw(connection, start, end, label_set_ids={only_wait[0].label_set_id})
        none = aggregate_raw(connection, start, end, label_set_ids=set())
    assert {a.metric_type for a in only_wait} == {MetricType.WAIT_TIME}
    assert all(a.percentiles is None for a in only_wait)
    assert {a.label_set_id for a in some} == {only_wait[0].label_set_id}
    assert none == []


def test_raw_counts_by_day_count_every_day_with_rows(engine: Engine) -> None:
    sample_day(engine, seed=5)
    with engine.connect() as connection:
        counts = raw_counts_by_day(connection)
    assert counts == {DAY - dt.timedelta(days=1): 1, DAY: 6010, DAY + dt.timedelta(days=1): 1}

"""The histogram mapping: SQL and ddsketch agree key for key; the stored format round-trips; merging works."""

from __future__ import annotations

import math
import random
import sys

import pytest
from ddsketch import DDSketch
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.store import DenseStore
from sqlalchemy import Engine, text

from dramatiq_opmetrics.aggregate import BUCKET_KEY_SQL
from dramatiq_opmetrics.sketch import KEY_MULTIPLIER, LN_2, MAPPING, MIN_INDEXABLE_VALUE, Histogram, bucket_key


def edge_values() -> list[float]:
    gamma = MAPPING.gamma
    values = [
        MIN_INDEXABLE_VALUE * 1.0000001,
        MIN_INDEXABLE_VALUE * 2,
        sys.float_info.min * 10,
        1e-300,
        1e-12,
        0.001,
        0.5,
        1.0,
        math.nextafter(1.0, 2.0),
        math.nextafter(1.0, 0.0),
        2.0,
        1e12,
        1e300,
        sys.float_info.max / gamma,
        sys.float_info.max,
    ]
    for exponent in range(-2000, 2001, 7):
        power = gamma**exponent
        values.extend([power, math.nextafter(power, 0.0), math.nextafter(power, math.inf)])
    rng = random.Random(5)
    values.extend(rng.lognormvariate(0, 10) for _ in range(20_000))
    values.extend(rng.uniform(0, 1000) for _ in range(5_000))
    values.extend(float(n) for n in range(1, 2000))
    return [value for value in values if math.isfinite(value) and value > MIN_INDEXABLE_VALUE]


@pytest.mark.postgres
def test_sql_bucket_keys_agree_with_ddsketch_key_for_key(postgres_engine: Engine) -> None:
    values = edge_values()
    with postgres_engine.connect() as connection:
        sql_keys = connection.execute(
            text(
                f"SELECT {BUCKET_KEY_SQL.format('v')}"
                " FROM unnest(CAST(:values AS float8[])) WITH ORDINALITY AS t(v, i) ORDER BY i"
            ),
            {"values": values, "ln_2": LN_2, "multiplier": KEY_MULTIPLIER},
        ).scalars()
        mismatches = [(v, k, MAPPING.key(v)) for v, k in zip(values, sql_keys, strict=True) if k != MAPPING.key(v)]
    assert len(values) > 25_000
    assert mismatches == []


def test_values_at_or_below_the_minimum_indexable_value_count_as_zero() -> None:
    histogram = Histogram.of([0.0, MIN_INDEXABLE_VALUE, MIN_INDEXABLE_VALUE / 2, 5e-324, 1.0])
    sketch = DDSketch(0.01)
    for value in [0.0, MIN_INDEXABLE_VALUE, MIN_INDEXABLE_VALUE / 2, 5e-324, 1.0]:
        sketch.add(value)
    assert histogram.zero_count == 4
    assert histogram.bins == {bucket_key(1.0): 1}
    assert histogram.quantile(0.5) == sketch.get_quantile_value(0.5) == 0


def test_histogram_quantiles_match_ddsketch_and_are_within_one_percent() -> None:
    rng = random.Random(7)
    values = sorted(rng.lognormvariate(3, 1.5) for _ in range(50_000))
    sketch = DDSketch(0.01)
    for value in values:
        sketch.add(value)
    histogram = Histogram.of(values)
    for fraction in (0.0, 0.25, 0.5, 0.95, 0.99, 1.0):
        estimate = histogram.quantile(fraction)
        assert estimate == pytest.approx(sketch.get_quantile_value(fraction), rel=1e-12)
        exact = values[math.floor(fraction * (len(values) - 1))]
        assert estimate is not None
        assert abs(estimate - exact) <= 0.01 * exact


def test_merged_histograms_equal_the_histogram_of_all_values() -> None:
    rng = random.Random(8)
    first = [rng.expovariate(0.1) for _ in range(1000)]
    second = [rng.expovariate(0.01) for _ in range(1000)] + [0.0, -3.5]
    merged = Histogram.of(first)
    merged += Histogram.of(second)
    assert merged == Histogram.of(first + second)
    assert merged.count == 2002


def test_stored_format_round_trips_and_is_documented_json() -> None:
    histogram = Histogram.of([0.0, 1.0, 1.0, 250.0, -2.0])
    stored = histogram.to_json()
    assert stored == {
        "mapping": "logarithmic",
        "relative_accuracy": 0.01,
        "bins": {str(bucket_key(1.0)): 2, str(bucket_key(250.0)): 1},
        "zero_count": 1,
        "negative_bins": {str(bucket_key(2.0)): 1},
    }
    assert Histogram.from_json(stored) == histogram
    assert "negative_bins" not in Histogram.of([1.0]).to_json()


def test_a_histogram_of_another_mapping_is_refused() -> None:
    with pytest.raises(ValueError, match=r"relative accuracy 0\.02"):
        Histogram.from_json({"mapping": "logarithmic", "relative_accuracy": 0.02, "bins": {}, "zero_count": 0})


def test_an_empty_histogram_has_no_quantile_and_bad_fractions_are_refused() -> None:
    assert Histogram().quantile(0.5) is None
    with pytest.raises(ValueError, match="within"):
        Histogram.of([1.0]).quantile(1.5)


def test_several_quantiles_read_at_once_equal_each_read_alone() -> None:
    histogram = Histogram.of(random.Random(9).lognormvariate(2, 2) for _ in range(5000))
    fractions = [0.0, 0.5, 0.95, 0.99, 1.0]
    assert histogram.quantiles(fractions) == [histogram.quantile(f) for f in fractions]


def ddsketch_of(histogram: Histogram) -> BaseDDSketch:
    """The ddsketch holding ``histogram``'s buckets: the reference the direct quantile is checked against."""
    store, negative_store = DenseStore(), DenseStore()
    for key, count in histogram.bins.items():
        store.add(key, count)
    for key, count in histogram.negative_bins.items():
        negative_store.add(key, count)
    return BaseDDSketch(MAPPING, store, negative_store, float(histogram.zero_count))


def test_the_direct_quantile_equals_ddsketchs_get_quantile_value_on_many_sketches() -> None:
    rng = random.Random(3)
    fractions = [0.0, 0.001, 0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0] + [rng.random() for _ in range(20)]
    for _ in range(400):
        values = [rng.lognormvariate(rng.uniform(-3, 12), rng.uniform(0.05, 3)) for _ in range(rng.randint(1, 400))]
        values += [0.0] * rng.choice((0, 0, 1, 7))
        values += [-rng.expovariate(0.1) for _ in range(rng.choice((0, 0, 0, 1, 20)))]
        histogram = Histogram.of(values)
        if rng.random() < 0.5:  # merged histograms, as range queries read them
            histogram += Histogram.of(rng.expovariate(rng.uniform(0.001, 1)) for _ in range(rng.randint(1, 300)))
        reference = ddsketch_of(histogram)
        expected = [reference.get_quantile_value(fraction) for fraction in fractions]
        assert histogram.quantiles(fractions) == [None if value is None else float(value) for value in expected]
    assert ddsketch_of(Histogram()).get_quantile_value(0.5) is None
    assert Histogram().quantiles([0.0, 1.0]) == [None, None]

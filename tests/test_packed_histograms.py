"""Packed histograms: they round-trip, merge like histograms, and give Histogram's quantiles bit for bit."""

from __future__ import annotations

import random
import sys

import pytest

from dramatiq_opmetrics.aggregate import PERCENTILES
from dramatiq_opmetrics.packed_histograms import PACKED_VERSION, HistogramSum, pack, sum_of_packed, unpack
from dramatiq_opmetrics.sketch import Histogram

FRACTIONS = [0.0, 0.001, 0.25, *PERCENTILES, 0.999, 1.0]


def random_histogram(rng: random.Random, *, signed: bool = False) -> Histogram:
    size = rng.choice((1, 2, 10, 300, 3000))
    mu = rng.uniform(-3, 12)
    values = [rng.lognormvariate(mu, rng.uniform(0.1, 2.5)) for _ in range(size)]
    if signed:
        values = [-value if rng.random() < 0.3 else value for value in values] + [0.0] * rng.randint(0, 5)
    return Histogram.of(values)


@pytest.mark.parametrize("signed", [False, True])
def test_a_packed_histogram_unpacks_to_the_same_histogram(signed: bool) -> None:
    rng = random.Random(1)
    for _ in range(200):
        histogram = random_histogram(rng, signed=signed)
        assert unpack(pack(histogram)) == histogram
        assert pack(histogram)[0] == PACKED_VERSION


def test_counts_take_the_fewest_bytes_that_hold_the_largest() -> None:
    for count, width in [(1, 1), (255, 1), (256, 2), (65_535, 2), (65_536, 4), (2**32 - 1, 4), (2**32, 8)]:
        histogram = Histogram()
        histogram.add(10.0, count)
        histogram.add(1000.0, 1)
        packed = pack(histogram)
        assert packed[1] == width
        assert unpack(packed) == histogram


@pytest.mark.parametrize("signed", [False, True])
def test_sums_of_packed_histograms_read_the_merged_histograms_quantiles_bit_for_bit(signed: bool) -> None:
    rng = random.Random(2)
    for _ in range(60):
        parts = [random_histogram(rng, signed=signed) for _ in range(rng.randint(1, 40))]
        merged = Histogram()
        for part in parts:
            merged += part
        total = sum_of_packed(pack(part) for part in parts)
        assert total.histogram() == merged
        assert total.count == merged.count
        assert total.quantiles(FRACTIONS) == merged.quantiles(FRACTIONS)
        assert unpack(total.pack()) == merged


def test_histograms_packed_or_not_and_other_sums_add_up_alike() -> None:
    rng = random.Random(3)
    first, second, third = (random_histogram(rng, signed=True) for _ in range(3))
    total = HistogramSum()
    total.add_packed(pack(first))
    total.add_histogram(second)
    other = HistogramSum()
    other.add_histogram(third)
    total.add(other)
    expected = Histogram()
    for part in (first, second, third):
        expected += part
    assert total.histogram() == expected
    assert other.histogram() == third
    copy = total.copy()
    copy.add_histogram(first)
    assert total.histogram() == expected


def test_extreme_keys_pack_and_merge() -> None:
    values = [sys.float_info.min * 10, 1e-300, 1.0, 2.0**53, 1e300]
    histogram = Histogram.of(values)
    total = sum_of_packed([pack(histogram), pack(Histogram.of([5.0]))])
    histogram.add(5.0)
    assert total.histogram() == histogram
    assert total.quantiles(FRACTIONS) == histogram.quantiles(FRACTIONS)


def test_an_empty_sum_has_no_quantiles_and_packs_to_an_empty_histogram() -> None:
    assert HistogramSum().quantiles(PERCENTILES) == [None, None, None]
    assert unpack(HistogramSum().pack()) == Histogram()
    assert unpack(pack(Histogram.of([0.0, 0.0]))) == Histogram(zero_count=2)


def test_what_is_not_a_packed_histogram_is_refused_with_a_clear_error() -> None:
    packed = pack(Histogram.of([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="not a packed histogram of version 1"):
        unpack(b"\x02" + packed[1:])
    with pytest.raises(ValueError, match="not a packed histogram"):
        unpack(b"")
    with pytest.raises(ValueError, match="does not match its header"):
        unpack(packed[:-1])
    with pytest.raises(ValueError, match="within"):
        HistogramSum().quantiles([1.5])

"""Test helper: a few hours of a fleet's samples, and what numpy says each series bucket must hold.

Values are lognormal durations rounded to 1/64 ms: every value and every sum of them is exact in binary
floating point, so sums can be compared for equality whatever order they are added in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from raw_samples import RawSample

from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.recent_tier import bucket_floor
from dramatiq_opmetrics.series import SeriesPoint

#: The groups of the synthetic fleet: (actor, queue).
ACTORS = (("send_email", "mail"), ("resize", "images"), ("bill", "billing"))


def fleet_samples(
    start: dt.datetime, minutes: int, *, seed: int = 3, per_minute: int = 40, error_rate: float = 0.1
) -> list[RawSample]:
    """Processing and wait times for each actor, and errors for some messages, spread over ``minutes``."""
    rng = np.random.default_rng(seed)
    samples: list[RawSample] = []
    for index, (actor, queue) in enumerate(ACTORS):
        count = minutes * per_minute // (index + 1)
        offsets = np.sort(rng.uniform(0, minutes * 60, count))
        values = np.maximum(np.round(rng.lognormal(3 + index, 0.8, count) * 64) / 64, 1 / 64)
        waits = np.round(rng.lognormal(2, 1.0, count) * 64) / 64
        failed = rng.random(count) < error_rate
        for offset, value, wait, fails in zip(offsets, values, waits, failed, strict=True):
            at = start + dt.timedelta(seconds=float(offset))
            labels = {"actor": actor, "queue": queue}
            samples.append((MetricType.PROCESSING_TIME, labels, float(value), at))
            samples.append((MetricType.WAIT_TIME, labels, float(wait), at))
            if fails:
                error_type = "TimeoutError" if offset % 2 < 1 else "ValueError"
                samples.append((MetricType.ERROR, {**labels, "error_type": error_type}, 1.0, at))
    return samples


@dataclass
class Expected:
    """What one point must hold."""

    values: list[float]
    errors: int = 0


def expected_points(
    samples: Sequence[RawSample],
    start: dt.datetime,
    end: dt.datetime,
    step: dt.timedelta,
    metric_type: MetricType,
    group_by: Sequence[str],
) -> dict[tuple[tuple[tuple[str, str], ...], dt.datetime], Expected]:
    """The values (and, for processing times, the errors) of each (group, bucket start) in ``[start, end)``."""
    minutes = step // dt.timedelta(minutes=1)
    found: dict[tuple[tuple[tuple[str, str], ...], dt.datetime], Expected] = {}
    for sample_type, labels, value, at in samples:
        if not start <= at < end:
            continue
        group = tuple((key, labels[key]) for key in group_by if key in labels)
        bucket = max(bucket_floor(at, minutes), start)
        if sample_type is metric_type:
            found.setdefault((group, bucket), Expected([])).values.append(value)
        elif sample_type is MetricType.ERROR and metric_type is MetricType.PROCESSING_TIME:
            found.setdefault((group, bucket), Expected([])).errors += 1
    return {key: expected for key, expected in found.items() if expected.values}


def assert_points_match(
    points: Sequence[SeriesPoint], expected: Mapping[tuple[tuple[tuple[str, str], ...], dt.datetime], Expected]
) -> None:
    """Each point holds exactly its bucket's count, sum, min, max and error rate, percentiles within 1%."""
    got = {(tuple(point.labels.items()), point.start): point for point in points}
    assert got.keys() == expected.keys()
    for key, point in got.items():
        values = np.array(expected[key].values)
        assert point.count == len(values), key
        assert point.sum == float(np.sum(values)), key
        assert (point.min, point.max) == (float(values.min()), float(values.max())), key
        # The percentile a histogram gives is the value at rank floor(q * (n - 1)), within 1%.
        exact = np.percentile(values, [50, 95, 99], method="lower")
        for estimate, wanted in zip((point.p50, point.p95, point.p99), exact, strict=True):
            assert estimate is not None
            assert abs(estimate - wanted) <= 0.01 * wanted, (key, estimate, wanted)
        if point.metric_type is MetricType.PROCESSING_TIME:
            assert point.error_rate == expected[key].errors / len(values), key

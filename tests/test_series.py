"""Time-bucketed series: exact against numpy on the same samples, from raw rows, the tier, and both mixed."""

from __future__ import annotations

import datetime as dt

import pytest
from raw_samples import insert_samples
from series_samples import assert_points_match, expected_points, fleet_samples
from sqlalchemy import Engine, text

from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.recent_tier import fold
from dramatiq_opmetrics.series import MAX_SERIES_BUCKETS, query_series, query_stalled, query_totals

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
START = NOW - dt.timedelta(hours=3)
GROUPS = ("actor", "queue")


def check_every_step(engine: Engine, samples: list, start: dt.datetime, end: dt.datetime) -> None:
    for step in (dt.timedelta(minutes=1), dt.timedelta(minutes=7), dt.timedelta(minutes=10), dt.timedelta(hours=1)):
        for metric_type in (MetricType.PROCESSING_TIME, MetricType.WAIT_TIME):
            points = query_series(engine, start, end, step=step, metric_type=metric_type, group_by=GROUPS)
            assert_points_match(points, expected_points(samples, start, end, step, metric_type, GROUPS))


def test_series_from_raw_rows_match_numpy_per_bucket(engine: Engine) -> None:
    samples = fleet_samples(START, 180)
    insert_samples(engine, samples)
    check_every_step(engine, samples, START, NOW)
    # A range starting and ending inside minutes: only the samples inside count.
    check_every_step(engine, samples, START + dt.timedelta(seconds=95.5), NOW - dt.timedelta(seconds=1234.25))


def test_series_from_the_recent_tier_match_numpy_per_bucket(engine: Engine) -> None:
    samples = fleet_samples(START, 180)
    insert_samples(engine, samples)
    assert fold(engine, now=NOW).rows == len(samples)
    check_every_step(engine, samples, START, NOW)
    check_every_step(engine, samples, START + dt.timedelta(seconds=95.5), NOW - dt.timedelta(seconds=1234.25))


def test_series_over_folded_and_unfolded_rows_count_each_sample_once(engine: Engine) -> None:
    older = fleet_samples(START, 120, seed=4)
    insert_samples(engine, older)
    fold(engine, now=NOW)
    # Rows written after the fold: recent ones, and late ones for minutes already folded.
    newer = fleet_samples(START + dt.timedelta(minutes=120), 60, seed=5)
    late = fleet_samples(START + dt.timedelta(minutes=30), 20, seed=6, per_minute=5)
    insert_samples(engine, newer + late)
    check_every_step(engine, older + newer + late, START, NOW)
    fold(engine, now=NOW)
    fold(engine, now=NOW)  # a re-run adds nothing
    check_every_step(engine, older + newer + late, START, NOW)


def test_totals_over_folded_unfolded_and_partial_minutes_match_numpy(engine: Engine) -> None:
    older = fleet_samples(START, 120, seed=7)
    insert_samples(engine, older)
    fold(engine, now=NOW)
    newer = fleet_samples(START + dt.timedelta(minutes=120), 60, seed=8)
    late = fleet_samples(START + dt.timedelta(minutes=30), 20, seed=9, per_minute=5)
    insert_samples(engine, newer + late)
    samples = older + newer + late
    # A step reaching back past 2000 puts every sample in the bucket starting at the range's start.
    whole = dt.timedelta(days=366 * 100)
    for start, end in ((START, NOW), (START + dt.timedelta(seconds=95.5), NOW - dt.timedelta(seconds=1234.25))):
        for metric_type in (MetricType.PROCESSING_TIME, MetricType.WAIT_TIME):
            points = query_totals(engine, start, end, metric_type=metric_type, group_by=GROUPS)
            assert {(point.start, point.end) for point in points} == {(start, end)}
            assert_points_match(points, expected_points(samples, start, end, whole, metric_type, GROUPS))
    everything = query_totals(engine, START, NOW, group_by=())
    assert {point.metric_type: point.count for point in everything} == {
        metric_type: sum(1 for sample in samples if sample[0] is metric_type)
        for metric_type in {sample[0] for sample in samples}
    }
    with pytest.raises(ValueError, match="timezone-aware"):
        query_totals(engine, START.replace(tzinfo=None), NOW)


def test_totals_of_some_metric_types_are_those_of_the_totals_of_every_type(engine: Engine) -> None:
    samples = fleet_samples(START, 30, seed=11)
    ready = {"queue": "emails", "state": "ready"}
    depths = [(MetricType.QUEUE_DEPTH, ready, float(n % 7), START + dt.timedelta(minutes=n)) for n in range(30)]
    insert_samples(engine, samples + depths[:15])
    fold(engine, now=START + dt.timedelta(minutes=20))
    insert_samples(engine, depths[15:])
    chosen = (MetricType.WAIT_TIME, "queue_depth")

    def summary(points: list) -> list:
        return sorted(
            (point.metric_type.value, sorted(point.labels.items()), point.count, point.min, point.max, round(point.sum))
            for point in points
        )

    some = query_totals(engine, START, NOW, group_by=("queue",), metric_types=chosen)
    every = query_totals(engine, START, NOW, group_by=("queue",))
    wanted = [point for point in every if point.metric_type in (MetricType.WAIT_TIME, MetricType.QUEUE_DEPTH)]
    assert summary(some) == summary(wanted)
    assert {point.metric_type for point in some} == {MetricType.WAIT_TIME, MetricType.QUEUE_DEPTH}
    assert query_totals(engine, START, NOW, metric_types=()) == []
    with pytest.raises(ValueError, match="either metric_type or metric_types"):
        query_totals(engine, START, NOW, metric_type=MetricType.WAIT_TIME, metric_types=chosen)


def test_the_error_rate_is_failed_attempts_over_attempts_of_the_group_and_bucket(engine: Engine) -> None:
    minute = NOW - dt.timedelta(minutes=5)
    labels = {"actor": "a", "queue": "q"}
    samples = [(MetricType.PROCESSING_TIME, labels, 10.0, minute + dt.timedelta(seconds=s)) for s in range(8)]
    samples += [(MetricType.ERROR, {**labels, "error_type": "E"}, 1.0, minute + dt.timedelta(seconds=1))]
    samples += [(MetricType.ERROR, {**labels, "error_type": "F"}, 1.0, minute + dt.timedelta(seconds=2))]
    insert_samples(engine, samples)
    fold(engine, now=NOW)
    step = dt.timedelta(minutes=1)
    [by_label_set] = query_series(engine, minute, NOW, step=step, metric_type="processing_time")
    [by_actor] = query_series(engine, minute, NOW, step=step, metric_type="processing_time", group_by=("actor",))
    assert by_label_set.error_rate == by_actor.error_rate == 2 / 8
    every = query_series(engine, minute, NOW, step=step)
    assert [(point.metric_type, point.count) for point in every] == [
        (MetricType.PROCESSING_TIME, 8),
        (MetricType.ERROR, 1),
        (MetricType.ERROR, 1),
    ]


def test_a_bucket_without_samples_has_no_point_and_labels_filter(engine: Engine) -> None:
    first = NOW - dt.timedelta(minutes=30)
    samples = [
        (MetricType.PROCESSING_TIME, {"actor": "a", "queue": "q"}, 1.0, first),
        (MetricType.PROCESSING_TIME, {"actor": "a", "queue": "q"}, 2.0, first + dt.timedelta(minutes=20)),
        (MetricType.PROCESSING_TIME, {"actor": "b", "queue": "q"}, 3.0, first + dt.timedelta(minutes=20)),
    ]
    insert_samples(engine, samples)
    fold(engine, now=NOW)
    points = query_series(engine, first, NOW, step=dt.timedelta(minutes=5), labels={"actor": "a"})
    assert [(point.start, point.end, point.count, point.sum) for point in points] == [
        (first, first + dt.timedelta(minutes=5), 1, 1.0),
        (first + dt.timedelta(minutes=20), first + dt.timedelta(minutes=25), 1, 2.0),
    ]
    assert query_series(engine, first, NOW, step=dt.timedelta(minutes=5), labels={"actor": "nobody"}) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"start": dt.datetime(2026, 11, 20, 11), "end": NOW, "step": dt.timedelta(minutes=1)}, "timezone-aware"),
        ({"start": NOW, "end": dt.datetime(2026, 11, 20, 13), "step": dt.timedelta(minutes=1)}, "timezone-aware"),
        ({"start": NOW, "end": NOW - dt.timedelta(hours=1), "step": dt.timedelta(minutes=1)}, "is after end"),
        ({"start": START, "end": NOW, "step": dt.timedelta(seconds=90)}, "whole number of minutes"),
        ({"start": START, "end": NOW, "step": dt.timedelta(0)}, "positive whole number"),
        ({"start": START, "end": NOW, "step": dt.timedelta(minutes=-5)}, "positive whole number"),
        ({"start": START, "end": NOW, "step": 60}, "timedelta"),
        ({"start": NOW - dt.timedelta(days=8), "end": NOW, "step": dt.timedelta(minutes=1)}, "buckets"),
        ({"start": START, "end": NOW, "step": dt.timedelta(minutes=1), "metric_type": "nope"}, "unknown metric"),
        ({"start": START, "end": NOW, "step": dt.timedelta(minutes=1), "group_by": "actor"}, "not a string"),
    ],
)
def test_bad_arguments_are_refused_naming_the_problem(engine: Engine, arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        query_series(engine, **arguments)


def test_the_bucket_limit_is_documented_and_reachable(engine: Engine) -> None:
    step = dt.timedelta(minutes=1)
    assert query_series(engine, NOW - MAX_SERIES_BUCKETS * step, NOW, step=step) == []
    with pytest.raises(ValueError, match=f"{MAX_SERIES_BUCKETS:,} allowed"):
        query_series(engine, NOW - (MAX_SERIES_BUCKETS + 1) * step, NOW, step=step)


def test_a_queue_with_ready_messages_and_nothing_finished_is_stalled(engine: Engine) -> None:
    first = NOW - dt.timedelta(minutes=4)
    samples = []
    for minute in range(4):
        at = first + dt.timedelta(minutes=minute, seconds=10)
        # "busy" works all along; "stuck" has ready messages and finishes one only in the first minute;
        # "idle" has no ready messages at all.
        samples.append((MetricType.QUEUE_DEPTH, {"queue": "busy", "state": "ready"}, 5.0, at))
        samples.append((MetricType.PROCESSING_TIME, {"actor": "a", "queue": "busy"}, 3.0, at))
        samples.append((MetricType.QUEUE_DEPTH, {"queue": "stuck", "state": "ready"}, 7.0 + minute, at))
        samples.append((MetricType.QUEUE_DEPTH, {"queue": "stuck", "state": "delayed"}, 0.0, at))
        samples.append((MetricType.QUEUE_DEPTH, {"queue": "idle", "state": "ready"}, 0.0, at))
    samples.append((MetricType.PROCESSING_TIME, {"actor": "b", "queue": "stuck"}, 3.0, first))
    insert_samples(engine, samples)
    step = dt.timedelta(minutes=1)
    for folded in (False, True):
        if folded:
            fold(engine, now=NOW)
        stalled = query_stalled(engine, first, NOW, step=step)
        assert [(bucket.queue, bucket.start, bucket.ready) for bucket in stalled] == [
            ("stuck", first + dt.timedelta(minutes=minute), 7.0 + minute) for minute in (1, 2, 3)
        ]
    assert query_stalled(engine, first, NOW, step=step, queue="busy") == []
    # Over the four minutes at once, one message of "stuck" finished: not stalled.
    assert query_stalled(engine, first, NOW, step=dt.timedelta(minutes=4), queue="stuck") == []


def test_totals_over_whole_hours_read_the_hour_rows_on_postgresql(postgres_engine: Engine) -> None:
    samples = fleet_samples(START, 150, seed=21)
    insert_samples(postgres_engine, samples)
    fold(postgres_engine, now=NOW)
    # Rows of hours already merged, not folded yet: read from the raw rows with the hour rows.
    late = fleet_samples(START + dt.timedelta(minutes=65), 10, seed=22, per_minute=5)
    insert_samples(postgres_engine, late)
    start, end = START + dt.timedelta(minutes=17, seconds=3.5), NOW - dt.timedelta(seconds=1)
    points = query_totals(postgres_engine, start, end, metric_type=MetricType.PROCESSING_TIME, group_by=GROUPS)
    whole = dt.timedelta(days=366 * 100)
    assert_points_match(points, expected_points(samples + late, start, end, whole, MetricType.PROCESSING_TIME, GROUPS))
    # The hours from 10:00 to 11:00 come from the hour rows: what they hold is what the totals count.
    with postgres_engine.begin() as connection:
        changed = connection.execute(
            text(
                "UPDATE opmetrics_recent_hours SET count = count + 1000 WHERE metric_type = 'processing_time'"
                " AND hour >= :low AND hour < :high"
            ),
            {"low": START + dt.timedelta(hours=1), "high": START + dt.timedelta(hours=2)},
        ).rowcount
    assert changed > 0
    again = query_totals(postgres_engine, start, end, metric_type=MetricType.PROCESSING_TIME, group_by=GROUPS)
    assert sum(point.count for point in again) == sum(point.count for point in points) + 1000 * changed

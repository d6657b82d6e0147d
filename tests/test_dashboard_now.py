"""The Now page's numbers: per actor, queue and worker, minute by minute, checked against numpy on the samples."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pytest
from raw_samples import RawSample, insert_samples
from series_samples import ACTORS, expected_points, fleet_samples
from sqlalchemy import Engine

from dramatiq_opmetrics.dashboard.data import DashboardData
from dramatiq_opmetrics.dashboard.pages import now
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.recent_tier import bucket_floor, fold

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
HOUR_AGO = NOW - dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)
INTERVAL_S = 15.0


@pytest.fixture
def data(engine: Engine) -> DashboardData:
    return DashboardData(engine, clock=lambda: NOW, sampling_interval_s=INTERVAL_S)


def series(chart: dict[str, Any], label: str) -> dict[float, float | None]:
    """The values of the series ``label`` of a chart, by x (epoch seconds)."""
    [found] = [item for item in chart["series"] if item["label"] == label]
    return dict(zip(chart["x"], found["values"], strict=True))


def labels_of(chart: dict[str, Any]) -> list[str]:
    return [item["label"] for item in chart["series"]]


def sampled_every_interval(
    start: dt.datetime, end: dt.datetime, make: Any, interval_s: float = INTERVAL_S
) -> list[RawSample]:
    """``make(at)``'s samples at each multiple of ``interval_s`` in ``[start, end)`` (recorded 20 ms after it,
    as a sampling thread does)."""
    found: list[RawSample] = []
    at = bucket_floor(start, 1)
    while at < end:
        if at >= start:
            found.extend(make(at + dt.timedelta(milliseconds=20)))
        at += dt.timedelta(seconds=interval_s)
    return found


def test_throughput_error_rate_and_percentiles_per_actor_match_numpy(engine: Engine, data: DashboardData) -> None:
    samples = fleet_samples(HOUR_AGO, 60)
    insert_samples(engine, samples)
    view = now.view(data, "1h")
    charts = view["charts"]
    expected = expected_points(samples, HOUR_AGO, NOW, MINUTE, MetricType.PROCESSING_TIME, ("actor",))
    waits = expected_points(samples, HOUR_AGO, NOW, MINUTE, MetricType.WAIT_TIME, ("actor",))
    assert len(charts["throughput"]["x"]) == 60
    assert sorted(labels_of(charts["throughput"])) == sorted(actor for actor, _queue in ACTORS)
    for actor, _queue in ACTORS:
        throughput = series(charts["throughput"], actor)
        error_rate = series(charts["error_rate"], actor)
        p95 = series(charts["processing_time"], actor)
        wait_p95 = series(charts["wait_time"], actor)
        for minute in range(60):
            start = HOUR_AGO + minute * MINUTE
            x = start.timestamp()
            wanted = expected.get(((("actor", actor),), start))
            if wanted is None:
                assert throughput[x] is None
                continue
            assert throughput[x] == len(wanted.values)  # per minute, in 1-minute buckets
            assert error_rate[x] == wanted.errors / len(wanted.values)
            exact = float(np.percentile(wanted.values, 95, method="lower"))
            assert p95[x] == pytest.approx(exact, rel=0.01)
            exact_wait = float(np.percentile(waits[((("actor", actor),), start)].values, 95, method="lower"))
            assert wait_p95[x] == pytest.approx(exact_wait, rel=0.01)
    processing = [sample for sample in samples if sample[0] is MetricType.PROCESSING_TIME]
    errors = [sample for sample in samples if sample[0] is MetricType.ERROR]
    assert view["summary"]["messages"] == len(processing)
    assert view["summary"]["error_rate"] == len(errors) / len(processing)


def test_actors_are_ranked_by_processing_time_and_one_chosen_actor_shows_its_three_percentiles(
    engine: Engine, data: DashboardData
) -> None:
    samples = fleet_samples(HOUR_AGO, 60)
    insert_samples(engine, samples)
    totals = {
        actor: sum(
            value
            for kind, labels, value, _at in samples
            if kind is MetricType.PROCESSING_TIME and labels["actor"] == actor
        )
        for actor, _queue in ACTORS
    }
    view = now.view(data, "1h", percentile="p99")
    assert [row["actor"] for row in view["actor_rows"]] == sorted(totals, key=lambda actor: -totals[actor])
    for row in view["actor_rows"]:
        assert row["processing_ms_total"] == pytest.approx(totals[row["actor"]], rel=1e-12)
    assert sum(row["processing_share"] for row in view["actor_rows"]) == pytest.approx(1.0)
    chosen = now.view(data, "1h", actor="resize")
    assert labels_of(chosen["charts"]["processing_time"]) == ["p50", "p95", "p99"]
    assert labels_of(chosen["charts"]["throughput"]) == ["resize"]
    assert [row["actor"] for row in chosen["actor_rows"]] == ["resize"]


def test_workers_online_and_utilisation_follow_the_processes_sampling(engine: Engine, data: DashboardData) -> None:
    from dramatiq_opmetrics.samples import worker_threads

    def process(host: str, threads: int, busy: int) -> Any:
        def make(at: dt.datetime) -> list[RawSample]:
            return [
                (sample.metric_type, sample.label_set.labels, sample.value, at)
                for sample in worker_threads(threads, busy, host=host, queues="default")
            ]

        return make

    stopped_at = NOW - dt.timedelta(minutes=10)
    insert_samples(engine, sampled_every_interval(NOW - dt.timedelta(minutes=30), NOW, process("a", 8, 2)))
    insert_samples(engine, sampled_every_interval(NOW - dt.timedelta(minutes=30), stopped_at, process("b", 4, 4)))
    view = now.view(data, "1h")
    processes = series(view["charts"]["workers"], "processes")
    threads = series(view["charts"]["workers"], "threads")
    utilisation = series(view["charts"]["utilisation"], "utilisation")
    for minute in range(60):
        x = (HOUR_AGO + minute * MINUTE).timestamp()
        at = HOUR_AGO + minute * MINUTE
        if at < NOW - dt.timedelta(minutes=30):
            assert processes[x] is None and utilisation[x] is None
        elif at < stopped_at:
            assert (processes[x], threads[x], utilisation[x]) == (2, 12, 0.5)
        else:
            assert (processes[x], threads[x], utilisation[x]) == (1, 8, 0.25)
    assert view["summary"]["workers"] == 1
    assert view["summary"]["utilisation"] == 0.25


def test_queue_depth_oldest_message_age_and_stalled_intervals(engine: Engine, data: DashboardData) -> None:
    from dramatiq_opmetrics.samples import oldest_message_age, queue_depth

    def queue(name: str, ready: float, age_s: float) -> Any:
        def make(at: dt.datetime) -> list[RawSample]:
            found = queue_depth(name, int(ready), state="ready") + oldest_message_age(
                name, age_s + (at - HOUR_AGO).seconds
            )
            return [(sample.metric_type, sample.label_set.labels, sample.value, at) for sample in found]

        return make

    insert_samples(engine, sampled_every_interval(HOUR_AGO, NOW, queue("stuck", 7, 100.0)))
    insert_samples(engine, sampled_every_interval(HOUR_AGO, NOW, queue("busy", 3, 0.0)))
    # The busy queue finishes a message every minute; the stuck one never does.
    insert_samples(
        engine,
        [
            (
                MetricType.PROCESSING_TIME,
                {"actor": "work", "queue": "busy"},
                5.0,
                HOUR_AGO + minute * MINUTE + dt.timedelta(seconds=30),
            )
            for minute in range(60)
        ],
    )
    view = now.view(data, "1h")
    depth, ages = view["charts"]["queue_depth"], view["charts"]["oldest_message_age"]
    assert labels_of(depth) == ["stuck", "busy"]  # the deepest first
    assert set(series(depth, "stuck").values()) == {7.0}
    # The largest age sampled in each minute: the last sample of the minute, 45 s in.
    for minute in range(60):
        x = (HOUR_AGO + minute * MINUTE).timestamp()
        assert series(ages, "stuck")[x] == 100.0 + 60 * minute + 45
    assert [(run["queue"], run["start"], run["end"], run["buckets"]) for run in view["stalled"]] == [
        ("stuck", HOUR_AGO.timestamp(), NOW.timestamp(), 60)
    ]
    assert (
        depth["bands"] == ages["bands"] == [{"start": HOUR_AGO.timestamp(), "end": NOW.timestamp(), "label": "stuck"}]
    )
    rows = {row["queue"]: row for row in view["queue_rows"]}
    assert rows["stuck"]["stalled_now"] and rows["stuck"]["stalled_buckets"] == 60
    assert rows["stuck"]["ready"] == 7.0 and rows["stuck"]["oldest_age_s"] == 100.0 + 3600 - 15
    assert not rows["busy"]["stalled_now"] and rows["busy"]["stalled_buckets"] == 0
    assert view["summary"]["stalled_queues"] == 1
    one = now.view(data, "1h", queue="busy")
    assert labels_of(one["charts"]["queue_depth"]) == ["ready"]
    assert one["stalled"] == [] and one["charts"]["queue_depth"]["bands"] == []


def test_each_window_has_its_buckets(engine: Engine, data: DashboardData) -> None:
    insert_samples(engine, fleet_samples(NOW - dt.timedelta(hours=72), 72 * 60, per_minute=2))
    for window, buckets, step_minutes in (("1h", 60, 1), ("6h", 36, 10), ("24h", 144, 10), ("72h", 72, 60)):
        view = now.view(data, window)
        assert view["step_minutes"] == step_minutes
        x = view["charts"]["throughput"]["x"]
        assert len(x) == buckets, window
        assert x[0] == (NOW - now.NOW_WINDOWS[window][0]).timestamp()
        assert x[1] - x[0] == step_minutes * 60
        messages = sum(value or 0.0 for item in view["charts"]["throughput"]["series"] for value in item["values"])
        assert messages * step_minutes == pytest.approx(view["summary"]["messages"], rel=1e-12), window


def test_a_window_start_inside_a_bucket_gives_the_partial_buckets_their_rate_per_minute(engine: Engine) -> None:
    clock = NOW + dt.timedelta(seconds=30)
    data = DashboardData(engine, clock=lambda: clock)
    insert_samples(
        engine,
        [(MetricType.PROCESSING_TIME, {"actor": "a"}, 1.0, clock - dt.timedelta(seconds=s)) for s in range(1, 31)],
    )
    insert_samples(
        engine, [(MetricType.PROCESSING_TIME, {"actor": "a"}, 1.0, NOW - dt.timedelta(seconds=s)) for s in range(1, 61)]
    )
    throughput = series(now.view(data, "1h")["charts"]["throughput"], "a")
    assert len(throughput) == 61
    assert throughput[NOW.timestamp()] == 60  # 30 messages in half a minute
    assert throughput[(NOW - MINUTE).timestamp()] == 60


def test_the_page_reads_the_tier_and_the_rows_not_folded_yet_alike(engine: Engine, data: DashboardData) -> None:
    insert_samples(engine, fleet_samples(HOUR_AGO, 40, seed=5))
    unfolded = now.view(data, "1h")
    fold(engine, now=NOW)
    assert now.view(data, "1h") == unfolded
    late = fleet_samples(HOUR_AGO + dt.timedelta(minutes=40), 20, seed=6)
    insert_samples(engine, late)  # after the fold, as a writer does: shown at once, counted once
    both = now.view(data, "1h")
    assert both["summary"]["messages"] == unfolded["summary"]["messages"] + sum(
        1 for sample in late if sample[0] is MetricType.PROCESSING_TIME
    )
    fold(engine, now=NOW)
    assert now.view(data, "1h") == both


def test_every_value_is_ready_for_json(engine: Engine, data: DashboardData) -> None:
    insert_samples(engine, fleet_samples(HOUR_AGO, 60))
    view = now.view(data, "24h")
    assert json.loads(json.dumps(view, allow_nan=False)) == view


def test_a_window_or_percentile_that_is_not_offered_is_refused_naming_the_choices(data: DashboardData) -> None:
    with pytest.raises(ValueError, match="window must be one of 1h, 6h, 24h, 72h; got '2h'"):
        now.view(data, "2h")
    with pytest.raises(ValueError, match="percentile must be one of p50, p95, p99; got 'p90'"):
        now.view(data, percentile="p90")


def test_a_queue_is_stalled_now_only_if_the_latest_bucket_that_ended_was(engine: Engine) -> None:
    from dramatiq_opmetrics.samples import queue_depth

    clock = NOW + dt.timedelta(seconds=30)  # half a minute into the current bucket
    data = DashboardData(engine, clock=lambda: clock)

    def ready(name: str) -> Any:
        def make(at: dt.datetime) -> list[RawSample]:
            return [(s.metric_type, s.label_set.labels, s.value, at) for s in queue_depth(name, 4, state="ready")]

        return make

    for name in ("served", "abandoned"):
        insert_samples(engine, sampled_every_interval(NOW - dt.timedelta(minutes=10), clock, ready(name)))
    # "served" finishes a message 10 s into each minute that has ended; the current one has none yet.
    finished = [NOW - dt.timedelta(minutes=minute) + dt.timedelta(seconds=10) for minute in range(1, 11)]
    insert_samples(
        engine, [(MetricType.PROCESSING_TIME, {"actor": "a", "queue": "served"}, 1.0, at) for at in finished]
    )
    rows = {row["queue"]: row for row in now.view(data, "1h")["queue_rows"]}
    assert (rows["served"]["stalled_buckets"], rows["served"]["stalled_now"]) == (1, False)
    assert (rows["abandoned"]["stalled_buckets"], rows["abandoned"]["stalled_now"]) == (11, True)

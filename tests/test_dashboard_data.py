"""The dashboard's numbers: today included, rolled-up days from daily rows only, range p95 from histograms."""

from __future__ import annotations

import datetime as dt

import pytest
from fleet_history import FleetHistory, make_actors, populate
from raw_samples import at, insert_samples
from sqlalchemy import Engine, delete, func, select, update

from dramatiq_opmetrics.dashboard.charts import DateRange
from dramatiq_opmetrics.dashboard.data import DashboardData
from dramatiq_opmetrics.dashboard.days import daily_fingerprint
from dramatiq_opmetrics.dashboard.pages import actor as actor_page
from dramatiq_opmetrics.dashboard.pages import confidence, overview, queues, tokens
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.models import OperationalMetricDaily
from dramatiq_opmetrics.query import query_daily_series, query_metrics
from dramatiq_opmetrics.recent_tier import bucket_floor, fold

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()


@pytest.fixture
def fleet(engine: Engine) -> FleetHistory:
    return populate(engine, days=40, actors=make_actors(5), now=NOW, raw_samples_per_actor=30)


@pytest.fixture
def data(engine: Engine) -> DashboardData:
    return DashboardData(engine, clock=lambda: NOW)


def daily_count(engine: Engine, metric_type: MetricType, labels_key: str, first_day: dt.date) -> int:
    d = OperationalMetricDaily
    with engine.connect() as connection:
        query = select(func.coalesce(func.sum(d.sample_count), 0)).where(
            d.metric_type == metric_type, d.labels_key == labels_key, d.date >= first_day, d.date < TODAY
        )
        return int(connection.execute(query).scalar_one())


def test_the_overview_has_one_row_per_actor_and_queue_worst_error_rate_first(
    data: DashboardData, fleet: FleetHistory
) -> None:
    view = overview.view(data, 30)
    assert {(row["actor"], row["queue"]) for row in view["rows"]} == {(a.name, a.queue) for a in fleet.actors}
    rates = [row["error_rate"] for row in view["rows"]]
    assert rates == sorted(rates, reverse=True)
    assert len(view["x"]) == 30
    assert all(len(row["trend"]["messages"]) == 30 for row in view["rows"])


def test_the_overview_counts_daily_rows_and_todays_raw_samples(
    engine: Engine, data: DashboardData, fleet: FleetHistory
) -> None:
    actor = fleet.actors[0]
    key = f"actor:{actor.name}|queue:{actor.queue}"
    [row] = [row for row in overview.view(data, 7)["rows"] if row["actor"] == actor.name]
    first_day = TODAY - dt.timedelta(days=6)
    today_raw = len(fleet.raw_values[("processing_time", key)])
    assert row["messages"] == daily_count(engine, MetricType.PROCESSING_TIME, key, first_day) + today_raw
    assert row["trend"]["messages"][-1] == today_raw


def test_the_overview_range_p95_is_the_query_apis_merged_histogram_p95(
    engine: Engine, data: DashboardData, fleet: FleetHistory
) -> None:
    rows = {(row["actor"], row["queue"]): row for row in overview.view(data, 30)["rows"]}
    for kind, column in ((MetricType.PROCESSING_TIME, "p95_processing_ms"), (MetricType.WAIT_TIME, "p95_wait_ms")):
        expected = query_metrics(
            engine, TODAY - dt.timedelta(days=29), TODAY, metric_type=kind, group_by=("actor", "queue")
        )
        assert len(expected) == len(rows)
        for stats in expected:
            assert rows[(stats.labels["actor"], stats.labels["queue"])][column] == pytest.approx(stats.p95, rel=1e-9)


def test_the_range_p95_is_not_an_average_of_daily_p95s(data: DashboardData, fleet: FleetHistory) -> None:
    [row] = [row for row in overview.view(data, 30)["rows"] if row["actor"] == fleet.actors[1].name]
    daily = [value for value in row["trend"]["p95_processing_ms"] if value is not None]
    assert row["p95_processing_ms"] != pytest.approx(sum(daily) / len(daily), rel=1e-6)
    assert min(daily) * 0.95 <= row["p95_processing_ms"] <= max(daily) * 1.05


def test_a_day_not_rolled_up_yet_is_read_from_its_raw_samples(
    engine: Engine, data: DashboardData, fleet: FleetHistory
) -> None:
    yesterday = TODAY - dt.timedelta(days=1)
    actor = fleet.actors[0]
    with engine.begin() as connection:
        connection.execute(delete(OperationalMetricDaily).where(OperationalMetricDaily.date == yesterday))
    labels = {"actor": actor.name, "queue": actor.queue}
    insert_samples(engine, [(MetricType.PROCESSING_TIME, labels, 50.0, at(yesterday, 60 * i)) for i in range(17)])
    [row] = [row for row in overview.view(data, 7)["rows"] if row["actor"] == actor.name]
    assert row["trend"]["messages"][-2] == 17


def test_a_rolled_up_day_is_read_from_daily_rows_never_from_raw_samples(
    engine: Engine, data: DashboardData, fleet: FleetHistory
) -> None:
    actor = fleet.actors[0]
    before = next(row for row in overview.view(data, 7)["rows"] if row["actor"] == actor.name)
    rolled_up_day = TODAY - dt.timedelta(days=3)
    labels = {"actor": actor.name, "queue": actor.queue}
    insert_samples(engine, [(MetricType.PROCESSING_TIME, labels, 9e9, at(rolled_up_day, i)) for i in range(500)])
    after = next(row for row in overview.view(data, 7)["rows"] if row["actor"] == actor.name)
    assert after["messages"] == before["messages"]
    assert after["p95_processing_ms"] == before["p95_processing_ms"]


def test_a_range_that_is_not_offered_is_refused_naming_the_choices(data: DashboardData) -> None:
    with pytest.raises(ValueError, match="days must be one of 7, 30, 90, 365; got 5"):
        overview.view(data, 5)
    with pytest.raises(ValueError, match="sort must be one of"):
        overview.view(data, 7, sort="labels; DROP TABLE x")


def test_the_actor_views_range_percentiles_are_the_query_apis(
    engine: Engine, data: DashboardData, fleet: FleetHistory
) -> None:
    actor = fleet.actors[2]
    view = actor_page.view(data, actor.name, actor.queue, 30)
    labels = {"actor": actor.name, "queue": actor.queue}
    for kind in (MetricType.PROCESSING_TIME, MetricType.WAIT_TIME):
        [expected] = query_metrics(
            engine, TODAY - dt.timedelta(days=29), TODAY, metric_type=kind, labels=labels, group_by=()
        )
        summary = view["summary"][kind.value]
        assert summary["count"] == expected.count
        assert summary["avg"] == pytest.approx(expected.avg, rel=1e-9)
        for name in ("p50", "p95", "p99"):
            assert summary[name] == pytest.approx(getattr(expected, name), rel=1e-9), name
    assert view["messages"] == view["summary"]["processing_time"]["count"]


def test_the_actor_view_charts_one_point_per_day_with_today_last(data: DashboardData, fleet: FleetHistory) -> None:
    actor = fleet.actors[0]
    view = actor_page.view(data, actor.name, actor.queue, 7)
    charts = view["charts"]
    assert len(charts["messages"]["x"]) == 7
    assert charts["messages"]["x"][-1] == dt.datetime.combine(TODAY, dt.time(), tzinfo=dt.UTC).timestamp()
    assert charts["messages"]["series"][0]["values"][-1] == 30
    assert [series["label"] for series in charts["processing_time"]["series"]] == ["p50", "p95", "p99"]
    assert all(value is not None for value in charts["processing_time"]["series"][1]["values"])


def test_the_queues_view_shows_raw_depth_by_state_and_daily_maxima(
    engine: Engine, data: DashboardData, fleet: FleetHistory
) -> None:
    view = queues.view(data, 7, 6)
    recent = view["charts"]["recent"]
    names = {series["label"] for series in recent["series"]}
    assert names == {f"{queue} {state}" for queue in fleet.queues for state in ("ready", "delayed", "dead")}
    ready = next(series for series in recent["series"] if series["label"] == "queue_0 ready")
    raw = fleet.raw_values[("queue_depth", "queue:queue_0|state:ready")]
    assert max(value for value in ready["values"] if value is not None) <= max(raw)
    daily_max = next(s for s in view["charts"]["daily_max"]["series"] if s["label"] == "queue_0 ready")
    assert daily_max["values"][-1] == max(raw)
    assert all(value is not None for value in daily_max["values"])


def test_token_totals_per_model_include_today(engine: Engine, data: DashboardData, fleet: FleetHistory) -> None:
    view = tokens.view(data, 7)
    row = next(row for row in view["rows"] if row["model"] == "gpt-4o-mini")
    key = f"actor:{fleet.actors[0].name}|model:gpt-4o-mini"
    d = OperationalMetricDaily
    with engine.connect() as connection:
        daily_prompt = connection.execute(
            select(func.sum(d.sum)).where(
                d.metric_type == MetricType.PROMPT_TOKENS, d.labels_key == key, d.date >= TODAY - dt.timedelta(days=6)
            )
        ).scalar_one()
    assert row["prompt_tokens"] == pytest.approx(daily_prompt + sum(fleet.raw_values[("prompt_tokens", key)]))
    assert tokens.view(data, 7, model="claude-haiku")["rows"][0]["model"] == "claude-haiku"


def test_the_confidence_view_counts_scores_per_bucket(data: DashboardData, fleet: FleetHistory) -> None:
    view = confidence.view(data, 7)
    [row] = view["rows"]
    assert row["group"] == fleet.actors[0].name
    assert len(row["buckets"]) == 10
    assert row["scores"] == sum(int(n or 0) for n in row["buckets"]) > 0


def test_a_long_range_is_charted_in_buckets_of_several_days() -> None:
    date_range = DateRange.ending_today(365, TODAY)
    assert date_range.bucket_days == 4
    assert date_range.buckets == 92
    assert date_range.bucket(TODAY) == 91
    assert date_range.bucket(date_range.first_day) == 0


def test_the_fingerprint_changes_when_a_day_is_rolled_up_again(engine: Engine, fleet: FleetHistory) -> None:
    first, last = TODAY - dt.timedelta(days=14), TODAY - dt.timedelta(days=1)
    with engine.connect() as connection:
        before = daily_fingerprint(connection, [MetricType.WAIT_TIME], first, last)
    d = OperationalMetricDaily
    with engine.begin() as connection:
        connection.execute(
            update(d)
            .where(d.metric_type == MetricType.WAIT_TIME, d.date == last)
            .values(rolled_up_at=NOW + dt.timedelta(hours=1))
        )
    with engine.connect() as connection:
        assert daily_fingerprint(connection, [MetricType.WAIT_TIME], first, last) != before
        assert daily_fingerprint(connection, [MetricType.PROCESSING_TIME], first, last) == daily_fingerprint(
            connection, [MetricType.PROCESSING_TIME], first, last
        )


def test_todays_trend_p95_is_the_query_apis_p95_of_today(
    engine: Engine, data: DashboardData, fleet: FleetHistory
) -> None:
    actor = fleet.actors[1]
    [row] = [row for row in overview.view(data, 7)["rows"] if row["actor"] == actor.name]
    [today] = query_daily_series(
        engine, TODAY, TODAY, metric_type=MetricType.PROCESSING_TIME, labels={"actor": actor.name, "queue": actor.queue}
    )
    assert today.raw_days == 1
    assert row["trend"]["p95_processing_ms"][-1] == today.p95


def test_todays_new_and_late_samples_show_on_the_next_request_counted_once(
    engine: Engine, data: DashboardData, fleet: FleetHistory
) -> None:
    actor = fleet.actors[0]
    labels = {"actor": actor.name, "queue": actor.queue}

    def todays_messages() -> float:
        [row] = [row for row in overview.view(data, 7)["rows"] if row["actor"] == actor.name]
        return row["trend"]["messages"][-1]

    first = todays_messages()
    fold(engine, now=NOW)
    assert todays_messages() == first
    # One sample just written, one recorded hours ago and written only now (after an outage, say).
    insert_samples(engine, [(MetricType.PROCESSING_TIME, labels, 5.0, NOW - dt.timedelta(seconds=2))])
    insert_samples(engine, [(MetricType.PROCESSING_TIME, labels, 7.0, NOW - dt.timedelta(hours=5))])
    assert todays_messages() == first + 2
    fold(engine, now=NOW)
    assert todays_messages() == first + 2


def test_the_queues_recent_chart_is_the_largest_depth_of_each_bucket(
    engine: Engine, data: DashboardData, fleet: FleetHistory
) -> None:
    depth = {"queue": "queue_x", "state": "ready"}
    start = NOW - dt.timedelta(hours=6)
    samples = [
        (MetricType.QUEUE_DEPTH, depth, float(i % 50), start + dt.timedelta(seconds=15 * i)) for i in range(1440)
    ]
    insert_samples(engine, samples)
    fold(engine, now=NOW)
    for hours, step_minutes in ((6, 1), (24, 10)):
        view = queues.view(data, 7, hours)
        assert view["step_minutes"] == step_minutes
        chart = view["charts"]["recent"]
        [series] = [series for series in chart["series"] if series["label"] == "queue_x ready"]
        expected: dict[float, float] = {}
        for _kind, _labels, value, recorded_at in samples:
            x = bucket_floor(recorded_at, step_minutes).timestamp()
            expected[x] = max(expected.get(x, 0.0), value)
        got = {x: value for x, value in zip(chart["x"], series["values"], strict=True) if value is not None}
        assert got == expected

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from command_line import url_text
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from dramatiq_opmetrics import MetricsCollector, samples
from dramatiq_opmetrics.cli import main
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.query import MetricStats, query_metrics
from dramatiq_opmetrics.report import (
    Report,
    ReportRow,
    build_report,
    render_json,
    render_text,
    report_range,
    report_to_dict,
)
from dramatiq_opmetrics.rollup import rollup
from dramatiq_opmetrics.writer import write_samples

SINCE, UNTIL = dt.date(2026, 11, 21), dt.date(2026, 11, 27)


def row(labels: dict[str, str], count: int, avg: float, error_rate: float | None = None) -> ReportRow:
    """A row whose statistics derive from ``avg``: min avg/2, max 3avg, p50 0.9avg, p95 2avg, p99 2.5avg."""
    stats = MetricStats(
        MetricType.PROCESSING_TIME, labels, count, avg * count, avg / 2, avg * 3, avg, avg * 0.9, avg * 2, avg * 2.5
    )
    return ReportRow(stats, error_rate)


def sample_report() -> Report:
    return Report(
        SINCE,
        UNTIL,
        {"actor": None, "queue": None, "model": None},
        {
            MetricType.PROCESSING_TIME: [
                row({"actor": "summarise_a_very_long_document_name_for_the_board", "queue": "llm"}, 1204, 152.3, 0.02),
                row({"actor": "send_welcome_email", "queue": "emails"}, 12000, 12.3, 0.0),
            ],
            MetricType.ERROR: [
                row({"actor": "sync_crm", "queue": "crm", "error_type": "CRMUnavailable", "outcome": "final"}, 40, 1)
            ],
            MetricType.QUEUE_DEPTH: [row({"queue": "llm", "state": "ready"}, 300, 33.3)],
            MetricType.PROMPT_TOKENS: [row({"model": "gpt-4o-mini"}, 412, 811.2)],
            MetricType.COMPLETION_TOKENS: [row({"model": "gpt-4o-mini"}, 412, 162.6)],
            MetricType.CONFIDENCE: [row({"bucket": "0.9-1.0"}, 300, 0.95), row({"bucket": "0.5-0.6"}, 100, 0.55)],
        },
    )


def test_every_line_of_the_text_report_fits_in_80_columns() -> None:
    lines = render_text(sample_report()).splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("summarise_a_very_long") and "~" in line for line in lines)


def test_the_processing_time_table_shows_count_error_rate_and_percentiles() -> None:
    text = render_text(sample_report())
    header = next(line for line in text.splitlines() if line.startswith("actor") and "err%" in line)
    assert header.split() == ["actor", "queue", "count", "err%", "avg", "p50", "p95", "p99"]
    email = next(line for line in text.splitlines() if line.startswith("send_welcome_email"))
    assert email.split() == ["send_welcome_email", "emails", "12,000", "0.0%", "12.3", "11.1", "24.6", "30.8"]


def test_the_token_table_shows_totals_per_model_and_overall() -> None:
    text = render_text(sample_report())
    assert "token usage (tokens per call; 401,206 tokens in total)" in text
    prompt = next(line for line in text.splitlines() if line.startswith("gpt-4o-mini") and "prompt" in line)
    assert prompt.split()[:4] == ["gpt-4o-mini", "prompt", "412", "334,214"]


def test_the_confidence_table_shows_each_buckets_share() -> None:
    lines = render_text(sample_report()).splitlines()
    assert next(line for line in lines if line.startswith("0.9-1.0")).split()[:3] == ["0.9-1.0", "300", "75.0%"]


def test_the_json_report_has_the_documented_shape() -> None:
    data = json.loads(render_json(sample_report()))
    assert data["since"] == "2026-11-21" and data["until"] == "2026-11-27"
    assert data["filters"] == {"actor": None, "queue": None, "model": None}
    processing = data["metrics"]["processing_time"]
    assert processing["unit"] == "ms" and processing["group_by"] == ["actor", "queue"]
    assert processing["rows"][1] == {
        "labels": {"actor": "send_welcome_email", "queue": "emails"},
        "count": 12000,
        "sum": pytest.approx(147600.0),
        "min": pytest.approx(6.15),
        "max": pytest.approx(36.9),
        "avg": 12.3,
        "p50": pytest.approx(11.07),
        "p95": 24.6,
        "p99": pytest.approx(30.75),
        "error_rate": 0.0,
    }
    assert "error_rate" not in data["metrics"]["queue_depth"]["rows"][0]
    assert list(data["metrics"]) == [
        "processing_time",
        "error",
        "queue_depth",
        "prompt_tokens",
        "completion_tokens",
        "confidence",
    ]


def test_an_empty_report_says_so_in_one_line_after_the_heading() -> None:
    text = render_text(Report(SINCE, UNTIL, {}, {}))
    assert text.splitlines()[1:] == ["No metrics recorded in this range."]
    assert report_to_dict(Report(SINCE, UNTIL, {}, {}))["metrics"] == {}


def test_the_default_range_is_the_last_seven_days_including_today() -> None:
    assert report_range(today=UNTIL) == (SINCE, UNTIL)


def test_days_counts_back_from_today() -> None:
    assert report_range(days=1, today=UNTIL) == (UNTIL, UNTIL)
    assert report_range(days=30, today=UNTIL) == (UNTIL - dt.timedelta(days=29), UNTIL)


def test_since_alone_runs_until_today() -> None:
    assert report_range(since=SINCE, today=UNTIL + dt.timedelta(days=3)) == (SINCE, UNTIL + dt.timedelta(days=3))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"days": 3, "since": SINCE}, "either --days or --since/--until"),
        ({"days": 0}, "--days must be at least 1"),
        ({"since": UNTIL, "until": SINCE}, "is after --until"),
    ],
)
def test_a_bad_range_is_refused_with_a_clear_message(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        report_range(today=UNTIL, **arguments)  # type: ignore[arg-type]


# The command, on a real database (each dialect): daily rows of past days merged with today's raw rows.


@pytest.fixture
def today() -> dt.date:
    """Today (UTC) as the test starts: read per test, not once at import, so that a suite running past
    midnight does not compare a day read at its start with the command's today."""
    return dt.datetime.now(dt.UTC).date()


def at(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)


def record_fleet_day(engine: Engine, day: dt.date, durations_ms: list[float]) -> None:
    """One day of a small fleet: processing times of send_email (one of them failed), tokens and confidence."""
    with Session(engine) as session, session.begin():
        collector = MetricsCollector(session)
        for duration_ms in durations_ms:
            collector.record_processing_time("send_email", duration_ms, queue="emails", recorded_at=at(day))
        collector.record_error("send_email", "TimeoutError", queue="emails", outcome="retried", recorded_at=at(day))
        collector.record_queue_depth("emails", 7, state="ready", recorded_at=at(day))
        collector.record_token_usage("gpt-4o-mini", 800, 150, actor="summarise", recorded_at=at(day))
        collector.record_token_usage("claude-3-5-haiku", 400, 50, actor="classify", recorded_at=at(day))
        collector.record_confidence(0.93, actor="classify", recorded_at=at(day))


@pytest.fixture
def fleet(today: dt.date, engine: Engine, migrated_url: URL) -> URL:
    """Two rolled-up past days and today (raw rows only) of the small fleet."""
    record_fleet_day(engine, today - dt.timedelta(days=2), [10.0, 20.0, 30.0, 40.0])
    record_fleet_day(engine, today - dt.timedelta(days=1), [50.0, 60.0, 70.0, 80.0])
    record_fleet_day(engine, today, [90.0, 100.0])
    rollup(engine)
    return migrated_url


def report_json(url: URL, *arguments: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["report", "--database-url", url_text(url), "--json", *arguments]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def test_report_json_merges_rolled_up_days_with_todays_raw_rows(
    today: dt.date, fleet: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    data = report_json(fleet, "--days", "3", capsys=capsys)
    assert (data["since"], data["until"]) == (str(today - dt.timedelta(days=2)), str(today))
    [processing] = data["metrics"]["processing_time"]["rows"]
    assert processing["labels"] == {"actor": "send_email", "queue": "emails"}
    assert processing["count"] == 10
    assert processing["sum"] == pytest.approx(550.0)
    assert (processing["min"], processing["max"], processing["avg"]) == (10.0, 100.0, 55.0)
    [stats] = query_metrics(
        make_engine(fleet),
        today - dt.timedelta(days=2),
        today,
        metric_type="processing_time",
        group_by=("actor", "queue"),
    )
    assert (processing["p50"], processing["p95"], processing["p99"]) == (stats.p50, stats.p95, stats.p99)
    assert 49.5 <= processing["p50"] <= 55.6  # the median of 10, 20, ..., 100, within 1%
    assert processing["error_rate"] == pytest.approx(3 / 10)
    [errors] = data["metrics"]["error"]["rows"]
    assert errors["labels"] == {
        "actor": "send_email",
        "queue": "emails",
        "error_type": "TimeoutError",
        "outcome": "retried",
    }
    assert errors["count"] == 3
    prompt = {row["labels"]["model"]: row["sum"] for row in data["metrics"]["prompt_tokens"]["rows"]}
    assert prompt == {"gpt-4o-mini": 2400.0, "claude-3-5-haiku": 1200.0}
    assert data["metrics"]["confidence"]["rows"][0]["labels"] == {"bucket": "0.9-1.0"}
    assert data["metrics"]["queue_depth"]["rows"][0]["labels"] == {"queue": "emails", "state": "ready"}


def test_report_json_of_today_alone_comes_from_raw_rows(fleet: URL, capsys: pytest.CaptureFixture[str]) -> None:
    data = report_json(fleet, "--days", "1", capsys=capsys)
    [processing] = data["metrics"]["processing_time"]["rows"]
    assert (processing["count"], processing["avg"], processing["error_rate"]) == (2, 95.0, 0.5)


def test_a_report_read_on_an_engine_equals_the_report_read_on_one_connection(today: dt.date, fleet: URL) -> None:
    engine = make_engine(fleet)
    try:
        for since, until in [(today - dt.timedelta(days=2), today), (today, today)]:
            for filters in ({}, {"queue": "emails"}, {"model": "nowhere"}):
                with engine.connect() as connection:
                    on_connection = report_to_dict(build_report(connection, since, until, filters=filters))
                # On PostgreSQL the engine reads the daily rows and today's raw rows on two connections.
                assert report_to_dict(build_report(engine, since, until, filters=filters)) == on_connection
                assert on_connection["metrics"] or filters
    finally:
        engine.dispose()


def test_report_filters_by_model_and_by_metric(fleet: URL, capsys: pytest.CaptureFixture[str]) -> None:
    data = report_json(fleet, "--model", "gpt-4o-mini", "--metric", "prompt_tokens", capsys=capsys)
    assert list(data["metrics"]) == ["prompt_tokens"]
    assert [row["labels"] for row in data["metrics"]["prompt_tokens"]["rows"]] == [{"model": "gpt-4o-mini"}]
    assert data["filters"] == {"actor": None, "queue": None, "model": "gpt-4o-mini"}


def test_report_text_shows_a_table_per_metric_type_in_80_columns(
    today: dt.date, fleet: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--database-url", url_text(fleet), "--since", str(today - dt.timedelta(days=2))]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    for title in ("processing time", "errors", "queue depth", "confidence", "token usage"):
        assert any(line.startswith(title) for line in out.splitlines()), title
    email = next(line for line in out.splitlines() if line.startswith("send_email"))
    assert email.split()[:4] == ["send_email", "emails", "10", "30.0%"]
    assert "token usage (tokens per call; 4,200 tokens in total)" in out


def test_an_empty_database_is_one_line(migrated_url: URL, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--database-url", url_text(migrated_url)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "No metrics recorded yet: add OpMetrics to your broker, or run `dramatiq-opmetrics demo` to see some."
    ]


def test_an_empty_range_says_so(fleet: URL, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--database-url", url_text(fleet), "--since", "2020-01-01", "--until", "2020-01-31"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["No metrics recorded in this range."]


def test_an_unmigrated_database_is_one_line_saying_to_migrate(
    database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    if database_url.get_backend_name() == "sqlite":
        make_engine(database_url).dispose()
        sqlite3.connect(database_url.database).close()  # an existing, empty file
    assert main(["report", "--database-url", url_text(database_url)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "run `dramatiq-opmetrics migrate` first" in err


def test_a_missing_sqlite_file_is_one_line_and_is_not_created(
    sqlite_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--database-url", url_text(sqlite_url)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "there is no SQLite database at" in err and "dramatiq-opmetrics migrate" in err
    assert not Path(str(sqlite_url.database)).exists()


def test_a_bad_range_on_the_command_line_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--database-url", "sqlite://", "--days", "3", "--since", "2026-11-01"]) == 2
    assert capsys.readouterr().err == "dramatiq-opmetrics: error: give either --days or --since/--until, not both\n"


def test_a_bad_label_filter_is_one_line(fleet: URL, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--database-url", url_text(fleet), "--actor", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "label 'actor' has an empty value" in err


def test_the_queue_depth_table_lists_states_from_waiting_to_dead(
    engine: Engine, migrated_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    with Session(engine) as session, session.begin():
        collector = MetricsCollector(session)
        for state in ("dead", "in_flight", "ready", "delayed"):
            collector.record_queue_depth("emails", 3, state=state)
    assert main(["report", "--database-url", url_text(migrated_url), "--metric", "queue_depth"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("emails")] == ["ready", "delayed", "in_flight", "dead"]


def test_rejected_samples_and_clock_skew_roll_up_and_are_reported(
    today: dt.date, engine: Engine, migrated_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    yesterday = today - dt.timedelta(days=1)
    with Session(engine) as session, session.begin():
        collector = MetricsCollector(session)
        for day in (yesterday, today):
            collector.add_samples(
                [
                    *samples.rejected_samples(3, metric_type="prompt_tokens", reason="DataError", recorded_at=at(day)),
                    *samples.rejected_samples(2, metric_type="prompt_tokens", reason="DataError", recorded_at=at(day)),
                    samples.Sample(
                        MetricType.CLOCK_SKEW,
                        1.0,
                        samples.message_labels("send_email", queue="emails"),
                        at(day),
                    ),
                ]
            )
    rollup(engine)
    data = report_json(migrated_url, "--days", "2", capsys=capsys)
    rejected = data["metrics"]["rejected_samples"]
    assert rejected["group_by"] == ["metric_type", "reason"]
    assert [(row["labels"], row["sum"]) for row in rejected["rows"]] == [
        ({"metric_type": "prompt_tokens", "reason": "DataError"}, 10.0)
    ]
    skew = data["metrics"]["clock_skew"]
    assert (skew["unit"], skew["rows"][0]["labels"], skew["rows"][0]["count"]) == (
        "messages",
        {"actor": "send_email", "queue": "emails"},
        2,
    )
    assert main(["report", "--database-url", url_text(migrated_url), "--days", "2"]) == 0
    text = capsys.readouterr().out
    assert "rejected samples (refused by the database" in text
    assert any(line.split() == ["prompt_tokens", "DataError", "10"] for line in text.splitlines())
    assert "clock skew" in text


def test_the_report_shows_oldest_message_age_and_workers_with_their_utilisation(
    today: dt.date, engine: Engine, migrated_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = []
    for second, (age_s, busy) in enumerate([(0.0, 1), (12.5, 3), (40.0, 4)]):
        when = at(today) + dt.timedelta(seconds=15 * second)
        recorded += samples.oldest_message_age("emails", age_s, recorded_at=when)
        for host in ("web-1", "web-2"):
            recorded += samples.worker_threads(4, busy, host=host, queues="emails,reports", recorded_at=when)
    with engine.begin() as connection:
        write_samples(connection, recorded)

    assert main(["report", "--database-url", url_text(migrated_url)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    age_header = next(line for line in lines if line.startswith("queue") and line.endswith("max"))
    age_row = next(line for line in lines if line.startswith("emails"))
    assert age_header.split() == ["queue", "count", "avg", "p50", "p95", "p99", "max"]
    assert age_row.split()[1] == "3" and age_row.split()[-1] == "40.0"
    assert "workers (threads per process and sample; util% = busy / threads)" in text
    worker_rows = [line.split() for line in lines if line.startswith("web-")]
    assert worker_rows == [[host, "emails,reports", "3", "4.0", "2.7", "4.0", "66.7%"] for host in ("web-1", "web-2")]

    data = report_json(migrated_url, capsys=capsys)
    assert data["metrics"]["oldest_message_age"]["unit"] == "s"
    assert data["metrics"]["oldest_message_age"]["rows"][0]["max"] == 40.0
    threads = data["metrics"]["worker_threads"]
    assert threads["group_by"] == ["host", "queues"] and threads["unit"] == "threads"
    assert [row["sum"] for row in data["metrics"]["busy_threads"]["rows"]] == [8.0, 8.0]


# Windows of time (--last, --since/--until as datetimes): from the recent tier and the raw rows not folded yet.


def test_last_counts_back_from_now_and_datetimes_make_a_window() -> None:
    now = dt.datetime(2026, 11, 27, 12, 30, 15, tzinfo=dt.UTC)
    assert report_range(last=dt.timedelta(hours=1), now=now) == (now - dt.timedelta(hours=1), now)
    since = dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert report_range(since=since, now=now) == (dt.datetime(2026, 11, 27, 8, 30, tzinfo=dt.UTC), now)
    # A date beside a datetime: since is the day's first instant, until the end of its day; naive is UTC.
    assert report_range(since=dt.datetime(2026, 11, 26, 22), until=dt.date(2026, 11, 27), now=now) == (
        dt.datetime(2026, 11, 26, 22, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 28, tzinfo=dt.UTC),
    )
    assert report_range(since=dt.date(2026, 11, 27), until=now, now=now) == (
        dt.datetime(2026, 11, 27, tzinfo=dt.UTC),
        now,
    )
    # Dates alone keep meaning whole days.
    assert report_range(since=dt.date(2026, 11, 26), now=now) == (dt.date(2026, 11, 26), dt.date(2026, 11, 27))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"last": dt.timedelta(hours=1), "days": 2}, "either --last or --days/--since/--until"),
        ({"last": dt.timedelta(hours=1), "since": SINCE}, "either --last or --days/--since/--until"),
        ({"last": dt.timedelta(0)}, "--last must be a positive duration"),
        (
            {"since": dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC), "until": dt.datetime(2026, 11, 27, 10)},
            "is not before --until",
        ),
    ],
)
def test_a_bad_window_is_refused_with_a_clear_message(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        report_range(now=dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC), **arguments)  # type: ignore[arg-type]


def test_a_window_report_has_datetimes_its_length_and_a_heading_in_80_columns() -> None:
    start = dt.datetime(2026, 11, 27, 11, 0, 5, tzinfo=dt.UTC)
    report = Report(start, start + dt.timedelta(minutes=90), sample_report().filters, sample_report().metrics)
    data = report_to_dict(report)
    assert (data["since"], data["until"]) == ("2026-11-27T11:00:05+00:00", "2026-11-27T12:30:05+00:00")
    assert (data["window_s"], data["missing_before"]) == (5400.0, None)
    lines = render_text(report).splitlines()
    assert lines[0] == "dramatiq-opmetrics report: 2026-11-27 11:00:05 to 12:30:05 (UTC, 1h30m)"
    assert max(len(line) for line in lines) <= 80
    assert report_to_dict(sample_report())["window_s"] == 7 * 86_400


#: The groups of the samples written for window reports.
WINDOW_GROUPS = {MetricType.PROCESSING_TIME: ("actor", "queue"), MetricType.WAIT_TIME: ("actor", "queue")}


def expected_rows(
    samples: list[tuple[MetricType, dict[str, str], float, dt.datetime]],
    start: dt.datetime,
    end: dt.datetime,
    metric_type: MetricType,
    group_by: tuple[str, ...],
) -> dict[tuple[tuple[str, str], ...], list[float]]:
    found: dict[tuple[tuple[str, str], ...], list[float]] = {}
    for sample_type, labels, value, recorded_at in samples:
        if sample_type is metric_type and start <= recorded_at < end:
            found.setdefault(tuple((key, labels[key]) for key in group_by if key in labels), []).append(value)
    return found


def assert_rows_match(
    data: dict[str, Any],
    samples: list[tuple[MetricType, dict[str, str], float, dt.datetime]],
    start: dt.datetime,
    end: dt.datetime,
) -> None:
    """Each JSON row holds exactly its group's count, sum, min and max and error rate; percentiles within 1%."""
    import numpy as np

    for metric_type, group_by in WINDOW_GROUPS.items():
        expected = expected_rows(samples, start, end, metric_type, group_by)
        errors = expected_rows(samples, start, end, MetricType.ERROR, ("actor", "queue"))
        rows = {tuple(row["labels"].items()): row for row in data["metrics"][metric_type.value]["rows"]}
        assert rows.keys() == expected.keys()
        for group, row in rows.items():
            values = np.array(expected[group])
            assert row["count"] == len(values), group
            assert row["sum"] == float(np.sum(values)), group
            assert (row["min"], row["max"]) == (float(values.min()), float(values.max())), group
            for name, exact in zip(
                ("p50", "p95", "p99"), np.percentile(values, [50, 95, 99], method="lower"), strict=True
            ):
                assert abs(row[name] - exact) <= 0.01 * exact, (group, name, row[name], exact)
            if metric_type is MetricType.PROCESSING_TIME:
                assert row["error_rate"] == len(errors.get(group, [])) / len(values), group
    error_rows = {tuple(row["labels"].items()): row["count"] for row in data["metrics"]["error"]["rows"]}
    wanted = expected_rows(samples, start, end, MetricType.ERROR, ("actor", "queue", "error_type", "outcome"))
    assert error_rows == {group: len(values) for group, values in wanted.items()}


def test_report_last_1h_json_counts_folded_and_unfolded_rows_exactly(
    engine: Engine, migrated_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    from raw_samples import insert_samples
    from series_samples import fleet_samples

    from dramatiq_opmetrics.recent_tier import fold

    now = dt.datetime.now(dt.UTC)
    # Inside the hour: the first 30 minutes folded into the tier, the rest (and late rows for folded minutes)
    # written after the fold. Outside it: two hours ago, and a few minutes before the hour.
    folded = fleet_samples(now - dt.timedelta(minutes=55), 30, seed=11, per_minute=12)
    outside = fleet_samples(now - dt.timedelta(hours=3), 60, seed=12, per_minute=12)
    outside += fleet_samples(now - dt.timedelta(minutes=66), 4, seed=13, per_minute=12)
    insert_samples(engine, folded + outside)
    assert fold(engine).rows == len(folded + outside)
    unfolded = fleet_samples(now - dt.timedelta(minutes=25), 20, seed=14, per_minute=12)
    late = fleet_samples(now - dt.timedelta(minutes=50), 10, seed=15, per_minute=3)
    insert_samples(engine, unfolded + late)

    data = report_json(migrated_url, "--last", "1h", capsys=capsys)
    start, end = dt.datetime.fromisoformat(data["since"]), dt.datetime.fromisoformat(data["until"])
    assert end - start == dt.timedelta(hours=1) and now <= end < now + dt.timedelta(minutes=1)
    assert (data["window_s"], data["missing_before"]) == (3600.0, None)
    assert_rows_match(data, folded + outside + unfolded + late, start, end)
    assert main(["report", "--database-url", url_text(migrated_url), "--last", "1h"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].endswith("(UTC, 1h)") and max(len(line) for line in text.splitlines()) <= 80


def test_report_since_and_until_as_datetimes_cover_that_window(
    engine: Engine, migrated_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    from raw_samples import insert_samples
    from series_samples import fleet_samples

    from dramatiq_opmetrics.recent_tier import fold

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    samples = fleet_samples(now - dt.timedelta(minutes=90), 80, seed=21, per_minute=10)
    insert_samples(engine, samples[: len(samples) // 2])
    fold(engine)
    insert_samples(engine, samples[len(samples) // 2 :])
    start, end = now - dt.timedelta(minutes=70, seconds=30), now - dt.timedelta(minutes=20, seconds=15)
    plus_two = dt.timezone(dt.timedelta(hours=2))
    since = start.astimezone(plus_two).isoformat()  # an offset
    until = end.replace(tzinfo=None).isoformat()  # naive: UTC
    data = report_json(migrated_url, "--since", since, "--until", until, capsys=capsys)
    assert (data["since"], data["until"]) == (start.isoformat(), end.isoformat())
    assert data["window_s"] == (end - start).total_seconds()
    assert_rows_match(data, samples, start, end)


def test_a_window_from_midnight_to_midnight_is_read_from_the_daily_rows(
    today: dt.date, fleet: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    by_days = report_json(fleet, "--days", "3", capsys=capsys)
    since = f"{today - dt.timedelta(days=2)}T00:00:00+00:00"
    until = f"{today + dt.timedelta(days=1)}T00:00:00"
    by_window = report_json(fleet, "--since", since, "--until", until, capsys=capsys)
    assert (by_window["since"], by_window["window_s"]) == (since, 3 * 86_400)
    assert by_window["metrics"] == by_days["metrics"]


def test_a_window_reaching_back_past_pruned_raw_rows_says_from_when_it_is_complete(
    today: dt.date, engine: Engine, migrated_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    from dramatiq_opmetrics.retention import prune

    record_fleet_day(engine, today - dt.timedelta(days=40), [10.0, 20.0])
    rollup(engine)
    prune(engine, retention_days=30)
    now = dt.datetime.now(dt.UTC)
    with Session(engine) as session, session.begin():
        for duration_ms in (90.0, 100.0):
            MetricsCollector(session).record_processing_time("send_email", duration_ms, queue="emails", recorded_at=now)
    data = report_json(migrated_url, "--last", "45d", capsys=capsys)
    midnight = dt.datetime.combine(now.date(), dt.time(), tzinfo=dt.UTC)
    assert data["missing_before"] == midnight.isoformat()
    [processing] = data["metrics"]["processing_time"]["rows"]
    assert processing["count"] == 2  # today's raw rows; the pruned day is in the daily rows only
    assert main(["report", "--database-url", url_text(migrated_url), "--last", "45d"]) == 0
    assert f"Raw rows before {now.date()} 00:00:00 UTC were pruned" in capsys.readouterr().out
    assert report_json(migrated_url, "--last", "1h", capsys=capsys)["missing_before"] is None

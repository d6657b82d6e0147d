"""The demo, run for real: on SQLite with the StubBroker, and on PostgreSQL with Redis."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import redis
from command_line import BIN, run_command
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from dramatiq_opmetrics.cli import main
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.demo import (
    DEFAULT_DEMO_DATABASE,
    DEFAULT_WORKER_THREADS,
    PROFILES,
    STUCK_FOR,
    STUCK_MESSAGES,
    STUCK_QUEUE,
    run_demo,
)
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.models import (
    AlertDelivery,
    AlertState,
    LabelSet,
    OperationalMetric,
    OperationalMetricDaily,
    RecentAggregate,
)
from tests.conftest import REDIS_URL

SUMMARY = re.compile(
    r"(\d+) of (\d+) messages finished \((\d+) succeeded, (\d+) attempts retried, (\d+) dead-lettered\) in"
)


def check_demo_data(url: URL, lines: list[str]) -> None:
    """The database holds what the demo said it did: every live attempt, and six rolled-up past days."""
    finished, total, succeeded, retried, dead = map(int, SUMMARY.search("\n".join(lines)).groups())  # type: ignore[union-attr]
    assert finished == total == 300
    today = dt.datetime.now(dt.UTC).date()
    start = dt.datetime.combine(today, dt.time(), tzinfo=dt.UTC)
    engine = make_engine(url)
    with engine.connect() as connection:
        today_counts = dict(
            connection.execute(
                select(OperationalMetric.metric_type, func.count())
                .where(OperationalMetric.recorded_at >= start)
                .group_by(OperationalMetric.metric_type)
            ).all()
        )
        final_errors = connection.execute(
            select(func.count())
            .select_from(OperationalMetric)
            .join(LabelSet, LabelSet.id == OperationalMetric.label_set_id)
            .where(OperationalMetric.recorded_at >= start, LabelSet.labels_key.contains("outcome:final"))
        ).scalar_one()
        models = set(
            connection.execute(
                select(LabelSet.labels_key)
                .join(OperationalMetric, LabelSet.id == OperationalMetric.label_set_id)
                .where(OperationalMetric.recorded_at >= start, OperationalMetric.metric_type == "prompt_tokens")
            ).scalars()
        )
        rolled_up_days = connection.execute(select(func.count(func.distinct(OperationalMetricDaily.date)))).scalar_one()
        # The history ends before today: today's buckets can only come from the live run's worker, which folds
        # whole minutes (the live run's last minute, in progress, is read from raw rows), each row once.
        folded_today = connection.execute(
            select(func.coalesce(func.sum(RecentAggregate.count), 0)).where(
                RecentAggregate.width_minutes == 1,
                RecentAggregate.bucket_start >= start,
                RecentAggregate.metric_type == MetricType.PROCESSING_TIME,
            )
        ).scalar_one()
    engine.dispose()
    # Every attempt of today's live run was measured and written by the middleware before the worker stopped.
    attempts = succeeded + retried + dead
    assert today_counts["processing_time"] == today_counts["wait_time"] == attempts
    assert today_counts["error"] == retried + dead
    assert final_errors == dead
    assert today_counts["queue_depth"] > 0
    assert today_counts["oldest_message_age"] > 0
    assert today_counts["worker_threads"] == today_counts["busy_threads"] > 0
    assert today_counts["prompt_tokens"] == today_counts["completion_tokens"] == today_counts["confidence"] > 0
    assert {key.split("model:")[1].split("|")[0] for key in models} == {"gpt-4o-mini", "claude-3-5-haiku"}
    assert rolled_up_days == 6
    assert 0 <= folded_today <= attempts


def check_alerting(url: URL, lines: list[str]) -> None:
    """The alerting step: crm-errors fired at the end of the CRM incident's day and resolved a day later,
    exports-waiting fires now; the webhook received exactly those three notifications, and the database
    holds the same states with nothing left to deliver."""
    start = lines.index(next(line for line in lines if line.startswith("[6/6] Alerting")))
    section = lines[start : lines.index(next(line for line in lines if line.startswith("Done in")))]
    incident_end = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=2)  # the day after the incident, 00:00
    changes = [line.split(None, 2)[2] for line in section if re.match(r"\s+\d{4}-\d\d-\d\d \d\d:\d\d \S", line)]
    assert [change.split(" (")[0] for change in changes] == [
        "crm-errors: ok -> firing",
        "crm-errors: firing -> ok",
        "exports-waiting queue=exports: ok -> firing",
    ]
    assert any(line.strip().startswith(f"{incident_end} 00:00 crm-errors: ok -> firing") for line in section)
    resolved_at = incident_end + dt.timedelta(days=1)
    assert any(line.strip().startswith(f"{resolved_at} 00:00 crm-errors: firing -> ok") for line in section)
    received = section.index(
        next(line for line in section if line.strip().startswith("Received by the demo's webhook json://127.0.0.1:"))
    )
    titles = [line.strip() for line in section[received + 1 : received + 4]]
    assert [title.split(":")[0] for title in titles] == [
        "[FIRING] crm-errors (critical)",
        "[RESOLVED] crm-errors (critical)",
        "[FIRING] exports-waiting (warning) queue=exports",
    ]
    assert section[received + 4].strip() == "(Dashboard: http://127.0.0.1:8070/alerts?rule=crm-errors)"
    engine = make_engine(url)
    with engine.connect() as connection:
        states = dict(connection.execute(select(AlertState.rule, AlertState.state)).all())
        deliveries = connection.execute(select(AlertDelivery.delivered_at.is_not(None))).scalars().all()
    engine.dispose()
    assert states == {"crm-errors": "ok", "exports-waiting": "firing"}
    assert deliveries == [True, True, True]


def check_report(printed: list[str]) -> None:
    text = "\n".join(printed)
    lines = text.splitlines()
    titles = ("processing time", "wait time", "errors", "queue depth", "confidence", "token usage")
    for title in (*titles, "oldest-message age", "workers"):
        assert any(line.startswith(title) for line in lines), title
    for profile in PROFILES:
        assert profile.actor in text
    start = lines.index(next(line for line in lines if line.startswith("dramatiq-opmetrics report:")))
    end = lines.index(next(line for line in lines if line.startswith("Done in")))
    assert max(len(line) for line in lines[start:end]) <= 80
    check_last_hour(lines[start:end])


def table(lines: list[str], title: str) -> list[list[str]]:
    """The rows (split into cells) of the table under the line starting with ``title``, header left out."""
    first = next(index for index, line in enumerate(lines) if line.startswith(title)) + 2
    rows = []
    for line in lines[first:]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def check_last_hour(lines: list[str]) -> None:
    """The "last hour" section: every actor of the live run, the stuck queue stalled with its age, one worker."""
    start = next(index for index, line in enumerate(lines) if line.startswith("last hour: "))
    section = lines[start:]
    assert section[1].startswith("from the recent tier (")
    summary = SUMMARY.search("\n".join(lines[:start]))
    attempts = {row[0]: int(row[2].replace(",", "")) for row in table(section, "actors (")}
    assert attempts.keys() == {profile.actor for profile in PROFILES}
    if summary is not None:  # the live run's attempts are all within the hour (and maybe a previous run's)
        _, _, succeeded, retried, dead = map(int, summary.groups())
        assert sum(attempts.values()) >= succeeded + retried + dead
    queues = {row[0]: row[1:] for row in table(section, "queues (")}
    assert queues.keys() == {profile.queue for profile in PROFILES} | {STUCK_QUEUE}
    ready, oldest_s, *stalled = queues[STUCK_QUEUE]
    assert int(ready) == STUCK_MESSAGES
    assert float(oldest_s.replace(",", "")) >= STUCK_FOR.total_seconds()
    assert stalled[0] != "-" and int(stalled[0]) >= 1 and stalled[1:3] == ["of", stalled[2]]
    [worker] = table(section, "workers (online =")
    _host, _queues, online, threads, _utilisation = worker
    assert round(float(online)) == 1
    assert float(threads) == DEFAULT_WORKER_THREADS


def test_demo_runs_on_sqlite_and_a_stub_broker_and_prints_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPMETRICS_DEMO_DATABASE_URL", raising=False)
    monkeypatch.delenv("OPMETRICS_DEMO_BROKER_URL", raising=False)
    lines: list[str] = []
    assert run_demo(out=lines.append) == 0
    path = tmp_path / DEFAULT_DEMO_DATABASE
    assert "an in-process StubBroker" in lines[0]
    check_report(lines)
    check_demo_data(URL.create("sqlite", database=str(path)), lines)
    check_alerting(URL.create("sqlite", database=str(path)), lines)
    assert f"sqlite3 {path}" in "\n".join(lines)


def test_demo_starts_over_in_its_own_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPMETRICS_DEMO_DATABASE_URL", raising=False)
    monkeypatch.delenv("OPMETRICS_DEMO_BROKER_URL", raising=False)
    assert run_demo(history_days=1, live_messages=20, out=lambda line: None) == 0
    lines: list[str] = []
    assert run_demo(history_days=1, live_messages=20, out=lines.append) == 0
    engine = make_engine(URL.create("sqlite", database=str(tmp_path / DEFAULT_DEMO_DATABASE)))
    with engine.connect() as connection:
        live = connection.execute(
            select(func.count())
            .select_from(OperationalMetric)
            .where(
                OperationalMetric.metric_type == "processing_time",
                OperationalMetric.recorded_at
                >= dt.datetime.combine(dt.datetime.now(dt.UTC).date(), dt.time(), tzinfo=dt.UTC),
            )
        ).scalar_one()
    engine.dispose()
    _, _, succeeded, retried, dead = map(int, SUMMARY.search("\n".join(lines)).groups())  # type: ignore[union-attr]
    assert live == succeeded + retried + dead  # only the second run's attempts
    assert "(replacing the previous demo run)" in lines[2]


@pytest.mark.postgres
def test_demo_runs_on_postgresql_and_redis(
    postgres_url: URL, redis_namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[str] = []
    assert run_demo(postgres_url, REDIS_URL, namespace=redis_namespace, out=lines.append) == 0
    client = redis.Redis.from_url(REDIS_URL)
    leftover = list(client.scan_iter(match=f"{redis_namespace}:*"))
    client.close()
    assert "Redis at redis://" in lines[0]
    check_report(lines)
    check_demo_data(postgres_url, lines)
    check_alerting(postgres_url, lines)
    assert leftover == []


@pytest.mark.postgres
def test_demo_run_again_on_a_given_database_keeps_its_history(postgres_url: URL) -> None:
    assert run_demo(postgres_url, history_days=2, live_messages=20, out=lambda line: None) == 0
    lines: list[str] = []
    assert run_demo(postgres_url, history_days=2, live_messages=20, out=lines.append) == 0
    assert sum("has data already" in line for line in lines) == 2
    engine = make_engine(postgres_url)
    with engine.connect() as connection:
        days = connection.execute(
            select(OperationalMetricDaily.date, func.sum(OperationalMetricDaily.sample_count)).group_by(
                OperationalMetricDaily.date
            )
        ).all()
        raw = dict(
            connection.execute(
                select(func.date(OperationalMetric.recorded_at), func.count()).group_by(
                    func.date(OperationalMetric.recorded_at)
                )
            ).all()
        )
    engine.dispose()
    assert len(days) == 2
    assert all(raw[day] == total for day, total in days)


def test_demo_refuses_a_broker_that_is_not_redis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    assert main(["demo", "--database-url", url, "--broker-url", "amqp://guest:s3cret@127.0.0.1:5672/"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the demo runs on Redis" in err and "s3cret" not in err


@pytest.mark.slow
def test_the_demo_command_runs_with_no_services_configured(tmp_path: Path) -> None:
    environment = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = run_command([str(BIN / "dramatiq-opmetrics"), "demo"], cwd=tmp_path, env=environment, timeout_s=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "token usage" in result.stdout and "Done in" in result.stdout
    assert (tmp_path / DEFAULT_DEMO_DATABASE).is_file()


def test_demo_with_an_unreachable_broker_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    broker_url = "redis://:s3cret@127.0.0.1:1/0"
    assert main(["demo", "--database-url", url, "--broker-url", broker_url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the demo's Redis broker" in err and "s3cret" not in err
    assert not (tmp_path / "demo.sqlite3").exists()

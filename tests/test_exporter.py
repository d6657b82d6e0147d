"""The Prometheus exporter: Dramatiq's names and semantics, totals that never decrease, histograms within the
sketch's 1%, escaping, and the WSGI app's authentication and errors."""

from __future__ import annotations

import base64
import datetime as dt
import math
import random
from collections.abc import Iterable

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from raw_samples import at, insert_samples
from sqlalchemy import Engine
from werkzeug.test import Client

from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.exporter import (
    DURATION_BUCKETS_MS,
    ExporterApp,
    FleetCollector,
    create_exporter_app,
    prometheus_label_name,
)
from dramatiq_opmetrics.http_serving import Credentials
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.recent_tier import fold
from dramatiq_opmetrics.retention import prune
from dramatiq_opmetrics.rollup import rollup

TODAY = dt.date(2026, 11, 20)
NOW = dt.datetime(2026, 11, 20, 12, 0, 30, tzinfo=dt.UTC)
EMAILS = {"actor": "send_email", "queue": "emails"}

#: A scrape: per (sample name, labels) its value.
Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(collector: FleetCollector) -> Scrape:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return parse(generate_latest(registry).decode())


def parse(text: str) -> Scrape:
    found: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Scrape, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def counters(found: Scrape) -> Scrape:
    """The samples that must never decrease: counters and histogram buckets, counts and sums."""
    return {key: number for key, number in found.items() if key[0].endswith(("_total", "_bucket", "_count", "_sum"))}


def collector_at(engine: Engine, now: dt.datetime = NOW) -> FleetCollector:
    return FleetCollector(engine, clock=lambda: now, sampling_interval_s=15)


def messages(day: dt.date, count: int, *, seconds: float = 0.0, labels: dict[str, str] = EMAILS) -> Iterable:
    rng = random.Random(count)
    for index in range(count):
        recorded_at = at(day, seconds + index)
        yield MetricType.PROCESSING_TIME, labels, rng.lognormvariate(3.0, 1.0), recorded_at
        yield MetricType.WAIT_TIME, labels, rng.lognormvariate(2.0, 1.5), recorded_at


def failures(day: dt.date, outcome: str, count: int, error_type: str = "TimeoutError") -> Iterable:
    labels = {**EMAILS, "error_type": error_type, "outcome": outcome}
    return [(MetricType.ERROR, labels, 1.0, at(day, 100 + index)) for index in range(count)]


@pytest.mark.postgres
def test_dramatiq_counters_count_attempts_skips_errors_retries_and_rejects(engine: Engine) -> None:
    insert_samples(engine, messages(TODAY, 40))
    insert_samples(engine, [(MetricType.SKIPPED, EMAILS, 1.0, at(TODAY, 5))] * 3)
    insert_samples(engine, failures(TODAY, "retried", 7))
    insert_samples(engine, failures(TODAY, "final", 2, "ValueError"))
    found = scrape(collector_at(engine))
    dramatiq = {"queue_name": "emails", "actor_name": "send_email"}
    # Dramatiq counts a message when its processing ends (after_process_message and after_skip_message).
    assert value(found, "dramatiq_messages_total", **dramatiq) == 43
    assert value(found, "dramatiq_message_errors_total", **dramatiq) == 9
    assert value(found, "dramatiq_message_retries_total", **dramatiq) == 7
    assert value(found, "dramatiq_message_rejects_total", **dramatiq) == 2
    assert value(found, "dramatiq_message_duration_milliseconds_count", **dramatiq) == 40
    assert value(found, "dramatiq_message_duration_milliseconds_bucket", **dramatiq, le="+Inf") == 40
    assert value(found, "dramatiq_opmetrics_wait_time_milliseconds_count", **dramatiq) == 40
    assert value(found, "dramatiq_opmetrics_skipped_messages_total", **dramatiq) == 3
    by_type = {**dramatiq, "error_type": "ValueError", "outcome": "final"}
    assert value(found, "dramatiq_opmetrics_errors_total", **by_type) == 2
    assert value(found, "dramatiq_opmetrics_days_not_rolled_up") == 1


@pytest.mark.postgres
def test_token_usage_and_dropped_samples_are_summed(engine: Engine) -> None:
    llm = {"actor": "summarise", "queue": "llm", "model": "gpt-4o-mini"}
    insert_samples(engine, [(MetricType.PROMPT_TOKENS, llm, 1000.0, at(TODAY, 1))])
    insert_samples(engine, [(MetricType.PROMPT_TOKENS, llm, 234.0, at(TODAY, 2))])
    insert_samples(engine, [(MetricType.COMPLETION_TOKENS, llm, 77.0, at(TODAY, 1))])
    insert_samples(engine, [(MetricType.DROPPED_SAMPLES, {"host": "w1"}, 12.0, at(TODAY, 3))])
    found = scrape(collector_at(engine))
    labels = {"actor_name": "summarise", "queue_name": "llm", "model": "gpt-4o-mini"}
    assert value(found, "dramatiq_opmetrics_tokens_total", **labels, kind="prompt") == 1234
    assert value(found, "dramatiq_opmetrics_tokens_total", **labels, kind="completion") == 77
    assert value(found, "dramatiq_opmetrics_dropped_samples_total", host="w1") == 12


@pytest.mark.postgres
def test_counters_never_decrease_across_the_fold_the_rollup_the_prune_and_a_restart(engine: Engine) -> None:
    days = [TODAY - dt.timedelta(days=back) for back in (40, 2, 1, 0)]
    for index, day in enumerate(days):
        insert_samples(engine, messages(day, 30 + index))
        insert_samples(engine, failures(day, "retried", 1 + index))
    collector = collector_at(engine)
    before = counters(scrape(collector))
    assert value(before, "dramatiq_messages_total", queue_name="emails", actor_name="send_email") == 30 + 31 + 32 + 33
    steps = {
        "fold": lambda: fold(engine, now=NOW),
        "rollup": lambda: rollup(engine, now=NOW),
        "prune": lambda: prune(engine, retention_days=30, now=NOW),
    }
    for step, run in steps.items():
        run()
        assert counters(scrape(collector)) == before, step
    assert scrape(collector)[("dramatiq_opmetrics_days_not_rolled_up", frozenset())] == 1
    # A restart of the exporter (nothing kept), and a second exporter beside it, serve the same values.
    assert counters(scrape(collector_at(engine))) == before
    # More samples: every total grows or stays.
    insert_samples(engine, messages(TODAY, 5, seconds=3000))
    after = counters(scrape(collector))
    assert all(after[key] >= number for key, number in before.items())
    dramatiq = frozenset({"queue_name": "emails", "actor_name": "send_email"}.items())
    assert after[("dramatiq_messages_total", dramatiq)] == before[("dramatiq_messages_total", dramatiq)] + 5


@pytest.mark.postgres
def test_a_day_rolled_up_again_for_late_rows_is_read_again(engine: Engine) -> None:
    yesterday = TODAY - dt.timedelta(days=1)
    insert_samples(engine, messages(yesterday, 20))
    rollup(engine, now=NOW)
    collector = collector_at(engine)
    dramatiq = {"queue_name": "emails", "actor_name": "send_email"}
    assert value(scrape(collector), "dramatiq_messages_total", **dramatiq) == 20
    insert_samples(engine, messages(yesterday, 4, seconds=5000))  # late rows of a rolled-up day
    assert value(scrape(collector), "dramatiq_messages_total", **dramatiq) == 20  # counted at the next rollup
    rollup(engine, now=NOW)
    assert value(scrape(collector), "dramatiq_messages_total", **dramatiq) == 24


@pytest.mark.postgres
def test_histogram_buckets_are_within_the_sketch_resolution_of_exact_and_the_same_from_every_tier(
    engine: Engine,
) -> None:
    rng = random.Random(13)
    values = [rng.lognormvariate(4.0, 1.6) for _ in range(3000)]
    # Values right at Dramatiq's bounds, and just beside them, where a bucket of 1% width straddles a bound.
    values += [bound * factor for bound in DURATION_BUCKETS_MS for factor in (0.995, 1.0, 1.005)]
    yesterday = TODAY - dt.timedelta(days=1)
    rows = [
        (MetricType.PROCESSING_TIME, EMAILS, number, at(yesterday, 20 * index)) for index, number in enumerate(values)
    ]
    insert_samples(engine, rows)
    dramatiq = {"queue_name": "emails", "actor_name": "send_email"}
    name = "dramatiq_message_duration_milliseconds"
    readings = []
    for step in ("raw", "fold", "rollup"):
        if step == "fold":
            fold(engine, now=NOW)
        elif step == "rollup":
            rollup(engine, now=NOW)
        found = scrape(collector_at(engine))
        readings.append({key: number for key, number in found.items() if key[0].startswith(name)})
    assert readings[0] == readings[1] == readings[2]
    found = readings[0]
    for bound in DURATION_BUCKETS_MS:
        counted = value(found, f"{name}_bucket", **dramatiq, le=str(float(bound)))
        # Every value up to bound / 1.01 is counted, none above bound / 0.99.
        at_least = sum(number <= bound / 1.01 for number in values)
        assert at_least <= counted <= sum(number <= bound / 0.99 for number in values)
    assert value(found, f"{name}_bucket", **dramatiq, le="+Inf") == len(values)
    assert value(found, f"{name}_count", **dramatiq) == len(values)
    assert math.isclose(value(found, f"{name}_sum", **dramatiq), math.fsum(values), rel_tol=0.01)


@pytest.mark.postgres
def test_labels_with_html_quotes_and_backslashes_are_escaped_as_the_format_requires(engine: Engine) -> None:
    hostile = {"actor": 'x<script>alert("1")</script>\\', "queue": "q\"'\n", "odd.key-name": "v"}
    insert_samples(engine, [(MetricType.ERROR, {**hostile, "error_type": "E", "outcome": "final"}, 1.0, at(TODAY, 1))])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector_at(engine))
    text = generate_latest(registry).decode()
    line = next(line for line in text.splitlines() if line.startswith("dramatiq_message_rejects_total{"))
    assert 'actor_name="x<script>alert(\\"1\\")</script>\\\\"' in line
    assert 'queue_name="q\\"\'\\n"' in line
    found = parse(text)
    assert value(found, "dramatiq_message_rejects_total", queue_name=hostile["queue"], actor_name=hostile["actor"]) == 1
    by_type = {"actor_name": hostile["actor"], "queue_name": hostile["queue"], "odd_key_name": "v"}
    assert value(found, "dramatiq_opmetrics_errors_total", **by_type, error_type="E", outcome="final") == 1


def test_label_keys_become_prometheus_label_names() -> None:
    assert prometheus_label_name("actor") == "actor_name"
    assert prometheus_label_name("queue") == "queue_name"
    assert prometheus_label_name("document.kind-x") == "document_kind_x"
    assert prometheus_label_name("__secret") == "_secret"
    assert prometheus_label_name("9lives") == "_9lives"


@pytest.mark.postgres
def test_gauges_and_alert_states_are_served(engine: Engine) -> None:
    from dramatiq_opmetrics.models import AlertState

    recent = NOW - dt.timedelta(seconds=10)
    insert_samples(
        engine,
        [
            (MetricType.QUEUE_DEPTH, {"queue": "emails", "state": "ready"}, 42.0, recent),
            (MetricType.OLDEST_MESSAGE_AGE, {"queue": "emails"}, 310.0, recent),
            (MetricType.WORKER_THREADS, {"host": "w1", "queues": "emails"}, 8.0, recent),
            (MetricType.WORKER_THREADS, {"host": "w1", "queues": "emails"}, 8.0, recent - dt.timedelta(seconds=15)),
            (MetricType.BUSY_THREADS, {"host": "w1", "queues": "emails"}, 3.0, recent),
            (MetricType.BUSY_THREADS, {"host": "w1", "queues": "emails"}, 5.0, recent - dt.timedelta(seconds=15)),
        ],
    )
    with engine.begin() as connection:
        connection.execute(
            AlertState.__table__.insert(),
            [{"rule": "crm-errors", "group_key": "", "group_labels": {}, "state": "firing", "since": recent,
              "value": 0.8, "evaluated_at": recent}],
        )  # fmt: skip
    found = scrape(collector_at(engine))
    assert value(found, "dramatiq_opmetrics_queue_depth_messages", queue_name="emails", state="ready") == 42
    assert value(found, "dramatiq_opmetrics_oldest_message_age_seconds", queue_name="emails") == 310
    assert value(found, "dramatiq_opmetrics_workers", host="w1") == 1
    assert value(found, "dramatiq_opmetrics_worker_threads", host="w1") == 8
    assert value(found, "dramatiq_opmetrics_busy_threads", host="w1") == 4
    assert value(found, "dramatiq_opmetrics_alert_state", rule="crm-errors", group="", state="firing") == 1
    ok = frozenset({"rule": "crm-errors", "group": "", "state": "ok"}.items())
    assert found[("dramatiq_opmetrics_alert_state", ok)] == 0
    assert value(found, "dramatiq_opmetrics_alert_value", rule="crm-errors", group="") == 0.8


@pytest.mark.postgres
def test_the_app_serves_metrics_and_requires_its_credentials(engine: Engine) -> None:
    insert_samples(engine, messages(TODAY, 3))
    client = Client(ExporterApp(collector_at(engine), credentials=Credentials("s3cret", ("ops", "pw"))))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "dramatiq_messages_total" in response.get_data(as_text=True)
    basic = base64.b64encode(b"ops:pw").decode()
    assert client.get("/metrics", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    openmetrics = client.get(
        "/metrics", headers={"Authorization": "Bearer s3cret", "Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.get_data(as_text=True).endswith("# EOF\n")
    assert client.get("/other", headers={"Authorization": "Bearer s3cret"}).status_code == 404


def test_a_database_that_cannot_be_read_is_a_503_in_one_line(tmp_path: object) -> None:
    app = create_exporter_app("postgresql+psycopg://postgres@127.0.0.1:1/nothing?connect_timeout=1")
    response = Client(app).get("/metrics")
    assert response.status_code == 503
    assert response.get_data(as_text=True).count("\n") == 1
    app.collector.engine.dispose()


@pytest.mark.postgres
def test_the_dashboard_serves_the_same_metrics(engine: Engine) -> None:
    from dramatiq_opmetrics.dashboard import create_app

    insert_samples(engine, messages(TODAY, 3))
    dashboard = Client(create_app(engine=engine, bearer_token="t"))
    assert dashboard.get("/metrics").status_code == 401
    response = dashboard.get("/metrics", headers={"Authorization": "Bearer t"})
    assert response.status_code == 200
    found = parse(response.get_data(as_text=True))
    assert value(found, "dramatiq_messages_total", queue_name="emails", actor_name="send_email") == 3


def test_make_engine_is_used_for_a_url(sqlite_url: object) -> None:
    engine = make_engine(sqlite_url)  # type: ignore[arg-type]
    try:
        assert create_exporter_app(engine=engine).collector.engine is engine
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_scrapes_between_folds_count_every_raw_row_once(engine: Engine) -> None:
    collector = collector_at(engine)
    dramatiq = {"queue_name": "emails", "actor_name": "send_email"}
    sent = 0
    # Minutes of messages folded one after another (the tier builds its 10-minute and hourly buckets on the
    # way), each scrape reading the new buckets and the rows not folded yet.
    for minute in range(0, 75, 5):
        insert_samples(engine, messages(TODAY, 7, seconds=minute * 60 + 1))
        sent += 7
        assert value(scrape(collector), "dramatiq_messages_total", **dramatiq) == sent
        fold(engine, now=at(TODAY, minute * 60 + 65))
        found = scrape(collector)
        assert value(found, "dramatiq_messages_total", **dramatiq) == sent
        assert value(found, "dramatiq_message_duration_milliseconds_bucket", **dramatiq, le="+Inf") == sent
    assert counters(scrape(collector)) == counters(scrape(collector_at(engine)))


def test_the_exporter_command_refuses_a_public_interface_in_one_line(
    sqlite_url: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from command_line import url_text

    from dramatiq_opmetrics.cli import main

    monkeypatch.delenv("OPMETRICS_DASHBOARD_TOKEN", raising=False)
    monkeypatch.delenv("OPMETRICS_DASHBOARD_USER", raising=False)
    monkeypatch.delenv("OPMETRICS_DASHBOARD_PASSWORD", raising=False)
    url = url_text(sqlite_url)  # type: ignore[arg-type]
    assert main(["exporter", "--database-url", url, "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "the exporter binds '0.0.0.0'" in err and "--allow-remote" in err
    assert main(["exporter", "--database-url", url, "--host", "0.0.0.0", "--allow-remote"]) == 2
    assert "without authentication" in capsys.readouterr().err


@pytest.mark.postgres
def test_scrapes_are_byte_for_byte_what_prometheus_client_writes_for_the_collector_in_both_formats(
    engine: Engine,
) -> None:
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    collector = collector_at(engine)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    openmetrics = "application/openmetrics-text; version=1.0.0"
    other = {"actor": "resize", "queue": "images"}
    insert_samples(engine, messages(TODAY, 5))
    insert_samples(engine, failures(TODAY, "retried", 2))
    # Series kept from the scrape before, changed ones (new rows, a fold, a new label set), both formats.
    for step in range(4):
        if step == 1:
            insert_samples(engine, messages(TODAY, 3, seconds=100))
        if step == 2:
            fold(engine, now=NOW)
            insert_samples(engine, messages(TODAY, 2, seconds=200, labels=other))
        for accept, encode in (("", generate_latest), (openmetrics, generate_openmetrics)):
            body, content_type = collector.exposition(accept)
            assert body == encode(registry), (step, accept)
            assert ("openmetrics" in content_type) == bool(accept)
    found = parse(collector.exposition()[0].decode())
    assert value(found, "dramatiq_messages_total", queue_name="emails", actor_name="send_email") == 8
    assert value(found, "dramatiq_message_duration_milliseconds_count", queue_name="images", actor_name="resize") == 2


@pytest.mark.parametrize("command", ["dashboard", "exporter"])
def test_a_user_name_without_a_password_is_refused_in_one_line_by_both_serving_commands(
    command: str, sqlite_url: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from command_line import url_text

    from dramatiq_opmetrics.cli import main

    monkeypatch.delenv("OPMETRICS_DASHBOARD_TOKEN", raising=False)
    monkeypatch.delenv("OPMETRICS_DASHBOARD_PASSWORD", raising=False)
    monkeypatch.setenv("OPMETRICS_DASHBOARD_USER", "ops")
    assert main([command, "--database-url", url_text(sqlite_url)]) == 2  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "set both OPMETRICS_DASHBOARD_USER and OPMETRICS_DASHBOARD_PASSWORD, or neither" in err

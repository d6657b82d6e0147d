"""The Alerts page and the banner of firing alerts, on PostgreSQL and SQLite, over states the evaluator wrote
(``evaluate`` with a clock the tests control, its silences and its delivery pass)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.engine import URL
from werkzeug.test import Client

from dramatiq_opmetrics import samples
from dramatiq_opmetrics.alert_delivery import deliver_due, enqueue
from dramatiq_opmetrics.alert_evaluator import evaluate
from dramatiq_opmetrics.alert_rules import Notifier, Rule, RuleSet
from dramatiq_opmetrics.alert_silences import add_silence
from dramatiq_opmetrics.cli import main
from dramatiq_opmetrics.dashboard import DashboardApp, create_app
from dramatiq_opmetrics.dashboard.data import DashboardData
from dramatiq_opmetrics.dashboard.pages.alerts import ALERTS_HISTORY_LIMIT, BANNER_ALERTS, NOTIFICATIONS_SCANNED
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.migrate import upgrade
from dramatiq_opmetrics.models import AlertTransition
from dramatiq_opmetrics.notifiers import Notification
from dramatiq_opmetrics.recent_tier import bucket_floor
from dramatiq_opmetrics.writer import write_samples

MINUTE = dt.timedelta(minutes=1)
#: The test clock's start: a whole minute an hour ago (the raw rows are well inside the retention).
T0 = bucket_floor(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), 1)
#: An actor whose name is HTML: the banner and the page must show it as text.
HTML_ACTOR = "<b>x</b>"
#: A target nothing listens on: its deliveries fail and stay in the outbox.
DOWN_TARGET = "json://127.0.0.1:9/hook"
#: Every page that shows the banner.
PAGES = ["/", "/queues", "/tokens", "/confidence", "/now", "/alerts", "/actor?actor=crm"]


def error_rule(**changes: object) -> Rule:
    """Errors of any actor of queue ``crm``, per actor: above 50% over 5 minutes, at once, critical."""
    base = Rule(
        name="crm-errors",
        metric="error_rate",
        above=0.5,
        below=None,
        window=5 * MINUTE,
        for_=dt.timedelta(0),
        notify=("ops",),
        labels={"queue": "crm"},
        group_by=("actor",),
        severity="critical",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def rules(*found: Rule, targets: tuple[str, ...] = (DOWN_TARGET,)) -> RuleSet:
    return RuleSet(rules=found, notifiers={"ops": Notifier("ops", targets)}, source="alerts.toml")


def messages(engine: Engine, start: dt.datetime, end: dt.datetime, *, actor: str, failing: bool) -> None:
    """One message of ``actor`` on queue ``crm`` every 20 seconds in ``[start, end)``, failing or not."""
    found: list[samples.Sample] = []
    at = start
    while at < end:
        found += samples.processing_time(actor, 10.0, queue="crm", recorded_at=at)
        if failing:
            found += samples.error(actor, "ValueError", queue="crm", recorded_at=at, outcome="final")
        at += dt.timedelta(seconds=20)
    with engine.begin() as connection:
        write_samples(connection, found)


def client(engine: Engine, now: dt.datetime, ruleset: RuleSet | None = None) -> Client:
    return Client(DashboardApp(DashboardData(engine, clock=lambda: now, alert_rules=ruleset)))


def html_of(test_client: Client, page: str) -> str:
    response = test_client.get(page)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


def banner_of(html: str) -> str | None:
    """The banner's HTML, or None if the page has none; a hidden banner is returned as it is."""
    found = re.search(r'<section id="alerts-banner".*?</section>', html, re.S)
    return found[0] if found else None


@pytest.fixture
def firing(engine: Engine) -> Iterator[tuple[Engine, RuleSet]]:
    """``crm-errors`` firing for the HTML-named actor since T0, ``ok`` for ``steady``; its firing notification
    failed once to reach a target that is down."""
    messages(engine, T0 - 10 * MINUTE, T0 + 10 * MINUTE, actor=HTML_ACTOR, failing=True)
    messages(engine, T0 - 10 * MINUTE, T0 + 10 * MINUTE, actor="steady", failing=False)
    ruleset = rules(error_rule())
    evaluate(engine, ruleset, T0)
    deliver_due(engine, T0)
    yield engine, ruleset


def test_a_firing_alert_shows_in_the_banner_of_every_page_with_its_rule_labels_since_value_and_severity(
    firing: tuple[Engine, RuleSet],
) -> None:
    engine, ruleset = firing
    test_client = client(engine, T0 + 2 * MINUTE, ruleset)
    for page in PAGES:
        banner = banner_of(html_of(test_client, page))
        assert banner is not None, page
        assert " hidden" not in banner.split(">")[0], page
        assert "1 alert firing" in banner
        assert banner.count("<li ") == 1
        assert '<span class="severity">critical</span>' in banner
        assert '<span class="rule">crm-errors</span>' in banner
        assert f"actor={HTML_ACTOR}".replace("<", "&lt;").replace(">", "&gt;") in banner
        assert HTML_ACTOR not in banner, "a label with HTML is escaped"
        assert f"since {T0:%Y-%m-%d %H:%M:%S} UTC" in banner
        assert "value 1<" in banner
        assert 'href="/alerts?rule=crm-errors"' in banner


def test_the_alerts_page_shows_each_alerts_state_since_value_and_condition(firing: tuple[Engine, RuleSet]) -> None:
    engine, ruleset = firing
    html = html_of(client(engine, T0 + 2 * MINUTE, ruleset), "/alerts")
    states = re.findall(r'<tr data-rule="crm-errors" data-state="(\w+)">', html)
    assert states == ["firing", "ok"], "firing first"
    row = re.search(r'<tr data-rule="crm-errors" data-state="firing">(.*?)</tr>', html, re.S)[1]  # type: ignore[index]
    assert "&lt;b&gt;x&lt;/b&gt;" in row and "<b>" not in row
    assert f"{T0:%Y-%m-%d %H:%M:%S}" in row and "(2.0 min)" in row
    assert "above 0.5" in row and "critical" in row
    assert "crm-errors: error_rate is 100.0%" in row, "the rule's summary, rendered"
    assert re.search(r'data-count="firing">1<', html) and re.search(r'data-count="ok">1<', html)
    assert "Severities, conditions and summaries from alerts.toml" in html


def test_the_alerts_page_lists_undelivered_notifications_with_their_last_error(firing: tuple[Engine, RuleSet]) -> None:
    engine, ruleset = firing
    html = html_of(client(engine, T0 + 2 * MINUTE, ruleset), "/alerts")
    deliveries = re.search(r'<table class="totals" id="alerts-deliveries">(.*?)</table>', html, re.S)[1]  # type: ignore[index]
    assert deliveries.count('<tr data-status="failing">') == 1
    assert "firing" in deliveries and "json://127.0.0.1:9/hook" in deliveries
    assert "crm-errors{actor=&lt;b&gt;x&lt;/b&gt;}" in deliveries


def test_the_history_is_newest_first_and_bounded(engine: Engine) -> None:
    ruleset = rules(error_rule())
    # Failing and recovering every 5 minutes: a transition at each evaluation below.
    for step in range(0, 2 * ALERTS_HISTORY_LIMIT // 2 + 10):
        start = T0 - 10 * MINUTE + step * 5 * MINUTE
        messages(engine, start, start + 5 * MINUTE, actor="flaky", failing=step % 2 == 0)
    evaluations = ALERTS_HISTORY_LIMIT + 6
    for step in range(evaluations):
        evaluate(engine, ruleset, T0 - 5 * MINUTE + step * 5 * MINUTE)
    with engine.connect() as connection:
        stored = connection.execute(select(AlertTransition.id)).all()
    assert len(stored) > ALERTS_HISTORY_LIMIT
    now = T0 + evaluations * 5 * MINUTE
    history = json.loads(client(engine, now, ruleset).get("/alerts.json").get_data(as_text=True))["history"]
    assert len(history) == ALERTS_HISTORY_LIMIT
    assert [change["at"] for change in history] == sorted((change["at"] for change in history), reverse=True)
    assert {(change["from_state"], change["to_state"]) for change in history} == {("ok", "firing"), ("firing", "ok")}


def test_a_silence_shows_on_the_alert_and_in_the_silences(firing: tuple[Engine, RuleSet]) -> None:
    engine, ruleset = firing
    silence = add_silence(engine, "crm-errors", dt.timedelta(hours=2), reason="CRM <maintenance>", now=T0)
    html = html_of(client(engine, T0 + 2 * MINUTE, ruleset), "/alerts")
    silences = re.search(r'<table class="totals" id="alerts-silences">(.*?)</table>', html, re.S)[1]  # type: ignore[index]
    assert f"{silence.until:%Y-%m-%d %H:%M:%S}" in silences
    assert "CRM &lt;maintenance&gt;" in silences
    row = re.search(r'<tr data-rule="crm-errors" data-state="firing">(.*?)</tr>', html, re.S)[1]  # type: ignore[index]
    assert f"{silence.until:%Y-%m-%d %H:%M:%S}" in row


def test_the_rule_filter_narrows_the_page_to_one_rule(firing: tuple[Engine, RuleSet]) -> None:
    engine, ruleset = firing
    other = error_rule(name="slow", metric="processing_time", statistic="max", above=1.0, group_by=())
    evaluate(engine, rules(error_rule(), other), T0 + MINUTE)
    view = json.loads(client(engine, T0 + 2 * MINUTE, ruleset).get("/alerts.json?rule=slow").get_data(as_text=True))
    assert {alert["rule"] for alert in view["alerts"]} == {"slow"}
    assert {change["rule"] for change in view["history"]} == {"slow"}
    assert [(delivery["alert"], delivery["status"]) for delivery in view["deliveries"]] == [("slow{}", "waiting")]
    html = html_of(client(engine, T0 + 2 * MINUTE, ruleset), "/alerts?rule=slow")
    assert "<h1>Alerts of slow</h1>" in html


def test_the_banner_names_the_most_severe_alerts_first_and_counts_the_rest(engine: Engine) -> None:
    names = [f"errors-{index}" for index in range(BANNER_ALERTS + 2)]
    found = [
        error_rule(name=name, severity="critical" if index == BANNER_ALERTS + 1 else "info", group_by=())
        for index, name in enumerate(names)
    ]
    messages(engine, T0 - 10 * MINUTE, T0 + 10 * MINUTE, actor="crm", failing=True)
    evaluate(engine, rules(*found), T0)
    html = html_of(client(engine, T0 + MINUTE, rules(*found)), "/queues")
    banner = banner_of(html)
    assert banner is not None
    assert f"{len(names)} alerts firing" in banner
    assert banner.count("<li ") == BANNER_ALERTS
    assert re.findall(r'<span class="rule">([^<]+)</span>', banner)[0] == names[-1], "critical first"
    assert "and 2 more" in banner


def test_without_the_rule_file_the_severity_comes_from_the_alerts_latest_notification(
    firing: tuple[Engine, RuleSet],
) -> None:
    engine, _ruleset = firing
    test_client = client(engine, T0 + 2 * MINUTE)
    banner = banner_of(html_of(test_client, "/"))
    assert banner is not None and '<span class="severity">critical</span>' in banner
    view = json.loads(test_client.get("/alerts.json").get_data(as_text=True))
    [fired] = [alert for alert in view["alerts"] if alert["state"] == "firing"]
    assert (fired["severity"], fired["condition"], fired["in_rules"]) == ("critical", "above 0.5", None)
    assert view["rules_file"] is None


def test_without_the_rule_file_only_the_newest_outbox_rows_are_read_for_severities(
    firing: tuple[Engine, RuleSet],
) -> None:
    engine, _ruleset = firing
    other = Notification(
        rule="other", group={}, event="firing", severity="info", summary="", value=1.0, threshold=0.5,
        comparison="above", since=T0, at=T0,
    )  # fmt: skip
    with engine.begin() as connection:
        enqueue(connection, other, [f"json://127.0.0.1:9/{index}" for index in range(NOTIFICATIONS_SCANNED)])
    view = json.loads(client(engine, T0 + 2 * MINUTE).get("/alerts.json").get_data(as_text=True))
    [fired] = [alert for alert in view["alerts"] if alert["state"] == "firing"]
    assert (fired["severity"], fired["condition"]) == (None, None)
    banner = banner_of(html_of(client(engine, T0 + 2 * MINUTE), "/"))
    assert banner is not None and '<span class="severity">\u2013</span>' in banner


def test_an_alert_of_a_rule_no_longer_in_the_file_is_marked_and_left_out_of_the_banner(
    firing: tuple[Engine, RuleSet],
) -> None:
    engine, _ruleset = firing
    newer = rules(error_rule(name="crm-errors-v2"))
    test_client = client(engine, T0 + 2 * MINUTE, newer)
    banner = banner_of(html_of(test_client, "/"))
    assert banner is not None and " hidden" in banner.split(">")[0]
    html = html_of(test_client, "/alerts")
    assert "not in the rule file" in html
    view = json.loads(test_client.get("/alerts.json").get_data(as_text=True))
    [gone] = [alert for alert in view["alerts"] if alert["state"] == "firing"]
    assert (gone["rule"], gone["in_rules"], gone["severity"]) == ("crm-errors", False, "critical"), (
        "the severity of its latest notification"
    )
    unevaluated = [alert for alert in view["alerts"] if alert["rule"] == "crm-errors-v2"]
    assert [(alert["state"], alert["evaluated_at"]) for alert in unevaluated] == [("ok", None)]


def test_an_old_latest_evaluation_is_flagged(firing: tuple[Engine, RuleSet]) -> None:
    engine, ruleset = firing
    assert 'id="alerts-stale"' not in html_of(client(engine, T0 + 2 * MINUTE, ruleset), "/alerts")
    assert 'id="alerts-stale"' in html_of(client(engine, T0 + 10 * MINUTE, ruleset), "/alerts")


def test_the_now_pages_refresh_data_carries_the_banner(firing: tuple[Engine, RuleSet]) -> None:
    engine, ruleset = firing
    view = json.loads(client(engine, T0 + 2 * MINUTE, ruleset).get("/now.json").get_data(as_text=True))
    [alert] = view["banner"]["alerts"]
    assert (alert["rule"], alert["group"], alert["severity"], alert["value"]) == (
        "crm-errors",
        {"actor": HTML_ACTOR},
        "critical",
        1.0,
    )
    assert alert["since"] == T0.timestamp()


def test_with_no_rule_evaluated_the_banner_is_hidden_and_the_page_says_so(engine: Engine) -> None:
    test_client = client(engine, T0)
    banner = banner_of(html_of(test_client, "/"))
    assert banner is not None and " hidden" in banner.split(">")[0] and "<li " not in banner
    html = html_of(test_client, "/alerts")
    assert 'id="alerts-none"' in html and "No alert rule has been evaluated yet" in html
    assert json.loads(test_client.get("/alerts.json").get_data(as_text=True))["tables"] is True


def test_without_the_alert_tables_there_is_no_banner_and_the_page_says_so(sqlite_url: URL) -> None:
    upgrade(sqlite_url, "0007")
    engine = make_engine(sqlite_url)
    try:
        test_client = client(engine, T0)
        for page in ("/", "/now", "/alerts"):
            assert banner_of(html_of(test_client, page)) is None, page
        assert 'id="alerts-missing"' in html_of(test_client, "/alerts")
        view = json.loads(test_client.get("/alerts.json").get_data(as_text=True))
        assert (view["tables"], view["alerts"]) == (False, [])
        assert json.loads(test_client.get("/now.json").get_data(as_text=True))["banner"] is None
    finally:
        engine.dispose()


def test_the_navigation_links_the_alerts_page(engine: Engine) -> None:
    html = html_of(client(engine, T0), "/alerts")
    assert re.search(r'<a href="/alerts" class="active" aria-current="page">Alerts</a>', html)


EXAMPLE_RULES = Path(__file__).parent.parent / "examples" / "alerts.toml"


def test_create_app_reads_the_rule_file_given_or_named_by_opmetrics_alert_rules(
    sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    upgrade(sqlite_url)
    monkeypatch.delenv("OPMETRICS_ALERT_RULES", raising=False)
    assert create_app(sqlite_url).data.alert_rules is None
    given = create_app(sqlite_url, alert_rules=EXAMPLE_RULES).data.alert_rules
    assert given is not None and given.source.endswith("alerts.toml") and given.rules
    monkeypatch.setenv("OPMETRICS_ALERT_RULES", str(EXAMPLE_RULES))
    from_environment = create_app(sqlite_url).data.alert_rules
    assert from_environment is not None and [rule.name for rule in from_environment.rules] == [
        rule.name for rule in given.rules
    ]
    view = json.loads(Client(create_app(sqlite_url)).get("/alerts.json").get_data(as_text=True))
    assert {alert["rule"] for alert in view["alerts"]} == {rule.name for rule in given.rules}, (
        "the rules not evaluated yet are listed"
    )


def test_the_dashboard_command_refuses_a_bad_rule_file_in_one_line(
    tmp_path: Path, sqlite_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "alerts.toml"
    bad.write_text('[[rules]]\nname = "x"\nmetric = "error_rate"\nabove = "5%"\nwindow = "5m"\n')
    assert main(["dashboard", "--database-url", str(sqlite_url), "--rules", str(bad)]) == 2
    err = capsys.readouterr().err
    assert '"above" must be a number, got "5%"' in err

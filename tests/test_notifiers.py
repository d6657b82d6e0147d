"""Delivery of alert notifications to real servers: SMTP (aiosmtpd) and JSON over HTTP through Apprise, and a
real Prometheus Alertmanager; failures of a server that is down, answers an error or never answers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from notification_servers import Alertmanager, JsonHttpServer, SmtpServer, message_text
from tcp_proxy import free_port

from dramatiq_opmetrics.notifiers import DeliveryError, Notification, check_target, masked_target, send

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DASHBOARD = "http://127.0.0.1:8070/alerts"

FIRING = Notification(
    rule="crm-errors",
    group={"queue": "crm", "actor": "send_invoice"},
    event="firing",
    severity="critical",
    summary="crm-errors: error_rate is 0.125 (above 0.05) for actor=send_invoice, queue=crm",
    value=0.125,
    threshold=0.05,
    comparison="above",
    since=NOW - dt.timedelta(minutes=5),
    at=NOW,
    valid_until=NOW + dt.timedelta(hours=1),
    dashboard_url=DASHBOARD,
)
# Resolved in the past, as the evaluator's would be when it arrives: Alertmanager takes an alert whose end
# is still to come for a firing one, and keeps the later end it already had.
RESOLVED = dataclasses.replace(FIRING, event="resolved", value=0.01, since=NOW, at=NOW)
#: A bound for a send to a server that is down or silent (its timeout is :data:`SHORT_TIMEOUT_S`): generous,
#: so that a loaded machine does not fail the test, and far below a hang.
SHORT_TIMEOUT_S = 0.5
GIVE_UP_WITHIN_S = 10.0


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that takes connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_a_firing_and_a_resolved_notification_arrive_by_email_with_rule_value_threshold_labels_and_link(
    smtp_server: SmtpServer,
) -> None:
    send(smtp_server.apprise_url(), FIRING)
    send(smtp_server.apprise_url(), RESOLVED)

    firing, resolved = smtp_server.wait_for_messages(2)
    assert firing["To"] == "ops@example.com"
    assert firing["Subject"] == "[FIRING] crm-errors (critical) actor=send_invoice, queue=crm: 0.125 above 0.05"
    body = message_text(firing)
    assert FIRING.summary in body
    for line in (
        "Rule: crm-errors",
        "Event: FIRING",
        "Severity: critical",
        "Labels: actor=send_invoice, queue=crm",
        "Value: 0.125",
        "Threshold: above 0.05",
        f"Since: {FIRING.since:%Y-%m-%d %H:%M:%S} UTC",
        f"Dashboard: {DASHBOARD}",
    ):
        assert line in body.splitlines()
    assert resolved["Subject"].startswith("[RESOLVED] crm-errors (critical) actor=send_invoice, queue=crm: 0.01")
    assert "Event: RESOLVED" in message_text(resolved).splitlines()


def test_a_firing_and_a_resolved_notification_arrive_as_json_with_their_apprise_types(
    json_server: JsonHttpServer,
) -> None:
    send(json_server.apprise_url("/hook"), FIRING)
    send(json_server.apprise_url("/hook"), dataclasses.replace(FIRING, event="reminder", severity="warning"))
    send(json_server.apprise_url("/hook"), RESOLVED)

    (path, firing), (_, reminder), (_, resolved) = json_server.wait_for_bodies(3)
    assert path == "/hook"
    assert firing["title"].startswith("[FIRING] crm-errors")
    assert "Value: 0.125" in firing["message"]
    assert f"Dashboard: {DASHBOARD}" in firing["message"]
    assert [firing["type"], reminder["type"], resolved["type"]] == ["failure", "warning", "success"]
    assert reminder["title"].startswith("[REMINDER] crm-errors (warning)")


def test_a_notification_without_a_dashboard_or_a_value_says_no_data_and_has_no_link(
    json_server: JsonHttpServer,
) -> None:
    send(json_server.apprise_url(), dataclasses.replace(FIRING, value=None, dashboard_url=None))

    [(_, body)] = json_server.wait_for_bodies(1)
    assert "Value: no data" in body["message"]
    assert "Dashboard" not in body["message"]


def test_alertmanager_lists_a_firing_alert_with_its_labels_and_annotations_then_resolves_it(
    alertmanager: Alertmanager,
) -> None:
    send(alertmanager.target, dataclasses.replace(FIRING, group={"queue": "crm", "actor.name": "send_invoice"}))

    [alert] = alertmanager.wait_for_alerts(lambda alerts: len(alerts) == 1, "the firing alert")
    assert alert["labels"] == {
        "alertname": "crm-errors",
        "severity": "critical",
        "queue": "crm",
        "actor_name": "send_invoice",
    }
    assert alert["annotations"] == {
        "summary": FIRING.summary,
        "value": "0.125",
        "threshold": "above 0.05",
        "dashboard": DASHBOARD,
    }
    assert alert["status"]["state"] == "active"
    assert alert["generatorURL"] == DASHBOARD
    assert dt.datetime.fromisoformat(alert["startsAt"]) == FIRING.since
    assert dt.datetime.fromisoformat(alert["endsAt"]) == FIRING.valid_until

    send(alertmanager.target, dataclasses.replace(RESOLVED, group={"queue": "crm", "actor.name": "send_invoice"}))

    alertmanager.wait_for_alerts(lambda alerts: alerts == [], "the alert to be resolved")
    assert alertmanager.received("firing") == 1
    assert alertmanager.received("resolved") == 1


def test_an_alertmanager_target_with_a_path_prefix_posts_below_it(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Alertmanager serves under --web.route-prefix when it sits behind a proxy at a path; here the prefix
    # is checked by its absence: a path the server does not serve must fail, naming the answer.
    with Alertmanager(tmp_path_factory.mktemp("am")) as server:
        with pytest.raises(DeliveryError, match=r"Alertmanager answered 404"):
            send(f"{server.target}/not-served", FIRING)
        send(f"{server.target}/", FIRING)
        server.wait_for_alerts(lambda alerts: len(alerts) == 1, "the alert posted through a trailing slash")


def test_a_json_server_that_is_down_raises_naming_the_target_and_the_same_send_succeeds_once_it_is_back(
    json_server: JsonHttpServer,
) -> None:
    target = json_server.apprise_url("/hook")
    json_server.stop()

    started = time.monotonic()
    with pytest.raises(DeliveryError) as raised:
        send(target, FIRING, timeout_s=SHORT_TIMEOUT_S)
    assert time.monotonic() - started < GIVE_UP_WITHIN_S
    assert str(raised.value).startswith(f"{target}: not delivered: ")
    assert "Connection error" in str(raised.value)

    json_server.start()
    send(target, FIRING, timeout_s=SHORT_TIMEOUT_S)
    assert [path for path, _ in json_server.wait_for_bodies(1)] == ["/hook"]


def test_a_json_server_answering_500_raises_with_the_status(json_server: JsonHttpServer) -> None:
    json_server.status = 500

    with pytest.raises(DeliveryError, match=r"error=500"):
        send(json_server.apprise_url(), FIRING)


def test_an_smtp_server_that_is_down_raises_and_the_same_send_succeeds_once_it_is_up() -> None:
    server = SmtpServer()
    target = server.apprise_url()

    with pytest.raises(DeliveryError, match=r"Connection error while submitting email"):
        send(target, FIRING, timeout_s=SHORT_TIMEOUT_S)

    with server:
        send(target, FIRING, timeout_s=SHORT_TIMEOUT_S)
        assert server.wait_for_messages(1)[0]["Subject"].startswith("[FIRING] crm-errors")


def test_an_alertmanager_that_is_down_raises_naming_it_and_gets_the_alert_once_it_is_up(
    tmp_path: Path,
) -> None:
    server = Alertmanager(tmp_path)
    with pytest.raises(
        DeliveryError, match=rf"^{re.escape(server.target)}: Alertmanager unreachable: .*Connection refused"
    ):
        send(server.target, FIRING, timeout_s=SHORT_TIMEOUT_S)

    with server:
        send(server.target, FIRING, timeout_s=SHORT_TIMEOUT_S)
        server.wait_for_alerts(lambda alerts: len(alerts) == 1, "the alert once Alertmanager is up")


@pytest.mark.parametrize(
    "target",
    [
        "json://127.0.0.1:{port}",
        "mailto://127.0.0.1:{port}?smtp=127.0.0.1&from=a@example.com&to=b@example.com",
        "alertmanager+http://127.0.0.1:{port}",
    ],
)
def test_a_server_that_never_answers_raises_within_the_timeout(target: str, silent_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=rf"127\.0\.0\.1:{silent_port}"):
        send(target.format(port=silent_port), FIRING, timeout_s=SHORT_TIMEOUT_S)
    assert time.monotonic() - started < GIVE_UP_WITHIN_S


def test_a_failure_keeps_its_reason_when_the_application_silenced_apprise_and_its_logging_stays_silenced(
    json_server: JsonHttpServer,
) -> None:
    # What logging.config.fileConfig / dictConfig do to the loggers that exist, and a level above WARNING.
    apprise_logger = logging.getLogger("apprise")
    before = (apprise_logger.disabled, apprise_logger.level, apprise_logger.propagate)
    seen: list[logging.LogRecord] = []
    root_handler = logging.Handler()
    root_handler.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(root_handler)
    apprise_logger.disabled, apprise_logger.level = True, logging.ERROR
    try:
        target = json_server.apprise_url("/hook")
        json_server.stop()
        with pytest.raises(DeliveryError) as raised:
            send(target, FIRING, timeout_s=SHORT_TIMEOUT_S)
        assert "Connection error" in str(raised.value)
        assert (apprise_logger.disabled, apprise_logger.level, apprise_logger.propagate) == (True, logging.ERROR, True)
        assert not [record for record in seen if record.name.startswith("apprise")]
    finally:
        logging.getLogger().removeHandler(root_handler)
        apprise_logger.disabled, apprise_logger.level, apprise_logger.propagate = before


def test_send_returns_once_the_server_has_the_message_and_leaves_apprise_logging_as_it_was(
    smtp_server: SmtpServer, json_server: JsonHttpServer
) -> None:
    apprise_logger = logging.getLogger("apprise")
    handlers, level = list(apprise_logger.handlers), apprise_logger.level

    send(smtp_server.apprise_url(), FIRING)
    send(json_server.apprise_url(), FIRING)

    # No waiting: Apprise ran in this thread, and each server stores a message before it answers.
    assert len(smtp_server.messages) == 1
    assert len(json_server.bodies) == 1
    assert (apprise_logger.handlers, apprise_logger.level) == (handlers, level)


def test_alertmanager_refusing_an_alert_that_ends_before_it_starts_raises_with_its_status(
    alertmanager: Alertmanager,
) -> None:
    with pytest.raises(DeliveryError, match=r"Alertmanager answered 400 "):
        send(alertmanager.target, dataclasses.replace(FIRING, since=NOW + dt.timedelta(days=1)))


@pytest.mark.parametrize(
    "target",
    [
        "mailto://user:s3cret-pw@127.0.0.1:{port}?smtp=127.0.0.1&from=alerts@example.com&to=ops@example.com",
        "json://user:s3cret-pw@127.0.0.1:{port}/hook",
        "alertmanager+http://user:s3cret-pw@127.0.0.1:{port}",
    ],
)
def test_a_password_in_a_target_is_masked_in_the_error(target: str) -> None:
    target = target.format(port=free_port())

    with pytest.raises(DeliveryError) as raised:
        send(target, FIRING, timeout_s=SHORT_TIMEOUT_S)
    assert "s3cret-pw" not in str(raised.value)
    assert str(raised.value).startswith(f"{masked_target(target)}: ")
    assert re.search(r"user:\*{3,4}@127\.0\.0\.1", str(raised.value))


def test_masked_target_shows_apprise_urls_in_their_privacy_form_without_the_query() -> None:
    assert masked_target("json://127.0.0.1:8080/hook?x=1") == "json://127.0.0.1:8080/hook"
    assert (
        masked_target("mailtos://bob:pw@example.com/ops@example.com")
        == "mailtos://bob:****@example.com/ops%40example.com"
    )
    assert (
        masked_target("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#ops")
        == "slack://T...2/A...D/T...Q/%23ops/"
    )
    assert masked_target("foo://s3cret") == "foo://..."


def test_masked_target_masks_only_the_password_of_an_alertmanager_target() -> None:
    assert (
        masked_target("alertmanager+https://admin:pw@am.example.com/am")
        == "alertmanager+https://admin:***@am.example.com/am"
    )
    assert masked_target("alertmanager+http://127.0.0.1:9093") == "alertmanager+http://127.0.0.1:9093"


@pytest.mark.parametrize(
    "target",
    [
        "mailto://127.0.0.1:2525?smtp=127.0.0.1&from=alerts@example.com&to=ops@example.com",
        "mailtos://bob:pw@smtp.example.com?to=ops@example.com",
        "json://127.0.0.1:8080/hook",
        "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",
        "alertmanager+http://127.0.0.1:9093",
        "alertmanager+https://user:pw@am.example.com/prefix",
    ],
)
def test_check_target_accepts_good_targets(target: str) -> None:
    assert check_target(target) is None


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("foo://x", 'bad Apprise URL "foo://...": Unparseable URL'),
        ("json://", 'bad Apprise URL "json://...": Unparseable JSON URL'),
        ("mailto://", 'bad Apprise URL "mailto://...": Invalid ~From~ email specified; Could not load E-Mail URL'),
        ("nonsense", 'not a URL (no "scheme://")'),
        ("", "empty target"),
        ("alertmanager+http://", '"alertmanager+http://...": an Alertmanager target needs a host'),
        ("alertmanager+http://:9093", "an Alertmanager target needs a host"),
        ("alertmanager+ftp://am.example.com", 'unknown scheme "alertmanager+ftp"'),
        ("alertmanager+http://am.example.com:99999", "port must be a number from 1 to 65535"),
        ("alertmanager+http://am.example.com?x=1", "takes no query"),
    ],
)
def test_check_target_rejects_bad_targets_saying_why_on_one_line(target: str, error: str) -> None:
    reason = check_target(target)
    assert reason is not None
    assert error in reason
    assert "\n" not in reason


@pytest.mark.parametrize("target", ["mailto://bob:s3cret-pw@", "tgram://s3cret-pw", "json://s3cret-pw@:x"])
def test_check_target_shows_only_the_scheme_of_a_bad_url(target: str) -> None:
    reason = check_target(target)
    assert reason is not None
    assert "s3cret-pw" not in reason


@pytest.mark.parametrize("timeout_s", [0, -1, float("nan"), float("inf"), 3601])
def test_a_timeout_out_of_range_is_refused_before_anything_is_sent(
    timeout_s: float, json_server: JsonHttpServer
) -> None:
    with pytest.raises(ValueError, match="timeout_s must be more than 0 and at most 3600 seconds"):
        send(json_server.apprise_url(), FIRING, timeout_s=timeout_s)
    assert json_server.bodies == []

"""Delivery of alert notifications to real servers: SMTP (aiosmtpd) and JSON over HTTP through Apprise, and a
real Prometheus Alertmanager; failures of a server that is down, answers an error or never answers."""

from __future__ import annotations

import dataclasses
import datetime as dt
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
RESOLVED = dataclasses.replace(
    FIRING, event="resolved", value=0.01, since=NOW + dt.timedelta(seconds=1), at=NOW + dt.timedelta(seconds=1)
)
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


@pytest.mark.parametrize("scheme", ["json", "alertmanager+http"])
def test_a_server_that_never_answers_raises_within_the_timeout(scheme: str, silent_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=rf"127\.0\.0\.1:{silent_port}"):
        send(f"{scheme}://127.0.0.1:{silent_port}", FIRING, timeout_s=SHORT_TIMEOUT_S)
    assert time.monotonic() - started < GIVE_UP_WITHIN_S


def test_alertmanager_refusing_an_alert_that_ends_before_it_starts_raises_with_its_status(
    alertmanager: Alertmanager,
) -> None:
    with pytest.raises(DeliveryError, match=r"Alertmanager answered 400 "):
        send(alertmanager.target, dataclasses.replace(FIRING, since=NOW + dt.timedelta(days=1)))


@pytest.mark.parametrize(
    "target",
    [
        "mailto://user:s3cret-pw@127.0.0.1:{port}?from=alerts@example.com&to=ops@example.com",
        "json://user:s3cret-pw@127.0.0.1:{port}/hook",
        "alertmanager+http://user:s3cret-pw@127.0.0.1:{port}",
    ],
)
def test_a_password_in_a_target_is_masked_in_the_error(target: str) -> None:
    target = target.format(port=free_port())

    with pytest.raises(DeliveryError) as raised:
        send(target, FIRING, timeout_s=SHORT_TIMEOUT_S)
    assert "s3cret-pw" not in str(raised.value)
    assert "user:***@127.0.0.1" in str(raised.value)


def test_masked_target_leaves_a_target_without_password_alone() -> None:
    assert masked_target("json://127.0.0.1:8080/hook?x=1") == "json://127.0.0.1:8080/hook?x=1"
    assert masked_target("mailto://bob@example.com") == "mailto://bob@example.com"
    assert (
        masked_target("mailtos://bob:pw@example.com/ops@example.com") == "mailtos://bob:***@example.com/ops@example.com"
    )


@pytest.mark.parametrize(
    "target",
    [
        "mailto://127.0.0.1:2525?from=alerts@example.com&to=ops@example.com",
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
        ("foo://x", "Apprise cannot use it: Unparseable URL foo://x"),
        ("nonsense", "not a URL"),
        ("", "the target is empty"),
        ("json://", "Apprise cannot use it"),
        ("alertmanager+http://", "an Alertmanager target needs a host"),
        ("alertmanager+http://:9093", "an Alertmanager target needs a host"),
        ("alertmanager+ftp://am.example.com", 'unknown scheme "alertmanager+ftp"'),
        ("alertmanager+http://am.example.com:99999", "port must be a number from 1 to 65535"),
        ("alertmanager+http://am.example.com?x=1", "takes no query"),
    ],
)
def test_check_target_rejects_bad_targets_saying_why(target: str, error: str) -> None:
    reason = check_target(target)
    assert reason is not None
    assert error in reason


def test_check_target_masks_a_password_apprise_repeats() -> None:
    reason = check_target("mailto://bob:s3cret-pw@")
    assert reason is not None
    assert "s3cret-pw" not in reason

"""The outbox: notifications delivered to real servers, retried with backoff while a target is down."""

from __future__ import annotations

import datetime as dt

from notification_servers import Alertmanager, JsonHttpServer
from sqlalchemy import Engine, select
from test_alert_evaluator import MINUTE, T0, messages, rule, ruleset

from dramatiq_opmetrics.alert_delivery import (
    GIVE_UP_AFTER,
    MAX_RETRY_BACKOFF,
    RETRY_BACKOFF,
    deliver_due,
    enqueue,
    notification_from_json,
    notification_to_json,
    retry_delay,
    undelivered,
)
from dramatiq_opmetrics.alert_evaluator import evaluate
from dramatiq_opmetrics.models import AlertDelivery
from dramatiq_opmetrics.notifiers import Notification

SECOND = dt.timedelta(seconds=1)


def firing(at: dt.datetime = T0) -> Notification:
    return Notification(
        rule="crm-errors",
        group={"actor": "crm"},
        event="firing",
        severity="critical",
        summary="crm-errors: 100%",
        value=1.0,
        threshold=0.5,
        comparison="above",
        since=at,
        at=at,
        valid_until=at + 3 * MINUTE,
        dashboard_url="http://127.0.0.1:8000/alerts?rule=crm-errors",
    )


def test_a_notification_survives_its_json_round_trip() -> None:
    assert notification_from_json(notification_to_json(firing())) == firing()


def test_the_backoff_doubles_per_attempt_up_to_its_bound() -> None:
    assert [retry_delay(attempts) for attempts in (1, 2, 3)] == [RETRY_BACKOFF, 2 * RETRY_BACKOFF, 4 * RETRY_BACKOFF]
    assert retry_delay(40) == MAX_RETRY_BACKOFF


def test_an_evaluation_s_notifications_arrive_once_at_a_json_receiver(
    engine: Engine, json_server: JsonHttpServer
) -> None:
    messages(engine, T0 - 5 * MINUTE, T0, failing=True)
    messages(engine, T0, T0 + 10 * MINUTE, failing=False)
    rules = ruleset(rule(), targets=(json_server.apprise_url(),))
    evaluate(engine, rules, T0)
    assert deliver_due(engine, T0).delivered == 1
    evaluate(engine, rules, T0 + 6 * MINUTE)
    assert deliver_due(engine, T0 + 6 * MINUTE).delivered == 1
    assert deliver_due(engine, T0 + 7 * MINUTE).delivered == 0
    bodies = json_server.wait_for_bodies(2)
    assert len(json_server.bodies) == 2
    assert ["resolved" in str(body).lower() for _, body in bodies] == [False, True]
    with engine.connect() as connection:
        assert undelivered(connection) == []


def test_a_receiver_that_is_down_gets_the_notifications_in_order_once_it_is_back(
    engine: Engine, json_server: JsonHttpServer
) -> None:
    target = json_server.apprise_url()
    json_server.stop()
    with engine.begin() as connection:
        enqueue(connection, firing(), [target])
        enqueue(connection, _resolved(), [target])
    first = deliver_due(engine, T0)
    assert (first.delivered, first.failed) == (0, 1)
    with engine.connect() as connection:
        waiting = undelivered(connection)
    assert [(row.attempts, row.next_attempt_at) for row in waiting] == [(1, T0 + RETRY_BACKOFF), (0, T0)]
    assert waiting[0].last_error
    # The resolved notification waits behind the firing one; nothing is due before the backoff ends.
    assert deliver_due(engine, T0 + RETRY_BACKOFF - SECOND).failed == 0
    assert deliver_due(engine, T0 + RETRY_BACKOFF).failed == 1
    json_server.start()
    assert deliver_due(engine, T0 + RETRY_BACKOFF + retry_delay(2)).delivered == 2
    bodies = json_server.wait_for_bodies(2)
    assert len(json_server.bodies) == 2
    assert ["resolved" in str(body).lower() for _, body in bodies] == [False, True]


def _resolved() -> Notification:
    return Notification(
        rule="crm-errors",
        group={"actor": "crm"},
        event="resolved",
        severity="critical",
        summary="crm-errors: resolved",
        value=0.0,
        threshold=0.5,
        comparison="above",
        since=T0,
        at=T0,
    )


def test_a_delivery_is_given_up_after_its_time_and_stays_listed(engine: Engine, json_server: JsonHttpServer) -> None:
    json_server.status = 500
    with engine.begin() as connection:
        enqueue(connection, firing(), [json_server.apprise_url()])
    result = deliver_due(engine, T0 + GIVE_UP_AFTER)
    assert (result.failed, result.given_up) == (0, 1)
    assert deliver_due(engine, T0 + 2 * GIVE_UP_AFTER).given_up == 0
    with engine.connect() as connection:
        [row] = undelivered(connection)
    assert (row.next_attempt_at, row.attempts) == (None, 1)


def test_a_leased_row_is_not_sent_by_a_second_pass_until_its_lease_ends(
    engine: Engine, json_server: JsonHttpServer
) -> None:
    with engine.begin() as connection:
        enqueue(connection, firing(), [json_server.apprise_url()])
        connection.execute(AlertDelivery.__table__.update().values(next_attempt_at=T0 + MINUTE, attempts=1))
    assert deliver_due(engine, T0).delivered == 0
    assert deliver_due(engine, T0 + MINUTE).delivered == 1
    with engine.connect() as connection:
        assert connection.execute(select(AlertDelivery.attempts)).scalar_one() == 2


def test_alertmanager_lists_a_firing_alert_posted_from_the_outbox_and_forgets_it_once_resolved(
    engine: Engine, alertmanager: Alertmanager
) -> None:
    # Alertmanager judges endsAt by its own clock: the test's clock ends at the real time.
    now = dt.datetime.now(dt.UTC).replace(microsecond=0) - 6 * MINUTE
    hour = 60 * MINUTE
    messages(engine, now - 5 * MINUTE, now, failing=True)
    messages(engine, now, now + 10 * MINUTE, failing=False)
    rules = ruleset(rule(), targets=(alertmanager.target,))
    evaluate(engine, rules, now, interval=hour)
    assert deliver_due(engine, now).delivered == 1
    [alert] = alertmanager.wait_for_alerts(lambda alerts: len(alerts) == 1, "the firing alert listed")
    assert alert["labels"]["alertname"] == "crm-errors"
    assert evaluate(engine, rules, now + MINUTE, interval=hour).reposts == 1
    assert deliver_due(engine, now + MINUTE).delivered == 1
    assert [n.event for n in evaluate(engine, rules, now + 6 * MINUTE, interval=hour).notifications] == ["resolved"]
    assert deliver_due(engine, now + 6 * MINUTE).delivered == 1
    alertmanager.wait_for_alerts(lambda alerts: alerts == [], "the resolved alert gone from the list")
    assert alertmanager.received("firing") == 2

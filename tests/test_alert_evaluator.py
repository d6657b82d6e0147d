"""The evaluator on real PostgreSQL and SQLite, with a clock the tests control (``now`` passed explicitly)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Iterable, Sequence

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import NoResultFound

from dramatiq_opmetrics import samples
from dramatiq_opmetrics.alert_evaluator import REMOVED_RULE_GRACE_INTERVALS, AlertEvaluator, evaluate
from dramatiq_opmetrics.alert_rules import Notifier, Rule, RuleSet
from dramatiq_opmetrics.alert_silences import add_silence, list_silences, remove_silences
from dramatiq_opmetrics.alert_status import alert_statuses
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.interval_claims import DatabaseIntervalClaim
from dramatiq_opmetrics.models import AlertDelivery, AlertState, AlertTransition
from dramatiq_opmetrics.notifiers import group_key
from dramatiq_opmetrics.recent_tier import bucket_floor
from dramatiq_opmetrics.samples import Sample
from dramatiq_opmetrics.writer import write_samples

MINUTE = dt.timedelta(minutes=1)
#: The test clock's start: a whole minute an hour ago (the raw rows are well inside the retention).
T0 = bucket_floor(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), 1)
#: The outbox target of the test rules (nothing is sent in these tests: delivery has its own tests).
TARGET = "json://127.0.0.1:9/hook"


def rule(**changes: object) -> Rule:
    """An error-rate rule on actor ``crm``: above 50% over 5 minutes, for 0 minutes."""
    base = Rule(
        name="crm-errors",
        metric="error_rate",
        above=0.5,
        below=None,
        window=5 * MINUTE,
        for_=dt.timedelta(0),
        notify=("ops",),
        labels={"actor": "crm"},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def ruleset(*rules: Rule, targets: Sequence[str] = (TARGET,)) -> RuleSet:
    return RuleSet(rules=rules, notifiers={"ops": Notifier("ops", tuple(targets))})


def write(engine: Engine, new_samples: Iterable[Sample]) -> None:
    with engine.begin() as connection:
        write_samples(connection, list(new_samples))


def messages(
    engine: Engine, start: dt.datetime, end: dt.datetime, *, failing: bool, actor: str = "crm", queue: str = "crm"
) -> None:
    """One message of ``actor`` every 20 seconds in ``[start, end)``, each failing or not."""
    found: list[Sample] = []
    at = start
    while at < end:
        found += samples.processing_time(actor, 10.0, queue=queue, recorded_at=at)
        if failing:
            found += samples.error(actor, "ValueError", queue=queue, recorded_at=at, outcome="final")
        at += dt.timedelta(seconds=20)
    write(engine, found)


def outbox(engine: Engine) -> list[tuple[str, str]]:
    """The outbox as (event, target), oldest first."""
    with engine.connect() as connection:
        rows = connection.execute(select(AlertDelivery.notification, AlertDelivery.target).order_by(AlertDelivery.id))
        return [(row[0]["event"], row[1]) for row in rows]


def state_of(engine: Engine, name: str = "crm-errors", group: str = "") -> tuple[str, dt.datetime]:
    with engine.connect() as connection:
        row = connection.execute(
            select(AlertState.state, AlertState.since).where(AlertState.rule == name, AlertState.group_key == group)
        ).one()
    return row[0], row[1]


def test_an_alert_is_pending_until_its_condition_held_for_for_then_fires_once(engine: Engine) -> None:
    messages(engine, T0 - 10 * MINUTE, T0 + 10 * MINUTE, failing=True)
    rules = ruleset(rule(for_=3 * MINUTE))
    assert [t.to_state for t in evaluate(engine, rules, T0).transitions] == ["pending"]
    assert evaluate(engine, rules, T0 + MINUTE).transitions == []
    assert evaluate(engine, rules, T0 + 2 * MINUTE).notifications == []
    assert state_of(engine) == ("pending", T0)
    fired = evaluate(engine, rules, T0 + 3 * MINUTE)
    assert [(t.from_state, t.to_state) for t in fired.transitions] == [("pending", "firing")]
    assert [(n.event, n.value, n.threshold, n.comparison) for n in fired.notifications] == [
        ("firing", 1.0, 0.5, "above")
    ]
    assert evaluate(engine, rules, T0 + 4 * MINUTE).notifications == []
    assert outbox(engine) == [("firing", TARGET)]
    assert state_of(engine) == ("firing", T0 + 3 * MINUTE)


def test_a_condition_that_stops_holding_while_pending_goes_back_to_ok_without_a_notification(engine: Engine) -> None:
    messages(engine, T0 - 5 * MINUTE, T0 + MINUTE, failing=True)
    messages(engine, T0 + MINUTE, T0 + 10 * MINUTE, failing=False)
    rules = ruleset(rule(for_=5 * MINUTE, window=MINUTE))
    evaluate(engine, rules, T0)
    assert state_of(engine)[0] == "pending"
    evaluate(engine, rules, T0 + 2 * MINUTE)
    assert state_of(engine) == ("ok", T0 + 2 * MINUTE)
    assert outbox(engine) == []


def test_a_firing_alert_sends_a_reminder_at_each_repeat_interval(engine: Engine) -> None:
    messages(engine, T0 - 5 * MINUTE, T0 + 30 * MINUTE, failing=True)
    rules = ruleset(rule(repeat_interval=10 * MINUTE))
    events = [
        [n.event for n in evaluate(engine, rules, T0 + minutes * MINUTE).notifications]
        for minutes in (0, 5, 9, 10, 15, 20)
    ]
    assert events == [["firing"], [], [], ["reminder"], [], ["reminder"]]


def test_an_alert_that_recovers_sends_one_resolved_notification(engine: Engine) -> None:
    messages(engine, T0 - 5 * MINUTE, T0, failing=True)
    messages(engine, T0, T0 + 20 * MINUTE, failing=False)
    rules = ruleset(rule())
    assert [n.event for n in evaluate(engine, rules, T0).notifications] == ["firing"]
    assert evaluate(engine, rules, T0 + 2 * MINUTE).notifications == []
    resolved = evaluate(engine, rules, T0 + 5 * MINUTE).notifications
    assert [(n.event, n.value, n.since) for n in resolved] == [("resolved", 0.0, T0 + 5 * MINUTE)]
    assert evaluate(engine, rules, T0 + 6 * MINUTE).notifications == []
    assert outbox(engine) == [("firing", TARGET), ("resolved", TARGET)]
    with engine.connect() as connection:
        history = connection.execute(
            select(AlertTransition.from_state, AlertTransition.to_state, AlertTransition.at).order_by(
                AlertTransition.id
            )
        ).all()
    assert [tuple(row) for row in history] == [("ok", "firing", T0), ("firing", "ok", T0 + 5 * MINUTE)]


@pytest.mark.parametrize(
    ("no_data", "state_without_data", "events"),
    [("ok", "ok", ["firing", "resolved"]), ("keep", "firing", ["firing"]), ("alert", "firing", ["firing"])],
)
def test_a_window_without_data_follows_the_rules_no_data_behaviour(
    engine: Engine, no_data: str, state_without_data: str, events: list[str]
) -> None:
    messages(engine, T0 - 5 * MINUTE, T0, failing=True)
    rules = ruleset(rule(no_data=no_data))
    evaluate(engine, rules, T0)
    evaluate(engine, rules, T0 + 10 * MINUTE)
    assert state_of(engine)[0] == state_without_data
    assert [event for event, _ in outbox(engine)] == events


def test_no_data_keep_leaves_a_pending_alert_pending_and_no_data_alert_fires_a_rule_that_never_had_data(
    engine: Engine,
) -> None:
    messages(engine, T0 - 5 * MINUTE, T0, failing=True)
    keeping = rule(no_data="keep", for_=5 * MINUTE)
    never = rule(name="never-seen", labels={"actor": "nobody"}, no_data="alert")
    rules = ruleset(keeping, never)
    evaluate(engine, rules, T0)
    result = evaluate(engine, rules, T0 + 20 * MINUTE)
    assert state_of(engine) == ("pending", T0)
    assert state_of(engine, "never-seen") == ("firing", T0)
    assert [(n.rule, n.event, n.value) for n in result.notifications] == []


def test_each_group_of_a_grouped_rule_is_an_alert_of_its_own(engine: Engine) -> None:
    messages(engine, T0 - 5 * MINUTE, T0, failing=True, actor="a", queue="q1")
    messages(engine, T0 - 5 * MINUTE, T0, failing=False, actor="b", queue="q1")
    messages(engine, T0 - 5 * MINUTE, T0, failing=True, actor="c", queue="q2")
    rules = ruleset(rule(labels={"queue": "q1"}, group_by=("actor",)))
    result = evaluate(engine, rules, T0)
    assert [(n.group, n.event) for n in result.notifications] == [({"actor": "a"}, "firing")]
    assert state_of(engine, group=group_key({"actor": "b"}))[0] == "ok"


def test_value_metrics_compare_their_statistic_and_throughput_is_per_second(engine: Engine) -> None:
    messages(engine, T0 - 5 * MINUTE, T0, failing=False)
    slow = rule(name="slow", metric="processing_time", statistic="max", above=5.0, labels={})
    busy = rule(name="busy", metric="throughput", above=0.01, labels={})
    idle = rule(name="idle", metric="throughput", above=None, below=0.01, labels={})
    result = evaluate(engine, ruleset(slow, busy, idle), T0)
    assert sorted((n.rule, n.value) for n in result.notifications) == [("busy", 15 / 300), ("slow", 10.0)]


def test_a_queue_with_ready_messages_and_none_finished_fires_the_stalled_and_oldest_age_rules(engine: Engine) -> None:
    found: list[Sample] = []
    for seconds in range(-300, 0, 15):
        at = T0 + dt.timedelta(seconds=seconds)
        found += samples.queue_depth("stuck", 4, state="ready", recorded_at=at)
        found += samples.queue_depth("busy", 4, state="ready", recorded_at=at)
        found += samples.oldest_message_age("stuck", 300.0 + seconds, recorded_at=at)
        found += samples.processing_time("worker", 5.0, queue="busy", recorded_at=at)
    write(engine, found)
    stalled = rule(name="stalled", metric="stalled", above=0.5, labels={}, group_by=("queue",))
    old = rule(name="old", metric="oldest_message_age", statistic="max", above=120.0, labels={}, group_by=("queue",))
    result = evaluate(engine, ruleset(stalled, old), T0)
    assert sorted((n.rule, dict(n.group), n.value) for n in result.notifications) == [
        ("old", {"queue": "stuck"}, 285.0),
        ("stalled", {"queue": "stuck"}, 1.0),
    ]
    assert state_of(engine, "stalled", group_key({"queue": "busy"}))[0] == "ok"


def test_a_silenced_rule_changes_state_but_sends_nothing_until_the_silence_ends(engine: Engine) -> None:
    messages(engine, T0 - 5 * MINUTE, T0 + 60 * MINUTE, failing=True)
    rules = ruleset(rule())
    silence = add_silence(engine, "crm-errors", 30 * MINUTE, reason="deploy", now=T0 - MINUTE)
    assert [s.id for s in list_silences(engine, now=T0)] == [silence.id]
    result = evaluate(engine, rules, T0)
    assert [t.to_state for t in result.transitions] == ["firing"]
    assert result.notifications == []
    assert evaluate(engine, rules, T0 + 10 * MINUTE).notifications == []
    after = evaluate(engine, rules, T0 + 30 * MINUTE)
    assert [(n.event, n.since) for n in after.notifications] == [("firing", T0)]
    assert evaluate(engine, rules, T0 + 31 * MINUTE).notifications == []
    assert outbox(engine) == [("firing", TARGET)]
    assert list_silences(engine, now=T0 + 30 * MINUTE) == []


def test_an_alert_that_fires_and_resolves_within_a_silence_sends_nothing_and_a_removed_silence_lets_them_through(
    engine: Engine,
) -> None:
    messages(engine, T0 - 5 * MINUTE, T0, failing=True)
    messages(engine, T0 + 10 * MINUTE, T0 + 15 * MINUTE, failing=True)
    rules = ruleset(rule())
    add_silence(engine, "crm-errors", 2 * dt.timedelta(hours=1), now=T0 - MINUTE)
    evaluate(engine, rules, T0)
    evaluate(engine, rules, T0 + 6 * MINUTE)
    assert state_of(engine)[0] == "ok"
    evaluate(engine, rules, T0 + 11 * MINUTE)
    assert outbox(engine) == []
    assert remove_silences(engine, "crm-errors") == 1
    assert [n.event for n in evaluate(engine, rules, T0 + 12 * MINUTE).notifications] == ["firing"]


def test_a_new_evaluator_carries_on_from_the_stored_states_and_sends_no_duplicate(migrated_url: object) -> None:
    first = make_engine(migrated_url)  # type: ignore[arg-type]
    try:
        messages(first, T0 - 5 * MINUTE, T0 + 10 * MINUTE, failing=True)
        assert [n.event for n in evaluate(first, ruleset(rule()), T0).notifications] == ["firing"]
    finally:
        first.dispose()
    second = make_engine(migrated_url)  # type: ignore[arg-type]
    try:
        again = evaluate(second, ruleset(rule()), T0)
        assert (again.notifications, again.alerts, again.already_evaluated) == ([], 0, 1)
        assert evaluate(second, ruleset(rule()), T0 + MINUTE).notifications == []
        assert outbox(second) == [("firing", TARGET)]
    finally:
        second.dispose()


def test_two_evaluators_of_the_same_interval_at_once_queue_one_notification(engine: Engine) -> None:
    messages(engine, T0 - 5 * MINUTE, T0 + MINUTE, failing=True)
    rules = ruleset(rule())
    # No interval claim between them: only the evaluation's own lock and stored states keep them apart.
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait(10)
        try:
            evaluate(engine, rules, T0)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert outbox(engine) == [("firing", TARGET)]


def test_alertmanager_targets_get_a_firing_alert_again_at_each_evaluation_and_no_reminders(engine: Engine) -> None:
    messages(engine, T0 - 5 * MINUTE, T0 + 30 * MINUTE, failing=True)
    manager = "alertmanager+http://127.0.0.1:9"
    rules = ruleset(rule(repeat_interval=2 * MINUTE), targets=(TARGET, manager))
    first = evaluate(engine, rules, T0, interval=MINUTE)
    assert [(n.event, n.valid_until) for n in first.notifications] == [("firing", T0 + 3 * MINUTE)]
    second = evaluate(engine, rules, T0 + MINUTE, interval=MINUTE)
    assert (second.notifications, second.reposts) == ([], 1)
    third = evaluate(engine, rules, T0 + 2 * MINUTE, interval=MINUTE)
    assert ([n.event for n in third.notifications], third.reposts) == (["reminder"], 1)
    # Nothing was delivered: the newest post to the Alertmanager superseded the older ones.
    assert outbox(engine) == [("firing", TARGET), ("reminder", TARGET), ("firing", manager)]


def test_the_states_of_a_removed_rule_are_deleted_after_the_grace_intervals_and_a_firing_one_is_logged(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    messages(engine, T0 - 5 * MINUTE, T0 + 30 * MINUTE, failing=True)
    kept, removed = rule(), rule(name="removed-rule", labels={"actor": "crm"})
    evaluate(engine, ruleset(kept, removed), T0)
    assert state_of(engine, "removed-rule")[0] == "firing"
    grace = REMOVED_RULE_GRACE_INTERVALS * MINUTE
    # A rolling deploy: a process with the new rules evaluates, then one with the old rules still does.
    evaluate(engine, ruleset(kept), T0 + MINUTE)
    evaluate(engine, ruleset(kept, removed), T0 + 2 * MINUTE)
    with caplog.at_level(logging.INFO, logger="dramatiq_opmetrics.alert_evaluator"):
        evaluate(engine, ruleset(kept), T0 + 2 * MINUTE + grace)
        assert state_of(engine, "removed-rule")[0] == "firing"
        assert [r for r in caplog.records if r.name == "dramatiq_opmetrics.alert_evaluator"] == []
        evaluate(engine, ruleset(kept), T0 + 3 * MINUTE + grace)
    with pytest.raises(NoResultFound):
        state_of(engine, "removed-rule")
    assert state_of(engine)[0] == "firing"
    assert [status.rule for status in alert_statuses(engine)] == ["crm-errors"]
    logged = [r for r in caplog.records if r.name == "dramatiq_opmetrics.alert_evaluator"]
    assert [(r.levelname, r.getMessage()) for r in logged] == [
        (
            "WARNING",
            "Alert rule 'removed-rule' is no longer in the rule set: deleted its 1 stored alert states"
            " (1 firing: their notifiers are not told it resolved).",
        )
    ]
    with engine.connect() as connection:
        history = connection.execute(select(AlertTransition.to_state).where(AlertTransition.rule == "removed-rule"))
        assert history.scalars().all() == ["firing"]


def test_evaluate_refuses_a_naive_time(engine: Engine) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(engine, ruleset(rule()), T0.replace(tzinfo=None))


def test_of_evaluators_sharing_a_claim_one_evaluates_an_interval_at_its_start(engine: Engine) -> None:
    messages(engine, T0 - 5 * MINUTE, T0 + MINUTE, failing=True)
    claim = DatabaseIntervalClaim(engine)
    # Delivery has nothing to reach here (the target's port is closed): it fails, is logged and kept.
    first, second = (AlertEvaluator(engine, ruleset(rule()), claim=claim, interval_s=60) for _ in range(2))
    result = first.evaluate_once(T0 + dt.timedelta(seconds=7))
    assert result is not None and result.at == T0
    assert [n.event for n in result.notifications] == ["firing"]
    assert second.evaluate_once(T0 + dt.timedelta(seconds=8)) is None
    assert outbox(engine) == [("firing", TARGET)]

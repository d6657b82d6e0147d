"""Evaluation of alert rules: one process of the fleet per interval, every state in the database.

:func:`evaluate` computes each rule's value per group over ``[now - window, now)`` through the query API
(:func:`~dramatiq_opmetrics.series.query_totals` and :func:`~dramatiq_opmetrics.series.query_stalled`: the
recent tier plus the raw rows it does not hold yet, so the value is current), then moves each alert (a rule
and a group of its ``group_by`` labels) through its states:

- ``ok`` -> ``pending`` when the condition holds (``above``/``below`` the threshold), -> ``firing`` once it
  has held for the rule's ``for`` (at once for ``for = "0m"``); back to ``ok`` as soon as it does not;
- a window without data follows the rule's ``no_data``: ``ok`` (the condition does not hold), ``keep``
  (the state stays as it is) or ``alert`` (the condition holds). A grouped rule applies it to the groups it
  has seen before (their rows), and to the empty group when it has seen none.

Notifications follow from the state and what the notifiers were last told (``notified_state``): a
``firing`` alert they have not heard of sends ``firing``, a ``firing`` one they were told of sends a
``reminder`` every ``repeat_interval``, an alert back to ``ok`` after they were told ``firing`` sends
``resolved``. A silenced rule sends nothing; what it held back is sent at the first evaluation after the
silence ends (:mod:`~dramatiq_opmetrics.alert_silences`). Alertmanager targets get a firing alert again at
every evaluation (see :mod:`~dramatiq_opmetrics.alert_delivery`) and no reminders (Alertmanager repeats).

Values are read by :func:`~dramatiq_opmetrics.alert_values.read_values` (one query per metric type for
the rules reading it).

**Exactly once.** The values are read first, outside any transaction; then one transaction takes the
evaluation lock (:func:`~dramatiq_opmetrics.locks.write_xact_lock`), reads the states, and writes the new
states, the transitions and the outbox rows together. An alert whose state was already evaluated at
``now`` or later is left alone, so a second evaluator of the same interval (or one whose clock lags)
changes and sends nothing, and a restarted one carries on from the stored states: a firing alert is never
lost nor sent twice. :class:`AlertEvaluator` runs it in a thread of every worker process, and one process
of the fleet evaluates per interval (the interval-claim machinery, like the queue depth sampler).

**Removed rules.** The states of a rule taken out of the rule set are deleted by the first evaluation
:data:`REMOVED_RULE_GRACE_INTERVALS` intervals after any evaluation last touched them, so ``alerts status``
and the exporter's ``dramatiq_opmetrics_alert_state`` stop showing them (a removed rule that was firing
would otherwise show as firing forever). Its notifiers are not told ``resolved`` (the rule, with its
targets and summary, is gone): the deletion is logged, as a warning for an alert that was firing. Its
transitions stay in the history.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, text
from sqlalchemy.dialects import sqlite

from .alert_delivery import deliver_due, enqueue
from .alert_rules import Rule, RuleSet, render_summary
from .alert_silences import silenced_rules
from .alert_values import read_values
from .interval_claims import DatabaseIntervalClaim, IntervalClaim, IntervalThread, interval_start
from .locks import write_xact_lock
from .models import ALERT_STATES_TABLE, AlertState, AlertTransition
from .notifiers import Event, Notification, group_key, is_alertmanager_target
from .queue_depth_sampler import describe_error

#: An Alertmanager alert stays valid for this many evaluation intervals after its last post (its
#: ``endsAt``), so a missed evaluation or two never resolves it there.
ALERTMANAGER_VALID_INTERVALS = 3
#: Seconds after each interval start that the evaluation runs (half the interval at most): the samples of
#: the interval's last second have been written by then.
EVALUATION_OFFSET_S = 5.0
#: Seconds between two delivery passes of the fleet (retries of failed deliveries; new notifications are
#: sent right after the evaluation that made them).
DEFAULT_DELIVERY_INTERVAL_S = 15.0
#: Seconds a statement of the evaluator may run (its own engine): a slow database delays alerts, never
#: the workers.
DEFAULT_ALERT_STATEMENT_TIMEOUT_S = 10.0
#: The fleet-wide job names of evaluation and delivery in the interval claims.
EVALUATION_JOB = "alert_evaluation"
DELIVERY_JOB = "alert_delivery"
#: The name of the evaluation lock.
EVALUATION_LOCK = "alert_evaluation"

#: The states of a rule that is no longer in the rule set are deleted once no evaluation has touched them
#: for this many evaluation intervals (during a rolling deploy, processes with the old rules may still
#: evaluate them for a few intervals).
REMOVED_RULE_GRACE_INTERVALS = 10

#: An alert's states.
OK, PENDING, FIRING = "ok", "pending", "firing"


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transition:
    """One state change of an alert made by an evaluation."""

    rule: str
    group: Mapping[str, str]
    from_state: str
    to_state: str
    at: dt.datetime
    value: float | None


@dataclass
class EvaluationResult:
    """What one :func:`evaluate` did: the alerts evaluated, their state changes and the notifications queued
    (one per notification; each has a row per target in the outbox), the posts of firing alerts to
    Alertmanager again, and the alerts left alone because they
    were evaluated at this time or later already."""

    at: dt.datetime
    alerts: int = 0
    transitions: list[Transition] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    #: Posts of alerts still firing to Alertmanager targets.
    reposts: int = 0
    already_evaluated: int = 0


@dataclass
class _Alert:
    """An alert's stored state, changed in memory by the evaluation and written back."""

    rule: str
    group: dict[str, str]
    state: str
    since: dt.datetime
    value: float | None
    evaluated_at: dt.datetime
    notified_state: str | None = None
    last_notified_at: dt.datetime | None = None

    def row(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "group_key": group_key(self.group),
            "group_labels": self.group,
            "state": self.state,
            "since": self.since,
            "value": self.value,
            "evaluated_at": self.evaluated_at,
            "notified_state": self.notified_state,
            "last_notified_at": self.last_notified_at,
        }


def _next_state(rule: Rule, alert: _Alert, value: float | None, now: dt.datetime) -> str:
    if value is None:
        if rule.no_data == "keep":
            return alert.state
        holds = rule.no_data == "alert"
    else:
        holds = rule.breached(value)
    if not holds:
        return OK
    if alert.state == FIRING:
        return FIRING
    started = alert.since if alert.state == PENDING else now
    return FIRING if now - started >= rule.for_ else PENDING


def evaluate(
    engine: Engine, ruleset: RuleSet, now: dt.datetime, *, interval: dt.timedelta | None = None
) -> EvaluationResult:
    """Evaluate every rule of ``ruleset`` at ``now`` and store the outcome (see the module documentation).

    Parameters:
      engine(Engine): the metrics database, migrated to revision 0008 or later.
      ruleset(RuleSet): the rules and notifiers.
      now(datetime): the evaluation's time, timezone-aware: windows end there, and every time stored is it.
      interval(timedelta | None): the evaluation interval, for the ``valid_until`` of Alertmanager posts;
        default the rule set's ``evaluation_interval``.

    Returns what was done. Database errors propagate (nothing is written then).

    Raises:
      ValueError: if ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got naive {now.isoformat()}")
    interval = interval or ruleset.evaluation_interval
    values = read_values(engine, ruleset.rules, now)
    result = EvaluationResult(at=now)
    with engine.begin() as connection:
        write_xact_lock(connection, EVALUATION_LOCK)
        stored: dict[str, dict[str, _Alert]] = {}
        rows = connection.execute(
            select(
                AlertState.rule,
                AlertState.group_labels,
                AlertState.state,
                AlertState.since,
                AlertState.value,
                AlertState.evaluated_at,
                AlertState.notified_state,
                AlertState.last_notified_at,
            ).where(AlertState.rule.in_([rule.name for rule in ruleset.rules]))
        ).all()
        for row in rows:
            alert = _Alert(row[0], dict(row[1]), *row[2:])
            stored.setdefault(alert.rule, {})[group_key(alert.group)] = alert
        _delete_removed_rules(connection, ruleset, now - interval * REMOVED_RULE_GRACE_INTERVALS)
        silenced = silenced_rules(connection, now)
        changed: list[_Alert] = []
        outbox: list[tuple[Notification, list[str], bool]] = []
        for rule in ruleset.rules:
            rule_values_now = {
                group_key(dict(group)): (dict(group), value) for group, value in values[rule.name].items()
            }
            known = stored.get(rule.name, {})
            keys = set(rule_values_now) | set(known)
            if not keys and rule.no_data == "alert":
                keys = {""}
            targets = [url for name in rule.notify for url in ruleset.notifiers[name].urls]
            for key in sorted(keys):
                group, value = rule_values_now.get(key, (known[key].group if key in known else {}, None))
                found = known.get(key)
                if found is not None and found.evaluated_at >= now:
                    result.already_evaluated += 1
                    continue
                alert = found if found is not None else _Alert(rule.name, group, OK, now, None, now)
                result.alerts += 1
                state = _next_state(rule, alert, value, now)
                if state != alert.state:
                    result.transitions.append(Transition(rule.name, group, alert.state, state, now, value))
                    alert.state, alert.since = state, now
                alert.value, alert.evaluated_at = value, now
                if rule.name not in silenced:
                    outbox.extend(_notifications(rule, ruleset, alert, targets, now, interval))
                changed.append(alert)
        if changed:
            _write_states(connection, changed)
        if result.transitions:
            connection.execute(
                insert(AlertTransition),
                [
                    {
                        "rule": transition.rule,
                        "group_key": group_key(transition.group),
                        "from_state": transition.from_state,
                        "to_state": transition.to_state,
                        "at": transition.at,
                        "value": transition.value,
                    }
                    for transition in result.transitions
                ],
            )
        for notification, notification_targets, repost in outbox:
            enqueue(connection, notification, notification_targets)
            if repost:
                result.reposts += 1
            else:
                result.notifications.append(notification)
    return result


def _delete_removed_rules(connection: Connection, ruleset: RuleSet, before: dt.datetime) -> None:
    """Delete the states of the rules not in ``ruleset`` that no evaluation touched from ``before`` on (see
    the module documentation), logging what was deleted."""
    deleted = connection.execute(
        delete(AlertState)
        .where(AlertState.rule.not_in([rule.name for rule in ruleset.rules]), AlertState.evaluated_at < before)
        .returning(AlertState.rule, AlertState.state)
    ).all()
    for name in sorted({rule_name for rule_name, _ in deleted}):
        states = [state for rule_name, state in deleted if rule_name == name]
        firing = states.count(FIRING)
        log = logger.warning if firing else logger.info
        log(
            "Alert rule %r is no longer in the rule set: deleted its %d stored alert states%s.",
            name, len(states),
            f" ({firing} firing: their notifiers are not told it resolved)" if firing else "",
        )  # fmt: skip


#: The columns of an alert state that an evaluation changes.
_STATE_UPDATES = ("state", "since", "value", "evaluated_at", "notified_state", "last_notified_at")


def _write_states(connection: Connection, alerts: Sequence[_Alert]) -> None:
    """Insert or update the states of ``alerts``: on PostgreSQL in one statement (the rows as one JSON
    parameter: thousands of alerts in one round trip), on SQLite row by row (one process, a local file)."""
    if connection.dialect.name != "postgresql":
        statement = sqlite.insert(AlertState)
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=["rule", "group_key"], set_={name: statement.excluded[name] for name in _STATE_UPDATES}
            ),
            [alert.row() for alert in alerts],
        )
        return
    rows = [
        {
            **alert.row(),
            "since": alert.since.isoformat(),
            "evaluated_at": alert.evaluated_at.isoformat(),
            "last_notified_at": None if alert.last_notified_at is None else alert.last_notified_at.isoformat(),
        }
        for alert in alerts
    ]
    updates = ", ".join(f"{name} = excluded.{name}" for name in _STATE_UPDATES)
    connection.execute(
        text(
            f"INSERT INTO {ALERT_STATES_TABLE} (rule, group_key, group_labels, {', '.join(_STATE_UPDATES)})"
            " SELECT rule, group_key, group_labels, state, since, value, evaluated_at, notified_state,"
            " last_notified_at FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(rule text, group_key text,"
            " group_labels jsonb, state text, since timestamptz, value float8, evaluated_at timestamptz,"
            " notified_state text, last_notified_at timestamptz)"
            f" ON CONFLICT (rule, group_key) DO UPDATE SET {updates}"
        ),
        {"rows": json.dumps(rows)},
    )


def _notifications(
    rule: Rule, ruleset: RuleSet, alert: _Alert, targets: Sequence[str], now: dt.datetime, interval: dt.timedelta
) -> Iterable[tuple[Notification, list[str], bool]]:
    """The notifications ``alert`` sends now, each with its targets and whether it is a post to Alertmanager
    again; what the notifiers are told is noted in ``alert``."""
    alertmanagers = [target for target in targets if is_alertmanager_target(target)]
    others = [target for target in targets if not is_alertmanager_target(target)]
    event: Event | None = None
    if alert.state == FIRING and alert.notified_state != FIRING:
        event = "firing"
    elif alert.state == FIRING and alert.last_notified_at is not None:
        if now - alert.last_notified_at >= rule.repeat_interval:
            event = "reminder"
    elif alert.state != FIRING and alert.notified_state == FIRING:
        event = "resolved"
    if event is not None:
        alert.notified_state = OK if event == "resolved" else FIRING
        alert.last_notified_at = now
        chosen = others if event == "reminder" else targets
        if chosen:
            yield _notification(rule, ruleset, alert, event, now, interval), list(chosen), False
    if alert.state == FIRING and event != "firing" and alertmanagers:
        # Alertmanager forgets an alert at its endsAt: post it again while it fires.
        yield _notification(rule, ruleset, alert, "firing", now, interval), alertmanagers, True


def _notification(
    rule: Rule, ruleset: RuleSet, alert: _Alert, event: Event, now: dt.datetime, interval: dt.timedelta
) -> Notification:
    link = None
    if ruleset.dashboard_url:
        link = f"{ruleset.dashboard_url.rstrip('/')}/alerts?rule={urllib.parse.quote(rule.name)}"
    return Notification(
        rule=rule.name,
        group=dict(alert.group),
        event=event,
        severity=rule.severity,
        summary=render_summary(rule, alert.value, alert.group),
        value=alert.value,
        threshold=rule.threshold,
        comparison=rule.comparison,
        since=alert.since,
        at=now,
        valid_until=now + interval * ALERTMANAGER_VALID_INTERVALS if alert.state == FIRING else None,
        dashboard_url=link,
    )


class AlertEvaluator:
    """Evaluates a rule set for the whole fleet and delivers its notifications, from background threads.

    At each wall-clock multiple of the evaluation interval (plus :data:`EVALUATION_OFFSET_S`) every process
    running one tries to claim the interval; the one that claims it runs :func:`evaluate` for the interval's
    start, then a delivery pass (:func:`~dramatiq_opmetrics.alert_delivery.deliver_due`). Every
    ``delivery_interval_s`` one process of the fleet (claimed the same way) runs a delivery pass, which
    retries failed deliveries when they are due. Errors (the database down, a notifier failing) are logged,
    one warning per interval, and never raised: the next interval tries again.

    Example::

        evaluator = AlertEvaluator(engine, load_rules("alerts.toml"))
        evaluator.start()
        ...
        evaluator.stop()

    Parameters:
      engine(Engine): the metrics database (give it a short statement timeout:
        :data:`DEFAULT_ALERT_STATEMENT_TIMEOUT_S`).
      ruleset(RuleSet): the rules.
      claim(IntervalClaim | None): how intervals are claimed; default a row in the metrics database (pass a
        :class:`~dramatiq_opmetrics.interval_claims.RedisIntervalClaim` on a Redis fleet).
      interval_s(float | None): seconds between evaluations; default the rule set's ``evaluation_interval``.
      delivery_interval_s(float): seconds between delivery passes; default
        :data:`DEFAULT_DELIVERY_INTERVAL_S` (15).
    """

    def __init__(
        self,
        engine: Engine,
        ruleset: RuleSet,
        *,
        claim: IntervalClaim | None = None,
        interval_s: float | None = None,
        delivery_interval_s: float = DEFAULT_DELIVERY_INTERVAL_S,
    ) -> None:
        self.engine = engine
        self.ruleset = ruleset
        self.interval_s = float(interval_s or ruleset.evaluation_interval.total_seconds())
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        if not delivery_interval_s > 0:
            raise ValueError(f"delivery_interval_s must be a positive number of seconds, got {delivery_interval_s!r}")
        self.delivery_interval_s = float(delivery_interval_s)
        self.claimer = claim if claim is not None else DatabaseIntervalClaim(engine)
        self._evaluation = IntervalThread(
            "opmetrics-alert-evaluation",
            self.interval_s,
            self._evaluate_logging_errors,
            offset_s=min(EVALUATION_OFFSET_S, self.interval_s / 2),
        )
        self._delivery = IntervalThread(
            "opmetrics-alert-delivery",
            self.delivery_interval_s,
            self._deliver_logging_errors,
            offset_s=min(EVALUATION_OFFSET_S, self.delivery_interval_s / 2) / 2,
        )

    def evaluate_once(self, at: dt.datetime | None = None) -> EvaluationResult | None:
        """Claim the interval holding ``at`` (default now) and, if claimed, evaluate at its start and deliver;
        None if another process had claimed it."""
        start = interval_start(at or dt.datetime.now(dt.UTC), self.interval_s)
        if not self.claimer.claim(EVALUATION_JOB, start, self.interval_s):
            return None
        result = evaluate(self.engine, self.ruleset, start, interval=dt.timedelta(seconds=self.interval_s))
        if result.notifications or result.transitions:
            logger.info(
                "Alert evaluation at %s: %d state changes, %d notifications.",
                start.isoformat(), len(result.transitions), len(result.notifications),
            )  # fmt: skip
        self._deliver()
        return result

    def deliver_once(self, at: dt.datetime | None = None) -> None:
        """Claim the delivery interval holding ``at`` (default now) and, if claimed, run a delivery pass."""
        start = interval_start(at or dt.datetime.now(dt.UTC), self.delivery_interval_s)
        if self.claimer.claim(DELIVERY_JOB, start, self.delivery_interval_s):
            self._deliver()

    def _deliver(self) -> None:
        deliver_due(self.engine)

    def start(self) -> None:
        """Start evaluating and delivering in daemon threads (once)."""
        self._evaluation.start()
        self._delivery.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the threads (an evaluation or delivery in progress finishes first, up to ``timeout_s``)."""
        self._evaluation.stop(timeout_s / 2)
        self._delivery.stop(timeout_s / 2)

    def _evaluate_logging_errors(self, at: dt.datetime) -> None:
        try:
            self.evaluate_once(at)
        except Exception as error:
            logger.warning(
                "Alert evaluation skipped the interval starting %s: %s", at.isoformat(), describe_error(error)
            )
            logger.debug("Alert evaluation failed.", exc_info=True)

    def _deliver_logging_errors(self, at: dt.datetime) -> None:
        try:
            self.deliver_once(at)
        except Exception as error:
            logger.warning("Alert delivery pass at %s failed: %s", at.isoformat(), describe_error(error))
            logger.debug("Alert delivery failed.", exc_info=True)

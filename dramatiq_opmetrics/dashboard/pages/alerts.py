"""Alerts (``/alerts``) and the banner of firing alerts that every page shows.

Both read what the evaluator (:mod:`~dramatiq_opmetrics.alert_evaluator`) stored, never evaluate anything
themselves, so every dashboard shows the same state as ``dramatiq-opmetrics alerts status``, whichever
process evaluated:

- :func:`banner`: the firing alerts, most severe first (at most :data:`BANNER_ALERTS` named, the rest
  counted), each with its rule, group labels, since when, last value and severity, linking to this page.
- :func:`view`: each rule and group's state (``ok``, ``pending``, ``firing``), since when, last value and
  evaluation; the silences in force; the notifications not delivered yet (waiting, failing with their last
  error, or given up); and the latest :data:`ALERTS_HISTORY_LIMIT` transitions, newest first. ``rule``
  narrows all of it to one rule (the link a notification carries is ``/alerts?rule=NAME``).

A rule's severity, threshold and summary live in the rule file, not in the database: with the rules given
to the dashboard (``dashboard --rules FILE``, ``$OPMETRICS_ALERT_RULES``; see
:class:`~dramatiq_opmetrics.dashboard.data.DashboardData`) they come from there, and the page also lists
the rules not evaluated yet and marks stored alerts whose rule left the file (those are not in the
banner). Without the rules (or for a rule that left the file), they come from the alert's latest notification
among the :data:`NOTIFICATIONS_SCANNED` newest rows of the outbox, if any (else they show as unknown).

A database without the alert tables (not migrated to revision 0008) has no banner, and this page says so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, inspect, select

from ...alert_delivery import undelivered
from ...alert_rules import DEFAULT_EVALUATION_INTERVAL, SEVERITIES, Rule, render_summary
from ...alert_silences import list_silences
from ...alert_status import latest_transitions
from ...models import ALERT_STATES_TABLE, AlertDelivery, AlertState
from ...notifiers import format_labels, format_value, masked_target
from ...report import format_instant
from ..data import DashboardData

#: How many transitions the page lists, newest first.
ALERTS_HISTORY_LIMIT = 100
#: How many undelivered notifications the page lists, oldest first (the rest are counted).
DELIVERIES_LIMIT = 100
#: How many firing alerts the banner names (the rest are counted, "and 3 more").
BANNER_ALERTS = 5
#: The latest evaluation is flagged as old (is an evaluator running?) after this many evaluation intervals.
STALE_INTERVALS = 3
#: How many of the newest outbox rows are read for the severity of alerts whose rule the dashboard was not
#: given (see :func:`banner`).
NOTIFICATIONS_SCANNED = 500
#: The order of the states on the page.
STATE_ORDER = ("firing", "pending", "ok")


def alert_tables_exist(connection: Connection) -> bool:
    """Whether the database has the alert tables (migration 0008)."""
    return inspect(connection).has_table(ALERT_STATES_TABLE)


def banner(data: DashboardData) -> dict[str, Any] | None:
    """The firing alerts for the banner: ``{"alerts": [...], "more": n, "firing": total}``, most severe and
    oldest first, or None when the database has no alert tables (no banner at all).

    Each alert is a dict as :func:`view` lists them. With rules given to the dashboard, alerts of rules no
    longer in the file are left out.
    """
    with data.engine.connect() as connection:
        if not alert_tables_exist(connection):
            return None
        alerts = [alert for alert in _alerts(connection, data, states=("firing",)) if alert["in_rules"] is not False]
    alerts.sort(key=_severity_first)
    return {"alerts": alerts[:BANNER_ALERTS], "more": max(0, len(alerts) - BANNER_ALERTS), "firing": len(alerts)}


def view(data: DashboardData, rule: str | None = None) -> dict[str, Any]:
    """Every alert's state, the silences, the undelivered notifications and the latest transitions (of
    ``rule`` only, if given); every value JSON-ready (times as epoch seconds, with ``_text`` twins in UTC).

    ``tables`` is False (and the rest empty) when the database has no alert tables.
    """
    now = data.clock()
    ruleset = data.alert_rules
    result: dict[str, Any] = {
        "rule": rule,
        "rules_file": ruleset.source if ruleset is not None else None,
        "generated_at": now.timestamp(),
        "tables": False,
        "alerts": [],
        "counts": dict.fromkeys(STATE_ORDER, 0),
        "silences": [],
        "deliveries": [],
        "deliveries_more": 0,
        "history": [],
        "history_limit": ALERTS_HISTORY_LIMIT,
        "last_evaluated": None,
        "last_evaluated_text": None,
        "stale": False,
    }
    with data.engine.connect() as connection:
        if not alert_tables_exist(connection):
            return result
        alerts = _alerts(connection, data, rule=rule)
        silences = [silence for silence in list_silences(connection, now=now) if rule is None or silence.rule == rule]
        waiting = [row for row in undelivered(connection) if rule is None or row.alert_key.startswith(f"{rule}{{")]
        history = _history(connection, rule)
    if ruleset is not None:
        seen = {alert["rule"] for alert in alerts}
        alerts += [
            _unevaluated(candidate)
            for candidate in ruleset.rules
            if candidate.name not in seen and (rule is None or candidate.name == rule)
        ]
    alerts.sort(key=lambda alert: (STATE_ORDER.index(alert["state"]), *_severity_first(alert)))
    for alert in alerts:
        result["counts"][alert["state"]] += 1
    evaluated = [alert["evaluated_at"] for alert in alerts if alert["evaluated_at"] is not None]
    if evaluated:
        latest = max(evaluated)
        interval = ruleset.evaluation_interval if ruleset is not None else DEFAULT_EVALUATION_INTERVAL
        result["last_evaluated"] = latest
        result["last_evaluated_text"] = format_instant(latest)
        result["stale"] = now.timestamp() - latest > STALE_INTERVALS * interval.total_seconds()
    result.update(
        tables=True,
        alerts=alerts,
        silences=[
            {
                "id": silence.id,
                "rule": silence.rule,
                "until": silence.until.timestamp(),
                "until_text": format_instant(silence.until),
                "reason": silence.reason,
            }
            for silence in silences
        ],
        deliveries=[_delivery(row) for row in waiting[:DELIVERIES_LIMIT]],
        deliveries_more=max(0, len(waiting) - DELIVERIES_LIMIT),
        history=history,
    )
    return result


def _alerts(
    connection: Connection, data: DashboardData, *, rule: str | None = None, states: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """The stored alerts (of ``rule``, in ``states``), each a JSON-ready dict."""
    now = data.clock()
    query = select(
        AlertState.rule,
        AlertState.group_key,
        AlertState.group_labels,
        AlertState.state,
        AlertState.since,
        AlertState.value,
        AlertState.evaluated_at,
    ).order_by(AlertState.rule, AlertState.group_key)
    if rule is not None:
        query = query.where(AlertState.rule == rule)
    if states is not None:
        query = query.where(AlertState.state.in_(list(states)))
    rows = connection.execute(query).all()
    if not rows:
        return []
    rules = {found.name: found for found in data.alert_rules.rules} if data.alert_rules is not None else None
    silenced: dict[str, dt.datetime] = {}
    for silence in list_silences(connection, now=now):
        silenced[silence.rule] = max(silence.until, silenced.get(silence.rule, silence.until))
    unknown = {row.rule for row in rows if rules is None or row.rule not in rules}
    notified = _latest_notifications(connection, unknown) if unknown else {}
    alerts = []
    for row in rows:
        labels = dict(row.group_labels)
        found = rules.get(row.rule) if rules is not None else None
        alert: dict[str, Any] = {
            "rule": row.rule,
            "group": labels,
            "group_text": format_labels(labels),
            "state": row.state,
            "since": row.since.timestamp(),
            "since_text": format_instant(row.since),
            "age_s": max(0.0, (now - row.since).total_seconds()),
            "value": row.value,
            "value_text": format_value(row.value),
            "evaluated_at": row.evaluated_at.timestamp(),
            "evaluated_text": format_instant(row.evaluated_at),
            "silenced_until": format_instant(silenced[row.rule]) if row.rule in silenced else None,
            # None: the dashboard was not given the rules, so it cannot tell.
            "in_rules": None if rules is None else found is not None,
        }
        if found is not None:
            alert.update(_from_rule(found, row.value, labels))
        else:
            latest = notified.get(f"{row.rule}{{{row.group_key}}}", {})
            alert.update(
                severity=latest.get("severity"),
                summary=latest.get("summary"),
                condition=_condition(latest.get("comparison"), latest.get("threshold")),
            )
        alerts.append(alert)
    return alerts


def _from_rule(rule: Rule, value: float | None, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "severity": rule.severity,
        "summary": render_summary(rule, value, labels),
        "condition": _condition(rule.comparison, rule.threshold),
    }


def _unevaluated(rule: Rule) -> dict[str, Any]:
    """A rule of the file with no stored alert yet (``ok``, never evaluated)."""
    return {
        "rule": rule.name,
        "group": {},
        "group_text": format_labels({}),
        "state": "ok",
        "since": None,
        "since_text": None,
        "age_s": None,
        "value": None,
        "value_text": format_value(None),
        "evaluated_at": None,
        "evaluated_text": None,
        "silenced_until": None,
        "in_rules": True,
        **_from_rule(rule, None, {}),
        "summary": None,
    }


def _latest_notifications(connection: Connection, rules: set[str]) -> dict[str, dict[str, Any]]:
    """The latest notification per alert key of ``rules`` (its severity, summary, threshold) among the
    :data:`NOTIFICATIONS_SCANNED` newest rows of the outbox: a read of bounded cost on every page, whatever
    the outbox holds (a firing alert posted to Alertmanager at each evaluation is always among them)."""
    latest: dict[str, dict[str, Any]] = {}
    rows = connection.execute(
        select(AlertDelivery.alert_key, AlertDelivery.notification)
        .order_by(AlertDelivery.id.desc())
        .limit(NOTIFICATIONS_SCANNED)
    ).all()
    for key, notification in rows:
        if key not in latest and notification.get("rule") in rules:
            latest[key] = notification
    return latest


def _history(connection: Connection, rule: str | None) -> list[dict[str, Any]]:
    """The latest :data:`ALERTS_HISTORY_LIMIT` transitions (of ``rule``), newest first."""
    rows = latest_transitions(connection, rule=rule, limit=ALERTS_HISTORY_LIMIT)
    return [
        {
            "at": row.at.timestamp(),
            "at_text": format_instant(row.at),
            "rule": row.rule,
            "group_text": row.group_key.replace(",", ", ") or format_labels({}),
            "from_state": row.from_state,
            "to_state": row.to_state,
            "value_text": format_value(row.value),
        }
        for row in rows
    ]


def _delivery(row: Any) -> dict[str, Any]:
    """An outbox row as the page lists it: its status is waiting, failing or given up."""
    status = "given up" if row.next_attempt_at is None else "failing" if row.last_error is not None else "waiting"
    return {
        "id": row.id,
        "event": row.notification.get("event", "?"),
        "alert": row.alert_key,
        "target": masked_target(row.target),
        "status": status,
        "attempts": row.attempts,
        "created_text": format_instant(row.created_at),
        "next_attempt_text": None if row.next_attempt_at is None else format_instant(row.next_attempt_at),
        "last_error": row.last_error,
    }


def _condition(comparison: str | None, threshold: float | None) -> str | None:
    if comparison is None or threshold is None:
        return None
    return f"{comparison} {format_value(threshold)}"


def _severity_first(alert: Mapping[str, Any]) -> tuple[int, float, str, str]:
    """Most severe first (unknown severities last), then the oldest, then by rule and group."""
    severity = alert.get("severity")
    rank = SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)
    since = alert["since"] if alert["since"] is not None else float("inf")
    return rank, since, alert["rule"], alert["group_text"]

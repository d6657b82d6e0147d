"""What ``alerts status`` and ``alerts history`` print: the stored alert states, the deliveries not made
yet, and the history of transitions, read from the database (any process sees what the evaluator did)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select

from .alert_delivery import undelivered
from .alert_rules import RuleSet
from .alert_silences import list_silences
from .database import connection_for
from .models import AlertState, AlertTransition
from .notifiers import format_value, masked_target
from .report import format_instant

#: How many transitions ``alerts history`` prints by default.
DEFAULT_HISTORY_LIMIT = 50


@dataclass(frozen=True)
class AlertStatus:
    """One alert as stored: its rule, group key (``""``: ungrouped), state, since, last value and evaluation."""

    rule: str
    group: str
    state: str
    since: dt.datetime | None
    value: float | None
    evaluated_at: dt.datetime | None


def _instant(at: dt.datetime | None) -> str:
    return "-" if at is None else format_instant(at)


def alert_statuses(connectable: Engine | Connection, ruleset: RuleSet | None = None) -> list[AlertStatus]:
    """Every stored alert by rule and group; with ``ruleset``, also its rules that have none yet (as ``ok``)."""
    with connection_for(connectable) as connection:
        rows = connection.execute(
            select(
                AlertState.rule,
                AlertState.group_key,
                AlertState.state,
                AlertState.since,
                AlertState.value,
                AlertState.evaluated_at,
            ).order_by(AlertState.rule, AlertState.group_key)
        ).all()
    statuses = [AlertStatus(*row) for row in rows]
    if ruleset is not None:
        seen = {status.rule for status in statuses}
        statuses += [
            AlertStatus(rule.name, "", "ok", None, None, None) for rule in ruleset.rules if rule.name not in seen
        ]
        statuses.sort(key=lambda status: (status.rule, status.group))
    return statuses


def status_lines(connectable: Engine | Connection, ruleset: RuleSet | None = None) -> list[str]:
    """The lines ``alerts status`` prints: a table of the alerts, the silences in force and the deliveries
    not made yet (waiting, failing with their last error, or given up)."""
    with connection_for(connectable) as connection:
        statuses = alert_statuses(connection, ruleset)
        silences = list_silences(connection)
        waiting = undelivered(connection)
    lines = [f"{'RULE':<24} {'GROUP':<32} {'STATE':<8} {'SINCE (UTC)':<19} {'VALUE':>10}  EVALUATED (UTC)"]
    for status in statuses:
        lines.append(
            f"{status.rule:<24} {status.group or '(all)':<32} {status.state:<8} {_instant(status.since):<19}"
            f" {format_value(status.value):>10}  {_instant(status.evaluated_at)}"
        )
    if not statuses:
        lines.append("(no alert evaluated yet)")
    for silence in silences:
        reason = f": {silence.reason}" if silence.reason else ""
        lines.append(f"silence #{silence.id}: {silence.rule} until {_instant(silence.until)}{reason}")
    failing = [row for row in waiting if row.last_error is not None]
    lines.append(f"deliveries not made yet: {len(waiting)} ({len(failing)} failing)")
    for row in waiting:
        event = row.notification.get("event", "?")
        where = f"#{row.id} {event} of {row.alert_key} to {masked_target(row.target)}"
        if row.next_attempt_at is None:
            lines.append(f"  {where}: given up after {row.attempts} attempts: {row.last_error}")
        elif row.last_error is not None:
            next_at = _instant(row.next_attempt_at)
            lines.append(f"  {where}: failed {row.attempts} times, next attempt {next_at}: {row.last_error}")
        else:
            lines.append(f"  {where}: waiting since {_instant(row.created_at)}")
    return lines


def latest_transitions(connection: Connection, *, rule: str | None, limit: int) -> list[Any]:
    """The latest ``limit`` transitions (of ``rule`` only if given), newest first: rows of ``at``, ``rule``,
    ``group_key``, ``from_state``, ``to_state`` and ``value`` (for ``alerts history`` and the dashboard)."""
    query = select(
        AlertTransition.at,
        AlertTransition.rule,
        AlertTransition.group_key,
        AlertTransition.from_state,
        AlertTransition.to_state,
        AlertTransition.value,
    )
    if rule is not None:
        query = query.where(AlertTransition.rule == rule)
    return list(connection.execute(query.order_by(AlertTransition.id.desc()).limit(limit)).all())


def history_lines(
    connectable: Engine | Connection, *, rule: str | None = None, limit: int = DEFAULT_HISTORY_LIMIT
) -> list[str]:
    """The lines ``alerts history`` prints: the latest ``limit`` transitions (of ``rule`` only if given),
    oldest first."""
    with connection_for(connectable) as connection:
        rows = latest_transitions(connection, rule=rule, limit=limit)
    lines = [f"{'AT (UTC)':<19} {'RULE':<24} {'GROUP':<32} {'CHANGE':<18} {'VALUE':>10}"]
    for at, name, group, before, after, value in reversed(rows):
        change = f"{before} -> {after}"
        lines.append(f"{_instant(at):<19} {name:<24} {group or '(all)':<32} {change:<18} {format_value(value):>10}")
    if not rows:
        lines.append("(no transitions yet)")
    return lines

"""Silences: a rule's notifications held back until a time (``alerts silence RULE --for 2h``).

A silenced alert still changes state and its history is still written; only its notifications wait. They
are **deferred, not dropped**, and collapsed to what is true when the silence ends: the evaluator compares
an alert's state with what its notifiers were last told (:class:`~dramatiq_opmetrics.models.AlertState`'s
``notified_state``), so at the first evaluation after the silence an alert still firing sends its
``firing`` notification, one whose ``firing`` was sent before the silence and that resolved during it sends
``resolved``, and one that fired and resolved within the silence sends nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, insert, select

from .database import connection_for
from .models import AlertSilence

#: The longest silence accepted (a year).
MAX_SILENCE = dt.timedelta(days=366)


@dataclass(frozen=True)
class Silence:
    """One silence: ``rule``'s notifications are held back until ``until``."""

    id: int
    rule: str
    until: dt.datetime
    reason: str
    created_at: dt.datetime


def add_silence(
    engine: Engine, rule: str, duration: dt.timedelta, *, reason: str = "", now: dt.datetime | None = None
) -> Silence:
    """Silence ``rule`` for ``duration`` from ``now`` (default: the current time) and return the silence.

    Raises:
      ValueError: if ``rule`` is empty or ``duration`` is not positive or longer than :data:`MAX_SILENCE`.
    """
    if not rule:
        raise ValueError("the rule to silence must be named")
    if not dt.timedelta(0) < duration <= MAX_SILENCE:
        raise ValueError(f"a silence lasts more than 0 s and at most {MAX_SILENCE.days} days, got {duration}")
    now = now or dt.datetime.now(dt.UTC)
    with engine.begin() as connection:
        row = connection.execute(
            insert(AlertSilence)
            .values(rule=rule, until=now + duration, reason=reason, created_at=now)
            .returning(AlertSilence.id)
        ).scalar_one()
    return Silence(row, rule, now + duration, reason, now)


def list_silences(connectable: Engine | Connection, *, now: dt.datetime | None = None) -> list[Silence]:
    """The silences that have not ended at ``now`` (default: the current time), by rule then end."""
    now = now or dt.datetime.now(dt.UTC)
    with connection_for(connectable) as connection:
        rows = connection.execute(
            select(AlertSilence.id, AlertSilence.rule, AlertSilence.until, AlertSilence.reason, AlertSilence.created_at)
            .where(AlertSilence.until > now)
            .order_by(AlertSilence.rule, AlertSilence.until)
        ).all()
    return [Silence(*row) for row in rows]


def silenced_rules(connection: Connection, now: dt.datetime) -> set[str]:
    """The rules with a silence in force at ``now``."""
    return set(connection.execute(select(AlertSilence.rule).where(AlertSilence.until > now)).scalars())


def remove_silences(engine: Engine, id_or_rule: str) -> int:
    """Remove the silence with id ``id_or_rule`` (digits), or every silence of the rule named so; return how
    many were removed. Ended silences are removed too (they no longer matter)."""
    condition = AlertSilence.id == int(id_or_rule) if id_or_rule.isdigit() else AlertSilence.rule == id_or_rule
    with engine.begin() as connection:
        return connection.execute(delete(AlertSilence).where(condition)).rowcount

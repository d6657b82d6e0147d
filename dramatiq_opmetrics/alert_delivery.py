"""The outbox of alert notifications: one row per notification and target, delivered until accepted.

The evaluator (:mod:`~dramatiq_opmetrics.alert_evaluator`) never sends anything itself: in the transaction
that changes an alert's state it adds a row per target to ``opmetrics_alert_deliveries``
(:func:`enqueue`), so a notification exists exactly when its state change does, whatever process or
restart comes next. :func:`deliver_due` then sends the rows that are due through
:func:`dramatiq_opmetrics.notifiers.send`:

- **Claiming.** A row is leased before it is sent: its ``next_attempt_at`` moves :data:`DELIVERY_LEASE`
  ahead and ``attempts`` goes up, in a short transaction of its own (on PostgreSQL with
  ``FOR UPDATE SKIP LOCKED``, so processes delivering at once take different rows; SQLite serialises the
  claims by its write lock). No transaction is open while a target is contacted. A process that dies in
  the middle of a send leaves the row leased; it is sent again once the lease ends (at least once: a target
  may then see a notification twice, never zero times).
- **Order.** A row is due only when no earlier row of the same target is still undelivered (and not given
  up): a target receives an alert's ``firing`` before its ``resolved`` even across an outage.
- **Retries.** A failed send (:class:`~dramatiq_opmetrics.notifiers.DeliveryError`, or any other error of
  a notifier) is logged (one warning with the alert and the target, its password masked),
  stored in ``last_error`` and retried after :data:`RETRY_BACKOFF` doubled per attempt, at most
  :data:`MAX_RETRY_BACKOFF`; after :data:`GIVE_UP_AFTER` it is given up (``next_attempt_at`` NULL,
  logged as an error, still listed by ``alerts status``). Nothing is raised into the caller's thread.
- **Alertmanager.** A firing alert is posted to ``alertmanager+http(s)://`` targets again at each
  evaluation, with ``valid_until`` (its ``endsAt``) a few evaluation intervals ahead, as Prometheus does; an
  undelivered older post of the same alert to the same target is superseded (deleted) by the newer one, so
  an Alertmanager that is down for a day gets one post when it is back, not 1,440.
- **Housekeeping.** Delivered rows older than :data:`DELIVERED_RETENTION` are deleted by each pass.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, delete, exists, insert, select, update
from sqlalchemy.orm import aliased

from . import notifiers
from .locks import write_xact_lock
from .models import AlertDelivery
from .notifiers import Notification, is_alertmanager_target, masked_target
from .queue_depth_sampler import describe_error

#: How long a claimed row is leased to the process sending it (longer than any send takes).
DELIVERY_LEASE = dt.timedelta(minutes=2)
#: The wait before the first retry of a failed send; doubled per further attempt.
RETRY_BACKOFF = dt.timedelta(seconds=15)
#: The longest wait between two attempts.
MAX_RETRY_BACKOFF = dt.timedelta(minutes=10)
#: How long after a notification was made its delivery is given up.
GIVE_UP_AFTER = dt.timedelta(hours=24)
#: How long delivered rows are kept (``alerts status`` shows recent deliveries).
DELIVERED_RETENTION = dt.timedelta(days=7)
#: The most rows one :func:`deliver_due` sends (it runs again at the next delivery interval).
MAX_DELIVERIES_PER_PASS = 200

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryResult:
    """What one :func:`deliver_due` pass did: rows delivered, failed (to be retried) and given up."""

    delivered: int = 0
    failed: int = 0
    given_up: int = 0


def notification_to_json(notification: Notification) -> dict[str, Any]:
    """``notification`` as a JSON object (datetimes as ISO 8601 strings)."""
    return {
        "rule": notification.rule,
        "group": dict(notification.group),
        "event": notification.event,
        "severity": notification.severity,
        "summary": notification.summary,
        "value": notification.value,
        "threshold": notification.threshold,
        "comparison": notification.comparison,
        "since": notification.since.isoformat(),
        "at": notification.at.isoformat(),
        "valid_until": None if notification.valid_until is None else notification.valid_until.isoformat(),
        "dashboard_url": notification.dashboard_url,
    }


def notification_from_json(data: Mapping[str, Any]) -> Notification:
    """The :class:`~dramatiq_opmetrics.notifiers.Notification` stored by :func:`notification_to_json`."""
    valid_until = data.get("valid_until")
    return Notification(
        rule=data["rule"],
        group=dict(data["group"]),
        event=data["event"],
        severity=data["severity"],
        summary=data["summary"],
        value=data["value"],
        threshold=data["threshold"],
        comparison=data["comparison"],
        since=dt.datetime.fromisoformat(data["since"]),
        at=dt.datetime.fromisoformat(data["at"]),
        valid_until=None if valid_until is None else dt.datetime.fromisoformat(valid_until),
        dashboard_url=data.get("dashboard_url"),
    )


def enqueue(connection: Connection, notification: Notification, targets: Iterable[str]) -> int:
    """Add one outbox row per target for ``notification``, in the caller's transaction; return how many.

    For an Alertmanager target, undelivered rows of the same alert that are not being sent right now are
    deleted first: the newer post carries everything the target needs.
    """
    targets = list(dict.fromkeys(targets))
    if not targets:
        return 0
    payload = notification_to_json(notification)
    for target in targets:
        if is_alertmanager_target(target):
            connection.execute(
                delete(AlertDelivery).where(
                    AlertDelivery.alert_key == notification.key,
                    AlertDelivery.target == target,
                    AlertDelivery.delivered_at.is_(None),
                    AlertDelivery.next_attempt_at <= notification.at,
                )
            )
    connection.execute(
        insert(AlertDelivery),
        [
            {
                "alert_key": notification.key,
                "target": target,
                "notification": payload,
                "created_at": notification.at,
                "attempts": 0,
                "next_attempt_at": notification.at,
                "delivered_at": None,
                "last_error": None,
            }
            for target in targets
        ],
    )
    return len(targets)


#: The columns of an outbox row, as read by :func:`undelivered` and a claim.
_COLUMNS = (
    AlertDelivery.id,
    AlertDelivery.alert_key,
    AlertDelivery.target,
    AlertDelivery.notification,
    AlertDelivery.created_at,
    AlertDelivery.attempts,
    AlertDelivery.next_attempt_at,
    AlertDelivery.delivered_at,
    AlertDelivery.last_error,
)


def _claim(engine: Engine, now: dt.datetime) -> Row[Any] | None:
    """Lease the next due row (see the module documentation), or None if there is none."""
    earlier = aliased(AlertDelivery)
    blocked = exists().where(
        earlier.target == AlertDelivery.target,
        earlier.id < AlertDelivery.id,
        earlier.delivered_at.is_(None),
        earlier.next_attempt_at.is_not(None),
    )
    due = (
        select(AlertDelivery.id)
        .where(AlertDelivery.delivered_at.is_(None), AlertDelivery.next_attempt_at <= now, ~blocked)
        .order_by(AlertDelivery.id)
        .limit(1)
    )
    with engine.begin() as connection:
        # SQLite: the write lock first, so two processes never lease the same row.
        write_xact_lock(connection, "alert_delivery")
        if connection.dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True, of=AlertDelivery)
        row_id = connection.execute(due).scalar()
        if row_id is None:
            return None
        return connection.execute(
            update(AlertDelivery)
            .where(AlertDelivery.id == row_id)
            .values(next_attempt_at=now + DELIVERY_LEASE, attempts=AlertDelivery.attempts + 1)
            .returning(*_COLUMNS)
        ).one()


def retry_delay(attempts: int) -> dt.timedelta:
    """The wait after the ``attempts``-th failed attempt: :data:`RETRY_BACKOFF` doubled per attempt after the
    first, at most :data:`MAX_RETRY_BACKOFF`."""
    doubled: dt.timedelta = RETRY_BACKOFF * 2 ** min(max(attempts - 1, 0), 30)
    return min(doubled, MAX_RETRY_BACKOFF)


def deliver_due(
    engine: Engine, now: dt.datetime | None = None, *, limit: int = MAX_DELIVERIES_PER_PASS
) -> DeliveryResult:
    """Send the outbox rows due at ``now`` (default: the current time), at most ``limit``, and delete
    delivered rows older than :data:`DELIVERED_RETENTION`.

    A failed send is recorded and rescheduled, never raised; database errors propagate (the caller logs
    them: the rows stay and are sent by a later pass).
    """
    now = now or dt.datetime.now(dt.UTC)
    delivered = failed = given_up = 0
    for _ in range(limit):
        row = _claim(engine, now)
        if row is None:
            break
        notification = notification_from_json(row.notification)
        try:
            notifiers.send(row.target, notification)
        except Exception as error:
            problem = describe_error(error)
            give_up = now - row.created_at >= GIVE_UP_AFTER
            next_attempt = None if give_up else now + retry_delay(row.attempts)
            with engine.begin() as connection:
                connection.execute(
                    update(AlertDelivery)
                    .where(AlertDelivery.id == row.id)
                    .values(next_attempt_at=next_attempt, last_error=problem[:2000])
                )
            if give_up:
                given_up += 1
                logger.error(
                    "Gave up delivering the %s notification of alert %s to %s after %d attempts: %s",
                    notification.event, row.alert_key, masked_target(row.target), row.attempts, problem,
                )  # fmt: skip
            else:
                failed += 1
                logger.warning(
                    "The %s notification of alert %s could not be delivered to %s (attempt %d, next at %s): %s",
                    notification.event, row.alert_key, masked_target(row.target), row.attempts,
                    next_attempt.isoformat() if next_attempt else "never", problem,
                )  # fmt: skip
            continue
        with engine.begin() as connection:
            connection.execute(
                update(AlertDelivery)
                .where(AlertDelivery.id == row.id)
                .values(delivered_at=now, next_attempt_at=None, last_error=None)
            )
        delivered += 1
    with engine.begin() as connection:
        connection.execute(
            delete(AlertDelivery).where(
                and_(AlertDelivery.delivered_at.is_not(None), AlertDelivery.delivered_at < now - DELIVERED_RETENTION)
            )
        )
    return DeliveryResult(delivered=delivered, failed=failed, given_up=given_up)


def undelivered(connection: Connection) -> list[Row[Any]]:
    """The outbox rows not delivered yet (waiting, failing or given up), oldest first: named rows with the
    columns of :class:`~dramatiq_opmetrics.models.AlertDelivery`."""
    return list(
        connection.execute(select(*_COLUMNS).where(AlertDelivery.delivered_at.is_(None)).order_by(AlertDelivery.id))
    )

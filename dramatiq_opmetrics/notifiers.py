"""Delivery of alert notifications: through Apprise, or to a Prometheus Alertmanager (its v2 API).

This module holds the message's data model; ``send(target, notification)`` and ``check_target(target)``
are built on it. A target is one Apprise URL (``mailto://``, ``json://``, ``slack://``, ...) or
``alertmanager+http://host:port`` / ``alertmanager+https://host:port``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Event = Literal["firing", "resolved", "reminder", "test"]


@dataclass(frozen=True)
class Notification:
    """One message about one alert (a rule and a group of labels)."""

    #: The rule's name.
    rule: str
    #: The group's labels (the rule's ``group_by`` values); empty for an ungrouped rule.
    group: Mapping[str, str]
    event: Event
    severity: str
    #: The rule's summary template, rendered.
    summary: str
    #: The last value computed; None when the window had no data.
    value: float | None
    threshold: float | None
    comparison: Literal["above", "below"] | None
    #: When the current state began (firing since, or resolved at); timezone-aware.
    since: dt.datetime
    #: When this notification was made; timezone-aware.
    at: dt.datetime
    #: A firing alert's end if no newer notification arrives (Alertmanager's ``endsAt``); None otherwise.
    valid_until: dt.datetime | None = None
    #: A link to the dashboard page of the alert, or None when no dashboard URL is configured.
    dashboard_url: str | None = None

    @property
    def key(self) -> str:
        """The alert's stable identity: the rule and its group's labels."""
        labels = ",".join(f"{name}={value}" for name, value in sorted(self.group.items()))
        return f"{self.rule}{{{labels}}}"


class DeliveryError(Exception):
    """A target did not accept a notification; the message says which target and why."""

"""Alert rules: what to watch, when to fire, whom to tell (read from a TOML file).

This module holds the rule file's data model; :func:`load_rules` (reading and validating a file with
``tomllib``) is built on it. The evaluator (:mod:`~dramatiq_opmetrics.alerts`) and the notifiers
(:mod:`~dramatiq_opmetrics.notifiers`) read these objects only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

#: The derived metrics a rule may watch besides the metric types themselves.
DERIVED_METRICS = ("error_rate", "throughput", "stalled")
#: The statistics of a value metric a rule may compare.
STATISTICS = ("count", "sum", "avg", "min", "max", "p50", "p95", "p99")
#: The statistic a rule compares when it names none.
DEFAULT_STATISTIC = "avg"
#: The severities a rule may have, most severe first.
SEVERITIES = ("critical", "warning", "info")
#: The severity of a rule that names none.
DEFAULT_SEVERITY = "warning"
#: How often a firing alert is repeated to its notifiers (Alertmanager's default ``repeat_interval``).
DEFAULT_REPEAT_INTERVAL = dt.timedelta(hours=4)
#: What a rule does when its window has no data: ``ok`` (resolves), ``keep`` (stays as it is) or
#: ``alert`` (counts as the condition holding).
NO_DATA_BEHAVIOURS = ("ok", "keep", "alert")
#: The no-data behaviour of a rule that names none.
DEFAULT_NO_DATA: Literal["ok", "keep", "alert"] = "ok"
#: How often the fleet evaluates the rules.
DEFAULT_EVALUATION_INTERVAL = dt.timedelta(minutes=1)

NoData = Literal["ok", "keep", "alert"]


@dataclass(frozen=True)
class Notifier:
    """A named set of delivery targets: Apprise URLs, or ``alertmanager+http(s)://host:port``."""

    name: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    """One alert rule of a rule file.

    ``metric`` is ``error_rate``, ``throughput`` (messages finished per second), ``stalled`` (1 when the
    queue was stalled in the window's last minute) or a metric type; ``statistic`` applies to metric types
    only. Exactly one of ``above`` and ``below`` is set.
    """

    name: str
    metric: str
    above: float | None
    below: float | None
    window: dt.timedelta
    for_: dt.timedelta
    notify: tuple[str, ...]
    statistic: str = DEFAULT_STATISTIC
    labels: Mapping[str, str] = field(default_factory=dict)
    group_by: tuple[str, ...] = ()
    severity: str = DEFAULT_SEVERITY
    summary: str = "{rule}: {metric} is {value} ({comparison} {threshold}) for {labels}"
    repeat_interval: dt.timedelta = DEFAULT_REPEAT_INTERVAL
    no_data: NoData = DEFAULT_NO_DATA

    @property
    def threshold(self) -> float:
        """The number the value is compared with."""
        value = self.above if self.above is not None else self.below
        assert value is not None
        return value

    @property
    def comparison(self) -> Literal["above", "below"]:
        """Whether the rule fires above or below its threshold."""
        return "above" if self.above is not None else "below"

    def breached(self, value: float) -> bool:
        """Whether ``value`` meets the rule's condition (strictly above, or strictly below)."""
        if self.above is not None:
            return value > self.above
        assert self.below is not None
        return value < self.below


@dataclass(frozen=True)
class RuleSet:
    """A whole rule file: its rules, its notifiers and its settings."""

    rules: tuple[Rule, ...]
    notifiers: Mapping[str, Notifier]
    evaluation_interval: dt.timedelta = DEFAULT_EVALUATION_INTERVAL
    #: The dashboard's base URL (``http://host:port``), for links in notifications; None for no links.
    dashboard_url: str | None = None
    source: str = "<rules>"


class RuleFileError(ValueError):
    """A rule file that cannot be used: ``errors`` holds one line per problem, each naming file, rule, key."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors

